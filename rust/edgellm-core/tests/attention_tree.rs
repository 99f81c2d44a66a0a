//! Tree attention against running every root-to-leaf path as an ordinary causal
//! sequence after the prefix, and against the f64 reference with the tree mask.

mod attention_util;

use attention_util::Rng;
use attention_util::*;
use edgellm_core::attention::flash::{flash_attend_slices, SPLIT_MIN_KEYS};
use edgellm_core::attention::naive::{causal_mask, naive_attend};
use edgellm_core::attention::tree::{tree_attend, tree_attend_into, TokenTree};
use edgellm_core::Error;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::HashSet;

const TOL: f32 = 1e-5;

#[derive(Debug, Clone)]
struct Case {
    nh: usize,
    nkv: usize,
    hd: usize,
    n: usize,
    prefix: usize,
    window: Option<usize>,
    softcap: Option<f32>,
    seed: u64,
}

fn case(n: std::ops::RangeInclusive<usize>, prefix: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Case> {
    (
        (1usize..=8, any::<Index>(), 1usize..=80),
        (n, prefix),
        (proptest::option::of(1usize..=40), proptest::option::of(0.5f32..30.0), any::<u64>()),
    )
        .prop_map(|((nh, kvi, hd), (n, prefix), (window, softcap, seed))| {
            let d = divisors(nh);
            Case { nh, nkv: d[kvi.index(d.len())], hd, n, prefix, window, softcap, seed }
        })
}

/// A random forest of `n` nodes (chains, bushes, several roots), labelled in a
/// random order so parents may come after their children.
fn random_tree(rng: &mut Rng, n: usize) -> Vec<Option<usize>> {
    let style = rng.below(3);
    let mut parents: Vec<Option<usize>> = Vec::with_capacity(n);
    for i in 0..n {
        let root = i == 0 || rng.below(100) < 8;
        parents.push(if root {
            None
        } else {
            Some(match style {
                0 => rng.below(i),                // bushy
                1 => i - 1 - rng.below(i.min(3)), // deep
                _ if rng.below(10) == 0 => i - 1 - rng.below(i.min(8)),
                _ => i - 1, // mostly long chains
            })
        });
    }
    let mut label: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        label.swap(i, rng.below(i + 1));
    }
    let mut out = vec![None; n];
    for i in 0..n {
        out[label[i]] = parents[i].map(|p| label[p]);
    }
    out
}

fn check_tree(c: &Case) -> Result<(), TestCaseError> {
    let mut rng = Rng(c.seed);
    let (nh, nkv, hd, n, prefix) = (c.nh, c.nkv, c.hd, c.n, c.prefix);
    let parents = random_tree(&mut rng, n);
    let tree = TokenTree::new(&parents).unwrap();
    let pk = rng.vec(prefix * nkv * hd, 1.0);
    let pv = rng.vec(prefix * nkv * hd, 1.0);
    let nk = rng.vec(n * nkv * hd, 1.0);
    let nv = rng.vec(n * nkv * hd, 1.0);
    let q = rng.vec(n * nh * hd, 1.5);
    let p = params(nh, nkv, hd, 1.0 / (hd as f32).sqrt(), c.window, c.softcap);
    let cache = cache_with(nkv, hd, &pk, &pv);
    let row = |x: &[f32], t: usize, h: usize, heads: usize| -> Vec<f32> { x[(t * heads + h) * hd..][..hd].to_vec() };

    // The tree, on every ISA and both pools (bit-identical).
    let k0 = all_kernels()[0];
    let mut tree_out: Option<Vec<f32>> = None;
    let mut tree_mass = vec![0f32; prefix + n];
    for k in all_kernels() {
        let mut first: Option<Vec<u32>> = None;
        for pool in pools() {
            let mut out = vec![f32::NAN; q.len()];
            let mut mass = vec![0f32; prefix + n];
            pool.install(|| tree_attend_into(k, &p, &cache, 0, prefix, &tree, &q, &nk, &nv, &mut out, Some(&mut mass)))
                .unwrap();
            match &first {
                None => first = Some(bits(&out)),
                Some(f) => prop_assert!(*f == bits(&out), "{:?} {:?}: 1 and 2 threads differ", k.isa, c),
            }
            if std::ptr::eq(k, k0) {
                tree_out = Some(out.clone());
                tree_mass = mass;
            } else {
                let e = max_rel_err(&out, tree_out.as_ref().unwrap());
                prop_assert!(e <= TOL, "{:?} vs {:?}: {e}", k.isa, k0.isa);
            }
        }
    }
    let tree_out = tree_out.unwrap();

    // Every root-to-leaf path as an ordinary sequence after the prefix (flash and
    // the reference); each node must get its path's output.
    let mut covered = vec![false; n];
    for leaf in tree.leaves() {
        let path = tree.path(leaf);
        let m = path.len();
        let keys: Vec<Vec<f32>> = (0..nkv)
            .map(|h| {
                let (ck, _) = cache.head(0, h, prefix);
                let mut v = ck.to_vec();
                path.iter().for_each(|&a| v.extend(row(&nk, a, h, nkv)));
                v
            })
            .collect();
        let values: Vec<Vec<f32>> = (0..nkv)
            .map(|h| {
                let (_, cv) = cache.head(0, h, prefix);
                let mut v = cv.to_vec();
                path.iter().for_each(|&a| v.extend(row(&nv, a, h, nkv)));
                v
            })
            .collect();
        let pq: Vec<f32> = path.iter().flat_map(|&a| q[a * nh * hd..(a + 1) * nh * hd].to_vec()).collect();
        let kr: Vec<&[f32]> = keys.iter().map(Vec::as_slice).collect();
        let vr: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
        let mut flash_out = vec![0f32; pq.len()];
        flash_attend_slices(k0, &p, &kr, &vr, prefix, &pq, &mut flash_out, None);
        let mut naive_out = vec![0f32; pq.len()];
        naive_attend(
            &p,
            &pq,
            prefix + m,
            |h, j| &keys[h][j * hd..(j + 1) * hd],
            |h, j| &values[h][j * hd..(j + 1) * hd],
            causal_mask(prefix, c.window),
            &mut naive_out,
            None,
        );
        for (i, &a) in path.iter().enumerate() {
            covered[a] = true;
            let got = &tree_out[a * nh * hd..(a + 1) * nh * hd];
            for (name, want) in [("flash", &flash_out), ("naive", &naive_out)] {
                let e = max_rel_err(got, &want[i * nh * hd..(i + 1) * nh * hd]);
                prop_assert!(e <= TOL, "{c:?} parents {parents:?}: node {a} vs {name} on path {path:?}: {e}");
            }
        }
    }
    prop_assert!(covered.iter().all(|&c| c));

    // The reference with the tree mask, written from the paths: output and key mass.
    let paths: Vec<HashSet<usize>> = (0..n).map(|t| tree.path(t).into_iter().collect()).collect();
    let depth: Vec<usize> = (0..n).map(|t| tree.path(t).len() - 1).collect();
    prop_assert_eq!(tree.depths(), &depth[..]);
    let key_pos = |j: usize| if j < prefix { j } else { prefix + depth[j - prefix] };
    let visible = |t: usize, j: usize| {
        let pos = prefix + depth[t];
        (j < prefix || paths[t].contains(&(j - prefix))) && !matches!(c.window, Some(w) if key_pos(j) + w <= pos)
    };
    let key = |h: usize, j: usize| -> &[f32] {
        if j < prefix {
            &cache.head(0, h, prefix).0[j * hd..(j + 1) * hd]
        } else {
            &nk[((j - prefix) * nkv + h) * hd..][..hd]
        }
    };
    let value = |h: usize, j: usize| -> &[f32] {
        if j < prefix {
            &cache.head(0, h, prefix).1[j * hd..(j + 1) * hd]
        } else {
            &nv[((j - prefix) * nkv + h) * hd..][..hd]
        }
    };
    let mut want = vec![0f32; q.len()];
    let mut want_mass = vec![0f32; prefix + n];
    naive_attend(&p, &q, prefix + n, key, value, visible, &mut want, Some(&mut want_mass));
    let e = max_rel_err(&tree_out, &want);
    prop_assert!(e <= TOL, "{c:?}: tree vs reference {e}");
    let e = max_rel_err(&tree_mass, &want_mass);
    prop_assert!(e <= TOL, "{c:?}: key mass vs reference {e}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn tree_matches_paths(c in case(1..=40, 0..=300)) {
        check_tree(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Trees wider than a key block (deep nodes with small windows skip blocks).
    #[test]
    fn big_tree_matches_paths(c in case(65..=150, 0..=100)) {
        check_tree(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Small trees after a long prefix take the split (flash-decoding) path.
    #[test]
    fn tree_long_prefix_matches_paths(c in case(1..=16, SPLIT_MIN_KEYS..=1200)) {
        check_tree(&c)?;
    }
}

#[test]
fn chain_is_ordinary_causal_attention() {
    // A chain is a plain sequence: bit-identical to flash over the same keys.
    let (nh, nkv, hd, n, prefix) = (4, 2, 16, 7, 20);
    let mut rng = Rng(11);
    let pk = rng.vec(prefix * nkv * hd, 1.0);
    let pv = rng.vec(prefix * nkv * hd, 1.0);
    let nk = rng.vec(n * nkv * hd, 1.0);
    let nv = rng.vec(n * nkv * hd, 1.0);
    let q = rng.vec(n * nh * hd, 1.0);
    let p = params(nh, nkv, hd, 0.25, None, None);
    let k = edgellm_kernels::kernels().unwrap();
    let cache = cache_with(nkv, hd, &pk, &pv);
    let parents: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
    let got = tree_attend(k, &p, &cache, 0, prefix, &parents, &q, &nk, &nv).unwrap();
    let full = cache_with(nkv, hd, &[pk, nk].concat(), &[pv, nv].concat());
    let mut want = vec![0f32; q.len()];
    edgellm_core::attention::flash::flash_attend(k, &p, &full, 0, prefix, &q, &mut want, None);
    assert!(max_rel_err(&got, &want) <= TOL);
}

#[test]
fn invalid_trees_and_shapes_are_errors() {
    let (nh, nkv, hd) = (2, 1, 4);
    let p = params(nh, nkv, hd, 0.5, None, None);
    let k = edgellm_kernels::kernels().unwrap();
    let cache = cache_with(nkv, hd, &[0.5; 3 * 4], &[0.5; 3 * 4]);
    let q = vec![0.1f32; 2 * nh * hd];
    let kv = vec![0.1f32; 2 * nkv * hd];
    let bad = |r: Result<Vec<f32>, Error>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 3, &[Some(1), Some(0)], &q, &kv, &kv)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 3, &[None, Some(2)], &q, &kv, &kv)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 3, &[None, Some(1)], &q, &kv, &kv)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 3, &[None], &q, &kv, &kv)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 3, &[None, Some(0)], &q, &kv[..4], &kv)));
    assert!(bad(tree_attend(k, &p, &cache, 0, 4, &[None, Some(0)], &q, &kv, &kv)));
    let p3 = params(3, 2, hd, 0.5, None, None);
    assert!(bad(tree_attend(k, &p3, &cache, 0, 3, &[None, Some(0)], &q, &kv, &kv)));
    let ok = tree_attend(k, &p, &cache, 0, 3, &[None, Some(0)], &q, &kv, &kv).unwrap();
    assert_eq!(ok.len(), q.len());
    assert!(tree_attend(k, &p, &cache, 0, 3, &[], &[], &[], &[]).unwrap().is_empty());
}

#[test]
fn deep_reversed_chain_with_window() {
    // Node i's parent is i + 1: the deepest node is 0, and its in-window ancestors
    // sit in the first key block of the tree while its position is far past it.
    let (nh, nkv, hd, n, prefix) = (2, 1, 8, 100, 10);
    let mut rng = Rng(5);
    let pk = rng.vec(prefix * nkv * hd, 1.0);
    let pv = rng.vec(prefix * nkv * hd, 1.0);
    let nk = rng.vec(n * nkv * hd, 1.0);
    let nv = rng.vec(n * nkv * hd, 1.0);
    let q = rng.vec(n * nh * hd, 1.0);
    let parents: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
    let k = edgellm_kernels::kernels().unwrap();
    let cache = cache_with(nkv, hd, &pk, &pv);
    for window in [None, Some(5), Some(40)] {
        let p = params(nh, nkv, hd, 0.4, window, None);
        let got = tree_attend(k, &p, &cache, 0, prefix, &parents, &q, &nk, &nv).unwrap();
        // The same tokens in chain order (root first) as a plain sequence.
        let order: Vec<usize> = (0..n).rev().collect();
        let pick =
            |x: &[f32], w: usize| -> Vec<f32> { order.iter().flat_map(|&i| x[i * w..(i + 1) * w].to_vec()).collect() };
        let full = cache_with(
            nkv,
            hd,
            &[pk.clone(), pick(&nk, nkv * hd)].concat(),
            &[pv.clone(), pick(&nv, nkv * hd)].concat(),
        );
        let mut want = vec![0f32; q.len()];
        edgellm_core::attention::flash::flash_attend(k, &p, &full, 0, prefix, &pick(&q, nh * hd), &mut want, None);
        for (s, &i) in order.iter().enumerate() {
            let e = max_rel_err(&got[i * nh * hd..(i + 1) * nh * hd], &want[s * nh * hd..(s + 1) * nh * hd]);
            assert!(e <= TOL, "window {window:?} node {i}: {e}");
        }
    }
}
