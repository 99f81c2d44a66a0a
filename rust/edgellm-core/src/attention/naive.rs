//! The plain reference for attention: materialise every score, mask, softmax in
//! f64, weighted sum. Slow and simple on purpose; the tests hold [`super::flash`]
//! and [`super::tree`] to it, and it documents what they compute:
//!
//! ```text
//! s[t,h,j]  = scale · (q[t,h] · key[h/group, j])
//! s[t,h,j]  = cap · tanh(s[t,h,j] / cap)          (soft-capping, if any)
//! s[t,h,j]  = −∞ where query t does not see key j  (causal / window / tree mask)
//! w[t,h,·]  = softmax(s[t,h,·])
//! out[t,h]  = Σ_j w[t,h,j] · value[h/group, j]
//! mass[j]  += Σ_{t,h} w[t,h,j]
//! ```
//!
//! A query that sees no key at all gets a zero output (here and in the kernels).

use super::AttentionParams;

/// Attention of `q` (`[n × num_heads × head_dim]`) over `kv_len` keys.
/// `key(kv_head, j)` / `value(kv_head, j)` give key / value `j` of a KV head
/// (`head_dim` floats); `visible(t, j)` says whether query `t` sees key `j` (the
/// whole mask: causal, window, tree). Writes `out` (`[n × num_heads × head_dim]`)
/// and, if given, adds each key's attention weight summed over queries and heads
/// into `mass` (`kv_len` floats).
#[allow(clippy::too_many_arguments)]
pub fn naive_attend<'a>(
    p: &AttentionParams,
    q: &[f32],
    kv_len: usize,
    key: impl Fn(usize, usize) -> &'a [f32],
    value: impl Fn(usize, usize) -> &'a [f32],
    visible: impl Fn(usize, usize) -> bool,
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) {
    let (nh, hd) = (p.num_heads, p.head_dim);
    assert!(nh > 0 && p.num_kv_heads > 0 && nh % p.num_kv_heads == 0, "heads must be a multiple of kv heads");
    let group = nh / p.num_kv_heads;
    assert_eq!(q.len() % (nh * hd), 0, "q is not [n × heads × head_dim]");
    assert_eq!(out.len(), q.len(), "out must have the shape of q");
    if let Some(m) = &mass {
        assert_eq!(m.len(), kv_len, "mass must have kv_len entries");
    }
    let n = q.len() / (nh * hd);
    let mut scores = vec![f64::NEG_INFINITY; kv_len];
    let mut mass64 = vec![0f64; if mass.is_some() { kv_len } else { 0 }];
    for t in 0..n {
        for h in 0..nh {
            let kvh = h / group;
            let qv = &q[(t * nh + h) * hd..][..hd];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = f64::NEG_INFINITY;
                if !visible(t, j) {
                    continue;
                }
                let kj = key(kvh, j);
                let mut d = qv.iter().zip(kj).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * p.scale as f64;
                if let Some(cap) = p.softcap {
                    d = (d / cap as f64).tanh() * cap as f64;
                }
                *s = d;
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let o = &mut out[(t * nh + h) * hd..][..hd];
            if max == f64::NEG_INFINITY {
                o.fill(0.0);
                continue;
            }
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let mut acc = vec![0f64; hd];
            for (j, s) in scores.iter().enumerate() {
                if *s == f64::NEG_INFINITY {
                    continue;
                }
                let w = (s - max).exp() / sum;
                for (a, v) in acc.iter_mut().zip(value(kvh, j)) {
                    *a += w * *v as f64;
                }
                if let Some(m) = mass64.get_mut(j) {
                    *m += w;
                }
            }
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    }
    if let Some(m) = mass {
        for (m, a) in m.iter_mut().zip(&mass64) {
            *m += *a as f32;
        }
    }
}

/// The causal mask of queries at positions `pos0..`, with an optional sliding
/// window: query `t` (position `pos0 + t`) sees key `j` iff
/// `pos0 + t - window < j ≤ pos0 + t`.
pub fn causal_mask(pos0: usize, window: Option<usize>) -> impl Fn(usize, usize) -> bool {
    move |t, j| {
        let pos = pos0 + t;
        j <= pos && !matches!(window, Some(w) if j + w <= pos)
    }
}
