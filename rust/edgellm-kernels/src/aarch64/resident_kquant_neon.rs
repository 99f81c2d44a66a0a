//! NEON tiles of the k-quants (q4_K, q5_K, q6_K) on resident panels
//! ([`crate::quant::resident::q45_k`], [`crate::quant::resident::q6_k`]):
//! decode and prompts alike read the file-sized panels, unpacking quants and
//! scales in registers.
//!
//! The resident layouts keep rows 0-3 in the first 16 bytes of every 32-byte
//! vector and rows 4-7 in the second, the halves a NEON register holds, so the
//! per-call tiles' scheme carries over: one 4-byte activation group broadcast
//! and dotted (`sdot`, or `smull` + pairwise adds) with each half leaves every
//! row's sum in its own i32 lane. q4_K/q5_K: the 6-bit scales and mins are
//! decoded once per super-block (a few masks and shifts per half), and one
//! table lookup per sub-block zero-extends its four rows' values into i32
//! lanes. q6_K: each 6-bit quant is a nibble ORed with its two high bits; the
//! i8 scales of a pair of sub-blocks are split by one unzip. The integer sums
//! and the float steps per super-block are those of the per-call tiles
//! ([`super::qgemm_kquant_neon`]), so the results are bit-identical to the
//! scalar `vec_dot`.

use super::qgemm_kquant_neon::{act_d, add_scaled, bsum, dot_groups, finish_k4, finish_k6, mlal_rows, store, widen_rows};
use super::quant_neon::imp::resident_scales;
use crate::quant::blocks::Q8K_QS;
use crate::quant::qgemm::{by_tokens, PanelTile};
use crate::quant::resident::{q45_k, q6_k};
use core::arch::aarch64::*;

/// Table-lookup masks: from a decoded half (byte `4q + r` = row `r`'s value of
/// a sub-block in slot `q`), mask `q` zero-extends slot `q`'s four values into
/// the i32 lanes of rows 0-3 (indices past 15 read as zero).
const LANES: [[u8; 16]; 4] = {
    let mut m = [[0xFFu8; 16]; 4];
    let mut q = 0;
    while q < 4 {
        let mut r = 0;
        while r < 4 {
            m[q][4 * r] = (4 * q + r) as u8;
            r += 1;
        }
        q += 1;
    }
    m
};

/// Sub-block `s`'s values of one half (from [`scales_mins`]) as i32 lanes.
#[inline(always)]
unsafe fn lanes(v: &[uint8x16_t; 2], s: usize) -> int32x4_t {
    vreinterpretq_s32_u8(vqtbl1q_u8(v[s / 4], vld1q_u8(LANES[s % 4].as_ptr())))
}

/// Half `h` (rows `4h ..`) of a q4_K/q5_K super-block's scales and mins: per
/// value, sub-blocks 0-3 then 4-7, byte `4 (s % 4) + r` for row `4h + r`.
#[inline(always)]
unsafe fn scales_mins(wb: *const u8, h: usize) -> ([uint8x16_t; 2], [uint8x16_t; 2]) {
    let ld = |o: usize| vld1q_u8(wb.add(o + 16 * h));
    let (lsc, lm, hi) = (ld(q45_k::LSC), ld(q45_k::LM), ld(q45_k::HI));
    let (low, top) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x30));
    let sc0 = vorrq_u8(vandq_u8(lsc, low), vshlq_n_u8::<4>(vandq_u8(hi, vdupq_n_u8(0x03))));
    let sc1 = vorrq_u8(vshrq_n_u8::<4>(lsc), vshlq_n_u8::<2>(vandq_u8(hi, vdupq_n_u8(0x0C))));
    let m0 = vorrq_u8(vandq_u8(lm, low), vandq_u8(hi, top));
    let m1 = vorrq_u8(vshrq_n_u8::<4>(lm), vandq_u8(vshrq_n_u8::<2>(hi), top));
    ([sc0, sc1], [m0, m1])
}

/// Sub-block `2j + e` of quant vector `8j + u`, half `h`: its low nibbles
/// (`e` = 0) or high ones, with q5_K's fifth bits (`FIVE`: bit `2j + e` of
/// fifth-bit vector `u`) at bit 4.
#[inline(always)]
unsafe fn q45_quants<const FIVE: bool>(wb: *const u8, j: usize, u: usize, e: usize, h: usize) -> int8x16_t {
    let v = vld1q_u8(wb.add(q45_k::QS + 32 * (8 * j + u) + 16 * h));
    let q = if e == 0 { vandq_u8(v, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(v) };
    if !FIVE {
        return vreinterpretq_s8_u8(q);
    }
    let bits = vld1q_u8(wb.add(q45_k::QH + 32 * u + 16 * h));
    // Bit 2j + e to bit 4 (a negative count shifts right).
    let b4 = vandq_u8(vshlq_u8(bits, vdupq_n_s8(4 - (2 * j + e) as i8)), vdupq_n_u8(0x10));
    vreinterpretq_s8_u8(vorrq_u8(q, b4))
}

/// q4_K (`FIVE` false) and q5_K.
#[inline(always)]
unsafe fn q45_k<const DOT: bool, const FIVE: bool, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
    let bk = if FIVE { q45_k::BLOCK5 } else { q45_k::BLOCK };
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for b in 0..x.nb {
        let wb = x.panel.add(b * bk);
        let ab = x.q8k_blocks::<T>(b);
        let (sm0, sm1) = (scales_mins(wb, 0), scales_mins(wb, 1));
        let (sc, mn) = ([sm0.0, sm1.0], [sm0.1, sm1.1]);
        let mut isum = [[vdupq_n_s32(0); 2]; T];
        for sb in 0..8 {
            let (j, e) = (sb / 2, sb % 2);
            let quants = |u| [q45_quants::<FIVE>(wb, j, u, e, 0), q45_quants::<FIVE>(wb, j, u, e, 1)];
            let s = dot_groups::<DOT, T>(8, quants, ab.map(|a| a.add(Q8K_QS + 32 * sb)));
            add_scaled(&mut isum, &s, [lanes(&sc[0], sb), lanes(&sc[1], sb)]);
        }
        let mut msum = [[vdupq_n_s32(0); 2]; T];
        for sb in 0..8 {
            let m = [lanes(&mn[0], sb), lanes(&mn[1], sb)];
            for t in 0..T {
                // The min meets the sub-block's two 16-element activation sums.
                let bs = bsum(ab[t], 2 * sb) as i32 + bsum(ab[t], 2 * sb + 1) as i32;
                for h in 0..2 {
                    msum[t][h] = vmlaq_n_s32(msum[t][h], m[h], bs);
                }
            }
        }
        let (d, dmin) = (resident_scales(wb.add(q45_k::D)), resident_scales(wb.add(q45_k::DMIN)));
        for t in 0..T {
            finish_k4(d, dmin, act_d(ab[t]), isum[t], msum[t], &mut acc[t]);
        }
    }
    store(&acc, res)
}

/// Quarter `s` of half `n` of a q6_K super-block, group `i` (elements
/// `128n + 32s + 4i ..`), rows `4h ..`: nibble vector `16n + 8 (s % 2) + i`
/// (its high nibbles for `s ≥ 2`) with bits `2s, 2s + 1` of high-bit vector
/// `8n + i` above them.
#[inline(always)]
unsafe fn q6_quants(wb: *const u8, n: usize, s: usize, i: usize, h: usize) -> int8x16_t {
    let l = vld1q_u8(wb.add(q6_k::QL + 32 * (16 * n + 8 * (s % 2) + i) + 16 * h));
    let hb = vld1q_u8(wb.add(q6_k::QH + 32 * (8 * n + i) + 16 * h));
    let l = if s < 2 { vandq_u8(l, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(l) };
    // Bits 2s, 2s + 1 to bits 4-5 (a negative count shifts right).
    let top = vandq_u8(vshlq_u8(hb, vdupq_n_s8(4 - 2 * s as i8)), vdupq_n_u8(0x30));
    vreinterpretq_s8_u8(vorrq_u8(l, top))
}

/// q6_K.
#[inline(always)]
unsafe fn q6_k<const DOT: bool, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for b in 0..x.nb {
        let wb = x.panel.add(b * q6_k::BLOCK);
        let ab = x.q8k_blocks::<T>(b);
        let mut isum = [[vdupq_n_s32(0); 2]; T];
        let mut off = [[vdupq_n_s32(0); 2]; T];
        for n in 0..2 {
            for s in 0..4 {
                // Sub-blocks 8n + 2s + e; byte 2r + e of the pair is row r's scale.
                let pair = vld1q_s8(wb.add(q6_k::SC + 16 * (4 * n + s)) as *const i8);
                let by_e = [vuzp1q_s8(pair, pair), vuzp2q_s8(pair, pair)];
                for (e, sc8) in by_e.into_iter().enumerate() {
                    // Groups 4e .. 4e + 4 of the quarter: sub-block 8n + 2s + e.
                    let quants = |g| [q6_quants(wb, n, s, 4 * e + g, 0), q6_quants(wb, n, s, 4 * e + g, 1)];
                    let acc_s = dot_groups::<DOT, T>(4, quants, ab.map(|a| a.add(Q8K_QS + 128 * n + 32 * s + 16 * e)));
                    let sc16 = vmovl_s8(vget_low_s8(sc8));
                    let sc = widen_rows(sc16);
                    let j = 8 * n + 2 * s + e;
                    add_scaled(&mut isum, &acc_s, sc);
                    for t in 0..T {
                        mlal_rows(&mut off[t], sc16, bsum(ab[t], j));
                    }
                }
            }
        }
        let d = resident_scales(wb.add(q6_k::D));
        for t in 0..T {
            finish_k6(d, act_d(ab[t]), isum[t], off[t], &mut acc[t]);
        }
    }
    store(&acc, res)
}

macro_rules! levels {
    ($($dot:ident, $neon:ident => $kernel:ident $(, $five:literal)?;)*) => {$(
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $dot<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
            $kernel::<true, $($five,)? T>(x, res)
        }
        #[target_feature(enable = "neon")]
        unsafe fn $neon<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
            $kernel::<false, $($five,)? T>(x, res)
        }
    )*};
}

levels! {
    q4_k_dot, q4_k_neon => q45_k, false;
    q5_k_dot, q5_k_neon => q45_k, true;
    q6_k_dot, q6_k_neon => q6_k;
}

/// The k-quants' resident weight types, as [`tile`] takes them.
#[derive(Clone, Copy)]
pub(super) enum KQuant {
    Q4K,
    Q5K,
    Q6K,
}

/// A resident tile of 1..=4 tokens, with `sdot` (`dot`, only where the CPU has
/// dotprod) or without.
///
/// # Safety
/// As [`crate::quant::qgemm::ResidentKernels::resident_tile`]: `x.panel` is a
/// resident panel of `x.nb` super-blocks of `ty`, `x` holds `tokens` q8_K rows.
pub(super) unsafe fn tile(ty: KQuant, dot: bool, x: &PanelTile, tokens: usize, res: &mut [[f32; 8]; 4]) {
    match (ty, dot) {
        (KQuant::Q4K, true) => by_tokens!(q4_k_dot, tokens, x, res),
        (KQuant::Q4K, false) => by_tokens!(q4_k_neon, tokens, x, res),
        (KQuant::Q5K, true) => by_tokens!(q5_k_dot, tokens, x, res),
        (KQuant::Q5K, false) => by_tokens!(q5_k_neon, tokens, x, res),
        (KQuant::Q6K, true) => by_tokens!(q6_k_dot, tokens, x, res),
        (KQuant::Q6K, false) => by_tokens!(q6_k_neon, tokens, x, res),
    }
}
