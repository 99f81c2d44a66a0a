//! AVX2 + FMA + F16C kernels (Haswell, Zen and later).

use crate::scalar::matmul_dims;
use crate::x86::simd::Elem;
use crate::{Isa, Kernels};
use core::arch::x86_64::*;
use half::{bf16, f16};

pub static KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
    dot_f32,
    dot_f16,
    dot_bf16,
    gemv_f32: |w, x, out| gemv(w, x, out, imp::gemv_rows3),
    gemv_f16: |w, x, out| gemv(w, x, out, imp::gemv_rows3),
    gemv_bf16: |w, x, out| gemv(w, x, out, imp::gemv_rows3),
    gemm_few: super::few_avx2::gemm_few,
    axpy,
    f16_to_f32,
    bf16_to_f32,
    matmul_f32,
    matmul_nn_f32: super::matmul_nn::matmul_nn_avx2,
    exp_sum: super::exp_sum::exp_sum_avx2,
    gemm_micro: super::gemm_avx2::micro_kernel,
    gemm_micro_rows: Some(super::gemm_avx2::micro_kernel_rows),
    gemm_micro_stream: Some(super::gemm_avx2::micro_kernel_stream),
    gemm_pack_b: super::gemm_avx2::pack_b,
    gemm_micro_f16: Some(super::gemm_avx2::micro_kernel_f16),
    gemm_micro_bf16: Some(super::gemm_avx2::micro_kernel_bf16),
    gemm_wide: None,
    gemm_panels: Some(super::panels_avx2::gemm_panels),
    quantize_act: super::quant_avx2::quantize_act,
    vec_dot: super::quant_avx2::vec_dot,
    gemv_q: super::gemv_avx2::gemv_q,
    gemm_q: super::qgemm_avx2::gemm_q,
    gemm_q_resident: Some(super::qgemm_avx2::gemm_q_resident),
    gemm_q_resident_types: super::qgemm_avx2::RESIDENT_TYPES,
    dequantize_row: super::nf4_fp8_avx2::dequantize_row,
};

// Safe entry points. Sound because `KERNELS` is only handed out by
// `Kernels::for_isa(Isa::Avx2)`, which first checks avx2+fma+f16c at run time.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
    unsafe { imp::dot_f32(a, b) }
}
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: length mismatch");
    unsafe { imp::dot_f16(w, x) }
}
fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_bf16: length mismatch");
    unsafe { imp::dot_bf16(w, x) }
}
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    unsafe { imp::axpy(alpha, x, y) }
}
fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
    unsafe { imp::f16_to_f32(src, dst) }
}
fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
    unsafe { imp::bf16_to_f32(src, dst) }
}
/// The float decode GEMV through `rows` (one of the `imp::gemv_rows*`), after
/// the shape check. Only the AVX2 and AVX-512 tables call it, each with the
/// `rows` whose features its `Isa` guarantees (checked before `Kernels::for_isa`
/// hands the table out), which is what makes the call sound.
pub(super) fn gemv<E: Elem>(w: &[E], x: &[f32], out: &mut [f32], rows: unsafe fn(&[E], &[f32], &mut [f32])) {
    assert_eq!(w.len(), x.len() * out.len(), "gemv: weight length mismatch");
    unsafe { rows(w, x, out) }
}

fn matmul_f32(a: &[f32], b: &[f32], k: usize, c: &mut [f32], ldc: usize) {
    let (n, m) = matmul_dims(a, b, k, c, ldc);
    unsafe { imp::matmul_f32(a, b, n, m, k, c, ldc) }
}

pub(super) mod imp {
    use super::*;

    use crate::x86::simd::hsum_ps as hsum;
    use crate::x86::simd::{load_bf16, load_f16};

    /// Dot of `n` weight elements at `w` with `x`: four accumulators over 32-wide
    /// steps (hiding FMA latency), an 8-wide step into the first, a scalar tail.
    #[inline(always)]
    unsafe fn dot_row<E: Elem>(w: *const E, x: *const f32, n: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(
                    E::load8(w.add(i + 8 * u)),
                    _mm256_loadu_ps(x.add(i + 8 * u)),
                    *a,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(E::load8(w.add(i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        for j in i..n {
            s += (*w.add(j)).widen() * *x.add(j);
        }
        s
    }

    /// The dots of `R` consecutive rows at `w` (`n` apart) with `x`, into
    /// `out[0..R]`: each row summed exactly as [`dot_row`] sums it (the same
    /// four accumulators, steps, reduction and tail), so bit-identical to it,
    /// with each 8-wide piece of `x` loaded once for all `R` rows.
    #[inline(always)]
    unsafe fn dot_rows<E: Elem, const R: usize>(w: *const E, x: *const f32, n: usize, out: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut i = 0;
        while i + 32 <= n {
            for u in 0..4 {
                let xv = _mm256_loadu_ps(x.add(i + 8 * u));
                for (r, a) in acc.iter_mut().enumerate() {
                    a[u] = _mm256_fmadd_ps(E::load8(w.add(r * n + i + 8 * u)), xv, a[u]);
                }
            }
            i += 32;
        }
        while i + 8 <= n {
            let xv = _mm256_loadu_ps(x.add(i));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(E::load8(w.add(r * n + i)), xv, a[0]);
            }
            i += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
            for j in i..n {
                s += (*w.add(r * n + j)).widen() * *x.add(j);
            }
            *out.add(r) = s;
        }
    }

    /// Rows at least this long go `R` at a time through [`dot_rows`]. Streaming
    /// from memory one row at a time, the GEMV slows as rows grow (Zen 4, one
    /// thread, f16: 21-26 GB/s at k = 2048, 14-15 at 5632, 10-12 at 8192)
    /// because `x`, re-read for every row, no longer stays in L1 beside the
    /// weight stream (with `x` shrunk, 5632 and 8192 streamed at 23-25). Shared
    /// `x` loads (`quant_bench float_gemv_long_rows`, one | two threads):
    /// 5632 14-16 → 15-17 | 21-23 → 23-29, 8192 10-12 → 14-19 | 16-20 → 24-28;
    /// at 4096 and below one row at a time was as fast or faster (and on Zen 3
    /// an earlier try of several rows per step, at the model's 2048-wide rows,
    /// streamed 35-45% slower).
    const LONG_ROW: usize = 5120;

    #[inline(always)]
    unsafe fn gemv_rows<E: Elem, const R: usize>(w: &[E], x: &[f32], out: &mut [f32]) {
        let (n, rows) = (x.len(), out.len());
        let (wp, xp, op) = (w.as_ptr(), x.as_ptr(), out.as_mut_ptr());
        let mut r = 0;
        if n >= LONG_ROW {
            while r + R <= rows {
                dot_rows::<E, R>(wp.add(r * n), xp, n, op.add(r));
                r += R;
            }
        }
        for r in r..rows {
            *op.add(r) = dot_row(wp.add(r * n), xp, n);
        }
    }

    /// Three rows at a time: 12 accumulators, the `x` piece and a weight vector
    /// fill the 16 ymm registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn gemv_rows3<E: Elem>(w: &[E], x: &[f32], out: &mut [f32]) {
        gemv_rows::<E, 3>(w, x, out)
    }

    /// Four rows at a time, in the 32 registers of AVX-512 VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    pub(in crate::x86) unsafe fn gemv_rows4<E: Elem>(w: &[E], x: &[f32], out: &mut [f32]) {
        gemv_rows::<E, 4>(w, x, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_row(a.as_ptr(), b.as_ptr(), b.len())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
        dot_row(w.as_ptr(), x.as_ptr(), x.len())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        dot_row(w.as_ptr(), x.as_ptr(), x.len())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                p,
                _mm256_fmadd_ps(va, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)),
            );
            i += 8;
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), load_f16(src.as_ptr().add(i)));
            i += 8;
        }
        while i < n {
            dst[i] = src[i].to_f32();
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), load_bf16(src.as_ptr().add(i)));
            i += 8;
        }
        while i < n {
            dst[i] = src[i].to_f32();
            i += 1;
        }
    }

    const MR: usize = 3;
    const NR: usize = 4;

    /// Register tile of 3 rows of `a` by 4 rows of `b`: 12 accumulators plus the
    /// three `a` vectors and one `b` vector fill the 16 ymm registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_3x4(a: *const f32, b: *const f32, k: usize, c: *mut f32, ldc: usize) {
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let mut p = 0;
        while p + 8 <= k {
            let av = [
                _mm256_loadu_ps(a.add(p)),
                _mm256_loadu_ps(a.add(k + p)),
                _mm256_loadu_ps(a.add(2 * k + p)),
            ];
            for j in 0..NR {
                let bv = _mm256_loadu_ps(b.add(j * k + p));
                for i in 0..MR {
                    acc[i][j] = _mm256_fmadd_ps(av[i], bv, acc[i][j]);
                }
            }
            p += 8;
        }
        for i in 0..MR {
            for j in 0..NR {
                let mut s = hsum(acc[i][j]);
                for q in p..k {
                    s += *a.add(i * k + q) * *b.add(j * k + q);
                }
                *c.add(i * ldc + j) = s;
            }
        }
    }

    /// The 3 × 4 tile and the AVX2 dot for [`crate::scalar::matmul_tiled`].
    struct Tile3x4;
    impl crate::scalar::F32Tile for Tile3x4 {
        const MR: usize = MR;
        const NR: usize = NR;
        #[inline(always)]
        unsafe fn tile(a: *const f32, b: *const f32, k: usize, c: *mut f32, ldc: usize) {
            tile_3x4(a, b, k, c, ldc)
        }
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            dot_f32(a, b)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn matmul_f32(a: &[f32], b: &[f32], n: usize, m: usize, k: usize, c: &mut [f32], ldc: usize) {
        crate::scalar::matmul_tiled::<Tile3x4>(a, b, n, m, k, c, ldc)
    }
}
