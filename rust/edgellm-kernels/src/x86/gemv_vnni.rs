//! VNNI decode GEMV ([`crate::Kernels::gemv_q`]): the AVX2 row loops
//! ([`super::gemv_avx2`]) with block products on 256-bit `vpdpbusd` (EVEX on
//! the AVX-512 table, VEX on the AVX-VNNI one: [`super::vnni`]), which adds
//! four unsigned × signed byte products straight into each i32 lane where AVX2
//! needs `vpmaddubsw` and a widening `vpmaddwd` (and, for q8_0, two sign
//! transfers). q8_0 weights are made unsigned by flipping their sign bits
//! (`w + 128`); the prepared activation carries the `128 · Σa` to subtract. The
//! integer sums are exact, so the results equal the AVX2 path's bit for bit.

use super::gemv_avx2::{nibbles2, q4_0_rows, q8_0_rows, Q4Pair, Q8Block, PAIR_ORD};
use super::lanes::Ymm;
use super::vnni::{Evex, Vex, Vnni};
use crate::quant::{self, GgmlType};
use core::arch::x86_64::*;
use core::marker::PhantomData;

/// `out[r] = vec_dot(ty, row r of w, act, n)` for every row (see
/// [`crate::Kernels::gemv_q`]) on AVX-512 VNNI. Panics on a length mismatch.
pub(crate) fn gemv_q(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    // Sound: only reachable through the AVX-512 table, handed out after
    // detecting avx2, fma, f16c and avx512 f/bw/vl/vnni.
    unsafe { gemv_q_on(q4_0, q8_0, ty, w, act, n, out) }
}

/// [`gemv_q`] on AVX-VNNI.
pub(crate) fn gemv_q_vex(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    // Sound: only reachable through the AVX-VNNI table, handed out after
    // detecting avx2, fma, f16c and avx-vnni.
    unsafe { gemv_q_on(q4_0_vex, q8_0_vex, ty, w, act, n, out) }
}

/// The row loops of one table: `w` rows of `rb` bytes, `nb` blocks each.
type Rows = unsafe fn(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]);

/// [`gemv_q`] with q4_0 and q8_0 rows on `q4` and `q8`, other types on AVX2.
///
/// # Safety
/// The CPU runs `q4` and `q8`.
unsafe fn gemv_q_on(q4: Rows, q8: Rows, ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = quant::check_gemv(ty, w, act, n, out.len());
    match ty {
        GgmlType::Q4_0 if rb > 0 => q4(w, rb, act, n / 32, out),
        GgmlType::Q8_0 if rb > 0 => q8(w, rb, act, n / 32, out),
        _ => super::gemv_avx2::gemv_q(ty, w, act, n, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q4_0_rows::<DpbusdQ4<Evex>>(w, rb, act, nb, out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q8_0_rows::<DpbusdQ8<Evex>>(w, rb, act, nb, out)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q4_0_vex(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q4_0_rows::<DpbusdQ4<Vex>>(w, rb, act, nb, out)
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn q8_0_vex(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q8_0_rows::<DpbusdQ8<Vex>>(w, rb, act, nb, out)
}

/// The block products in encoding `V`; the scales gathered by a word permute
/// where AVX-512 has one, by the AVX2 loops' own gather otherwise.
struct DpbusdQ4<V>(PhantomData<V>);
struct DpbusdQ8<V>(PhantomData<V>);

#[inline(always)]
unsafe fn q4_pair<V: Vnni<Ymm>>(v: __m256i, a: *const __m256i) -> __m256i {
    let (lo, hi) = nibbles2(v);
    V::dpbusd(V::dpbusd(_mm256_setzero_si256(), lo, *a), hi, *a.add(1))
}

#[inline(always)]
unsafe fn q8_block<V: Vnni<Ymm>>(w: *const u8, a: *const u8) -> __m256i {
    let flipped = _mm256_xor_si256(_mm256_loadu_si256(w as *const __m256i), _mm256_set1_epi8(i8::MIN));
    V::dpbusd(_mm256_setzero_si256(), flipped, _mm256_loadu_si256(a as *const __m256i))
}

impl Q4Pair for DpbusdQ4<Evex> {
    #[inline(always)]
    unsafe fn pair(v: __m256i, a: *const __m256i) -> __m256i {
        q4_pair::<Evex>(v, a)
    }
    #[inline(always)]
    unsafe fn scales(w: *const u8) -> __m256 {
        // Block b's scale is word 9b of the group's first 128 bytes.
        const IDX: [u16; 32] = word_index(9, PAIR_ORD);
        _mm256_cvtph_ps(pick_words(w, &IDX))
    }
}

impl Q4Pair for DpbusdQ4<Vex> {
    #[inline(always)]
    unsafe fn pair(v: __m256i, a: *const __m256i) -> __m256i {
        q4_pair::<Vex>(v, a)
    }
}

impl Q8Block for DpbusdQ8<Evex> {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn block(w: *const u8, a: *const u8) -> __m256i {
        q8_block::<Evex>(w, a)
    }
    #[inline(always)]
    unsafe fn scales(w: *const u8) -> __m256 {
        // Blocks 0-3 (4-7): words 0, 17, 34, 51 of the 128 bytes from 0 (136).
        const IDX: [u16; 32] = word_index(17, [0, 1, 2, 3, 0, 0, 0, 0]);
        let (lo, hi) = (pick_words(w, &IDX), pick_words(w.add(4 * 34), &IDX));
        _mm256_cvtph_ps(_mm_unpacklo_epi64(lo, hi))
    }
}

impl Q8Block for DpbusdQ8<Vex> {
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn block(w: *const u8, a: *const u8) -> __m256i {
        q8_block::<Vex>(w, a)
    }
}

/// A `vpermt2w` index putting word `stride · ord[k]` in lane `k < 8`.
const fn word_index(stride: u16, ord: [usize; 8]) -> [u16; 32] {
    let mut idx = [0u16; 32];
    let mut k = 0;
    while k < 8 {
        idx[k] = stride * ord[k] as u16;
        k += 1;
    }
    idx
}

/// Words `idx[0..8]` of the 128 bytes at `w`: one two-source word permute where
/// the scalar gather took eight loads and a dozen shifts and ors per group
/// (~17% of the q4_0 GEMV's time).
#[inline(always)]
unsafe fn pick_words(w: *const u8, idx: &[u16; 32]) -> __m128i {
    let (a, b) = (_mm512_loadu_si512(w as *const _), _mm512_loadu_si512(w.add(64) as *const _));
    let v = _mm512_permutex2var_epi16(a, _mm512_loadu_si512(idx.as_ptr() as *const _), b);
    _mm512_castsi512_si128(v)
}
