//! Advanced SIMD (NEON) kernels.

use crate::scalar::matmul_dims;
use crate::{Isa, Kernels};
use core::arch::aarch64::*;
use half::{bf16, f16};

/// Plain NEON (integer dots by widening multiplies).
pub static KERNELS: Kernels = NEON;

/// NEON with `sdot`: the quantized dots and GEMMs of the dotprod level.
pub static KERNELS_DOTPROD: Kernels = Kernels {
    isa: Isa::Dotprod,
    vec_dot: super::quant_neon::vec_dot::<{ super::quant_neon::DOTPROD }>,
    gemv_q: super::quant_neon::gemv_q::<{ super::quant_neon::DOTPROD }>,
    gemm_q: super::quant_neon::gemm_q::<{ super::quant_neon::DOTPROD }>,
    gemm_q_resident: Some(super::quant_neon::gemm_q_resident::<{ super::quant_neon::DOTPROD }>),
    ..NEON
};

/// NEON with `sdot` and `smmla` (the prompt GEMM of q4_0/q8_0 in 2 × 2 tiles).
pub static KERNELS_I8MM: Kernels = Kernels {
    isa: Isa::I8mm,
    vec_dot: super::quant_neon::vec_dot::<{ super::quant_neon::I8MM }>,
    gemv_q: super::quant_neon::gemv_q::<{ super::quant_neon::I8MM }>,
    gemm_q: super::quant_neon::gemm_q::<{ super::quant_neon::I8MM }>,
    gemm_q_resident: Some(super::quant_neon::gemm_q_resident::<{ super::quant_neon::I8MM }>),
    ..NEON
};

const NEON: Kernels = Kernels {
    isa: Isa::Neon,
    dot_f32,
    dot_f16,
    dot_bf16,
    gemv_f32: |w, x, out| crate::scalar::gemv_with(dot_f32, w, x, out),
    gemv_f16: |w, x, out| crate::scalar::gemv_with(dot_f16, w, x, out),
    gemv_bf16: |w, x, out| crate::scalar::gemv_with(dot_bf16, w, x, out),
    gemm_few: |w, x, n, out, ldo| crate::scalar::gemm_few_with(dot_f32, dot_f16, dot_bf16, w, x, n, out, ldo),
    axpy,
    f16_to_f32,
    bf16_to_f32,
    matmul_f32,
    matmul_nn_f32: super::matmul_nn_neon::matmul_nn_f32,
    exp_sum: super::exp_sum_neon::exp_sum,
    gemm_micro: super::gemm_neon::micro_kernel,
    gemm_micro_rows: None,
    gemm_micro_stream: None,
    gemm_pack_b: crate::gemm::pack_b,
    quantize_act: super::quant_neon::quantize_act,
    vec_dot: super::quant_neon::vec_dot::<{ super::quant_neon::PLAIN }>,
    gemv_q: super::quant_neon::gemv_q::<{ super::quant_neon::PLAIN }>,
    gemm_q: super::quant_neon::gemm_q::<{ super::quant_neon::PLAIN }>,
    gemm_q_resident: Some(super::quant_neon::gemm_q_resident::<{ super::quant_neon::PLAIN }>),
    gemm_q_resident_types: super::quant_neon::RESIDENT_TYPES,
    gemm_micro_f16: Some(super::gemm_neon::micro_kernel_f16),
    gemm_micro_bf16: Some(super::gemm_neon::micro_kernel_bf16),
    gemm_wide: None,
    gemm_panels: Some(super::panels_neon::gemm_panels),
    dequantize_row: super::nf4_fp8_neon::dequantize_row,
};

// Safe entry points; the tables are only handed out after NEON (and their
// level's extensions) were detected.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
    unsafe { imp::dot_f32(a, b) }
}
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: length mismatch");
    // Widen through a small stack buffer (half uses the fp16 conversion
    // instructions where available), then reuse the f32 kernel.
    let mut buf = [0f32; 256];
    let mut s = 0.0;
    for (wc, xc) in w.chunks(256).zip(x.chunks(256)) {
        let b = &mut buf[..wc.len()];
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(wc, b);
        s += unsafe { imp::dot_f32(b, xc) };
    }
    s
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
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
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

    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16)))
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (u, s) in acc.iter_mut().enumerate() {
                *s = vfmaq_f32(
                    *s,
                    vld1q_f32(ap.add(i + 4 * u)),
                    vld1q_f32(bp.add(i + 4 * u)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(ap.add(i)), vld1q_f32(bp.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
        let n = x.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (u, s) in acc.iter_mut().enumerate() {
                *s = vfmaq_f32(
                    *s,
                    load_bf16(wp.add(i + 4 * u)),
                    vld1q_f32(xp.add(i + 4 * u)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], load_bf16(wp.add(i)), vld1q_f32(xp.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        while i < n {
            s += w[i].to_f32() * x[i];
            i += 1;
        }
        s
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let mut i = 0;
        while i + 4 <= n {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(
                p,
                vfmaq_n_f32(vld1q_f32(p), vld1q_f32(x.as_ptr().add(i)), alpha),
            );
            i += 4;
        }
        while i < n {
            y[i] += alpha * x[i];
            i += 1;
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
        let n = src.len();
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(dst.as_mut_ptr().add(i), load_bf16(src.as_ptr().add(i)));
            i += 4;
        }
        while i < n {
            dst[i] = src[i].to_f32();
            i += 1;
        }
    }

    const MR: usize = 4;
    const NR: usize = 4;

    /// 4×4 register tile: 16 accumulators + 8 operand vectors out of 32 registers.
    #[target_feature(enable = "neon")]
    unsafe fn tile_4x4(a: *const f32, b: *const f32, k: usize, c: *mut f32, ldc: usize) {
        let mut acc = [[vdupq_n_f32(0.0); NR]; MR];
        let mut p = 0;
        while p + 4 <= k {
            let av = [
                vld1q_f32(a.add(p)),
                vld1q_f32(a.add(k + p)),
                vld1q_f32(a.add(2 * k + p)),
                vld1q_f32(a.add(3 * k + p)),
            ];
            let bv = [
                vld1q_f32(b.add(p)),
                vld1q_f32(b.add(k + p)),
                vld1q_f32(b.add(2 * k + p)),
                vld1q_f32(b.add(3 * k + p)),
            ];
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] = vfmaq_f32(acc[i][j], av[i], bv[j]);
                }
            }
            p += 4;
        }
        for i in 0..MR {
            for j in 0..NR {
                let mut s = vaddvq_f32(acc[i][j]);
                for q in p..k {
                    s += *a.add(i * k + q) * *b.add(j * k + q);
                }
                *c.add(i * ldc + j) = s;
            }
        }
    }

    /// The 4 × 4 tile and the NEON dot for [`crate::scalar::matmul_tiled`].
    struct Tile4x4;
    impl crate::scalar::F32Tile for Tile4x4 {
        const MR: usize = MR;
        const NR: usize = NR;
        #[inline(always)]
        unsafe fn tile(a: *const f32, b: *const f32, k: usize, c: *mut f32, ldc: usize) {
            tile_4x4(a, b, k, c, ldc)
        }
        #[inline(always)]
        unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            dot_f32(a, b)
        }
    }

    #[target_feature(enable = "neon")]
    pub unsafe fn matmul_f32(a: &[f32], b: &[f32], n: usize, m: usize, k: usize, c: &mut [f32], ldc: usize) {
        crate::scalar::matmul_tiled::<Tile4x4>(a, b, n, m, k, c, ldc)
    }
}
