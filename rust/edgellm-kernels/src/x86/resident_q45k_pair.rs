//! The resident q4_K/q5_K tile ([`super::resident_q45k_avx2`]) on two panels
//! at once in 512-bit registers, as [`super::resident_q6k_pair`] does for
//! q6_K: the first panel's 8 rows in the low half of each vector, the
//! second's in the high half, every step the 256-bit tile's own lane for lane
//! (byte shuffles within 128-bit lanes), so results are bit-identical to it
//! and to the scalar `vec_dot`.

use super::qgemm_pair_vnni::{bcast4z, q4_k_finish_with, Pair};
use super::resident_q45k_avx2::{block, PAIR};
use crate::quant::blocks::Q8K_QS;
use crate::quant::qgemm::{PairResults, PanelTile};
use crate::quant::resident::q45_k::{D, DMIN, HI, LM, LSC, QH, QS};
use crate::x86::simd::prefetch_lines;
use core::arch::x86_64::*;

/// Super-blocks ahead of the one being read that the tile prefetches, per panel.
const AHEAD: usize = 2;

/// Both panels' 64 scales and 64 mins, as the 256-bit tile's `scales_mins`.
#[inline(always)]
unsafe fn scales_mins(w: Pair) -> ([__m512i; 2], [__m512i; 2]) {
    let (lsc, lm, hi) = (w.ld(LSC), w.ld(LM), w.ld(HI));
    let low = _mm512_set1_epi8(0x0F);
    let top = _mm512_set1_epi8(0x30);
    let sc0 = _mm512_or_si512(_mm512_and_si512(lsc, low), _mm512_slli_epi16::<4>(_mm512_and_si512(hi, _mm512_set1_epi8(0x03))));
    let sc1 = _mm512_or_si512(
        _mm512_and_si512(_mm512_srli_epi16::<4>(lsc), low),
        _mm512_slli_epi16::<2>(_mm512_and_si512(hi, _mm512_set1_epi8(0x0C))),
    );
    let m0 = _mm512_or_si512(_mm512_and_si512(lm, low), _mm512_and_si512(hi, top));
    let m1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(lm), low), _mm512_and_si512(_mm512_srli_epi16::<2>(hi), top));
    ([sc0, sc1], [m0, m1])
}

/// Sub-block `s`'s values of `v` as the i16 pairs of each row (the 256-bit
/// tile's mask in both halves).
#[inline(always)]
unsafe fn pairs(v: &[__m512i; 2], s: usize) -> __m512i {
    let m = _mm256_loadu_si256(PAIR[s % 4].as_ptr() as *const __m256i);
    _mm512_shuffle_epi8(v[s / 4], _mm512_broadcast_i64x4(m))
}

/// Quant vector `8j + i` of both panels, split as the 256-bit tile's `quants`.
#[inline(always)]
unsafe fn quants<const FIVE: bool>(w: Pair, j: usize, i: usize) -> (__m512i, __m512i) {
    let low = _mm512_set1_epi8(0x0F);
    let v = w.ld(QS + 32 * (8 * j + i));
    let (wl, wh) = (_mm512_and_si512(v, low), _mm512_and_si512(_mm512_srli_epi16::<4>(v), low));
    if !FIVE {
        return (wl, wh);
    }
    let h = _mm512_srl_epi16(w.ld(QH + 32 * i), _mm_cvtsi32_si128(2 * j as i32));
    let bit4 = _mm512_set1_epi8(0x10);
    (
        _mm512_or_si512(wl, _mm512_and_si512(_mm512_slli_epi16::<4>(h), bit4)),
        _mm512_or_si512(wh, _mm512_and_si512(_mm512_slli_epi16::<3>(h), bit4)),
    )
}

/// `res[t][r] = vec_dot(row r of the pair, token t)` for the resident q5_K
/// (`FIVE`) or q4_K panel of `x` (rows `0..8`) and the one at `second` (rows
/// `8..16`), `T` tokens.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL; `x.panel` and `second` are resident
/// panels of that type of `x.nb` super-blocks, and `x` holds `T` q8_K rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile<const T: usize, const FIVE: bool>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    let bk = block::<FIVE>();
    // Groups whose pair sums add up in i16 before widening (as the 256-bit tile).
    let run = if FIVE { 4 } else { 8 };
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..x.nb {
        let w = Pair(x.panel.add(b * bk), second.add(b * bk));
        let ahead = Pair(w.0.wrapping_add(AHEAD * bk), w.1.wrapping_add(AHEAD * bk));
        prefetch_lines(ahead.0, QS);
        prefetch_lines(ahead.1, QS);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let (sc, mn) = scales_mins(w);
        let mut isum = [_mm512_setzero_si512(); T];
        for j in 0..4 {
            let share = (bk - QS) / 4;
            prefetch_lines(ahead.0.wrapping_add(QS + share * j), share);
            prefetch_lines(ahead.1.wrapping_add(QS + share * j), share);
            let (s0, s1) = (pairs(&sc, 2 * j), pairs(&sc, 2 * j + 1));
            for i0 in (0..8).step_by(run) {
                let (mut lo, mut hi) = ([_mm512_setzero_si512(); T], [_mm512_setzero_si512(); T]);
                for i in i0..i0 + run {
                    let (wl, wh) = quants::<FIVE>(w, j, i);
                    for t in 0..T {
                        let y = ab[t].add(Q8K_QS + 64 * j + 4 * i);
                        lo[t] = _mm512_add_epi16(lo[t], _mm512_maddubs_epi16(wl, bcast4z(y)));
                        hi[t] = _mm512_add_epi16(hi[t], _mm512_maddubs_epi16(wh, bcast4z(y.add(32))));
                    }
                }
                for t in 0..T {
                    let s = _mm512_add_epi32(_mm512_madd_epi16(lo[t], s0), _mm512_madd_epi16(hi[t], s1));
                    isum[t] = _mm512_add_epi32(isum[t], s);
                }
            }
        }
        let mut mins = [_mm512_setzero_si512(); 8];
        for (s, m) in mins.iter_mut().enumerate() {
            *m = pairs(&mn, s);
        }
        let (d, dmin) = (_mm512_cvtph_ps(w.ld128(D)), _mm512_cvtph_ps(w.ld128(DMIN)));
        q4_k_finish_with(&mins, d, dmin, &ab, &isum, &mut acc);
    }
    for t in 0..T {
        _mm512_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}
