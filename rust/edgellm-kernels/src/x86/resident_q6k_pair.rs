//! The resident q6_K tile ([`super::resident_q6k_avx2`]) on two panels at once
//! in 512-bit registers: the low half of each vector holds the 8 rows of the
//! first panel, the high half those of the second, and every step is the
//! 256-bit tile's own, lane for lane (the byte shuffles stay within 128-bit
//! lanes), so sums and results are bit-identical to it and to the scalar
//! `vec_dot`. One broadcast of a token's activation bytes serves 16 rows.
//!
//! Decode reads every weight once per token; the 256-bit tile spent about as
//! many instructions per byte as the core can issue while memory streams, so
//! halving them moves q6_K decode toward the bandwidth bound.

use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::quant::qgemm::{PairResults, PanelTile};
use crate::quant::resident::q6_k::{BLOCK, D, QH, QL, SC};
use super::qgemm_pair_vnni::{bcast4z, Pair};
use super::resident_q6k_avx2::{EVEN, ODD};
use crate::x86::simd::{ld256, prefetch_lines};
use core::arch::x86_64::*;

/// Super-blocks ahead of the one being read that the tile prefetches, per panel.
const AHEAD: usize = 2;

/// The scales of sub-blocks `2p` and `2p + 1` of both panels, as i16 pairs.
#[inline(always)]
unsafe fn scale_pair(w: Pair, p: usize) -> __m512i {
    _mm512_cvtepi8_epi16(w.ld128(SC + 16 * p))
}

/// Quarter `s` of group `i` of half `n`, as [`super::resident_q6k_avx2`]'s
/// `quants`, for both panels.
#[inline(always)]
unsafe fn quants(w: Pair, n: usize, s: usize, i: usize) -> __m512i {
    let low = _mm512_set1_epi8(0x0F);
    let top = _mm512_set1_epi8(0x30);
    let l = w.ld(QL + 32 * (16 * n + 8 * (s % 2) + i));
    let h = w.ld(QH + 32 * (8 * n + i));
    let (l, h) = match s {
        0 => (_mm512_and_si512(l, low), _mm512_and_si512(_mm512_slli_epi16::<4>(h), top)),
        1 => (_mm512_and_si512(l, low), _mm512_and_si512(_mm512_slli_epi16::<2>(h), top)),
        2 => (_mm512_and_si512(_mm512_srli_epi16::<4>(l), low), _mm512_and_si512(h, top)),
        _ => (_mm512_and_si512(_mm512_srli_epi16::<4>(l), low), _mm512_and_si512(_mm512_srli_epi16::<2>(h), top)),
    };
    _mm512_or_si512(l, h)
}

/// `res[t][r] = vec_dot(row r of the pair, token t)` for the resident q6_K
/// panel of `x` (rows `0..8`) and the one at `second` (rows `8..16`), `T`
/// tokens.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL; `x.panel` and `second` are resident
/// q6_K panels of `x.nb` super-blocks, and `x` holds `T` q8_K rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile<const T: usize>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    // The 256-bit tile's byte shuffles in both halves (they stay within 128-bit lanes).
    let (even, odd) = (_mm512_broadcast_i64x4(ld256(EVEN.as_ptr())), _mm512_broadcast_i64x4(ld256(ODD.as_ptr())));
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..x.nb {
        let w = Pair(x.panel.add(b * BLOCK), second.add(b * BLOCK));
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let mut isum = [_mm512_setzero_si512(); T];
        for n in 0..2 {
            // This half's share of a later super-block of each panel.
            prefetch_lines(w.0.wrapping_add(AHEAD * BLOCK + n * BLOCK / 2), BLOCK / 2);
            prefetch_lines(w.1.wrapping_add(AHEAD * BLOCK + n * BLOCK / 2), BLOCK / 2);
            for s in 0..4 {
                let p = 4 * n + s;
                let pair = scale_pair(w, p);
                for (half, shuf) in [even, odd].into_iter().enumerate() {
                    let sc = _mm512_shuffle_epi8(pair, shuf);
                    for i in (4 * half..4 * half + 4).step_by(2) {
                        let (w0, w1) = (quants(w, n, s, i), quants(w, n, s, i + 1));
                        for t in 0..T {
                            let y = ab[t].add(Q8K_QS + 128 * n + 32 * s + 4 * i);
                            let s16 = _mm512_add_epi16(
                                _mm512_maddubs_epi16(w0, bcast4z(y)),
                                _mm512_maddubs_epi16(w1, bcast4z(y.add(4))),
                            );
                            isum[t] = _mm512_add_epi32(isum[t], _mm512_madd_epi16(s16, sc));
                        }
                    }
                }
                let pair32 = _mm512_slli_epi16::<5>(pair);
                for t in 0..T {
                    let off = _mm512_madd_epi16(pair32, bcast4z(ab[t].add(Q8K_BSUMS + 4 * p)));
                    isum[t] = _mm512_sub_epi32(isum[t], off);
                }
            }
        }
        let d = _mm512_cvtph_ps(w.ld128(D));
        for t in 0..T {
            let da = _mm512_set1_ps((ab[t] as *const f32).read_unaligned());
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(isum[t])));
        }
    }
    for t in 0..T {
        _mm512_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}
