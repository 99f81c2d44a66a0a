//! Reference (scalar) routines of edgellm's NF4 and FP8 block formats (layouts in
//! [`super::blocks`]: [`BlockNF4`], [`BlockFp8`]): dequantization, quantization
//! and the dot product with an f32 activation row. Lengths are checked by the
//! callers ([`super::dequantize_row`], [`super::quantize_row`], [`super::vec_dot`]).
//!
//! Values: NF4 `d · NF4_VALUES[q]`; FP8 `fp8(q) · s` with `s = d / FP8_MAX`
//! (one f32 division per block). The SIMD kernels decode FP8 codes through f16
//! (E5M2 exactly; E4M3 as `value / 256`, with 256 folded into `s`): a power-of-two
//! rescaling, so their dequantized values are bit-identical to these.

use super::blocks::*;
use super::f16_at;
use super::minifloat::{nf4_encode, Fp8, NF4_VALUES};
use half::f16;
use std::sync::OnceLock;

const NF4_BYTES: usize = std::mem::size_of::<BlockNF4>();
const FP8_BYTES: usize = std::mem::size_of::<BlockFp8>();

/// The value of every code of `f` (NaN codes included), built once from the codec.
pub(crate) fn fp8_table(f: Fp8) -> &'static [f32; 256] {
    static E4M3: OnceLock<[f32; 256]> = OnceLock::new();
    static E5M2: OnceLock<[f32; 256]> = OnceLock::new();
    let cell = match f {
        Fp8::E4M3 => &E4M3,
        Fp8::E5M2 => &E5M2,
    };
    cell.get_or_init(|| std::array::from_fn(|b| f.decode(b as u8)))
}

/// The f32 multiplier of an FP8 block with absmax field `d`.
#[inline]
pub(crate) fn fp8_scale(f: Fp8, d: f32) -> f32 {
    d / f.max()
}

/// The f16 absmax of a block, saturated to f16's largest finite value (a larger
/// absmax would make the scale infinite; its elements then clamp).
fn absmax_f16(x: &[f32]) -> f16 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    f16::from_f32(amax.min(f16::MAX.to_f32()))
}

pub(super) fn dequant_nf4(src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.chunks_exact_mut(64).zip(src.chunks_exact(NF4_BYTES)) {
        let d = f16_at(b, 0);
        for j in 0..32 {
            let q = b[NF4_QS + j];
            out[j] = NF4_VALUES[(q & 0x0F) as usize] * d;
            out[j + 32] = NF4_VALUES[(q >> 4) as usize] * d;
        }
    }
}

pub(super) fn dequant_fp8(f: Fp8, src: &[u8], dst: &mut [f32]) {
    let table = fp8_table(f);
    for (out, b) in dst.chunks_exact_mut(32).zip(src.chunks_exact(FP8_BYTES)) {
        let s = fp8_scale(f, f16_at(b, 0));
        for (o, &q) in out.iter_mut().zip(&b[FP8_QS..FP8_QS + 32]) {
            *o = table[q as usize] * s;
        }
    }
}

/// NF4: `d` = the block's absmax as f16, each element the code of the nearest
/// level to `x / d` (ties to the lower level). A zero block stores `d = 0` and
/// the zero level.
pub(super) fn quantize_nf4(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(64).zip(y.chunks_exact_mut(NF4_BYTES)) {
        let d = absmax_f16(xb);
        b[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
        let d = d.to_f32();
        let code = |v: f32| if d > 0.0 { nf4_encode(v / d) } else { 7 };
        for j in 0..32 {
            b[NF4_QS + j] = code(xb[j]) | (code(xb[j + 32]) << 4);
        }
    }
}

/// FP8: `d` = the block's absmax as f16, each element `x / (d / FP8_MAX)`
/// rounded to the nearest code (ties to even), saturating at the largest finite
/// value (so f16 rounding of `d` never overflows). A zero block gives zero codes.
pub(super) fn quantize_fp8(f: Fp8, x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(FP8_BYTES)) {
        let d = absmax_f16(xb);
        b[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
        let s = fp8_scale(f, d.to_f32());
        for (q, &v) in b[FP8_QS..FP8_QS + 32].iter_mut().zip(xb) {
            *q = if s > 0.0 { f.encode_saturating(v / s) } else { 0 };
        }
    }
}

#[inline(always)]
fn act(a: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
}

/// `Σ w·a`: per block `d · Σ NF4[q]·a`, blocks accumulated in order.
pub(super) fn dot_nf4(w: &[u8], a: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (bi, b) in w.chunks_exact(NF4_BYTES).enumerate() {
        let mut t = 0f32;
        for j in 0..32 {
            let q = b[NF4_QS + j];
            t += NF4_VALUES[(q & 0x0F) as usize] * act(a, 64 * bi + j);
            t += NF4_VALUES[(q >> 4) as usize] * act(a, 64 * bi + j + 32);
        }
        sum += f16_at(b, 0) * t;
    }
    sum
}

/// `Σ w·a`: per block `s · Σ fp8(q)·a`, blocks accumulated in order.
pub(super) fn dot_fp8(f: Fp8, w: &[u8], a: &[u8]) -> f32 {
    let table = fp8_table(f);
    let mut sum = 0f32;
    for (bi, b) in w.chunks_exact(FP8_BYTES).enumerate() {
        let mut t = 0f32;
        for j in 0..32 {
            t += table[b[FP8_QS + j] as usize] * act(a, 32 * bi + j);
        }
        sum += fp8_scale(f, f16_at(b, 0)) * t;
    }
    sum
}
