//! The AVX-VNNI table (AVX2/FMA/F16C plus the VEX-encoded VNNI instructions;
//! Intel client cores from Alder Lake on, which have no AVX-512): the AVX2
//! kernels, with the quantized products of the prompt GEMM (q4_0, q8_0 and
//! the k-quants, [`super::qgemm_vnni`]), of the resident q4_0/q8_0 tiles and of
//! the q4_0/q8_0 decode GEMV ([`super::gemv_vnni`]) on 256-bit `vpdpbusd`:
//! one instruction per group and token where AVX2 needs two (q8_0: four).
//! The same tiles as the AVX-512 table's 256-bit ones, in VEX
//! ([`super::vnni`]); the float kernels are the AVX2 ones.

use crate::{Isa, Kernels};

/// Sound to hand out only after `Isa::AvxVnni.is_supported()`, which checks
/// AVX2, FMA, F16C and AVX-VNNI (`Kernels::for_isa` does).
pub static KERNELS: Kernels = Kernels {
    isa: Isa::AvxVnni,
    gemv_q: super::gemv_vnni::gemv_q_vex,
    gemm_q: super::qgemm_vnni::gemm_q_vex,
    gemm_q_resident: Some(super::qgemm_vnni::gemm_q_resident_vex),
    ..super::avx2::KERNELS
};
