//! Float weights (f32, f16, bf16) repacked at load into the packed GEMM's B
//! panels, over the whole of k and in the file's element type: panel `p` holds
//! weight rows `16p..16p + 16`, k-major, `panel[kk · 16 + c] = w[16p + c][kk]`
//! (rows past the matrix are zero). The repacked weight is the file's size.
//!
//! One layout serves every token count, and all of them sum each output alike:
//! per `KC` block of k, one fused multiply-add chain from zero in k order, the
//! block sums then added in order. That is the order of the packed GEMM's
//! micro-kernel ([`crate::gemm`]), which reads these panels in place (no B
//! packing per call), so decode, a few tokens and a long prompt give the same
//! bits for the same token. The decode GEMV reads a panel as one stream with
//! the activation broadcast per k step: the activation row is read once per 16
//! weight rows, where a row-major GEMV re-reads it per row (at k = 5632, f32
//! activations no longer stay in L1 beside the weight stream).

use crate::gemm::{KC, NR};
use half::{bf16, f16};

/// Weight rows per panel (the micro-kernel's tile width).
pub const WIDTH: usize = NR;

/// Panels of one weight matrix (or of a run of its rows, whole panels) in the
/// storage type of the weights.
#[derive(Clone, Copy, Debug)]
pub enum Panels<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> Panels<'a> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            Panels::F32(w) => w.len(),
            Panels::F16(w) => w.len(),
            Panels::Bf16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Panels `p0..p1` (each `k · WIDTH` elements).
    pub fn slice(&self, k: usize, p0: usize, p1: usize) -> Panels<'a> {
        let r = p0 * k * WIDTH..p1 * k * WIDTH;
        match *self {
            Panels::F32(w) => Panels::F32(&w[r]),
            Panels::F16(w) => Panels::F16(&w[r]),
            Panels::Bf16(w) => Panels::Bf16(&w[r]),
        }
    }

    /// Element `i`, widened to f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Panels::F32(w) => w[i],
            Panels::F16(w) => w[i].to_f32(),
            Panels::Bf16(w) => w[i].to_f32(),
        }
    }
}

/// Elements of the panels of an `m × k` matrix (`None` on overflow).
pub fn panels_len(m: usize, k: usize) -> Option<usize> {
    m.div_ceil(WIDTH).checked_mul(k)?.checked_mul(WIDTH)
}

/// Packs panel `p` of row-major `w` (`m × k`) into `out` (`k · WIDTH` values).
/// Panics on a shape mismatch.
pub fn pack_panel<E: Copy + Default>(w: &[E], m: usize, k: usize, p: usize, out: &mut [E]) {
    assert!(w.len() == m * k && out.len() == k * WIDTH && p * WIDTH < m.max(1), "panels: shape mismatch");
    let rows = WIDTH.min(m - p * WIDTH);
    if rows < WIDTH {
        out.fill(E::default());
    }
    // Blocks of 64 k steps: the 16 source rows are read in runs, the panel written
    // in order.
    for k0 in (0..k).step_by(64) {
        let k1 = (k0 + 64).min(k);
        for c in 0..rows {
            let src = &w[(p * WIDTH + c) * k..][k0..k1];
            for (kk, &v) in (k0..k1).zip(src) {
                out[kk * WIDTH + c] = v;
            }
        }
    }
}

/// Row-major `m × k` from its panels (the inverse of [`pack_panel`] over all
/// panels). Panics on a shape mismatch.
pub fn unpack<E: Copy>(panels: &[E], m: usize, k: usize, out: &mut [E]) {
    assert!(Some(panels.len()) == panels_len(m, k) && out.len() == m * k, "panels: shape mismatch");
    for (j, row) in out.chunks_exact_mut(k.max(1)).enumerate().take(m) {
        let (p, c) = (j / WIDTH, j % WIDTH);
        for (kk, v) in row.iter_mut().enumerate() {
            *v = panels[p * k * WIDTH + kk * WIDTH + c];
        }
    }
}

/// `out[t · ldo + j] = Σ_kk x[t · k + kk] · w_j[kk]` for the `m` rows `w_j` held
/// by `w` (whole panels) and `n` tokens of `k = x.len() / n` values. Used for
/// one token (decode) and a few (short prompts); the packed GEMM reads the same
/// panels for long prompts. Panics on a shape mismatch.
pub type PanelsFn = fn(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize);

/// A register tile of a [`PanelsFn`] kernel: panels `p0..p0 + P` of `w` (`m`
/// rows of `k`) against `T` tokens (`x` their first, `out` its output row, `ldo`
/// apart), over every `KC` block.
pub(crate) trait PanelTile {
    type Elem;
    /// # Safety
    /// In bounds as [`sweep`] calls it, on a CPU with the tile's features.
    unsafe fn tile<const P: usize, const T: usize>(
        w: *const Self::Elem,
        m: usize,
        k: usize,
        p0: usize,
        x: *const f32,
        out: *mut f32,
        ldo: usize,
    );
}

/// Every panel of `w` against `n` tokens with `G`'s tiles: `P` panels at a time
/// (then one at a time), each group against groups of up to `T` (at most 4)
/// tokens while its panels are in cache. The SIMD kernels' common driver.
///
/// # Safety
/// The operands passed [`check`]; the CPU runs `G`'s instructions.
#[inline(always)]
pub(crate) unsafe fn sweep<G: PanelTile, const P: usize, const T: usize>(
    w: *const G::Elem,
    m: usize,
    k: usize,
    x: *const f32,
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    const { assert!(T >= 1 && T <= 4) };
    let count = m.div_ceil(WIDTH);
    let mut p = 0;
    while p < count {
        let full = p + P <= count;
        let mut t0 = 0;
        while t0 < n {
            let (x, out) = (x.add(t0 * k), out.add(t0 * ldo));
            let t = (n - t0).min(T);
            match (full, t) {
                (true, 1) => G::tile::<P, 1>(w, m, k, p, x, out, ldo),
                (true, 2) => G::tile::<P, 2>(w, m, k, p, x, out, ldo),
                (true, 3) => G::tile::<P, 3>(w, m, k, p, x, out, ldo),
                (true, _) => G::tile::<P, T>(w, m, k, p, x, out, ldo),
                (false, 1) => G::tile::<1, 1>(w, m, k, p, x, out, ldo),
                (false, 2) => G::tile::<1, 2>(w, m, k, p, x, out, ldo),
                (false, 3) => G::tile::<1, 3>(w, m, k, p, x, out, ldo),
                (false, _) => G::tile::<1, T>(w, m, k, p, x, out, ldo),
            }
            t0 += t;
        }
        p += if full { P } else { 1 };
    }
}

/// Checks the operands of a [`PanelsFn`] and returns `k`. Panics on a mismatch.
pub fn check(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &[f32], ldo: usize) -> usize {
    assert!(n > 0 && x.len() % n == 0, "panels: x is not n rows");
    let k = x.len() / n;
    assert!(Some(w.len()) == panels_len(m, k), "panels: weights are not {m} rows of {k}");
    assert!(ldo >= m && out.len() >= (n - 1) * ldo + m, "panels: output too small");
    k
}

/// The reference [`PanelsFn`], in the order every kernel on these panels sums:
/// per `KC` block one fused multiply-add chain from zero, the block sums added in
/// order. (`mul_add` is a library call without FMA hardware: tests only.)
pub fn gemm_panels_ref(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    let k = check(w, m, x, n, out, ldo);
    for t in 0..n {
        for j in 0..m {
            let (p, c) = (j / WIDTH, j % WIDTH);
            let mut total = 0f32;
            for (kb, k0) in (0..k).step_by(KC).enumerate() {
                let mut acc = 0f32;
                for kk in k0..(k0 + KC).min(k) {
                    acc = w.get(p * k * WIDTH + kk * WIDTH + c).mul_add(x[t * k + kk], acc);
                }
                total = if kb == 0 { acc } else { acc + total };
            }
            out[t * ldo + j] = total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip_with_a_partial_panel() {
        let (m, k) = (21, 7);
        let w: Vec<f32> = (0..m * k).map(|i| i as f32).collect();
        let mut panels = vec![f32::NAN; panels_len(m, k).unwrap()];
        for (p, out) in panels.chunks_exact_mut(k * WIDTH).enumerate() {
            pack_panel(&w, m, k, p, out);
        }
        assert_eq!(panels[3 * WIDTH + 2], w[2 * k + 3]);
        assert_eq!(panels[k * WIDTH + 5 * WIDTH + 4], w[(WIDTH + 4) * k + 5]);
        // Rows 21..32 of the second panel are zero.
        assert!((0..k).all(|kk| panels[k * WIDTH + kk * WIDTH + 10] == 0.0));
        let mut back = vec![0f32; m * k];
        unpack(&panels, m, k, &mut back);
        assert_eq!(back, w);
    }

    #[test]
    fn reference_is_the_dot_product() {
        let (m, k, n) = (18, 300, 2);
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
        let mut panels = vec![0f32; panels_len(m, k).unwrap()];
        for (p, out) in panels.chunks_exact_mut(k * WIDTH).enumerate() {
            pack_panel(&w, m, k, p, out);
        }
        let mut out = vec![0f32; n * m];
        gemm_panels_ref(Panels::F32(&panels), m, &x, n, &mut out, m);
        for t in 0..n {
            for j in 0..m {
                let exact: f64 = (0..k).map(|kk| w[j * k + kk] as f64 * x[t * k + kk] as f64).sum();
                // Every product and partial sum is a multiple of 1/32 below 2^20: exact.
                assert_eq!(out[t * m + j] as f64, exact);
            }
        }
    }
}
