//! Block layouts of ggml's quantized types, as `#[repr(C)]` structs.
//!
//! These document the byte layout (and fix it at compile time with size asserts);
//! the kernels never cast byte slices to them. Every routine parses blocks from
//! `&[u8]` at the byte offsets below (all fields little-endian, no alignment
//! assumed), so rows may start anywhere, e.g. inside a memory-mapped GGUF file.
//!
//! Element order inside a block, as ggml defines it:
//!
//! - `q4_0`, `q4_1`, `iq4_nl`: element `j < 16` is the low nibble of `qs[j]`,
//!   element `j + 16` its high nibble.
//! - `q5_0`, `q5_1`: as q4, plus bit `j` of the little-endian `u32` `qh` is the
//!   fifth bit of element `j` (bits 16..32 for elements 16..32).
//! - `q2_K`, `q3_K`: per 128 elements, 32 bytes of `qs`; element `32*s + l`
//!   (`s < 4`) is bits `2s..2s+2` of byte `l`. `q3_K`'s high bit of element
//!   `j` is bit `j / 32` of `hmask[j % 32]`, set meaning "no -4 offset".
//! - `q4_K`, `q5_K`: per 64 elements, 32 bytes of `qs`; the first 32 elements are
//!   the low nibbles, the next 32 the high nibbles. `q5_K`'s fifth bit of element
//!   `j` is bit `j / 32` of `qh[j % 32]`.
//! - `q6_K`: per 128 elements, 64 bytes of `ql` and 32 of `qh`: element `l + 32s`
//!   (`l < 32`, `s < 4`) has low nibble from `ql[l + 32*(s % 2)]` (low nibble for
//!   `s < 2`, high nibble otherwise) and high two bits `qh[l] >> 2s`.
//! - edgellm's own low-bit group formats `q3_g128`, `q3a_g128`, `q2_g128`,
//!   `q2a_g128` (no GGUF id; see [`BlockQ3G128`]): one block per group of 128
//!   weights, codes `u` in `0..2^bits`. Element `e = 32s + 16h + l` (`s < 4`,
//!   `h < 2`, `l < 16`) has its low two bits at bits `2s..2s+2` of `qs[16h + l]`
//!   (q2_K's plane), and (3-bit) its third bit at bit `4h + s` of `qh[l]`.
//!   So for the 32 elements of activation block `s`, one shift+mask of the 32
//!   `qs` bytes gives the low bits in element order, and one test of the 16 `qh`
//!   bytes against `1 << s` (elements `l`) and `1 << (4 + s)` (elements `16 + l`)
//!   the high bits: no shuffles on AVX2 (`qh` broadcast to both 128-bit lanes)
//!   or NEON (`vtst`). Symmetric: `w = d·(u − 2^(bits−1))`; asymmetric
//!   (`a`): `w = d·u + m`.
//! - `nf4` (edgellm-only): element `j < 32` is the low nibble of `qs[j]`, element
//!   `j + 32` its high nibble (ggml's split-halves order, so a SIMD kernel gets
//!   32 consecutive elements from one shift or mask); bitsandbytes packs pairs
//!   instead, so QLoRA weights are re-packed, not reinterpreted.
//! - `fp8_e4m3`, `fp8_e5m2` (edgellm-only): element `j` is byte `qs[j]`.
//! - The k-quants' 6-bit sub-block scales/mins of `q4_K`/`q5_K` (12 bytes): see
//!   `scale_min_k4` (in `quant`); `q3_K`'s 16 six-bit scales: see `q3k_scales`.

#![allow(non_camel_case_types)]

use half::f16;
use std::mem::{offset_of, size_of};

use super::QK_K;

/// 32 weights, `d * (q - 8)` with 4-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// 32 weights, `d * q + m` with 4-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// 32 weights, `d * (q - 16)` with 5-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 weights, `d * q + m` with 5-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5_1 {
    pub d: f16,
    pub m: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// 32 weights, `d * q` with signed 8-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// 32 values, `d * q`; `s = d * Σq` (an activation format in ggml).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}

/// 256 weights in 16 sub-blocks of 16: `d * (scales[i] & 15) * q - dmin * (scales[i] >> 4)`, 2-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: f16,
    pub dmin: f16,
}

/// 256 weights in 16 sub-blocks of 16: `d * (scale - 32) * (q - 4 * !hbit)`, 2+1-bit `q`, 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: f16,
}

/// 256 weights in 8 sub-blocks of 32: `d * sc * q - dmin * m`, 4-bit `q`, 6-bit `sc`/`m`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

/// 256 weights in 8 sub-blocks of 32: `d * sc * q - dmin * m`, 5-bit `q`, 6-bit `sc`/`m`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}

/// 256 weights in 16 sub-blocks of 16: `d * scales[i] * (q - 32)`, 6-bit `q`, signed 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

/// 256 values `d * q` (f32 scale) with the sums of each 16 `q`: the k-quants' activation format.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// 32 weights, `d * KVALUES_IQ4NL[q]` with 4-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4NL {
    pub d: f16,
    pub qs: [u8; 16],
}

/// 128 weights, `d * (u - 4)` with 3-bit `u`: a 2-bit plane `qs` and a 1-bit
/// plane `qh` (layout in the module docs). 3.125 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3G128 {
    pub d: f16,
    pub qs: [u8; 32],
    pub qh: [u8; 16],
}

/// 128 weights, `d * u + m` with 3-bit `u` (planes as [`BlockQ3G128`]). 3.25 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3AG128 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 32],
    pub qh: [u8; 16],
}

/// 128 weights, `d * (u - 2)` with 2-bit `u` in `qs`. 2.125 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2G128 {
    pub d: f16,
    pub qs: [u8; 32],
}

/// 64 weights, `d * NF4_VALUES[q]` with 4-bit `q` (QLoRA's NormalFloat code
/// book, [`super::minifloat::NF4_VALUES`]); `d` is the block's absmax (f16).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockNF4 {
    pub d: f16,
    pub qs: [u8; 32],
}

/// 128 weights, `d * u + m` with 2-bit `u` in `qs`. 2.25 bits per weight.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2AG128 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 32],
}

const _: () = assert!(size_of::<BlockQ3G128>() == 50);
const _: () = assert!(size_of::<BlockQ3AG128>() == 52);
const _: () = assert!(size_of::<BlockQ2G128>() == 34);
const _: () = assert!(size_of::<BlockQ2AG128>() == 36);
// Scale first; the asymmetric min right after it; the planes follow.
const _: () = assert!(offset_of!(BlockQ3G128, d) == 0 && offset_of!(BlockQ3AG128, d) == 0);
const _: () = assert!(offset_of!(BlockQ2G128, d) == 0 && offset_of!(BlockQ2AG128, d) == 0);
const _: () = assert!(offset_of!(BlockQ3AG128, m) == 2 && offset_of!(BlockQ2AG128, m) == 2);
pub(crate) const Q3G_QS: usize = offset_of!(BlockQ3G128, qs);
pub(crate) const Q3G_QH: usize = offset_of!(BlockQ3G128, qh);
pub(crate) const Q3AG_QS: usize = offset_of!(BlockQ3AG128, qs);
pub(crate) const Q3AG_QH: usize = offset_of!(BlockQ3AG128, qh);
pub(crate) const Q2G_QS: usize = offset_of!(BlockQ2G128, qs);
pub(crate) const Q2AG_QS: usize = offset_of!(BlockQ2AG128, qs);

/// 32 weights, `fp8(q) * (d / FP8_MAX)` with one FP8 (E4M3 or E5M2) code each;
/// `d` is the block's absmax (f16), so the largest element maps to the format's
/// largest finite value (448 / 57344). Storing the absmax rather than the scale
/// `absmax / FP8_MAX` keeps the f16 field in range: E5M2's scale of a block
/// with absmax below ~3.4e-3 would be below f16's smallest subnormal (2⁻²⁴) and
/// flush to zero; an f32 scale would also work but costs 9 bits per weight, not
/// 8.5 (q8_0's size).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockFp8 {
    pub d: f16,
    pub qs: [u8; 32],
}

const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(size_of::<BlockNF4>() == 34);
const _: () = assert!(size_of::<BlockFp8>() == 34);
const _: () = assert!(size_of::<BlockQ4_1>() == 20);
const _: () = assert!(size_of::<BlockQ5_0>() == 22);
const _: () = assert!(size_of::<BlockQ5_1>() == 24);
const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(size_of::<BlockQ8_1>() == 36);
const _: () = assert!(size_of::<BlockQ2K>() == 84);
const _: () = assert!(size_of::<BlockQ3K>() == 110);
const _: () = assert!(size_of::<BlockQ4K>() == 144);
const _: () = assert!(size_of::<BlockQ5K>() == 176);
const _: () = assert!(size_of::<BlockQ6K>() == 210);
const _: () = assert!(size_of::<BlockQ8K>() == 292);
const _: () = assert!(size_of::<BlockIQ4NL>() == 18);

// Byte offsets the parsers use, tied to the structs above.
pub(crate) const Q4_1_M: usize = offset_of!(BlockQ4_1, m);
pub(crate) const Q4_1_QS: usize = offset_of!(BlockQ4_1, qs);
pub(crate) const Q5_0_QH: usize = offset_of!(BlockQ5_0, qh);
pub(crate) const Q5_0_QS: usize = offset_of!(BlockQ5_0, qs);
pub(crate) const Q5_1_M: usize = offset_of!(BlockQ5_1, m);
pub(crate) const Q5_1_QH: usize = offset_of!(BlockQ5_1, qh);
pub(crate) const Q5_1_QS: usize = offset_of!(BlockQ5_1, qs);
pub(crate) const Q8_0_QS: usize = offset_of!(BlockQ8_0, qs);
pub(crate) const Q8_1_S: usize = offset_of!(BlockQ8_1, s);
pub(crate) const Q8_1_QS: usize = offset_of!(BlockQ8_1, qs);
pub(crate) const Q2K_QS: usize = offset_of!(BlockQ2K, qs);
pub(crate) const Q2K_D: usize = offset_of!(BlockQ2K, d);
pub(crate) const Q2K_DMIN: usize = offset_of!(BlockQ2K, dmin);
pub(crate) const Q3K_QS: usize = offset_of!(BlockQ3K, qs);
pub(crate) const Q3K_SCALES: usize = offset_of!(BlockQ3K, scales);
pub(crate) const Q3K_D: usize = offset_of!(BlockQ3K, d);
pub(crate) const Q4K_DMIN: usize = offset_of!(BlockQ4K, dmin);
pub(crate) const Q4K_SCALES: usize = offset_of!(BlockQ4K, scales);
pub(crate) const Q4K_QS: usize = offset_of!(BlockQ4K, qs);
pub(crate) const Q5K_DMIN: usize = offset_of!(BlockQ5K, dmin);
pub(crate) const Q5K_SCALES: usize = offset_of!(BlockQ5K, scales);
pub(crate) const Q5K_QH: usize = offset_of!(BlockQ5K, qh);
pub(crate) const Q5K_QS: usize = offset_of!(BlockQ5K, qs);
pub(crate) const Q6K_QH: usize = offset_of!(BlockQ6K, qh);
pub(crate) const Q6K_SCALES: usize = offset_of!(BlockQ6K, scales);
pub(crate) const Q6K_D: usize = offset_of!(BlockQ6K, d);
/// Bytes of one q8_K activation block.
pub(crate) const Q8K_BYTES: usize = core::mem::size_of::<BlockQ8K>();
pub(crate) const Q8K_QS: usize = offset_of!(BlockQ8K, qs);
pub(crate) const Q8K_BSUMS: usize = offset_of!(BlockQ8K, bsums);
pub(crate) const IQ4NL_QS: usize = offset_of!(BlockIQ4NL, qs);
pub(crate) const NF4_QS: usize = offset_of!(BlockNF4, qs);
pub(crate) const FP8_QS: usize = offset_of!(BlockFp8, qs);

// The scale sits first in these (offset 0), which the parsers rely on.
const _: () = assert!(offset_of!(BlockQ4_0, d) == 0 && offset_of!(BlockQ4_0, qs) == 2);
const _: () = assert!(offset_of!(BlockQ8_0, d) == 0 && offset_of!(BlockQ4K, d) == 0);
const _: () = assert!(offset_of!(BlockQ5K, d) == 0 && offset_of!(BlockQ8K, d) == 0);
const _: () = assert!(offset_of!(BlockIQ4NL, d) == 0 && offset_of!(BlockQ6K, ql) == 0);
const _: () = assert!(offset_of!(BlockQ3K, hmask) == 0 && offset_of!(BlockQ2K, scales) == 0);
const _: () = assert!(offset_of!(BlockNF4, d) == 0 && offset_of!(BlockFp8, d) == 0);

/// The 16 levels of `iq4_nl` (and `iq4_xs`).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
