//! AVX2 kernels on resident q4_K and q5_K panels
//! ([`crate::quant::resident::q45_k`]): the tile of up to 4 tokens (decode,
//! short prompts) and the widening into the per-call layout, whose tile then
//! serves longer prompts.
//!
//! Per super-block of 8 rows: the 128 scales and mins decoded at once (a
//! dozen vector operations, where the row kernel unpacked twelve bytes per
//! row), then per 64-element chunk 8 nibble vectors, each split into its two
//! sub-blocks' quants (q5_K: each with its fifth bits, shifted into place
//! from one of 8 vectors) and multiplied with the token's 4 activation bytes,
//! broadcast (`vpmaddubsw`). A sub-block's pair sums stay in i16 (16 products
//! of a nibble and an i8: at most 16 · 15 · 128; q5_K's 31 allow 8, so its
//! sums are widened twice per sub-block), then `vpmaddwd` by the sub-block's
//! scales (one byte shuffle of the decoded vector) reduces each row to its
//! i32 lane. The mins meet the activation's 16-element sums the same way.
//! Bit-identical to the scalar `vec_dot`: exact integer sums, then the same
//! float steps per super-block.

use super::qgemm_avx2::{bcast4, q4_k_finish};
use crate::quant::blocks::Q8K_QS;
use crate::quant::qgemm::{panel_layout, PanelTile, PANEL, TILE_TOKENS};
use crate::quant::resident::q45_k::{BLOCK, BLOCK5, D, DMIN, HI, LM, LSC, QH, QS};
use crate::quant::GgmlType;
use crate::x86::simd::{ld256, load_f16, prefetch_lines, st256};
use core::arch::x86_64::*;
use half::f16;

/// Super-blocks ahead of the one being read that the tile prefetches (2.25 KiB,
/// as the q4_0/q8_0 resident tiles).
const AHEAD: usize = 2;

/// Byte-shuffle masks: from a decoded vector (per 128-bit lane, byte
/// `4 (s % 4) + r % 4` holds row `r`'s value of sub-block `s`), mask `s % 4`
/// puts sub-block `s`'s values at i16 lanes `2r` and `2r + 1`, those of row `r`'s
/// pair sums (zero-extended: the values are below 64).
pub(super) const PAIR: [[i8; 32]; 4] = {
    let mut m = [[0i8; 32]; 4];
    let mut q = 0;
    while q < 4 {
        let mut b = 0;
        while b < 32 {
            let r = (b % 16) / 4;
            m[q][b] = if b % 2 == 0 { (4 * q + r) as i8 } else { -128 };
            b += 1;
        }
        q += 1;
    }
    m
};

/// The super-block's 64 scales and 64 mins: `[sub-blocks 0-3, 4-7]` of each, one
/// byte per (row, sub-block) in [`PAIR`]'s order.
#[inline(always)]
unsafe fn scales_mins(blk: *const u8) -> ([__m256i; 2], [__m256i; 2]) {
    let (lsc, lm, hi) = (ld256(blk.add(LSC)), ld256(blk.add(LM)), ld256(blk.add(HI)));
    let low = _mm256_set1_epi8(0x0F);
    let top = _mm256_set1_epi8(0x30);
    // 16-bit shifts: every field is masked after its shift, so no bit crosses bytes.
    let sc0 = _mm256_or_si256(_mm256_and_si256(lsc, low), _mm256_slli_epi16::<4>(_mm256_and_si256(hi, _mm256_set1_epi8(0x03))));
    let sc1 = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi16::<4>(lsc), low),
        _mm256_slli_epi16::<2>(_mm256_and_si256(hi, _mm256_set1_epi8(0x0C))),
    );
    let m0 = _mm256_or_si256(_mm256_and_si256(lm, low), _mm256_and_si256(hi, top));
    let m1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(lm), low), _mm256_and_si256(_mm256_srli_epi16::<2>(hi), top));
    ([sc0, sc1], [m0, m1])
}

/// Sub-block `s`'s values of `v` (from [`scales_mins`]) as the i16 pairs of each row.
#[inline(always)]
unsafe fn pairs(v: &[__m256i; 2], s: usize) -> __m256i {
    _mm256_shuffle_epi8(v[s / 4], ld256(PAIR[s % 4].as_ptr() as *const u8))
}

/// Bytes of a panel's super-block: q5_K's when `FIVE`, else q4_K's.
pub(super) const fn block<const FIVE: bool>() -> usize {
    if FIVE {
        BLOCK5
    } else {
        BLOCK
    }
}

/// Quant vector `8j + i` of the super-block at `wb` split into its low and high
/// quants, a byte each: the nibbles, and for q5_K (`FIVE`) their fifth bits,
/// bits `2j` and `2j + 1` of fifth-bit vector `i`, moved to bit 4.
#[inline(always)]
unsafe fn quants<const FIVE: bool>(wb: *const u8, j: usize, i: usize) -> (__m256i, __m256i) {
    let low = _mm256_set1_epi8(0x0F);
    let v = ld256(wb.add(QS + 32 * (8 * j + i)));
    let (wl, wh) = (_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16::<4>(v), low));
    if !FIVE {
        return (wl, wh);
    }
    // 16-bit shifts: bits 2j and 2j + 1 of each byte stay in their byte.
    let h = _mm256_srl_epi16(ld256(wb.add(QH + 32 * i)), _mm_cvtsi32_si128(2 * j as i32));
    let bit4 = _mm256_set1_epi8(0x10);
    (
        _mm256_or_si256(wl, _mm256_and_si256(_mm256_slli_epi16::<4>(h), bit4)),
        _mm256_or_si256(wh, _mm256_and_si256(_mm256_slli_epi16::<3>(h), bit4)),
    )
}

/// The tile: `res[t][r] = vec_dot(row r, token t)` for `T` tokens.
///
/// # Safety
/// AVX2, FMA and F16C; `x.panel` is a resident q5_K (`FIVE`) or q4_K panel of
/// `x.nb` super-blocks and `x` holds `T` q8_K activation rows of as many.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile<const T: usize, const FIVE: bool>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    let bk = block::<FIVE>();
    // Groups whose pair sums add up in i16 before widening (see the module docs).
    let run = if FIVE { 4 } else { 8 };
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..x.nb {
        let wb = x.panel.add(b * bk);
        // Spread over the chunks: the header's two lines now, each chunk's share below.
        let ahead = wb.wrapping_add(AHEAD * bk);
        prefetch_lines(ahead, QS);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let (sc, mn) = scales_mins(wb);
        let mut isum = [_mm256_setzero_si256(); T];
        for j in 0..4 {
            // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
            prefetch_lines(ahead.wrapping_add(QS + (bk - QS) / 4 * j), (bk - QS) / 4);
            let (s0, s1) = (pairs(&sc, 2 * j), pairs(&sc, 2 * j + 1));
            for i0 in (0..8).step_by(run) {
                let (mut lo, mut hi) = ([_mm256_setzero_si256(); T], [_mm256_setzero_si256(); T]);
                for i in i0..i0 + run {
                    let (wl, wh) = quants::<FIVE>(wb, j, i);
                    for t in 0..T {
                        let y = ab[t].add(Q8K_QS + 64 * j + 4 * i);
                        lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, bcast4(y)));
                        hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, bcast4(y.add(32))));
                    }
                }
                for t in 0..T {
                    let s = _mm256_add_epi32(_mm256_madd_epi16(lo[t], s0), _mm256_madd_epi16(hi[t], s1));
                    isum[t] = _mm256_add_epi32(isum[t], s);
                }
            }
        }
        let mut mins = [_mm256_setzero_si256(); 8];
        for (s, m) in mins.iter_mut().enumerate() {
            *m = pairs(&mn, s);
        }
        let d = load_f16(wb.add(D) as *const f16);
        let dmin = load_f16(wb.add(DMIN) as *const f16);
        q4_k_finish(&mins, d, dmin, &ab, &isum, &mut acc);
    }
    for t in 0..T {
        _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}

/// A resident q5_K (`FIVE`) or q4_K panel of `nb` super-blocks into the per-call
/// layout (`pack_panel`'s bytes for the same rows): a byte per quant, `d` and
/// `dmin` as f32 (exact), each sub-block's scales and mins as i16 pairs.
///
/// # Safety
/// AVX2, FMA and F16C; `panel` is a resident panel of `nb` super-blocks of
/// that type.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn widen<const FIVE: bool>(panel: *const u8, nb: usize, out: &mut [u8]) {
    let ty = if FIVE { GgmlType::Q5K } else { GgmlType::Q4K };
    let l = panel_layout(ty).expect("q4_K and q5_K have a panel layout");
    assert!(out.len() >= nb * l.stride, "widen: output too small");
    for b in 0..nb {
        let (wb, o) = (panel.add(b * block::<FIVE>()), out.as_mut_ptr().add(b * l.stride));
        for j in 0..4 {
            for i in 0..8 {
                let (wl, wh) = quants::<FIVE>(wb, j, i);
                st256(o, 32 * (16 * j + i), wl);
                st256(o, 32 * (16 * j + 8 + i), wh);
            }
        }
        _mm256_storeu_ps(o.add(l.d) as *mut f32, load_f16(wb.add(D) as *const f16));
        _mm256_storeu_ps(o.add(l.dmin) as *mut f32, load_f16(wb.add(DMIN) as *const f16));
        let (sc, mn) = scales_mins(wb);
        for s in 0..8 {
            st256(o, l.sc + 32 * s, pairs(&sc, s));
            st256(o, l.sc2 + 32 * s, pairs(&mn, s));
        }
    }
}

