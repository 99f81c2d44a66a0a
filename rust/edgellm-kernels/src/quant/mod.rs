//! Quantized weight formats, bit-compatible with GGUF/ggml's definitions.
//!
//! [`GgmlType`] names every tensor type a GGUF file may hold, with its block
//! geometry; [`blocks`] documents the byte layouts. Reference (scalar) routines:
//!
//! - [`dequantize_row`]: bytes → f32, bit-identical to ggml / the `gguf` package;
//! - [`quantize_row`]: f32 → bytes, ggml's reference quantizers (no importance matrix);
//! - [`quantize_act`] / [`vec_dot`]: the decode work-horse. An activation row is
//!   quantized once to [`vec_dot_type`] (`q8_0` or `q8_K`), then dotted with every
//!   weight row in integer arithmetic. The SIMD versions are the `quantize_act` and
//!   `vec_dot` entries of [`crate::Kernels`].

/// Tensor element types of GGUF files, with ggml's numeric ids, plus edgellm's
/// own block types (NF4, FP8, the low-bit group types), which have no id
/// ([`GgmlType::id`] is `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    BF16,
    /// edgellm-only (no GGUF id): 3-bit symmetric, one f16 scale per 128 weights.
    Q3G128,
    /// edgellm-only: 3-bit asymmetric, f16 scale and min per 128 weights.
    Q3AG128,
    /// edgellm-only: 2-bit symmetric, one f16 scale per 128 weights.
    Q2G128,
    /// edgellm-only: 2-bit asymmetric, f16 scale and min per 128 weights.
    Q2AG128,
    /// edgellm-only (no GGUF id): QLoRA's NF4, 64 values per f16 absmax.
    NF4,
    /// edgellm-only (no GGUF id): FP8 E4M3 codes, 32 per f16 block absmax.
    F8E4M3,
    /// edgellm-only (no GGUF id): FP8 E5M2 codes, 32 per f16 block absmax.
    F8E5M2,
}

pub mod blocks;
pub mod minifloat;
mod dequant;
mod dot;
pub mod lowbit;
pub(crate) mod nf4_fp8;
mod quantize;
pub mod qgemm;
pub mod resident;

pub use dot::{act_row_bytes, gemv_q, quantize_act, vec_dot, vec_dot_type};
pub(crate) use dot::check_gemv;
#[cfg_attr(not(target_arch = "aarch64"), allow(unused_imports))]
pub(crate) use dot::{check_vec_dot, float_dot, vec_dot_unchecked};

/// Elements per super-block of the k-quants.
pub const QK_K: usize = 256;

impl GgmlType {
    /// The type with ggml id `id`, or `None` for ids this build does not support.
    /// Never one of the edgellm-only types (see [`GgmlType::is_gguf`]).
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            20 => IQ4NL,
            30 => BF16,
            _ => return None,
        })
    }

    /// The ggml id; `None` for the edgellm-only types (NF4, FP8, the packed
    /// low-bit group formats), which GGUF files cannot hold.
    pub fn id(self) -> Option<u32> {
        use GgmlType::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            IQ4NL => 20,
            BF16 => 30,
            NF4 | F8E4M3 | F8E5M2 | Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => return None,
        })
    }

    /// The type named `name` (as [`name`](Self::name) prints it, any case),
    /// GGUF or edgellm-only.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().chain(Self::MINIFLOATS).find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Whether GGUF files can hold this type (it has a ggml id).
    pub fn is_gguf(self) -> bool {
        self.id().is_some()
    }

    /// Lower-case name as llama.cpp prints it (`q4_0`, `q4_K`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_K",
            Q3K => "q3_K",
            Q4K => "q4_K",
            Q5K => "q5_K",
            Q6K => "q6_K",
            Q8K => "q8_K",
            IQ4NL => "iq4_nl",
            BF16 => "bf16",
            Q3G128 => "q3_g128",
            Q3AG128 => "q3a_g128",
            Q2G128 => "q2_g128",
            Q2AG128 => "q2a_g128",
            NF4 => "nf4",
            F8E4M3 => "fp8_e4m3",
            F8E5M2 => "fp8_e5m2",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4NL | F8E4M3 | F8E5M2 => 32,
            NF4 => 64,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => QK_K,
            Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => lowbit::GROUP,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            IQ4NL => 18,
            Q3G128 => 50,
            Q3AG128 => 52,
            Q2G128 => 34,
            Q2AG128 => 36,
            NF4 | F8E4M3 | F8E5M2 => 34,
        }
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not a whole number of
    /// blocks or the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        if n % self.block_elems() != 0 {
            return None;
        }
        (n / self.block_elems()).checked_mul(self.block_bytes())
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }

    pub fn bits_per_weight(self) -> f64 {
        self.block_bytes() as f64 * 8.0 / self.block_elems() as f64
    }
}

/// Why a quantization routine refused its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// No routine for this type (yet) in this build.
    Unsupported(GgmlType),
    /// Input or output length is not a whole number of blocks / does not match.
    Length { ty: GgmlType, elems: usize, bytes: usize },
    /// An integer code outside the type's range (packing explicit codes).
    Code { ty: GgmlType, at: usize, code: u8 },
}

impl std::fmt::Display for QuantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantError::Unsupported(t) => write!(f, "tensor type {} is not supported by this operation", t.name()),
            QuantError::Length { ty, elems, bytes } => {
                write!(f, "{elems} elements do not fit {bytes} bytes of {} blocks", ty.name())
            }
            QuantError::Code { ty, at, code } => {
                write!(f, "code {code} at element {at} is out of range for {}", ty.name())
            }
        }
    }
}

impl std::error::Error for QuantError {}

#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

pub(crate) fn check_len(ty: GgmlType, elems: usize, bytes: usize) -> Result<(), QuantError> {
    if ty.row_bytes(elems) == Some(bytes) {
        Ok(())
    } else {
        Err(QuantError::Length { ty, elems, bytes })
    }
}

/// Sub-block `j` (`< 8`) scale and min of a `q4_K`/`q5_K` block's 12 packed
/// bytes (ggml's `get_scale_min_k4`): six bits each; bytes 0..4 hold scales 0..4
/// (+ the top two bits of scales 4..8), bytes 4..8 mins 0..4 (+ top bits of mins
/// 4..8), bytes 8..12 the low nibbles of scales/mins 4..8.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 16 six-bit scales (0..64, offset by 32 when used) of a `q3_K` block's 12
/// packed bytes: low nibbles in bytes 0..8 (scale `j` and `j + 8` share byte
/// `j % 8`), the two high bits of scale `j` at bits `2 * (j / 4)` of byte `8 + j % 4`.
#[inline]
pub(crate) fn q3k_scales(s: &[u8]) -> [u8; 16] {
    const K1: u32 = 0x0303_0303;
    const K2: u32 = 0x0F0F_0F0F;
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a0, a1, hi) = (word(0), word(4), word(8));
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&((a0 & K2) | ((hi & K1) << 4)).to_le_bytes());
    out[4..8].copy_from_slice(&((a1 & K2) | (((hi >> 2) & K1) << 4)).to_le_bytes());
    out[8..12].copy_from_slice(&(((a0 >> 4) & K2) | (((hi >> 4) & K1) << 4)).to_le_bytes());
    out[12..16].copy_from_slice(&(((a1 >> 4) & K2) | (((hi >> 6) & K1) << 4)).to_le_bytes());
    out
}

/// Reference dequantization of one row (`dst.len()` elements from `src` bytes),
/// bit-identical to ggml's `dequantize_row_*` and the `gguf` package, for every
/// [`GgmlType`].
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, dst.len(), src.len())?;
    use GgmlType::*;
    match ty {
        F32 => dequant::f32_row(src, dst),
        F16 => dequant::f16_row(src, dst),
        BF16 => dequant::bf16_row(src, dst),
        Q4_0 => dequant::q4_0(src, dst),
        Q4_1 => dequant::q4_1(src, dst),
        Q5_0 => dequant::q5_0(src, dst),
        Q5_1 => dequant::q5_1(src, dst),
        Q8_0 => dequant::q8_0(src, dst),
        Q8_1 => dequant::q8_1(src, dst),
        Q2K => dequant::q2_k(src, dst),
        Q3K => dequant::q3_k(src, dst),
        Q4K => dequant::q4_k(src, dst),
        Q5K => dequant::q5_k(src, dst),
        Q6K => dequant::q6_k(src, dst),
        Q8K => dequant::q8_k(src, dst),
        IQ4NL => dequant::iq4_nl(src, dst),
        Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => lowbit::dequant(&lowbit::spec(ty).expect("low-bit type"), src, dst),
        NF4 => nf4_fp8::dequant_nf4(src, dst),
        F8E4M3 => nf4_fp8::dequant_fp8(minifloat::Fp8::E4M3, src, dst),
        F8E5M2 => nf4_fp8::dequant_fp8(minifloat::Fp8::E5M2, src, dst),
    }
    Ok(())
}

/// Reference quantization of one row (`src.len()` elements into `dst` bytes),
/// matching ggml's `quantize_row_*_ref` (edgellm's low-bit formats: round to
/// nearest on each block's range, see [`lowbit`]; to store chosen codes use
/// [`lowbit::pack_row`]) (bit-identical to the `gguf` package's
/// quantizers for f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0). Every type is supported.
/// Zero and constant blocks quantize without NaN; non-finite input gives
/// unspecified (but memory-safe) output, as in ggml.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_len(ty, src.len(), dst.len())?;
    use GgmlType::*;
    match ty {
        F32 => quantize::f32_row(src, dst),
        F16 => quantize::f16_row(src, dst),
        BF16 => quantize::bf16_row(src, dst),
        Q4_0 => quantize::q4_0(src, dst),
        Q4_1 => quantize::q4_1(src, dst),
        Q5_0 => quantize::q5_0(src, dst),
        Q5_1 => quantize::q5_1(src, dst),
        Q8_0 => quantize::q8_0(src, dst),
        Q8_1 => quantize::q8_1(src, dst),
        Q2K => quantize::q2_k(src, dst),
        Q3K => quantize::q3_k(src, dst),
        Q4K => quantize::q4_k(src, dst),
        Q5K => quantize::q5_k(src, dst),
        Q6K => quantize::q6_k(src, dst),
        Q8K => quantize::q8_k(src, dst),
        IQ4NL => quantize::iq4_nl(src, dst),
        Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => lowbit::quantize_rtn(&lowbit::spec(ty).expect("low-bit type"), src, dst),
        NF4 => nf4_fp8::quantize_nf4(src, dst),
        F8E4M3 => nf4_fp8::quantize_fp8(minifloat::Fp8::E4M3, src, dst),
        F8E5M2 => nf4_fp8::quantize_fp8(minifloat::Fp8::E5M2, src, dst),
    }
    Ok(())
}

impl GgmlType {
    /// edgellm's code-book and minifloat weight formats (NF4, FP8), whose dot
    /// products take f32 activations: not in [`ALL`](Self::ALL), and GGUF has no
    /// id for them ([`from_id`](Self::from_id) never yields them).
    pub const MINIFLOATS: [GgmlType; 3] = [GgmlType::NF4, GgmlType::F8E4M3, GgmlType::F8E5M2];

    /// Every type with ggml-style integer (or float) dot products: GGUF's in ggml
    /// id order, then edgellm's packed low-bit formats (no GGUF id).
    pub const ALL: [GgmlType; 20] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q8K,
        GgmlType::IQ4NL,
        GgmlType::BF16,
        GgmlType::Q3G128,
        GgmlType::Q3AG128,
        GgmlType::Q2G128,
        GgmlType::Q2AG128,
    ];
}
