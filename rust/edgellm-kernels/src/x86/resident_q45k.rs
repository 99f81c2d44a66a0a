//! Kernels on resident q4_K and q5_K panels
//! ([`crate::quant::resident::q45_k`]): the tile of up to 4 tokens (decode,
//! short prompts), on one panel in 256-bit registers (AVX2) or two in 512-bit
//! ones (AVX-512, [`super::lanes`]), and the widening into the per-call layout,
//! whose tile then serves longer prompts.
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

use super::lanes::{Lanes, Pair, Ymm};
use super::qgemm_avx2::q4_k_finish;
use crate::quant::blocks::Q8K_QS;
use crate::quant::qgemm::{panel_layout, PairResults, PanelTile, PANEL, TILE_TOKENS};
use crate::quant::resident::q45_k::{BLOCK, BLOCK5, D, DMIN, HI, LM, LSC, QH, QS};
use crate::quant::GgmlType;
use crate::x86::simd::{load_f16, st256};
use core::arch::x86_64::*;
use half::f16;

/// Super-blocks ahead of the one being read that the tile prefetches (2.25 KiB,
/// as the q4_0/q8_0 resident tiles).
const AHEAD: usize = 2;

/// Byte-shuffle masks: from a decoded vector (per 128-bit lane, byte
/// `4 (s % 4) + r % 4` holds row `r`'s value of sub-block `s`), mask `s % 4`
/// puts sub-block `s`'s values at i16 lanes `2r` and `2r + 1`, those of row `r`'s
/// pair sums (zero-extended: the values are below 64).
const PAIR: [[u8; 32]; 4] = {
    let mut m = [[0u8; 32]; 4];
    let mut q = 0;
    while q < 4 {
        let mut b = 0;
        while b < 32 {
            let r = (b % 16) / 4;
            m[q][b] = if b % 2 == 0 { (4 * q + r) as u8 } else { 0x80 };
            b += 1;
        }
        q += 1;
    }
    m
};

/// The super-block's 64 scales and 64 mins: `[sub-blocks 0-3, 4-7]` of each, one
/// byte per (row, sub-block) in [`PAIR`]'s order.
#[inline(always)]
unsafe fn scales_mins<L: Lanes>(w: L) -> ([L::I; 2], [L::I; 2]) {
    let (lsc, lm, hi) = (w.ld(LSC), w.ld(LM), w.ld(HI));
    let (low, top) = (L::splat8(0x0F), L::splat8(0x30));
    // 16-bit shifts: every field is masked after its shift, so no bit crosses bytes.
    let sc0 = L::or(L::and(lsc, low), L::shl16(L::and(hi, L::splat8(0x03)), 4));
    let sc1 = L::or(L::and(L::shr16(lsc, 4), low), L::shl16(L::and(hi, L::splat8(0x0C)), 2));
    let m0 = L::or(L::and(lm, low), L::and(hi, top));
    let m1 = L::or(L::and(L::shr16(lm, 4), low), L::and(L::shr16(hi, 2), top));
    ([sc0, sc1], [m0, m1])
}

/// Sub-block `s`'s values of `v` (from [`scales_mins`]) as the i16 pairs of each row.
#[inline(always)]
unsafe fn pairs<L: Lanes>(v: &[L::I; 2], s: usize) -> L::I {
    L::shuffle8(v[s / 4], L::mask(&PAIR[s % 4]))
}

/// Bytes of a panel's super-block: q5_K's when `FIVE`, else q4_K's.
const fn block<const FIVE: bool>() -> usize {
    if FIVE {
        BLOCK5
    } else {
        BLOCK
    }
}

/// Quant vector `8j + i` of the super-block at `w` split into its low and high
/// quants, a byte each: the nibbles, and for q5_K (`FIVE`) their fifth bits,
/// bits `2j` and `2j + 1` of fifth-bit vector `i`, moved to bit 4.
#[inline(always)]
unsafe fn quants<L: Lanes, const FIVE: bool>(w: L, j: usize, i: usize) -> (L::I, L::I) {
    let low = L::splat8(0x0F);
    let v = w.ld(QS + 32 * (8 * j + i));
    let (wl, wh) = (L::and(v, low), L::and(L::shr16(v, 4), low));
    if !FIVE {
        return (wl, wh);
    }
    // 16-bit shifts: bits 2j and 2j + 1 of each byte stay in their byte.
    let h = L::shr16(w.ld(QH + 32 * i), 2 * j as i32);
    let bit4 = L::splat8(0x10);
    (L::or(wl, L::and(L::shl16(h, 4), bit4)), L::or(wh, L::and(L::shl16(h, 3), bit4)))
}

/// The tile: `res[t][r] = vec_dot(row r, token t)` for `T` tokens.
///
/// # Safety
/// AVX2, FMA and F16C; `x.panel` is a resident q5_K (`FIVE`) or q4_K panel of
/// `x.nb` super-blocks and `x` holds `T` q8_K activation rows of as many.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile<const T: usize, const FIVE: bool>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile_of::<Ymm, T, FIVE>(Ymm(x.panel), x, res)
}

/// [`tile`] on the panel of `x` (rows `0..8`) and the one at `second` (rows
/// `8..16`) at once, in 512-bit registers: the same bits, half the instructions
/// per weight byte (decode: hot-row GB/s on Emerald Rapids q4_K 32.9 → 41.5,
/// q5_K 21.8 → 31.6).
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL; `x.panel` and `second` are resident
/// panels of that type of `x.nb` super-blocks, and `x` holds `T` q8_K rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile_pair<const T: usize, const FIVE: bool>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    tile_of::<Pair, T, FIVE>(Pair(x.panel, second), x, res)
}

/// The body of [`tile`] and [`tile_pair`]: the panel(s) at `panel`, `x`'s tokens.
#[inline(always)]
unsafe fn tile_of<L: Lanes, const T: usize, const FIVE: bool>(panel: L, x: &PanelTile, res: &mut L::Results) {
    let bk = block::<FIVE>();
    // Groups whose pair sums add up in i16 before widening (see the module docs).
    let run = if FIVE { 4 } else { 8 };
    let mut acc = [L::zero_ps(); T];
    for b in 0..x.nb {
        let w = panel.add(b * bk);
        // Spread over the chunks: the header's two lines now, each chunk's share below.
        let ahead = w.wrapping_add(AHEAD * bk);
        ahead.prefetch(QS);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let (sc, mn) = scales_mins(w);
        let mut isum = [L::zero(); T];
        for j in 0..4 {
            // Sub-blocks 2j (low nibbles) and 2j + 1 (high nibbles).
            let share = (bk - QS) / 4;
            ahead.wrapping_add(QS + share * j).prefetch(share);
            let (s0, s1) = (pairs::<L>(&sc, 2 * j), pairs::<L>(&sc, 2 * j + 1));
            for i0 in (0..8).step_by(run) {
                let (mut lo, mut hi) = ([L::zero(); T], [L::zero(); T]);
                for i in i0..i0 + run {
                    let (wl, wh) = quants::<L, FIVE>(w, j, i);
                    for t in 0..T {
                        let y = ab[t].add(Q8K_QS + 64 * j + 4 * i);
                        lo[t] = L::add16(lo[t], L::maddubs(wl, L::bcast4(y)));
                        hi[t] = L::add16(hi[t], L::maddubs(wh, L::bcast4(y.add(32))));
                    }
                }
                for t in 0..T {
                    isum[t] = L::add32(isum[t], L::add32(L::madd(lo[t], s0), L::madd(hi[t], s1)));
                }
            }
        }
        // A loop, not `array::from_fn`: a closure's intrinsics may be left as calls.
        let mut mins = [L::zero(); 8];
        for (s, m) in mins.iter_mut().enumerate() {
            *m = pairs::<L>(&mn, s);
        }
        q4_k_finish::<L, T>(&mins, w.ld_f16(D), w.ld_f16(DMIN), &ab, &isum, &mut acc);
    }
    for (t, &a) in acc.iter().enumerate() {
        L::store(res, t, a);
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
                let (wl, wh) = quants::<Ymm, FIVE>(Ymm(wb), j, i);
                st256(o, 32 * (16 * j + i), wl);
                st256(o, 32 * (16 * j + 8 + i), wh);
            }
        }
        _mm256_storeu_ps(o.add(l.d) as *mut f32, load_f16(wb.add(D) as *const f16));
        _mm256_storeu_ps(o.add(l.dmin) as *mut f32, load_f16(wb.add(DMIN) as *const f16));
        let (sc, mn) = scales_mins(Ymm(wb));
        for s in 0..8 {
            st256(o, l.sc + 32 * s, pairs::<Ymm>(&sc, s));
            st256(o, l.sc2 + 32 * s, pairs::<Ymm>(&mn, s));
        }
    }
}

