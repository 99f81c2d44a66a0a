//! Reference routines of edgellm's low-bit group formats (`q3_g128`, `q3a_g128`,
//! `q2_g128`, `q2a_g128`; byte layout in [`super::blocks`]): packing explicit
//! codes (what the calibration algorithms chose) and unpacking them, round-to-
//! nearest quantization, dequantization, and the dot product with `q8_0`
//! activations (four activation blocks per 128-weight block).
//!
//! SIMD: `x86/lowbit_avx2.rs`, `aarch64/lowbit_neon.rs` (decode `vec_dot`). There
//! is no interleaved prefill kernel (`qgemm::has_fast_path` is false), so on SIMD
//! paths prompts dequantize these weights into the f32 GEMM.

use super::blocks::*;
use super::{check_len, f16_at, GgmlType, QuantError};
use half::f16;

/// Elements per block (= group) of every low-bit format.
pub const GROUP: usize = 128;

/// Geometry of one low-bit format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub bits: u32,
    pub asym: bool,
    /// Offset of the 32-byte 2-bit plane.
    pub qs: usize,
    /// Offset of the 16-byte third-bit plane (3-bit formats only).
    pub qh: usize,
    pub bytes: usize,
}

impl Spec {
    /// The code subtracted before scaling: `2^(bits-1)` (symmetric), 0 (asymmetric).
    #[inline(always)]
    pub fn zero(&self) -> i32 {
        if self.asym {
            0
        } else {
            1 << (self.bits - 1)
        }
    }
    #[inline(always)]
    pub fn levels(&self) -> u32 {
        1 << self.bits
    }
}

/// The geometry of `ty`, or `None` if it is not a low-bit format.
pub(crate) fn spec(ty: GgmlType) -> Option<Spec> {
    use GgmlType::*;
    Some(match ty {
        Q3G128 => Spec { bits: 3, asym: false, qs: Q3G_QS, qh: Q3G_QH, bytes: 50 },
        Q3AG128 => Spec { bits: 3, asym: true, qs: Q3AG_QS, qh: Q3AG_QH, bytes: 52 },
        Q2G128 => Spec { bits: 2, asym: false, qs: Q2G_QS, qh: 0, bytes: 34 },
        Q2AG128 => Spec { bits: 2, asym: true, qs: Q2AG_QS, qh: 0, bytes: 36 },
        _ => return None,
    })
}

fn spec_or_err(ty: GgmlType) -> Result<Spec, QuantError> {
    spec(ty).ok_or(QuantError::Unsupported(ty))
}

/// Code of element `e < 128` of block `b`.
#[inline(always)]
pub(crate) fn code(sp: &Spec, b: &[u8], e: usize) -> u8 {
    let (s, h, l) = (e / 32, (e / 16) % 2, e % 16);
    let mut u = (b[sp.qs + 16 * h + l] >> (2 * s)) & 3;
    if sp.bits == 3 {
        u |= ((b[sp.qh + l] >> (4 * h + s)) & 1) << 2;
    }
    u
}

/// Writes code `u` of element `e` into block `b` (whose planes start zeroed).
#[inline(always)]
fn put_code(sp: &Spec, b: &mut [u8], e: usize, u: u8) {
    let (s, h, l) = (e / 32, (e / 16) % 2, e % 16);
    b[sp.qs + 16 * h + l] |= (u & 3) << (2 * s);
    if sp.bits == 3 {
        b[sp.qh + l] |= ((u >> 2) & 1) << (4 * h + s);
    }
}

#[inline]
fn put_f16(b: &mut [u8], at: usize, v: f16) {
    b[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
}

/// Packs a row from explicit integers: `codes` (one per element, each below
/// `2^bits`; for symmetric formats the stored `u = q + 2^(bits-1)`), and per block
/// the f16 scale `d` and (asymmetric formats) min `m`. These are stored exactly:
/// dequantizing gives `d·(u − 2^(bits−1))` or `d·u + m`. `m` must be empty for
/// symmetric formats. Errors on wrong lengths or an out-of-range code.
pub fn pack_row(ty: GgmlType, codes: &[u8], d: &[f16], m: &[f16], dst: &mut [u8]) -> Result<(), QuantError> {
    let sp = spec_or_err(ty)?;
    check_len(ty, codes.len(), dst.len())?;
    let nb = codes.len() / GROUP;
    let want_m = if sp.asym { nb } else { 0 };
    if d.len() != nb || m.len() != want_m {
        return Err(QuantError::Length { ty, elems: codes.len(), bytes: dst.len() });
    }
    if let Some(at) = codes.iter().position(|&u| u as u32 >= sp.levels()) {
        return Err(QuantError::Code { ty, at, code: codes[at] });
    }
    for (i, (b, c)) in dst.chunks_exact_mut(sp.bytes).zip(codes.chunks_exact(GROUP)).enumerate() {
        b.fill(0);
        put_f16(b, 0, d[i]);
        if sp.asym {
            put_f16(b, 2, m[i]);
        }
        for (e, &u) in c.iter().enumerate() {
            put_code(&sp, b, e, u);
        }
    }
    Ok(())
}

/// Unpacks a row written by [`pack_row`] (or [`super::quantize_row`]) into its
/// codes, per-block scales and (asymmetric) mins; `m` must be empty for symmetric
/// formats.
pub fn unpack_row(ty: GgmlType, src: &[u8], codes: &mut [u8], d: &mut [f16], m: &mut [f16]) -> Result<(), QuantError> {
    let sp = spec_or_err(ty)?;
    check_len(ty, codes.len(), src.len())?;
    let nb = codes.len() / GROUP;
    if d.len() != nb || m.len() != if sp.asym { nb } else { 0 } {
        return Err(QuantError::Length { ty, elems: codes.len(), bytes: src.len() });
    }
    let h16 = |b: &[u8], at: usize| f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]]));
    for (i, (b, c)) in src.chunks_exact(sp.bytes).zip(codes.chunks_exact_mut(GROUP)).enumerate() {
        d[i] = h16(b, 0);
        if sp.asym {
            m[i] = h16(b, 2);
        }
        for (e, u) in c.iter_mut().enumerate() {
            *u = code(&sp, b, e);
        }
    }
    Ok(())
}

/// Dequantization (lengths checked by the caller). Exact products: `d·(u − z)`
/// is an f16 times a small integer; `d·u + m` rounds once.
pub(super) fn dequant(sp: &Spec, src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.chunks_exact_mut(GROUP).zip(src.chunks_exact(sp.bytes)) {
        let d = f16_at(b, 0);
        let m = if sp.asym { f16_at(b, 2) } else { 0.0 };
        for (e, o) in out.iter_mut().enumerate() {
            *o = d * (code(sp, b, e) as i32 - sp.zero()) as f32 + m;
        }
    }
}

/// Round-to-nearest quantization, each block from its own range (the same grid
/// as `edgellm.calibrate.Grid`): symmetric `d = x_ext / −2^(bits−1)` for the
/// element of largest magnitude (which then lands exactly on the lowest level);
/// asymmetric `d = (max − min) / (2^bits − 1)`, `m = min`. `d` and `m` are
/// rounded to f16 before the codes are chosen; zero/constant blocks give `d = 0`
/// (every weight then equals `m`, or 0).
pub(super) fn quantize_rtn(sp: &Spec, src: &[f32], dst: &mut [u8]) {
    let qmax = (sp.levels() - 1) as f32;
    for (x, b) in src.chunks_exact(GROUP).zip(dst.chunks_exact_mut(sp.bytes)) {
        b.fill(0);
        let (d, m) = if sp.asym {
            let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (f16::from_f32((hi - lo) / qmax), f16::from_f32(lo))
        } else {
            let ext = x.iter().copied().fold(0f32, |a, v| if v.abs() > a.abs() { v } else { a });
            (f16::from_f32(ext / -(sp.zero() as f32)), f16::ZERO)
        };
        // Non-finite scales (infinite input range) are stored as zero.
        let d = if d.is_finite() { d } else { f16::ZERO };
        let m = if m.is_finite() { m } else { f16::ZERO };
        put_f16(b, 0, d);
        if sp.asym {
            put_f16(b, 2, m);
        }
        let (df, mf) = (d.to_f32(), m.to_f32());
        let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
        for (e, &v) in x.iter().enumerate() {
            let q = ((v - mf) * inv).round_ties_even() as i32 + sp.zero();
            put_code(sp, b, e, q.clamp(0, qmax as i32) as u8);
        }
    }
}

#[inline(always)]
fn a8(b: &[u8], at: usize) -> i32 {
    b[at] as i8 as i32
}

/// `Σ w·a` with `q8_0` activations (lengths checked by the caller): per
/// activation block `s` of a weight block, the exact integer sums `Σ (u − z)·a`
/// (and `Σ a` for the min), scaled as `d·d_a·isum (+ m·d_a·asum)`.
pub(crate) fn vec_dot(sp: &Spec, w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab4) in w.chunks_exact(sp.bytes).zip(act.chunks_exact(4 * 34)) {
        let (d, m) = (f16_at(wb, 0), if sp.asym { f16_at(wb, 2) } else { 0.0 });
        for (s, ab) in ab4.chunks_exact(34).enumerate() {
            let (mut isum, mut asum) = (0i32, 0i32);
            for l in 0..32 {
                let a = a8(ab, 2 + l);
                isum += (code(sp, wb, 32 * s + l) as i32 - sp.zero()) * a;
                asum += a;
            }
            // The expressions of q4_0 / q4_1: a grid stored natively or in the
            // 4-bit container gives bit-identical reference dot products.
            let da = f16_at(ab, 0);
            if sp.asym {
                sum += d * da * isum as f32 + m * da * asum as f32;
            } else {
                sum += d * da * isum as f32;
            }
        }
    }
    sum
}
