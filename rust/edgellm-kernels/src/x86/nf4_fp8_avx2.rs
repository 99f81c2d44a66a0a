//! AVX2 + FMA + F16C kernels of the NF4 and FP8 block formats (see
//! [`crate::quant::nf4_fp8`]): dot products with f32 activations and row
//! dequantization (the prefill path: dequantized panels into the f32 GEMM).
//!
//! Decoding, exact (bit-identical dequantized values to the scalar reference):
//! - E5M2: a code is the high byte of an f16 — interleave with zero bytes, `vcvtph2ps`.
//! - E4M3: the code's 7 magnitude bits shifted into an f16's exponent/mantissa
//!   fields give `value / 256` (subnormals included); the block scale carries the
//!   256. The NaN codes (`S.1111.111`) would decode to 480 that way, so they are
//!   forced to an all-ones f16 (a NaN), matching the codec.
//! - NF4: two `vpermps` over the halves of the 16-entry f32 table, blended on
//!   bit 3 of the code.

use crate::quant::blocks::{FP8_QS, NF4_QS};
use crate::quant::minifloat::{Fp8, NF4_VALUES};
use crate::quant::nf4_fp8::fp8_scale;
use crate::quant::GgmlType;
use core::arch::x86_64::*;

/// Whether these kernels handle `ty`.
pub(crate) fn handles(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::NF4 | GgmlType::F8E4M3 | GgmlType::F8E5M2)
}

/// `Σ w·a` over `nb` blocks of `ty` (one of [`handles`]); `w` and `act` checked
/// by the caller (`check_vec_dot`).
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], nb: usize) -> f32 {
    debug_assert!(w.len() == nb * 34 && act.len() >= nb * ty.block_elems() * 4);
    // Sound: reachable only through the AVX2 table (avx2, fma, f16c detected);
    // every read stays inside `nb` blocks of `w` and `nb · block_elems` f32 of `act`.
    unsafe {
        match ty {
            GgmlType::NF4 => imp::dot_nf4(w.as_ptr(), act.as_ptr(), nb),
            GgmlType::F8E4M3 => imp::dot_fp8::<true>(w.as_ptr(), act.as_ptr(), nb),
            GgmlType::F8E5M2 => imp::dot_fp8::<false>(w.as_ptr(), act.as_ptr(), nb),
            _ => unreachable!("nf4_fp8_avx2::vec_dot: {}", ty.name()),
        }
    }
}

/// Dequantizes a row (`src` whole blocks of `ty`, `dst` its elements); other
/// types go to the scalar reference. Panics on a length mismatch.
pub(crate) fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    if !handles(ty) || ty.row_bytes(dst.len()) != Some(src.len()) {
        return crate::scalar::dequantize_row(ty, src, dst);
    }
    let nb = src.len() / 34;
    // Sound: AVX2 table only; lengths checked above.
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
    use crate::x86::simd::hsum_ps as hsum;

    #[inline(always)]
    unsafe fn f16_ld(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u16).read_unaligned() as i32)))
    }


    /// The 16 FP8 codes at `p` as f32 (E4M3: `value / 256`), elements 0..8 and 8..16.
    #[inline(always)]
    unsafe fn fp8x16<const E4M3: bool>(p: *const u8) -> (__m256, __m256) {
        let b = _mm_loadu_si128(p as *const __m128i);
        let z = _mm_setzero_si128();
        let (mut lo, mut hi) = (_mm_unpacklo_epi8(z, b), _mm_unpackhi_epi8(z, b));
        if E4M3 {
            lo = e4m3_bits(lo);
            hi = e4m3_bits(hi);
        }
        (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
    }

    /// 8 E4M3 codes in the high bytes of u16 lanes → f16 bits of `value / 256`.
    #[inline(always)]
    unsafe fn e4m3_bits(h: __m128i) -> __m128i {
        // Sign at bit 15, magnitude at 14..8: an arithmetic shift by one and
        // clearing bit 14 moves the magnitude to bits 13..7.
        let h = _mm_and_si128(_mm_srai_epi16(h, 1), _mm_set1_epi16(0xBFFFu16 as i16));
        let nan = _mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7FFF)), _mm_set1_epi16(0x3F80));
        _mm_or_si128(h, nan)
    }

    /// The block multiplier (E4M3: times 256, exact).
    #[inline(always)]
    unsafe fn fp8_mult<const E4M3: bool>(blk: *const u8) -> f32 {
        if E4M3 {
            fp8_scale(Fp8::E4M3, f16_ld(blk)) * 256.0
        } else {
            fp8_scale(Fp8::E5M2, f16_ld(blk))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_fp8<const E4M3: bool>(w: *const u8, a: *const u8, nb: usize) -> f32 {
        let a = a as *const f32;
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in 0..nb {
            let blk = w.add(34 * i);
            let x = a.add(32 * i);
            let (v0, v1) = fp8x16::<E4M3>(blk.add(FP8_QS));
            let (v2, v3) = fp8x16::<E4M3>(blk.add(FP8_QS + 16));
            let t0 = _mm256_fmadd_ps(v2, _mm256_loadu_ps(x.add(16)), _mm256_mul_ps(v0, _mm256_loadu_ps(x)));
            let t1 = _mm256_fmadd_ps(v3, _mm256_loadu_ps(x.add(24)), _mm256_mul_ps(v1, _mm256_loadu_ps(x.add(8))));
            let s = _mm256_set1_ps(fp8_mult::<E4M3>(blk));
            acc0 = _mm256_fmadd_ps(t0, s, acc0);
            acc1 = _mm256_fmadd_ps(t1, s, acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn deq_fp8<const E4M3: bool>(w: *const u8, y: *mut f32, nb: usize) {
        for i in 0..nb {
            let blk = w.add(34 * i);
            let out = y.add(32 * i);
            let s = _mm256_set1_ps(fp8_mult::<E4M3>(blk));
            for h in 0..2 {
                let (v0, v1) = fp8x16::<E4M3>(blk.add(FP8_QS + 16 * h));
                _mm256_storeu_ps(out.add(16 * h), _mm256_mul_ps(v0, s));
                _mm256_storeu_ps(out.add(16 * h + 8), _mm256_mul_ps(v1, s));
            }
        }
    }

    /// NF4 values of 8 codes (u32 lanes, 0..16).
    #[inline(always)]
    unsafe fn nf4x8(idx: __m256i, tlo: __m256, thi: __m256) -> __m256 {
        let lo = _mm256_permutevar8x32_ps(tlo, idx);
        let hi = _mm256_permutevar8x32_ps(thi, idx);
        _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))
    }

    /// Codes of elements `8g..8g+8` (low nibbles) and `32+8g..` (high) of a block.
    #[inline(always)]
    unsafe fn nf4_codes(qs: *const u8, g: usize) -> (__m256i, __m256i) {
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8 * g) as *const __m128i));
        (_mm256_and_si256(b, _mm256_set1_epi32(15)), _mm256_srli_epi32(b, 4))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_nf4(w: *const u8, a: *const u8, nb: usize) -> f32 {
        let a = a as *const f32;
        let tlo = _mm256_loadu_ps(NF4_VALUES.as_ptr());
        let thi = _mm256_loadu_ps(NF4_VALUES.as_ptr().add(8));
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in 0..nb {
            let blk = w.add(34 * i);
            let x = a.add(64 * i);
            let (mut t0, mut t1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for g in 0..4 {
                let (lo, hi) = nf4_codes(blk.add(NF4_QS), g);
                t0 = _mm256_fmadd_ps(nf4x8(lo, tlo, thi), _mm256_loadu_ps(x.add(8 * g)), t0);
                t1 = _mm256_fmadd_ps(nf4x8(hi, tlo, thi), _mm256_loadu_ps(x.add(32 + 8 * g)), t1);
            }
            let d = _mm256_set1_ps(f16_ld(blk));
            acc0 = _mm256_fmadd_ps(t0, d, acc0);
            acc1 = _mm256_fmadd_ps(t1, d, acc1);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn deq_nf4(w: *const u8, y: *mut f32, nb: usize) {
        let tlo = _mm256_loadu_ps(NF4_VALUES.as_ptr());
        let thi = _mm256_loadu_ps(NF4_VALUES.as_ptr().add(8));
        for i in 0..nb {
            let blk = w.add(34 * i);
            let out = y.add(64 * i);
            let d = _mm256_set1_ps(f16_ld(blk));
            for g in 0..4 {
                let (lo, hi) = nf4_codes(blk.add(NF4_QS), g);
                _mm256_storeu_ps(out.add(8 * g), _mm256_mul_ps(nf4x8(lo, tlo, thi), d));
                _mm256_storeu_ps(out.add(32 + 8 * g), _mm256_mul_ps(nf4x8(hi, tlo, thi), d));
            }
        }
    }
}
