//! Small `A · B` ([`crate::MatmulNnFn`]) for operands already in cache: a row
//! block of `a` times a column block of row-major `b`, read in place, by
//! broadcasting `a[i, p]` against `b`'s row `p` into register tiles of rows ×
//! vectors. No packing and no horizontal sums: attention's products (64-key
//! blocks against `head_dim` = 64) are too short to pay for either, where the
//! dot-product form (`matmul_f32`) spent as much on sums and stores as on FMAs.
//!
//! Every output is one FMA chain over `p` in order from zero, so the AVX2 and
//! AVX-512 kernels (and NEON's) give the same bits for any shape.

use crate::scalar::matmul_nn_dims;
use core::arch::x86_64::*;

/// Rows of `a` per register tile.
const ROWS: usize = 6;

/// `$f::<R, ...>` for a tile of `$r` (1 ..= [`ROWS`]) rows.
macro_rules! by_rows {
    ($r:expr, $f:ident, <$($g:tt),*>, $($arg:expr),*) => {
        match $r {
            6 => $f::<6, $($g),*>($($arg),*),
            5 => $f::<5, $($g),*>($($arg),*),
            4 => $f::<4, $($g),*>($($arg),*),
            3 => $f::<3, $($g),*>($($arg),*),
            2 => $f::<2, $($g),*>($($arg),*),
            _ => $f::<1, $($g),*>($($arg),*),
        }
    };
}

/// The AVX2 kernel: tiles of 6 rows × 16 columns (two ymm vectors, the last
/// one masked on a ragged edge): 12 accumulators, two `b` vectors and the
/// broadcast in the 16 registers.
pub(super) fn matmul_nn_avx2(a: &[f32], b: &[f32], k: usize, m: usize, c: &mut [f32], ldc: usize) {
    let n = matmul_nn_dims(a, b, k, m, c, ldc);
    // Sound: the AVX2 and AVX-512 tables are built only after AVX2 and FMA
    // were detected, and the shapes were checked.
    unsafe { avx2::run(a.as_ptr(), b.as_ptr(), n, k, m, c.as_mut_ptr(), ldc) }
}

/// The AVX-512 kernel: tiles of 6 rows × 64 columns (four zmm vectors, masked
/// on a ragged edge): 24 accumulators, four `b` vectors and the broadcast.
pub(super) fn matmul_nn_avx512(a: &[f32], b: &[f32], k: usize, m: usize, c: &mut [f32], ldc: usize) {
    let n = matmul_nn_dims(a, b, k, m, c, ldc);
    // Sound: the AVX-512 table is built only after AVX-512 F was detected, and
    // the shapes were checked.
    unsafe { avx512::run(a.as_ptr(), b.as_ptr(), n, k, m, c.as_mut_ptr(), ldc) }
}

mod avx2 {
    use super::*;

    /// A lane mask of the first `w` (≤ 8) lanes, for `vmaskmovps`.
    #[inline(always)]
    unsafe fn lanes(w: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(a: *const f32, b: *const f32, n: usize, k: usize, m: usize, c: *mut f32, ldc: usize) {
        let mut j = 0;
        while j < m {
            let w = (m - j).min(16);
            let mut i = 0;
            while i < n {
                let r = (n - i).min(ROWS);
                let (ai, bj, cij) = (a.add(i * k), b.add(j), c.add(i * ldc + j));
                match (w > 8, w % 8 == 0) {
                    (true, true) => by_rows!(r, tile, <2, false>, ai, bj, cij, (k, m, ldc, w)),
                    (true, false) => by_rows!(r, tile, <2, true>, ai, bj, cij, (k, m, ldc, w)),
                    (false, true) => by_rows!(r, tile, <1, false>, ai, bj, cij, (k, m, ldc, w)),
                    (false, false) => by_rows!(r, tile, <1, true>, ai, bj, cij, (k, m, ldc, w)),
                }
                i += r;
            }
            j += w;
        }
    }

    /// `R` rows × `V` vectors of outputs at `c`; with `MASKED`, the last vector
    /// holds only the `w − 8 (V − 1)` columns left.
    #[inline(always)]
    unsafe fn tile<const R: usize, const V: usize, const MASKED: bool>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        (k, m, ldc, w): (usize, usize, usize, usize),
    ) {
        let last = lanes(w - 8 * (V - 1));
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for p in 0..k {
            let bp = b.add(p * m);
            let mut bv = [_mm256_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = if MASKED && v == V - 1 { _mm256_maskload_ps(bp.add(8 * v), last) } else { _mm256_loadu_ps(bp.add(8 * v)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * k + p));
                for v in 0..V {
                    acc[v] = _mm256_fmadd_ps(x, bv[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, x) in acc.iter().enumerate() {
                let o = c.add(r * ldc + 8 * v);
                if MASKED && v == V - 1 {
                    _mm256_maskstore_ps(o, last, *x);
                } else {
                    _mm256_storeu_ps(o, *x);
                }
            }
        }
    }
}

mod avx512 {
    use super::*;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run(a: *const f32, b: *const f32, n: usize, k: usize, m: usize, c: *mut f32, ldc: usize) {
        let mut j = 0;
        while j < m {
            let w = (m - j).min(64);
            let mut i = 0;
            while i < n {
                let r = (n - i).min(ROWS);
                let (ai, bj, cij) = (a.add(i * k), b.add(j), c.add(i * ldc + j));
                match w.div_ceil(16) {
                    4 => by_rows!(r, tile, <4>, ai, bj, cij, (k, m, ldc, w)),
                    3 => by_rows!(r, tile, <3>, ai, bj, cij, (k, m, ldc, w)),
                    2 => by_rows!(r, tile, <2>, ai, bj, cij, (k, m, ldc, w)),
                    _ => by_rows!(r, tile, <1>, ai, bj, cij, (k, m, ldc, w)),
                }
                i += r;
            }
            j += w;
        }
    }

    /// `R` rows × `V` vectors of outputs at `c`, the last vector masked to the
    /// `w − 16 (V − 1)` columns left (masked loads never fault past them).
    #[inline(always)]
    unsafe fn tile<const R: usize, const V: usize>(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        (k, m, ldc, w): (usize, usize, usize, usize),
    ) {
        let tail = w - 16 * (V - 1);
        let mask = |v: usize| -> __mmask16 { if v == V - 1 { (((1u32 << tail) - 1) & 0xFFFF) as __mmask16 } else { 0xFFFF } };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for p in 0..k {
            let bp = b.add(p * m);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(mask(v), bp.add(16 * v));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * k + p));
                for v in 0..V {
                    acc[v] = _mm512_fmadd_ps(x, bv[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, x) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(c.add(r * ldc + 16 * v), mask(v), *x);
            }
        }
    }
}
