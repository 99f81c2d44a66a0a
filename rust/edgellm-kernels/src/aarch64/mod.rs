//! aarch64 kernels, reached only through tables built after run-time detection.

pub mod neon;
mod exp_sum_neon;
pub mod gemm_neon;
pub mod lowbit_neon;
mod matmul_nn_neon;
pub mod quant_neon;
pub mod qgemm_kquant_neon;
pub mod resident_kquant_neon;
pub mod nf4_fp8_neon;
pub mod panels_neon;
