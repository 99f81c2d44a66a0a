//! NEON kernels of the NF4 and FP8 block formats (see [`crate::quant::nf4_fp8`]):
//! dot products with f32 activations and row dequantization (the prefill path).
//!
//! Decoding is exact (dequantized values bit-identical to the scalar reference):
//! - FP8 codes become f16 bits (E5M2: the code is the f16's high byte; E4M3: the
//!   7 magnitude bits shifted into the exponent/mantissa fields give `value / 256`,
//!   NaN codes forced to an all-ones f16) and are widened with `fcvtl`/`fcvtl2`.
//!   Those are base ARMv8 instructions, issued through `asm!` because the f16
//!   vector types of `core::arch` are not stable Rust.
//! - NF4: `tbl` over the 64 bytes of the f32 code book, 4 byte indices per code.

use crate::quant::blocks::{FP8_QS, NF4_QS};
use crate::quant::minifloat::{Fp8, NF4_VALUES};
use crate::quant::nf4_fp8::fp8_scale;
use crate::quant::GgmlType;
use core::arch::aarch64::*;

fn handles(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::NF4 | GgmlType::F8E4M3 | GgmlType::F8E5M2)
}

/// `Σ w·a` over `nb` blocks of `ty` (NF4 or FP8); lengths checked by the caller.
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], nb: usize) -> f32 {
    assert!(handles(ty) && w.len() == nb * 34 && act.len() >= nb * ty.block_elems() * 4);
    // Sound: NEON is part of every aarch64 CPU this table is handed out on; reads
    // stay inside `nb` blocks of `w` and `nb · block_elems` f32 of `act`.
    unsafe {
        match ty {
            GgmlType::NF4 => imp::dot_nf4(w.as_ptr(), act.as_ptr(), nb),
            GgmlType::F8E4M3 => imp::dot_fp8::<true>(w.as_ptr(), act.as_ptr(), nb),
            _ => imp::dot_fp8::<false>(w.as_ptr(), act.as_ptr(), nb),
        }
    }
}

/// Dequantizes a row (NF4 / FP8 here, other types by the scalar reference).
/// Panics on a length mismatch.
pub(crate) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    if !handles(ty) || ty.row_bytes(dst.len()) != Some(src.len()) {
        return crate::scalar::dequantize_row(ty, src, dst);
    }
    let nb = src.len() / 34;
    // Sound: as in `vec_dot`; lengths checked above.
    unsafe {
        match ty {
            GgmlType::NF4 => imp::deq_nf4(src.as_ptr(), dst.as_mut_ptr(), nb),
            GgmlType::F8E4M3 => imp::deq_fp8::<true>(src.as_ptr(), dst.as_mut_ptr(), nb),
            _ => imp::deq_fp8::<false>(src.as_ptr(), dst.as_mut_ptr(), nb),
        }
    }
}

mod imp {
    use super::*;
    use crate::aarch64::gemm_neon::f16x8;

    #[inline(always)]
    unsafe fn f16_ld(p: *const u8) -> f32 {
        half::f16::from_bits((p as *const u16).read_unaligned()).to_f32()
    }

    /// 8 E4M3 codes in the high bytes of u16 lanes → f16 bits of `value / 256`.
    #[inline(always)]
    unsafe fn e4m3_bits(h: uint16x8_t) -> uint16x8_t {
        // Sign at bit 15, magnitude at 14..8: an arithmetic shift by one and
        // clearing bit 14 moves the magnitude to bits 13..7.
        let h = vandq_u16(vreinterpretq_u16_s16(vshrq_n_s16::<1>(vreinterpretq_s16_u16(h))), vdupq_n_u16(0xBFFF));
        vorrq_u16(h, vceqq_u16(vandq_u16(h, vdupq_n_u16(0x7FFF)), vdupq_n_u16(0x3F80)))
    }

    /// The 16 FP8 codes at `p` as f32 (E4M3: `value / 256`), 4 vectors of 4.
    #[inline(always)]
    unsafe fn fp8x16<const E4M3: bool>(p: *const u8) -> [float32x4_t; 4] {
        let b = vld1q_u8(p);
        let z = vdupq_n_u8(0);
        let mut lo = vreinterpretq_u16_u8(vzip1q_u8(z, b));
        let mut hi = vreinterpretq_u16_u8(vzip2q_u8(z, b));
        if E4M3 {
            lo = e4m3_bits(lo);
            hi = e4m3_bits(hi);
        }
        let (a0, a1) = f16x8(lo);
        let (a2, a3) = f16x8(hi);
        [a0, a1, a2, a3]
    }

    #[inline(always)]
    unsafe fn fp8_mult<const E4M3: bool>(blk: *const u8) -> f32 {
        if E4M3 {
            fp8_scale(Fp8::E4M3, f16_ld(blk)) * 256.0
        } else {
            fp8_scale(Fp8::E5M2, f16_ld(blk))
        }
    }

    pub(super) unsafe fn dot_fp8<const E4M3: bool>(w: *const u8, a: *const u8, nb: usize) -> f32 {
        let a = a as *const f32;
        let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        for i in 0..nb {
            let blk = w.add(34 * i);
            let x = a.add(32 * i);
            let (mut t0, mut t1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for h in 0..2 {
                let v = fp8x16::<E4M3>(blk.add(FP8_QS + 16 * h));
                let xh = x.add(16 * h);
                t0 = vfmaq_f32(t0, v[0], vld1q_f32(xh));
                t1 = vfmaq_f32(t1, v[1], vld1q_f32(xh.add(4)));
                t0 = vfmaq_f32(t0, v[2], vld1q_f32(xh.add(8)));
                t1 = vfmaq_f32(t1, v[3], vld1q_f32(xh.add(12)));
            }
            let s = fp8_mult::<E4M3>(blk);
            acc0 = vfmaq_n_f32(acc0, t0, s);
            acc1 = vfmaq_n_f32(acc1, t1, s);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }

    pub(super) unsafe fn deq_fp8<const E4M3: bool>(w: *const u8, y: *mut f32, nb: usize) {
        for i in 0..nb {
            let blk = w.add(34 * i);
            let s = fp8_mult::<E4M3>(blk);
            for h in 0..2 {
                let v = fp8x16::<E4M3>(blk.add(FP8_QS + 16 * h));
                for (j, vj) in v.iter().enumerate() {
                    vst1q_f32(y.add(32 * i + 16 * h + 4 * j), vmulq_n_f32(*vj, s));
                }
            }
        }
    }

    /// The code book as 64 table bytes.
    #[inline(always)]
    unsafe fn nf4_table() -> uint8x16x4_t {
        let p = NF4_VALUES.as_ptr() as *const u8;
        uint8x16x4_t(vld1q_u8(p), vld1q_u8(p.add(16)), vld1q_u8(p.add(32)), vld1q_u8(p.add(48)))
    }

    /// Values of 16 codes (`codes4`: each code times 4), 4 vectors of 4.
    #[inline(always)]
    unsafe fn nf4x16(t: uint8x16x4_t, codes4: uint8x16_t) -> [float32x4_t; 4] {
        const REP: [u8; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
        const BYTE: [u8; 16] = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3];
        let (rep, byte) = (vld1q_u8(REP.as_ptr()), vld1q_u8(BYTE.as_ptr()));
        let mut out = [vdupq_n_f32(0.0); 4];
        for (g, o) in out.iter_mut().enumerate() {
            let sel = vaddq_u8(rep, vdupq_n_u8(4 * g as u8));
            let idx = vaddq_u8(vqtbl1q_u8(codes4, sel), byte);
            *o = vreinterpretq_f32_u8(vqtbl4q_u8(t, idx));
        }
        out
    }

    /// The block's codes ×4: elements 0..16, 16..32 (low nibbles), 32..48, 48..64.
    #[inline(always)]
    unsafe fn nf4_codes4(qs: *const u8) -> [uint8x16_t; 4] {
        let (q0, q1) = (vld1q_u8(qs), vld1q_u8(qs.add(16)));
        let m = vdupq_n_u8(0x0F);
        [
            vshlq_n_u8::<2>(vandq_u8(q0, m)),
            vshlq_n_u8::<2>(vandq_u8(q1, m)),
            vshlq_n_u8::<2>(vshrq_n_u8::<4>(q0)),
            vshlq_n_u8::<2>(vshrq_n_u8::<4>(q1)),
        ]
    }

    pub(super) unsafe fn dot_nf4(w: *const u8, a: *const u8, nb: usize) -> f32 {
        let a = a as *const f32;
        let t = nf4_table();
        let (mut acc0, mut acc1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
        for i in 0..nb {
            let blk = w.add(34 * i);
            let x = a.add(64 * i);
            let (mut t0, mut t1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for (q, codes) in nf4_codes4(blk.add(NF4_QS)).into_iter().enumerate() {
                let v = nf4x16(t, codes);
                let xq = x.add(16 * q);
                t0 = vfmaq_f32(t0, v[0], vld1q_f32(xq));
                t1 = vfmaq_f32(t1, v[1], vld1q_f32(xq.add(4)));
                t0 = vfmaq_f32(t0, v[2], vld1q_f32(xq.add(8)));
                t1 = vfmaq_f32(t1, v[3], vld1q_f32(xq.add(12)));
            }
            let d = f16_ld(blk);
            acc0 = vfmaq_n_f32(acc0, t0, d);
            acc1 = vfmaq_n_f32(acc1, t1, d);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }

    pub(super) unsafe fn deq_nf4(w: *const u8, y: *mut f32, nb: usize) {
        let t = nf4_table();
        for i in 0..nb {
            let blk = w.add(34 * i);
            let d = f16_ld(blk);
            for (q, codes) in nf4_codes4(blk.add(NF4_QS)).into_iter().enumerate() {
                for (j, v) in nf4x16(t, codes).iter().enumerate() {
                    vst1q_f32(y.add(64 * i + 16 * q + 4 * j), vmulq_n_f32(*v, d));
                }
            }
        }
    }
}
