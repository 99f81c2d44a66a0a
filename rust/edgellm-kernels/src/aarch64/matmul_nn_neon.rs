//! Small `A · B` ([`crate::MatmulNnFn`]) on NEON, as the x86 kernels
//! (`x86/matmul_nn.rs`): `a[i, p]` broadcast against row `p` of `b`, read in
//! place, into register tiles of 6 rows × 16 columns (24 accumulators, four `b`
//! vectors, the broadcast: 29 of the 32 registers). Columns past the last
//! whole vector (fewer than 4) take a scalar fused chain. Every output is one
//! FMA chain over `p` in order from zero, the x86 kernels' bits.

use crate::scalar::matmul_nn_dims;
use core::arch::aarch64::*;

/// Rows of `a` per register tile.
const ROWS: usize = 6;

pub(super) fn matmul_nn_f32(a: &[f32], b: &[f32], k: usize, m: usize, c: &mut [f32], ldc: usize) {
    let n = matmul_nn_dims(a, b, k, m, c, ldc);
    // Sound: the NEON tables are built only after NEON was detected, and the
    // shapes were checked.
    unsafe { run(a.as_ptr(), b.as_ptr(), n, k, m, c.as_mut_ptr(), ldc) }
}

#[target_feature(enable = "neon")]
unsafe fn run(a: *const f32, b: *const f32, n: usize, k: usize, m: usize, c: *mut f32, ldc: usize) {
    let whole = m / 4 * 4;
    let mut j = 0;
    while j < whole {
        let v = ((whole - j) / 4).min(4);
        let mut i = 0;
        while i < n {
            let r = (n - i).min(ROWS);
            let (ai, bj, cij) = (a.add(i * k), b.add(j), c.add(i * ldc + j));
            macro_rules! rows {
                ($v:literal) => {
                    match r {
                        6 => tile::<6, $v>(ai, bj, cij, k, m, ldc),
                        5 => tile::<5, $v>(ai, bj, cij, k, m, ldc),
                        4 => tile::<4, $v>(ai, bj, cij, k, m, ldc),
                        3 => tile::<3, $v>(ai, bj, cij, k, m, ldc),
                        2 => tile::<2, $v>(ai, bj, cij, k, m, ldc),
                        _ => tile::<1, $v>(ai, bj, cij, k, m, ldc),
                    }
                };
            }
            match v {
                4 => rows!(4),
                3 => rows!(3),
                2 => rows!(2),
                _ => rows!(1),
            }
            i += r;
        }
        j += 4 * v;
    }
    for i in 0..n {
        for j in whole..m {
            let mut s = 0f32;
            for p in 0..k {
                s = (*a.add(i * k + p)).mul_add(*b.add(p * m + j), s);
            }
            *c.add(i * ldc + j) = s;
        }
    }
}

/// `R` rows × `V` vectors of 4 outputs at `c`.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(a: *const f32, b: *const f32, c: *mut f32, k: usize, m: usize, ldc: usize) {
    let mut acc = [[vdupq_n_f32(0.0); V]; R];
    for p in 0..k {
        let bp = b.add(p * m);
        let mut bv = [vdupq_n_f32(0.0); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = vld1q_f32(bp.add(4 * v));
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = vld1q_dup_f32(a.add(r * k + p));
            for v in 0..V {
                acc[v] = vfmaq_f32(acc[v], x, bv[v]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, x) in acc.iter().enumerate() {
            vst1q_f32(c.add(r * ldc + 4 * v), *x);
        }
    }
}
