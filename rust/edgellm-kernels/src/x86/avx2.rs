//! AVX2 + FMA + F16C kernels (Haswell, Zen and later).

use crate::scalar::matmul_dims;
use crate::{Isa, Kernels};
use core::arch::x86_64::*;
use half::{bf16, f16};

pub static KERNELS: Kernels = Kernels {
    isa: Isa::Avx2,
    dot_f32,
    dot_f16,
    dot_bf16,
    // One dot per row: several rows per step (sharing each `x` load) measured
    // faster from cache but 35-45% slower streaming from memory on Zen 3.
    gemv_f32: |w, x, out| crate::scalar::gemv_with(dot_f32, w, x, out),
    gemv_f16: |w, x, out| crate::scalar::gemv_with(dot_f16, w, x, out),
    gemv_bf16: |w, x, out| crate::scalar::gemv_with(dot_bf16, w, x, out),
    gemm_few: super::few_avx2::gemm_few,
    axpy,
    f16_to_f32,
    bf16_to_f32,
    matmul_f32,
    gemm_micro: super::gemm_avx2::micro_kernel,
    gemm_pack_b: super::gemm_avx2::pack_b,
    quantize_act: super::quant_avx2::quantize_act,
    vec_dot: super::quant_avx2::vec_dot,
    gemv_q: super::gemv_avx2::gemv_q,
    gemm_q: super::qgemm_avx2::gemm_q,
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
fn matmul_f32(a: &[f32], b: &[f32], k: usize, c: &mut [f32], ldc: usize) {
    let (n, m) = matmul_dims(a, b, k, c, ldc);
    unsafe { imp::matmul_f32(a, b, n, m, k, c, ldc) }
}

mod imp {
    use super::*;

    use crate::x86::simd::hsum_ps as hsum;
    use crate::x86::simd::{load_bf16, load_f16, Elem};

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
