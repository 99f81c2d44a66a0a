//! Rotary position embeddings with HF's frequency-scaling variants.
//!
//! Frequencies follow transformers' `modeling_rope_utils` formulas; angles are
//! formed in f32 (`pos * inv_freq`) exactly as transformers does, so long
//! positions round the same way, and cos/sin are then taken in f64.

use super::config::{RopeConfig, RopeScaling};
use crate::ops::reuse::{Reused, Slot};
use std::borrow::Cow;
use std::f64::consts::PI;

pub struct Rope {
    dim: usize,
    theta: f64,
    scaling: RopeScaling,
    inv_freq: Vec<f32>,
    /// LongRope: frequencies once the sequence passes `original_max`.
    long_inv_freq: Option<(usize, Vec<f32>)>,
    attention_scaling: f32,
    /// Pairs `(2i, 2i+1)` instead of `(i, i + dim/2)` (see `ModelConfig::rope_interleaved`).
    interleaved: bool,
}

fn default_inv_freq(theta: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64)).collect()
}

impl Rope {
    pub fn new(cfg: &RopeConfig) -> Self {
        let dim = cfg.dim;
        let base = default_inv_freq(cfg.theta, dim);
        let mut attention_scaling = 1.0;
        let mut long_inv_freq = None;
        let inv: Vec<f64> = match &cfg.scaling {
            RopeScaling::None | RopeScaling::Dynamic { .. } => base,
            RopeScaling::LongRope { short_factor, long_factor, original_max, attention_factor } => {
                attention_scaling = *attention_factor as f32;
                let scaled = |f: &Vec<f64>| base.iter().zip(f).map(|(b, s)| (b / s) as f32).collect::<Vec<f32>>();
                long_inv_freq = Some((*original_max, scaled(long_factor)));
                base.iter().zip(short_factor).map(|(b, s)| b / s).collect()
            }
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            &RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max } => {
                let old = original_max as f64;
                let (low_wl, high_wl) = (old / low_freq_factor, old / high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth = (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            &RopeScaling::Yarn { factor, original_max, beta_fast, beta_slow, attention_factor, truncate } => {
                attention_scaling = attention_factor as f32;
                let d = dim as f64;
                let correction_dim =
                    |rot: f64| d * (original_max as f64 / (rot * 2.0 * PI)).ln() / (2.0 * cfg.theta.ln());
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                base.iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect()
            }
        };
        Rope {
            dim,
            theta: cfg.theta,
            scaling: cfg.scaling.clone(),
            inv_freq: inv.into_iter().map(|f| f as f32).collect(),
            long_inv_freq,
            attention_scaling,
            interleaved: false,
        }
    }

    /// The same rotation on interleaved pairs `(2i, 2i+1)`.
    pub fn with_interleaved_pairs(mut self, interleaved: bool) -> Self {
        self.interleaved = interleaved;
        self
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// LongRope: the sequence length past which the long factors apply.
    pub fn switch_point(&self) -> Option<usize> {
        self.long_inv_freq.as_ref().map(|(p, _)| *p)
    }

    /// Frequencies for a forward pass whose furthest position is `seq_len - 1`:
    /// dynamic NTK scaling grows the base once the sequence outgrows the original
    /// context, as transformers' `dynamic_rope_update` does.
    fn inv_freq(&self, seq_len: usize) -> Cow<'_, [f32]> {
        match self.scaling {
            RopeScaling::Dynamic { factor, original_max } if seq_len > original_max => {
                let d = self.dim as f64;
                let base = self.theta
                    * ((factor * seq_len as f64 / original_max as f64) - (factor - 1.0)).powf(d / (d - 2.0));
                Cow::Owned(default_inv_freq(base, self.dim).into_iter().map(|f| f as f32).collect())
            }
            // transformers' longrope_frequency_update: the long factors for the whole
            // forward pass once it reaches past the original context.
            _ => match &self.long_inv_freq {
                Some((original_max, long)) if seq_len > *original_max => Cow::Borrowed(long),
                _ => Cow::Borrowed(&self.inv_freq),
            },
        }
    }

    /// cos/sin tables for `positions`, each `[positions.len() × dim/2]`.
    pub fn tables(&self, positions: std::ops::Range<usize>, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
        let mut t = (Vec::new(), Vec::new());
        self.tables_into(positions, seq_len, &mut t);
        t
    }

    /// [`Self::tables`] into `out`'s buffers (replacing their contents; no
    /// allocation once they are large enough, dynamic NTK past its original
    /// context excepted).
    pub fn tables_into(&self, positions: std::ops::Range<usize>, seq_len: usize, out: &mut (Vec<f32>, Vec<f32>)) {
        let inv = self.inv_freq(seq_len);
        let (cos, sin) = out;
        cos.clear();
        sin.clear();
        for p in positions {
            for &f in inv.iter() {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32 * self.attention_scaling);
                sin.push(angle.sin() as f32 * self.attention_scaling);
            }
        }
    }

    /// Rotates the first `dim` values of every head in `x` (`[n × heads × head_dim]`)
    /// in place, pairing element `i` with `i + dim/2` (HF's rotate_half layout).
    /// A prompt's tokens are rotated in parallel (see
    /// `ops::par::rows_in_parallel`).
    pub fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = self.dim / 2;
        let width = heads * head_dim;
        crate::ops::par::rows_in_parallel(x, width, |t0, rows| {
            for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                let t = t0 + i;
                let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                for head in row.chunks_exact_mut(head_dim) {
                    rotate(head, c, s, self.interleaved);
                }
            }
        });
    }

    /// Rotates every head row of `x` (`[rows × head_dim]`, already rotated at some
    /// positions) forward by `delta` positions: a pure rotation, no attention
    /// scaling, so a key rotated at `p` becomes one rotated at `p + delta`.
    pub fn shift(&self, x: &mut [f32], head_dim: usize, delta: usize, seq_len: usize) {
        let inv = self.inv_freq(seq_len);
        // This thread's buffers, kept from call to call (StreamingLLM shifts the
        // sinks of every layer at every step).
        let mut tables = Reused::take(&SHIFT_TABLES);
        let (c, s) = &mut *tables;
        c.clear();
        s.clear();
        for &f in inv.iter() {
            let angle = (delta as f32 * f) as f64;
            c.push(angle.cos() as f32);
            s.push(angle.sin() as f32);
        }
        for head in x.chunks_exact_mut(head_dim) {
            rotate(head, c, s, self.interleaved);
        }
    }
}

thread_local! {
    static SHIFT_TABLES: Slot<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new(None) };
}

/// Rotates pairs `(i, i + half)` (or `(2i, 2i+1)`) of one head by the angles of
/// `cos`/`sin` (`half` each).
fn rotate(head: &mut [f32], c: &[f32], s: &[f32], interleaved: bool) {
    let half = c.len();
    if interleaved {
        for (i, pair) in head[..2 * half].chunks_exact_mut(2).enumerate() {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c[i] - b * s[i];
            pair[1] = b * c[i] + a * s[i];
        }
    } else {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * c[i] - b * s[i];
            head[i + half] = b * c[i] + a * s[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> Rope {
        Rope::new(&RopeConfig { theta: 10000.0, dim: 32, scaling })
    }

    /// A prompt's tokens rotated in pieces on the pool equal each token
    /// rotated alone (its own table row), on any thread count.
    #[test]
    fn tokens_in_parallel_equal_tokens_alone() {
        use crate::ops::par::PAR_MIN_ROWS;
        let r = rope(RopeScaling::None);
        let (heads, hd) = (3, 32);
        for n in [PAR_MIN_ROWS - 1, PAR_MIN_ROWS, 2 * PAR_MIN_ROWS + 3] {
            let x: Vec<f32> = (0..n * heads * hd).map(|i| (i as f32 * 0.37).sin()).collect();
            let (c, s) = r.tables(5..5 + n, 5 + n);
            let mut want = x.clone();
            for (t, row) in want.chunks_exact_mut(heads * hd).enumerate() {
                let (ct, st) = r.tables(5 + t..6 + t, 5 + n);
                r.apply(row, heads, hd, &ct, &st);
                assert_eq!((&ct[..], &st[..]), (&c[t * 16..(t + 1) * 16], &s[t * 16..(t + 1) * 16]));
            }
            for threads in [1, 2, 3] {
                let mut y = x.clone();
                crate::pool::Pool::new(threads).unwrap().install(|| r.apply(&mut y, heads, hd, &c, &s));
                assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n {n} threads {threads}");
            }
        }
    }

    #[test]
    fn position_zero_is_identity_and_rotation_preserves_norm() {
        let r = rope(RopeScaling::None);
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let (c, s) = r.tables(0..1, 1);
        let mut y = x.clone();
        r.apply(&mut y, 2, 32, &c, &s);
        assert_eq!(x, y);
        let (c, s) = r.tables(17..18, 18);
        r.apply(&mut y, 2, 32, &c, &s);
        for (a, b) in x.chunks(32).zip(y.chunks(32)) {
            let n = |v: &[f32]| v.iter().map(|t| t * t).sum::<f32>();
            assert!((n(a) - n(b)).abs() < 1e-4);
        }
    }

    #[test]
    fn relative_positions_only() {
        // <rot(q, m), rot(k, n)> depends on m - n alone.
        let r = rope(RopeScaling::None);
        let q: Vec<f32> = (0..32).map(|i| (i as f32 * 0.7).cos()).collect();
        let k: Vec<f32> = (0..32).map(|i| (i as f32 * 1.3).sin()).collect();
        let dot_at = |m: usize, n: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            let (c, s) = r.tables(m..m + 1, m + 1);
            r.apply(&mut a, 1, 32, &c, &s);
            let (c, s) = r.tables(n..n + 1, n + 1);
            r.apply(&mut b, 1, 32, &c, &s);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        assert!((dot_at(10, 3) - dot_at(107, 100)).abs() < 1e-3);
    }

    #[test]
    fn shift_composes_with_rotation() {
        for scaling in [RopeScaling::None, RopeScaling::Linear { factor: 2.0 }] {
            let r = rope(scaling);
            let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
            let (c, s) = r.tables(5..6, 6);
            let mut a = x.clone();
            r.apply(&mut a, 2, 32, &c, &s);
            r.shift(&mut a, 32, 40, 6);
            let (c, s) = r.tables(45..46, 46);
            let mut b = x.clone();
            r.apply(&mut b, 2, 32, &c, &s);
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-5, "{u} vs {v}");
            }
        }
    }

    #[test]
    fn interleaved_pairs_are_the_permuted_halves() {
        let r = rope(RopeScaling::None);
        let ri = rope(RopeScaling::None).with_interleaved_pairs(true);
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.61).cos()).collect();
        // llama.cpp's permute per head of 32: stored 2i + j = HF j·16 + i.
        let perm = |v: &[f32]| -> Vec<f32> {
            v.chunks(32).flat_map(|h| (0..32).map(move |s| h[(s % 2) * 16 + s / 2])).collect()
        };
        let (c, s) = r.tables(9..10, 10);
        let (mut a, mut b) = (x.clone(), perm(&x));
        r.apply(&mut a, 2, 32, &c, &s);
        ri.apply(&mut b, 2, 32, &c, &s);
        assert_eq!(perm(&a), b);
        r.shift(&mut a, 32, 7, 10);
        ri.shift(&mut b, 32, 7, 10);
        assert_eq!(perm(&a), b);
    }

    #[test]
    fn linear_scaling_divides_positions() {
        let plain = rope(RopeScaling::None);
        let lin = rope(RopeScaling::Linear { factor: 4.0 });
        let (c1, s1) = plain.tables(2..3, 3);
        let (c2, s2) = lin.tables(8..9, 9);
        for (a, b) in c1.iter().chain(&s1).zip(c2.iter().chain(&s2)) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let r = rope(RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 64 });
        let base = default_inv_freq(10000.0, 32);
        assert!((r.inv_freq[0] as f64 - base[0]).abs() < 1e-7, "shortest wavelength untouched");
        let last = base.len() - 1;
        assert!((r.inv_freq[last] as f64 - base[last] / 8.0).abs() < 1e-9, "longest wavelength divided by factor");
    }

    #[test]
    fn dynamic_only_changes_past_original_length() {
        let r = rope(RopeScaling::Dynamic { factor: 2.0, original_max: 16 });
        assert_eq!(r.tables(5..6, 16), rope(RopeScaling::None).tables(5..6, 16));
        assert_ne!(r.tables(5..6, 40), rope(RopeScaling::None).tables(5..6, 40));
    }
}
