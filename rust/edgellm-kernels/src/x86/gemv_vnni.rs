//! AVX-512 VNNI decode GEMV ([`crate::Kernels::gemv_q`]): the AVX2 row loops
//! ([`super::gemv_avx2`]) with block products on 256-bit `vpdpbusd`, which adds
//! four unsigned × signed byte products straight into each i32 lane where AVX2
//! needs `vpmaddubsw` and a widening `vpmaddwd` (and, for q8_0, two sign
//! transfers). q8_0 weights are made unsigned by flipping their sign bits
//! (`w + 128`); the prepared activation carries the `128 · Σa` to subtract. The
//! integer sums are exact, so the results equal the AVX2 path's bit for bit.

use super::gemv_avx2::{nibbles2, q4_0_rows, q8_0_rows, Q4Pair, Q8Block};
use crate::quant::{self, GgmlType};
use core::arch::x86_64::*;

/// `out[r] = vec_dot(ty, row r of w, act, n)` for every row (see
/// [`crate::Kernels::gemv_q`]). Panics on a length mismatch.
pub(crate) fn gemv_q(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = quant::check_gemv(ty, w, act, n, out.len());
    // Sound: only reachable through the AVX-512 table, handed out after
    // detecting avx2, fma, f16c and avx512 f/bw/vl/vnni.
    match ty {
        GgmlType::Q4_0 if rb > 0 => unsafe { q4_0(w, rb, act, n / 32, out) },
        GgmlType::Q8_0 if rb > 0 => unsafe { q8_0(w, rb, act, n / 32, out) },
        _ => super::gemv_avx2::gemv_q(ty, w, act, n, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q4_0_rows::<DpbusdQ4>(w, rb, act, nb, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q8_0_rows::<DpbusdQ8>(w, rb, act, nb, out)
}

struct DpbusdQ4;
impl Q4Pair for DpbusdQ4 {
    #[inline(always)]
    unsafe fn pair(v: __m256i, a: *const __m256i) -> __m256i {
        let (lo, hi) = nibbles2(v);
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, *a), hi, *a.add(1))
    }
}

struct DpbusdQ8;
impl Q8Block for DpbusdQ8 {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn block(w: *const u8, a: *const u8) -> __m256i {
        let flipped = _mm256_xor_si256(_mm256_loadu_si256(w as *const __m256i), _mm256_set1_epi8(i8::MIN));
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), flipped, _mm256_loadu_si256(a as *const __m256i))
    }
}
