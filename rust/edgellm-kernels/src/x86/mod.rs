//! x86-64 kernels. Each function is compiled for its feature set with
//! `#[target_feature]` and only reachable through a table built after detection.

pub mod avx2;
pub mod avx512;
pub mod avxvnni;
mod exp_sum;
pub mod gemm_avx2;
pub mod gemm_avx512;
pub mod few_avx2;
pub mod gemv_avx2;
pub mod gemv_vnni;
mod lanes;
mod vnni;
pub mod lowbit_avx2;
mod matmul_nn;
pub mod panels_avx2;
pub mod qgemm_avx2;
mod qgemm_kquant_vnni;
mod qgemm_pair_vnni;
pub mod qgemm_vnni;
pub mod quant_avx2;
mod resident_q45k;
mod resident_q6k;
mod simd;
pub mod nf4_fp8_avx2;
