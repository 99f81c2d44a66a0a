//! [`crate::Kernels::exp_sum`] on AVX2 (8 lanes) and AVX-512 (16 lanes, the
//! tail masked): [`crate::scalar::exp_neg`]'s operations one for one (separate
//! multiplies and adds, no FMA), so every value keeps its bits; the sum runs
//! per lane, then across the lanes.

use crate::scalar::exp_consts::*;
use crate::scalar::exp_neg;
use crate::x86::simd::hsum_ps;
use core::arch::x86_64::*;

pub(super) fn exp_sum_avx2(x: &mut [f32], shift: f32) -> f32 {
    // Sound: the AVX2 and AVX-512 tables are built only after AVX2 was detected.
    unsafe { avx2(x, shift) }
}

pub(super) fn exp_sum_avx512(x: &mut [f32], shift: f32) -> f32 {
    // Sound: the AVX-512 table is built only after AVX-512 F was detected.
    unsafe { avx512(x, shift) }
}

#[target_feature(enable = "avx2")]
unsafe fn avx2(x: &mut [f32], shift: f32) -> f32 {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let sh = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), sh));
        _mm256_storeu_ps(p.add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut s = hsum_ps(acc);
    for v in &mut x[i..] {
        *v = exp_neg(*v - shift);
        s += *v;
    }
    s
}

/// `exp_neg` of 8 lanes.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    let xc = _mm256_max_ps(x, _mm256_set1_ps(LOW));
    let z = _mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)), _mm256_set1_ps(MAGIC));
    let n = _mm256_sub_ps(z, _mm256_set1_ps(MAGIC));
    let r = _mm256_sub_ps(
        _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(LN2_HI))),
        _mm256_mul_ps(n, _mm256_set1_ps(LN2_LO)),
    );
    let mut poly = _mm256_set1_ps(P[0]);
    for &c in &P[1..] {
        poly = _mm256_add_ps(_mm256_mul_ps(poly, r), _mm256_set1_ps(c));
    }
    let e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(poly, r), r), r), _mm256_set1_ps(1.0));
    let ni = _mm256_sub_epi32(_mm256_castps_si256(z), _mm256_set1_epi32(MAGIC_BITS));
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    let y = _mm256_mul_ps(e, scale);
    // Zero where x < LOW.
    _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LOW)), y)
}

#[target_feature(enable = "avx512f,avx2")]
unsafe fn avx512(x: &mut [f32], shift: f32) -> f32 {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let sh = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let mask: __mmask16 = if n - i >= 16 { 0xFFFF } else { ((1u32 << (n - i)) - 1) as __mmask16 };
        let v = _mm512_maskz_loadu_ps(mask, p.add(i));
        let e = exp16(_mm512_sub_ps(v, sh));
        _mm512_mask_storeu_ps(p.add(i), mask, e);
        acc = _mm512_mask_add_ps(acc, mask, acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// `exp_neg` of 16 lanes.
#[inline(always)]
unsafe fn exp16(x: __m512) -> __m512 {
    let xc = _mm512_max_ps(x, _mm512_set1_ps(LOW));
    let z = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)), _mm512_set1_ps(MAGIC));
    let n = _mm512_sub_ps(z, _mm512_set1_ps(MAGIC));
    let r = _mm512_sub_ps(
        _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
        _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
    );
    let mut poly = _mm512_set1_ps(P[0]);
    for &c in &P[1..] {
        poly = _mm512_add_ps(_mm512_mul_ps(poly, r), _mm512_set1_ps(c));
    }
    let e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(poly, r), r), r), _mm512_set1_ps(1.0));
    let ni = _mm512_sub_epi32(_mm512_castps_si512(z), _mm512_set1_epi32(MAGIC_BITS));
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23));
    let y = _mm512_mul_ps(e, scale);
    // Zero where x < LOW.
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(LOW)), y)
}
