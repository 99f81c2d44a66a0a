//! Compute kernels for edgellm.
//!
//! Every kernel has a plain-Rust reference in [`scalar`]; the SIMD versions live in
//! `x86/` and `aarch64/` and are reached only through a [`Kernels`] table, which is
//! built for an [`Isa`] after the CPU has been checked for it. The tables are chosen
//! once per process ([`kernels`]) and may be forced with `EDGELLM_ISA`.

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod gemm;
pub mod isa;
pub mod panels;
pub mod quant;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use half::{bf16, f16};
pub use isa::{Isa, IsaError, ASSUME_AVXVNNI_ENV};

use std::sync::OnceLock;

/// `c[i * ldc + j] = dot(a[i*k..][..k], b[j*k..][..k])` for `i < n`, `j < m`:
/// the product of row-major `a` (n × k) with the transpose of row-major `b` (m × k).
pub type MatmulFn = fn(a: &[f32], b: &[f32], k: usize, c: &mut [f32], ldc: usize);

/// `c[i * ldc + j] = Σ_p a[i*k + p] · b[p*m + j]` for `i < n = a.len() / k`,
/// `j < m`: the product of row-major `a` (n × k) and row-major `b` (k × m).
/// The SIMD kernels compute every output as one fused multiply-add chain over
/// `p` in order, from zero, so they agree bit for bit with each other whatever
/// their tiling.
pub type MatmulNnFn = fn(a: &[f32], b: &[f32], k: usize, m: usize, c: &mut [f32], ldc: usize);

/// One function per kernel for one instruction set. Every entry computes the same
/// mathematical result as the [`scalar`] reference, up to float summation order.
#[derive(Clone, Copy)]
pub struct Kernels {
    pub isa: Isa,
    /// Dot product of two f32 vectors of equal length.
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    /// Dot product of an f16 weight row with an f32 activation vector.
    pub dot_f16: fn(&[f16], &[f32]) -> f32,
    /// Dot product of a bf16 weight row with an f32 activation vector.
    pub dot_bf16: fn(&[bf16], &[f32]) -> f32,
    /// The decode GEMV of f32 weights: `out[r] = dot_f32(w_r, x)` for every row
    /// `w_r` of `w` (`out.len()` rows of `x.len()` elements), bit-identical to
    /// `dot_f32` row by row. Panics on a length mismatch.
    pub gemv_f32: fn(w: &[f32], x: &[f32], out: &mut [f32]),
    /// [`Self::gemv_f32`] for f16 weights (bit-identical to `dot_f16`).
    pub gemv_f16: fn(w: &[f16], x: &[f32], out: &mut [f32]),
    /// [`Self::gemv_f32`] for bf16 weights (bit-identical to `dot_bf16`).
    pub gemv_bf16: fn(w: &[bf16], x: &[f32], out: &mut [f32]),
    /// Prompts of a few tokens on float weights: `out[t * ldo + j] = dot(w_j, x_t)`
    /// for every row `w_j` of `w` and token `t < n` (`x` holds `n` rows of
    /// `k = x.len() / n` elements; `w` whole rows of `k`), each weight read from
    /// memory once, without packing. Row-major `w` only. Panics on a shape mismatch.
    pub gemm_few: fn(w: gemm::BRows<'_>, x: &[f32], n: usize, out: &mut [f32], ldo: usize),
    /// `y += alpha * x`.
    pub axpy: fn(alpha: f32, x: &[f32], y: &mut [f32]),
    /// Widen f16 to f32 (`dst.len() == src.len()`).
    pub f16_to_f32: fn(&[f16], &mut [f32]),
    /// Widen bf16 to f32 (`dst.len() == src.len()`).
    pub bf16_to_f32: fn(&[bf16], &mut [f32]),
    /// `A · Bᵀ` on f32 (see [`MatmulFn`]) for small row counts.
    pub matmul_f32: MatmulFn,
    /// `A · B` on f32 (see [`MatmulNnFn`]) for small operands held in cache
    /// (attention's scores against transposed keys, its probabilities against
    /// values): broadcast-and-FMA register tiles, no packing.
    pub matmul_nn_f32: MatmulNnFn,
    /// `x[i] = exp(x[i] − shift)` for `x[i] ≤ shift` (−∞ gives 0), returning
    /// `Σ x[i]`: the exponentials of an online-softmax block. Each value is
    /// bit for bit [`scalar::exp_neg`]'s; the sum's order is the path's own.
    pub exp_sum: fn(x: &mut [f32], shift: f32) -> f32,
    /// Register-tile micro-kernel of the packed GEMM ([`gemm::gemm_packed`]), the
    /// prefill work-horse of float weights.
    pub gemm_micro: gemm::MicroKernel,
    /// [`Self::gemm_micro`] reading A's rows in place (products whose k is
    /// one block need not pack A), bit-identical to it. `None` where the
    /// table has no such kernel (A is then packed).
    pub gemm_micro_rows: Option<gemm::MicroKernelRows>,
    /// [`Self::gemm_micro`] packing k-major f32 B as it goes (numpy's right
    /// operand), bit-identical to packing it first. `None` where the table has
    /// no such kernel (B is then packed in a pass of its own).
    pub gemm_micro_stream: Option<gemm::MicroKernelStream>,
    /// [`Self::gemm_micro`] reading f16 B panels in place (resident float
    /// weights, [`panels`]), bit-identical to it on the widened panels. `None`
    /// where the table has no such kernel.
    pub gemm_micro_f16: Option<gemm::MicroKernelOf<f16>>,
    /// [`Self::gemm_micro_f16`] for bf16 panels.
    pub gemm_micro_bf16: Option<gemm::MicroKernelOf<bf16>>,
    /// The 12 × 32 tiles of tables with 512-bit vectors ([`gemm::WideKernelOf`]),
    /// bit-identical to [`Self::gemm_micro`] and its f16/bf16 twins; the packed
    /// GEMM runs its whole panel pairs on them. `None` elsewhere.
    pub gemm_wide: Option<gemm::WideKernels>,
    /// Decode and short prompts on float weights repacked at load into panels
    /// ([`panels`]), summed in the micro-kernel's order (so bit-identical to the
    /// packed GEMM on the same panels, and to [`panels::gemm_panels_ref`]).
    /// `None` where the table has no such kernel (weights then stay in rows).
    pub gemm_panels: Option<panels::PanelsFn>,
    /// Packs (and widens) weight rows into the micro-kernel's B panels,
    /// bit-identical to [`gemm::pack_b`].
    pub gemm_pack_b: gemm::PackBFn,
    /// Quantizes an activation row (`src.len()` elements, a whole number of the
    /// weight type's blocks) for dot products with weights of type `ty`: into
    /// `dst`, a row of [`quant::vec_dot_type`]`(ty)` of
    /// [`quant::act_row_bytes`]`(ty, n)` bytes. Panics on a length mismatch.
    pub quantize_act: fn(ty: quant::GgmlType, src: &[f32], dst: &mut [u8]),
    /// `Σ dequant(w)[i] · dequant(act)[i]` over `n` elements: `w` a row of `n`
    /// weights of type `ty`, `act` from `quantize_act(ty, ..)`. The decode
    /// work-horse (integer dot products per block). Panics on a length mismatch.
    pub vec_dot: fn(ty: quant::GgmlType, w: &[u8], act: &[u8], n: usize) -> f32,
    /// The decode GEMV for quantized weights: `out[r] = vec_dot(ty, w_r, act, n)`
    /// for every row `w_r` of `w` (`out.len()` whole rows of `n` elements of `ty`),
    /// `act` from `quantize_act(ty, ..)`. Kernels prepare the activation once per
    /// call for all rows. Panics on a length mismatch.
    pub gemv_q: fn(ty: quant::GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]),
    /// The prefill work-horse for quantized weights (see [`quant::qgemm`]):
    /// `out[t * ldo + r] = vec_dot(ty, w_r, act_t, k)` for every row `w_r` of `w`
    /// (whole rows of `k` elements of `ty`) and every row `act_t` of `acts`
    /// ([`quant::qgemm::QActs`]: rows from `quantize_act(ty, ..)`). Buffers are
    /// reused through the scratch. Panics on a length mismatch.
    pub gemm_q: quant::qgemm::GemmQFn,
    /// [`Self::gemm_q`] on weights repacked at load into resident panels
    /// ([`quant::resident`]), for decode (one token) and prefill alike, without
    /// per-call packing; bit-identical to the scalar `vec_dot`. `None` where the
    /// table has no such kernel (weights then stay in the file's layout).
    pub gemm_q_resident: Option<quant::resident::GemmResidentFn>,
    /// The weight types [`Self::gemm_q_resident`] runs (see
    /// [`Self::resident_gemm`]): q4_0 and q8_0 on every SIMD table, q4_K, q5_K
    /// and q6_K on x86.
    pub gemm_q_resident_types: &'static [quant::GgmlType],
    /// Dequantizes a row of `ty` (`src` whole blocks, `dst` its elements) to f32,
    /// bit-identical to [`quant::dequantize_row`]: the prefill path of weight
    /// types without an integer GEMM (dequantized panels into the f32 GEMM).
    /// SIMD for NF4 and FP8, the reference elsewhere. Panics on a length mismatch.
    pub dequantize_row: fn(ty: quant::GgmlType, src: &[u8], dst: &mut [f32]),
}

impl Kernels {
    /// [`Self::gemm_q_resident`] where it runs weights of `ty`.
    pub fn resident_gemm(&self, ty: quant::GgmlType) -> Option<quant::resident::GemmResidentFn> {
        self.gemm_q_resident.filter(|_| self.gemm_q_resident_types.contains(&ty))
    }

    /// The table for `isa`, or an error if this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Result<&'static Kernels, IsaError> {
        if !isa.is_supported() {
            return Err(IsaError::Unsupported(isa));
        }
        Ok(match isa {
            Isa::Scalar => &scalar::KERNELS,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &x86::avx2::KERNELS,
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => &x86::avxvnni::KERNELS,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &x86::avx512::KERNELS,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => &aarch64::neon::KERNELS,
            #[cfg(target_arch = "aarch64")]
            Isa::Dotprod => &aarch64::neon::KERNELS_DOTPROD,
            #[cfg(target_arch = "aarch64")]
            Isa::I8mm => &aarch64::neon::KERNELS_I8MM,
            #[allow(unreachable_patterns)]
            other => return Err(IsaError::Unsupported(other)),
        })
    }
}

static ACTIVE: OnceLock<Result<&'static Kernels, IsaError>> = OnceLock::new();

/// The process-wide kernel table: the best the CPU supports, or the one named by
/// `EDGELLM_ISA` (an error if that one cannot run here).
pub fn kernels() -> Result<&'static Kernels, IsaError> {
    ACTIVE
        .get_or_init(|| {
            let isa = isa::requested_isa()?.unwrap_or_else(Isa::best);
            Kernels::for_isa(isa)
        })
        .clone()
}
