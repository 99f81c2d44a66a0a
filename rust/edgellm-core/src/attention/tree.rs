//! Tree attention: `n` new tokens forming a tree (speculative decoding's token
//! trees) after a cached prefix of `prefix_len` positions. Node `i` sits at
//! position `prefix_len + depth(i)` (roots have depth 0) and attends to the whole
//! cached prefix and to its ancestors among the new tokens, itself included —
//! exactly what it would see if its root-to-node path were decoded as an ordinary
//! sequence after the prefix. Sliding windows and soft-capping apply by position.
//!
//! The work is done by the flash kernel ([`super::flash`]) with a tree mask; the
//! new tokens' keys and values come separately (`[n × kv_heads × head_dim]`,
//! as the projections produce them), the prefix comes from the cache.

use super::flash::{self, KvPart, KvParts, Mask};
use super::AttentionParams;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use edgellm_kernels::Kernels;

/// A validated token tree: parents, depths and ancestor sets.
#[derive(Clone, Debug)]
pub struct TokenTree {
    parents: Vec<Option<usize>>,
    depth: Vec<usize>,
    /// `words` u64 per node: bit `a` of node `i` is set iff `a` is `i` or one of
    /// its ancestors.
    anc: Vec<u64>,
    words: usize,
}

impl TokenTree {
    /// `parents[i]` is the index of node `i`'s parent among the new tokens, or
    /// `None` for a child of the cached prefix. Any node order is accepted;
    /// a parent index out of range or a cycle is an `InvalidArgument` error.
    pub fn new(parents: &[Option<usize>]) -> Result<TokenTree> {
        let n = parents.len();
        for (i, p) in parents.iter().enumerate() {
            match *p {
                Some(p) if p >= n => {
                    return Err(Error::arg(format!("token tree: node {i} has parent {p}, outside 0..{n}")))
                }
                Some(p) if p == i => return Err(Error::arg(format!("token tree: node {i} is its own parent"))),
                _ => {}
            }
        }
        // Depths by walking up to a node of known depth; a walk that meets
        // itself is a cycle.
        const UNKNOWN: usize = usize::MAX;
        let mut depth = vec![UNKNOWN; n];
        let mut on_walk = vec![false; n];
        let mut walk = Vec::new();
        for start in 0..n {
            let mut i = start;
            let base = loop {
                if depth[i] != UNKNOWN {
                    break depth[i] + 1;
                }
                if on_walk[i] {
                    return Err(Error::arg(format!("token tree: the parents of node {i} form a cycle")));
                }
                on_walk[i] = true;
                walk.push(i);
                match parents[i] {
                    Some(p) => i = p,
                    None => break 0,
                }
            };
            // walk = [start, parent, ..., topmost unknown]; topmost gets `base`.
            for (k, &w) in walk.iter().rev().enumerate() {
                depth[w] = base + k;
                on_walk[w] = false;
            }
            walk.clear();
        }
        let words = n.div_ceil(64).max(1);
        let mut anc = vec![0u64; n * words];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| depth[i]);
        for i in order {
            if let Some(p) = parents[i] {
                let (src, dst) = (p * words, i * words);
                for w in 0..words {
                    anc[dst + w] = anc[src + w];
                }
            }
            anc[i * words + i / 64] |= 1 << (i % 64);
        }
        Ok(TokenTree { parents: parents.to_vec(), depth, anc, words })
    }

    pub fn len(&self) -> usize {
        self.parents.len()
    }
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }
    pub fn parents(&self) -> &[Option<usize>] {
        &self.parents
    }
    /// Depth of every node (roots: 0).
    pub fn depths(&self) -> &[usize] {
        &self.depth
    }
    /// Whether `a` is `i` or an ancestor of `i`.
    pub fn is_ancestor(&self, a: usize, i: usize) -> bool {
        self.anc[i * self.words + a / 64] >> (a % 64) & 1 == 1
    }
    /// `mask[a]`: whether node `i` attends to new token `a` (itself and its ancestors).
    pub fn ancestor_mask(&self, i: usize) -> Vec<bool> {
        (0..self.len()).map(|a| self.is_ancestor(a, i)).collect()
    }
    /// Positions (for rotary embeddings) of the nodes after `prefix_len` cached tokens.
    pub fn positions(&self, prefix_len: usize) -> Vec<usize> {
        self.depth.iter().map(|d| prefix_len + d).collect()
    }
    /// Nodes without children.
    pub fn leaves(&self) -> Vec<usize> {
        let mut has_child = vec![false; self.len()];
        for p in self.parents.iter().flatten() {
            has_child[*p] = true;
        }
        (0..self.len()).filter(|&i| !has_child[i]).collect()
    }
    /// The nodes from `i`'s root down to `i`.
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut path = vec![i];
        let mut cur = i;
        while let Some(p) = self.parents[cur] {
            path.push(p);
            cur = p;
        }
        path.reverse();
        path
    }
}

/// Tree mask: keys `0..prefix` are the cached prefix (key `j` at position `j`),
/// key `prefix + a` is new token `a` (at position `prefix + depth(a)`).
struct TreeMask<'a> {
    tree: &'a TokenTree,
    prefix: usize,
    window: Option<usize>,
}

impl TreeMask<'_> {
    /// Lowest key position query `t` sees through the window.
    fn lo_pos(&self, t: usize) -> usize {
        let pos = self.prefix + self.tree.depth[t];
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

impl Mask for TreeMask<'_> {
    fn bounds(&self, t: usize) -> (usize, usize) {
        (self.lo_pos(t).min(self.prefix), self.prefix + self.tree.len())
    }
    fn full(&self, t: usize, j0: usize, j1: usize) -> bool {
        j1 <= self.prefix && j0 >= self.lo_pos(t)
    }
    fn sees(&self, t: usize, j: usize) -> bool {
        let lo = self.lo_pos(t);
        if j < self.prefix {
            j >= lo
        } else {
            let a = j - self.prefix;
            self.tree.is_ancestor(a, t) && self.prefix + self.tree.depth[a] >= lo
        }
    }
}

/// Tree attention over the first `prefix_len` positions of layer `layer` of
/// `cache` plus the tree's own keys and values. Returns `[n × num_heads × head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn tree_attend(
    k: &Kernels,
    p: &AttentionParams,
    cache: &KvCache,
    layer: usize,
    prefix_len: usize,
    parents: &[Option<usize>],
    q: &[f32],
    new_k: &[f32],
    new_v: &[f32],
) -> Result<Vec<f32>> {
    let tree = TokenTree::new(parents)?;
    let mut out = vec![0f32; q.len()];
    tree_attend_into(k, p, cache, layer, prefix_len, &tree, q, new_k, new_v, &mut out, None)?;
    Ok(out)
}

/// [`tree_attend`] into `out` (`[n × num_heads × head_dim]`) for an already
/// validated tree. `q`: `[n × num_heads × head_dim]`; `new_k`, `new_v`:
/// `[n × num_kv_heads × head_dim]`. If `mass` is given (`prefix_len + n` floats:
/// the prefix keys, then the new tokens), each key's softmax weight summed over
/// queries and heads is added to it.
#[allow(clippy::too_many_arguments)]
pub fn tree_attend_into(
    k: &Kernels,
    p: &AttentionParams,
    cache: &KvCache,
    layer: usize,
    prefix_len: usize,
    tree: &TokenTree,
    q: &[f32],
    new_k: &[f32],
    new_v: &[f32],
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) -> Result<()> {
    if prefix_len > cache.len() {
        return Err(Error::arg(format!(
            "tree attention: prefix of {prefix_len} positions, but the cache holds {}",
            cache.len()
        )));
    }
    check_params(p)?;
    let (keys, values): (Vec<&[f32]>, Vec<&[f32]>) =
        (0..p.num_kv_heads).map(|h| cache.head(layer, h, prefix_len)).unzip();
    tree_attend_slices(k, p, &keys, &values, prefix_len, tree, q, new_k, new_v, out, mass)
}

/// [`tree_attend_into`] with the prefix given per KV head (`prefix_keys[h]`,
/// `prefix_values[h]`: at least `prefix_len × head_dim` floats, `[position][head_dim]`).
#[allow(clippy::too_many_arguments)]
pub fn tree_attend_slices(
    k: &Kernels,
    p: &AttentionParams,
    prefix_keys: &[&[f32]],
    prefix_values: &[&[f32]],
    prefix_len: usize,
    tree: &TokenTree,
    q: &[f32],
    new_k: &[f32],
    new_v: &[f32],
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) -> Result<()> {
    check_params(p)?;
    let (nh, nkv, hd, n) = (p.num_heads, p.num_kv_heads, p.head_dim, tree.len());
    let shape = |what: &str, got: usize, want: usize| {
        if got == want {
            Ok(())
        } else {
            Err(Error::arg(format!("tree attention: {what} has {got} floats, expected {want}")))
        }
    };
    shape("q", q.len(), n * nh * hd)?;
    shape("out", out.len(), n * nh * hd)?;
    shape("new keys", new_k.len(), n * nkv * hd)?;
    shape("new values", new_v.len(), n * nkv * hd)?;
    if let Some(m) = &mass {
        shape("mass", m.len(), prefix_len + n)?;
    }
    if prefix_keys.len() != nkv || prefix_values.len() != nkv {
        return Err(Error::arg("tree attention: one prefix key and value slice per KV head"));
    }
    if prefix_keys.iter().chain(prefix_values).any(|s| s.len() < prefix_len * hd) {
        return Err(Error::arg("tree attention: prefix slices shorter than the prefix"));
    }
    if n == 0 {
        return Ok(());
    }
    // The new keys and values, contiguous per KV head.
    let per_head = |x: &[f32]| -> Vec<Vec<f32>> {
        (0..nkv).map(|h| (0..n).flat_map(|t| &x[(t * nkv + h) * hd..][..hd]).copied().collect()).collect()
    };
    let (nk, nv) = (per_head(new_k), per_head(new_v));
    let kv = KvParts::new(
        [
            KvPart::slices(
                0,
                prefix_len,
                prefix_keys.iter().map(|s| &s[..prefix_len * hd]).collect(),
                prefix_values.iter().map(|s| &s[..prefix_len * hd]).collect(),
            ),
            KvPart::slices(prefix_len, n, nk.iter().map(Vec::as_slice).collect(), nv.iter().map(Vec::as_slice).collect()),
        ],
        prefix_len + n,
        None,
    );
    let mask = TreeMask { tree, prefix: prefix_len, window: p.window };
    flash::run(k, p, &kv, &mask, q, out, mass);
    Ok(())
}

fn check_params(p: &AttentionParams) -> Result<()> {
    if p.num_heads == 0 || p.num_kv_heads == 0 || p.num_heads % p.num_kv_heads > 0 || p.head_dim == 0 {
        return Err(Error::arg(format!(
            "tree attention: {} heads, {} KV heads, head_dim {}",
            p.num_heads, p.num_kv_heads, p.head_dim
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_ancestors_any_order() {
        // 3 is a root; 1 → 3; 0 → 1; 2 → 3; 4 is another root.
        let t = TokenTree::new(&[Some(1), Some(3), Some(3), None, None]).unwrap();
        assert_eq!(t.depths(), &[2, 1, 1, 0, 0]);
        assert_eq!(t.ancestor_mask(0), vec![true, true, false, true, false]);
        assert_eq!(t.ancestor_mask(4), vec![false, false, false, false, true]);
        assert_eq!(t.path(0), vec![3, 1, 0]);
        assert_eq!(t.leaves(), vec![0, 2, 4]);
        assert_eq!(t.positions(10), vec![12, 11, 11, 10, 10]);
    }

    #[test]
    fn bad_trees_are_invalid_arguments() {
        for parents in [
            vec![Some(1), Some(0)],
            vec![Some(0)],
            vec![None, Some(2)],
            vec![None, Some(3), Some(1), Some(2)],
            vec![Some(5)],
        ] {
            assert!(matches!(TokenTree::new(&parents), Err(Error::InvalidArgument(_))), "{parents:?}");
        }
        assert!(TokenTree::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn wide_tree_bitsets() {
        // A chain of 130 nodes crosses u64 words.
        let parents: Vec<Option<usize>> = (0..130usize).map(|i| i.checked_sub(1)).collect();
        let t = TokenTree::new(&parents).unwrap();
        assert!(t.is_ancestor(0, 129) && t.is_ancestor(64, 129) && t.is_ancestor(129, 129));
        assert!(!t.is_ancestor(129, 128));
        assert_eq!(t.depths()[129], 129);
    }
}
