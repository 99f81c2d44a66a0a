//! The AVX-512 table (F/BW/VL + VNNI, on top of AVX2/FMA/F16C): the AVX2 kernels,
//! with the products of the quantized prompt GEMM (q4_0, q8_0 and the k-quants:
//! [`super::qgemm_vnni`], two 8-row panels per 512-bit vector where a pair is
//! left) and the q4_0/q8_0 decode GEMV ([`super::gemv_vnni`]) on `vpdpbusd`.
//! The float prompt GEMM runs 12 × 32 tiles on 512-bit vectors
//! ([`super::gemm_avx512`]): on cores with two 512-bit FMA units (Intel
//! server parts) that is twice the 6 × 16 AVX2 tile's rate, and on Zen 4,
//! which issues a 512-bit FMA as two halves, fewer loads per FMA. The
//! memory-bound float kernels stay on 256-bit vectors but use the 32
//! registers of AVX-512 VL where more accumulators help: `gemm_few` (16
//! tokens per weight row) and the long-row float GEMV (4 rows per pass
//! instead of 3).

use crate::{Isa, Kernels};

/// Sound to hand out only after `Isa::Avx512.is_supported()`, which checks every
/// feature the AVX2 kernels and the VNNI tiles use (`Kernels::for_isa` does).
pub static KERNELS: Kernels = Kernels {
    isa: Isa::Avx512,
    gemv_f32: |w, x, out| super::avx2::gemv(w, x, out, super::avx2::imp::gemv_rows4),
    gemv_f16: |w, x, out| super::avx2::gemv(w, x, out, super::avx2::imp::gemv_rows4),
    gemv_bf16: |w, x, out| super::avx2::gemv(w, x, out, super::avx2::imp::gemv_rows4),
    gemv_q: super::gemv_vnni::gemv_q,
    gemm_q: super::qgemm_vnni::gemm_q,
    gemm_q_resident: Some(super::qgemm_vnni::gemm_q_resident),
    gemm_few: super::few_avx2::gemm_few_avx512,
    matmul_nn_f32: super::matmul_nn::matmul_nn_avx512,
    exp_sum: super::exp_sum::exp_sum_avx512,
    gemm_panels: Some(super::panels_avx2::gemm_panels_avx512),
    // k-major B is packed in a pass of its own: the streaming tile is a 6 × 16
    // one, and packing B as the wide tiles go is not written yet.
    gemm_micro_stream: None,
    gemm_wide: Some(crate::gemm::WideKernels {
        f32: super::gemm_avx512::wide_f32,
        f16: super::gemm_avx512::wide_f16,
        bf16: super::gemm_avx512::wide_bf16,
    }),
    ..super::avx2::KERNELS
};
