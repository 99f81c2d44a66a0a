//! Kernels on resident q6_K panels ([`crate::quant::resident::q6_k`]): the
//! tile of up to 4 tokens (decode, short prompts), on one panel in 256-bit
//! registers (AVX2) or two in 512-bit ones (AVX-512, [`super::lanes`]), and
//! the widening into the per-call layout, whose tile then serves longer
//! prompts.
//!
//! Per half of a super-block and pair of 4-element groups: each 6-bit quant
//! vector put together from a nibble vector and a high-bit vector (an AND or a
//! shift and an AND each, then an OR), multiplied with the token's 4
//! activation bytes, broadcast (`vpmaddubsw`); two groups' pair sums stay in i16
//! (4 products of a 6-bit quant and an i8: at most 4 · 63 · 128), then
//! `vpmaddwd` by the sub-block's scales reduces each row to its i32 lane. The
//! −32 offset of every quant is `32 · Σ scale · bsum` over the activation's
//! 16-element sums, subtracted from the same i32 sum: the scalar `vec_dot`'s
//! exact integer, then its float steps, so bit-identical to it.

use super::lanes::{Lanes, Pair, Ymm};
use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::quant::qgemm::{panel_layout, PairResults, PanelTile, PANEL, TILE_TOKENS};
use crate::quant::resident::q6_k::{BLOCK, D, QH, QL, SC};
use crate::quant::GgmlType;
use crate::x86::simd::{ld256, load_f16, st256};
use core::arch::x86_64::*;
use half::f16;

/// Super-blocks ahead of the one being read that the tile prefetches (3.3 KiB).
const AHEAD: usize = 2;

/// Byte shuffles of a pair's widened scales (i16 lanes `2r + e`: row `r`'s scale
/// of sub-block `2p + e`, per 128-bit lane): [`EVEN`] gives each row's scale of
/// sub-block `2p` in both of its lanes, [`ODD`] that of `2p + 1`.
const EVEN: [u8; 32] = pick(0);
const ODD: [u8; 32] = pick(2);

const fn pick(at: u8) -> [u8; 32] {
    let mut m = [0u8; 32];
    let mut b = 0;
    while b < 32 {
        // Byte b of i16 lane b / 2 (within the 128-bit lane): row (b % 16) / 4.
        m[b] = 4 * ((b % 16) / 4) as u8 + at + (b % 2) as u8;
        b += 1;
    }
    m
}

/// The scales of sub-blocks `2p` and `2p + 1` of the super-block at `w`, as
/// i16 pairs (`(2p, 2p + 1)` per row).
#[inline(always)]
unsafe fn scale_pair<L: Lanes>(w: L, p: usize) -> L::I {
    w.ld_i8_i16(SC + 16 * p)
}

/// Quarter `s` (elements `128n + 32s + 4i ..`) of the eight rows: nibble vector
/// `16n + 8 (s % 2) + i` (its high nibbles for `s ≥ 2`) with bits `2s, 2s + 1`
/// of high-bit vector `8n + i` above them.
#[inline(always)]
unsafe fn quants<L: Lanes>(w: L, n: usize, s: usize, i: usize) -> L::I {
    let (low, top) = (L::splat8(0x0F), L::splat8(0x30));
    let l = w.ld(QL + 32 * (16 * n + 8 * (s % 2) + i));
    let h = w.ld(QH + 32 * (8 * n + i));
    // 16-bit shifts: every field is masked after its shift, so no bit crosses bytes.
    let (l, h) = match s {
        0 => (L::and(l, low), L::and(L::shl16(h, 4), top)),
        1 => (L::and(l, low), L::and(L::shl16(h, 2), top)),
        2 => (L::and(L::shr16(l, 4), low), L::and(h, top)),
        _ => (L::and(L::shr16(l, 4), low), L::and(L::shr16(h, 2), top)),
    };
    L::or(l, h)
}

/// The tile: `res[t][r] = vec_dot(row r, token t)` for `T` tokens.
///
/// # Safety
/// AVX2, FMA and F16C; `x.panel` is a resident q6_K panel of `x.nb`
/// super-blocks and `x` holds `T` q8_K activation rows of as many.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile<const T: usize>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile_of::<Ymm, T>(Ymm(x.panel), x, res)
}

/// [`tile`] on the panel of `x` (rows `0..8`) and the one at `second` (rows
/// `8..16`) at once, in 512-bit registers: the same bits, half the
/// instructions per weight byte. Decode reads every weight once per token, and
/// the 256-bit tile issued about as many instructions per byte as the core
/// can while memory streams (hot-row GB/s on Emerald Rapids 26.3 → 33.6).
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL; `x.panel` and `second` are resident
/// q6_K panels of `x.nb` super-blocks, and `x` holds `T` q8_K rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile_pair<const T: usize>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    tile_of::<Pair, T>(Pair(x.panel, second), x, res)
}

/// The body of [`tile`] and [`tile_pair`]: the panel(s) at `panel`, `x`'s tokens.
#[inline(always)]
unsafe fn tile_of<L: Lanes, const T: usize>(panel: L, x: &PanelTile, res: &mut L::Results) {
    let (even, odd) = (L::mask(&EVEN), L::mask(&ODD));
    let mut acc = [L::zero_ps(); T];
    for b in 0..x.nb {
        let w = panel.add(b * BLOCK);
        let ahead = w.wrapping_add(AHEAD * BLOCK);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let mut isum = [L::zero(); T];
        for n in 0..2 {
            // This half's share of a later super-block.
            ahead.wrapping_add(n * BLOCK / 2).prefetch(BLOCK / 2);
            for s in 0..4 {
                // Sub-blocks 8n + 2s (groups i < 4) and 8n + 2s + 1 (i ≥ 4).
                let p = 4 * n + s;
                let pair = scale_pair(w, p);
                for (half, shuf) in [even, odd].into_iter().enumerate() {
                    let sc = L::shuffle8(pair, shuf);
                    for i in (4 * half..4 * half + 4).step_by(2) {
                        let (w0, w1) = (quants(w, n, s, i), quants(w, n, s, i + 1));
                        for t in 0..T {
                            let y = ab[t].add(Q8K_QS + 128 * n + 32 * s + 4 * i);
                            let s16 = L::add16(L::maddubs(w0, L::bcast4(y)), L::maddubs(w1, L::bcast4(y.add(4))));
                            isum[t] = L::add32(isum[t], L::madd(s16, sc));
                        }
                    }
                }
                // The −32 offset of the pair's 32 quants: 32 · scale · bsum, subtracted.
                let pair32 = L::shl16(pair, 5);
                for t in 0..T {
                    let off = L::madd(pair32, L::bcast4(ab[t].add(Q8K_BSUMS + 4 * p)));
                    isum[t] = L::sub32(isum[t], off);
                }
            }
        }
        let d = w.ld_f16(D);
        for t in 0..T {
            let da = L::splat_ps((ab[t] as *const f32).read_unaligned());
            acc[t] = L::add_ps(acc[t], L::mul_ps(L::mul_ps(d, da), L::to_ps(isum[t])));
        }
    }
    for (t, &a) in acc.iter().enumerate() {
        L::store(res, t, a);
    }
}

/// A resident q6_K panel of `nb` super-blocks into the per-call layout
/// (`pack_panel`'s bytes for the same rows): a byte per 6-bit quant, `d` as f32
/// (exact), each sub-block's scale as i16 pairs, and the scales of each pair
/// of sub-blocks as i16 pairs.
///
/// # Safety
/// AVX2, FMA and F16C; `panel` is a resident q6_K panel of `nb` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn widen(panel: *const u8, nb: usize, out: &mut [u8]) {
    let l = panel_layout(GgmlType::Q6K).expect("q6_K has a panel layout");
    assert!(out.len() >= nb * l.stride, "widen: output too small");
    let (even, odd) = (ld256(EVEN.as_ptr()), ld256(ODD.as_ptr()));
    for b in 0..nb {
        let (wb, o) = (panel.add(b * BLOCK), out.as_mut_ptr().add(b * l.stride));
        for n in 0..2 {
            for s in 0..4 {
                for i in 0..8 {
                    // Per-call group 32n + 8s + i: elements 128n + 32s + 4i ...
                    st256(o, 32 * (32 * n + 8 * s + i), quants(Ymm(wb), n, s, i));
                }
            }
        }
        _mm256_storeu_ps(o.add(l.d) as *mut f32, load_f16(wb.add(D) as *const f16));
        for p in 0..8 {
            let pair = scale_pair(Ymm(wb), p);
            st256(o, l.sc2 + 32 * p, pair);
            st256(o, l.sc + 32 * (2 * p), _mm256_shuffle_epi8(pair, even));
            st256(o, l.sc + 32 * (2 * p + 1), _mm256_shuffle_epi8(pair, odd));
        }
    }
}

