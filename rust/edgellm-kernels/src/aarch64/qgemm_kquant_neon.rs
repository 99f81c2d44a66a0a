//! NEON prompt tiles of the k-quants (q4_K, q5_K, q6_K) on per-call panels
//! ([`crate::quant::qgemm`]'s `pack_panel` layout: a byte per quant, 4 bytes of
//! each of the 8 rows per 32-byte group), against q8_K activations.
//!
//! Rows 0-3 sit in the first 16 bytes of a group and rows 4-7 in the second, so
//! one 4-byte activation group broadcast to all lanes and dotted (`sdot`, or
//! `smull` + pairwise adds without dotprod) with each half leaves every row's
//! sum in its own i32 lane. Quants are below 64, so the signed dot is exact.
//! Per sub-block the integer sums are scaled in i32 (`scale · Σ q·a`), the
//! q4_K/q5_K mins and q6_K's −32 offset meet the activation's 16-element sums,
//! and each super-block ends with the scalar `vec_dot`'s f32 steps in its
//! order: the tiles are bit-identical to it.

use super::quant_neon::imp::dot4;
use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::quant::qgemm::{by_tokens, PanelTile};
use core::arch::aarch64::*;

/// A 4-byte activation group at `p`, broadcast to the four lanes.
#[inline(always)]
unsafe fn act4(p: *const u8) -> int8x16_t {
    vreinterpretq_s8_s32(vld1q_dup_s32(p as *const i32))
}

/// The activation's 16-element sum `j` of the super-block at `ab`.
#[inline(always)]
pub(super) unsafe fn bsum(ab: *const u8, j: usize) -> i16 {
    (ab.add(Q8K_BSUMS + 2 * j) as *const i16).read_unaligned()
}

/// The activation block's scale `d`.
#[inline(always)]
pub(super) unsafe fn act_d(ab: *const u8) -> float32x4_t {
    vdupq_n_f32((ab as *const f32).read_unaligned())
}

/// One of `pack_panel`'s i16 tables (lanes `2r` and `2r + 1` = row `r`'s value):
/// the eight rows' values, lane `r`.
#[inline(always)]
unsafe fn rows_i16(p: *const u8) -> int16x8_t {
    vld2q_s16(p as *const i16).0
}

/// Eight rows' i16 values as i32, rows 0-3 and 4-7.
#[inline(always)]
pub(super) unsafe fn widen_rows(v: int16x8_t) -> [int32x4_t; 2] {
    [vmovl_s16(vget_low_s16(v)), vmovl_high_s16(v)]
}

/// `acc += v · c` for the eight rows of `v` (rows 0-3 into `acc[0]`).
#[inline(always)]
pub(super) unsafe fn mlal_rows(acc: &mut [int32x4_t; 2], v: int16x8_t, c: i16) {
    acc[0] = vmlal_n_s16(acc[0], vget_low_s16(v), c);
    acc[1] = vmlal_high_n_s16(acc[1], v, c);
}

/// The end of a q4_K/q5_K super-block, as the scalar `vec_dot`:
/// `acc += (d · da) · isum − (dmin · da) · msum` per row.
#[inline(always)]
pub(super) unsafe fn finish_k4(
    d: [float32x4_t; 2],
    dmin: [float32x4_t; 2],
    da: float32x4_t,
    isum: [int32x4_t; 2],
    msum: [int32x4_t; 2],
    acc: &mut [float32x4_t; 2],
) {
    for h in 0..2 {
        let x = vmulq_f32(vmulq_f32(d[h], da), vcvtq_f32_s32(isum[h]));
        let m = vmulq_f32(vmulq_f32(dmin[h], da), vcvtq_f32_s32(msum[h]));
        acc[h] = vaddq_f32(acc[h], vsubq_f32(x, m));
    }
}

/// The end of a q6_K super-block: `acc += (d · da) · (isum − 32 · off)` per row,
/// `off = Σ scale · bsum` (the −32 of every quant, inside the exact sum).
#[inline(always)]
pub(super) unsafe fn finish_k6(
    d: [float32x4_t; 2],
    da: float32x4_t,
    isum: [int32x4_t; 2],
    off: [int32x4_t; 2],
    acc: &mut [float32x4_t; 2],
) {
    for h in 0..2 {
        let i = vsubq_s32(isum[h], vshlq_n_s32::<5>(off[h]));
        acc[h] = vaddq_f32(acc[h], vmulq_f32(vmulq_f32(d[h], da), vcvtq_f32_s32(i)));
    }
}

/// Stores `T` tokens' eight row sums.
#[inline(always)]
pub(super) unsafe fn store<const T: usize>(acc: &[[float32x4_t; 2]; T], res: &mut [[f32; 8]; 4]) {
    for t in 0..T {
        vst1q_f32(res[t].as_mut_ptr(), acc[t][0]);
        vst1q_f32(res[t].as_mut_ptr().add(4), acc[t][1]);
    }
}

/// `n` 4-element groups of the eight rows (`w(g)`: rows 0-3, rows 4-7) dotted
/// with each token's groups at `a[t] + 4g`: per token, every row's exact sum.
#[inline(always)]
pub(super) unsafe fn dot_groups<const DOT: bool, const T: usize>(
    n: usize,
    w: impl Fn(usize) -> [int8x16_t; 2],
    a: [*const u8; T],
) -> [[int32x4_t; 2]; T] {
    let mut s = [[vdupq_n_s32(0); 2]; T];
    for g in 0..n {
        let w = w(g);
        for t in 0..T {
            let y = act4(a[t].add(4 * g));
            s[t][0] = dot4::<DOT>(s[t][0], w[0], y);
            s[t][1] = dot4::<DOT>(s[t][1], w[1], y);
        }
    }
    s
}

/// `isum[t] += s[t] · sc` per row: a sub-block's sums times its scales.
#[inline(always)]
pub(super) unsafe fn add_scaled<const T: usize>(isum: &mut [[int32x4_t; 2]; T], s: &[[int32x4_t; 2]; T], sc: [int32x4_t; 2]) {
    for t in 0..T {
        for h in 0..2 {
            isum[t][h] = vmlaq_s32(isum[t][h], s[t][h], sc[h]);
        }
    }
}

/// Group `g` of a packed block at `wb`: rows 0-3, rows 4-7.
#[inline(always)]
unsafe fn group(wb: *const u8, g: usize) -> [int8x16_t; 2] {
    let p = wb.add(32 * g);
    [vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8)]
}

/// q4_K and q5_K (one layout: a byte per quant, eight 32-element sub-blocks
/// with a scale and a min each).
#[inline(always)]
unsafe fn q45_k<const DOT: bool, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
    let l = x.l;
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for b in 0..x.nb {
        let wb = x.panel.add(b * l.stride);
        let ab = x.q8k_blocks::<T>(b);
        let mut isum = [[vdupq_n_s32(0); 2]; T];
        let mut msum = [[vdupq_n_s32(0); 2]; T];
        for sb in 0..8 {
            let s = dot_groups::<DOT, T>(8, |g| group(wb, 8 * sb + g), ab.map(|a| a.add(Q8K_QS + 32 * sb)));
            let sc = widen_rows(rows_i16(wb.add(l.sc + 32 * sb)));
            let m = rows_i16(wb.add(l.sc2 + 32 * sb));
            add_scaled(&mut isum, &s, sc);
            for t in 0..T {
                // |bsum| ≤ 16 · 128: a pair's sum fits i16.
                mlal_rows(&mut msum[t], m, bsum(ab[t], 2 * sb) + bsum(ab[t], 2 * sb + 1));
            }
        }
        let f32x8 = |p: *const u8| [vld1q_f32(p as *const f32), vld1q_f32(p.add(16) as *const f32)];
        let (d, dmin) = (f32x8(wb.add(l.d)), f32x8(wb.add(l.dmin)));
        for t in 0..T {
            finish_k4(d, dmin, act_d(ab[t]), isum[t], msum[t], &mut acc[t]);
        }
    }
    store(&acc, res)
}

/// q6_K: sixteen 16-element sub-blocks with a signed scale each.
#[inline(always)]
unsafe fn q6_k<const DOT: bool, const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
    let l = x.l;
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for b in 0..x.nb {
        let wb = x.panel.add(b * l.stride);
        let ab = x.q8k_blocks::<T>(b);
        let mut isum = [[vdupq_n_s32(0); 2]; T];
        let mut off = [[vdupq_n_s32(0); 2]; T];
        for j in 0..16 {
            let s = dot_groups::<DOT, T>(4, |g| group(wb, 4 * j + g), ab.map(|a| a.add(Q8K_QS + 16 * j)));
            let sc16 = rows_i16(wb.add(l.sc + 32 * j));
            let sc = widen_rows(sc16);
            add_scaled(&mut isum, &s, sc);
            for t in 0..T {
                mlal_rows(&mut off[t], sc16, bsum(ab[t], j));
            }
        }
        let d = [vld1q_f32(wb.add(l.d) as *const f32), vld1q_f32(wb.add(l.d + 16) as *const f32)];
        for t in 0..T {
            finish_k6(d, act_d(ab[t]), isum[t], off[t], &mut acc[t]);
        }
    }
    store(&acc, res)
}

macro_rules! levels {
    ($($kernel:ident => $dot:ident, $neon:ident;)*) => {$(
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $dot<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
            $kernel::<true, T>(x, res)
        }
        #[target_feature(enable = "neon")]
        unsafe fn $neon<const T: usize>(x: &PanelTile, res: &mut [[f32; 8]; 4]) {
            $kernel::<false, T>(x, res)
        }
    )*};
}

levels! {
    q45_k => q45_k_dot, q45_k_neon;
    q6_k => q6_k_dot, q6_k_neon;
}

/// A per-call tile of 1..=4 tokens of q4_K/q5_K (`six` false) or q6_K, with
/// `sdot` (`dot`, only where the CPU has dotprod) or without.
///
/// # Safety
/// As [`crate::quant::qgemm::PanelKernels::tile`].
pub(super) unsafe fn tile(six: bool, dot: bool, x: &PanelTile, tokens: usize, res: &mut [[f32; 8]; 4]) {
    match (six, dot) {
        (false, true) => by_tokens!(q45_k_dot, tokens, x, res),
        (false, false) => by_tokens!(q45_k_neon, tokens, x, res),
        (true, true) => by_tokens!(q6_k_dot, tokens, x, res),
        (true, false) => by_tokens!(q6_k_neon, tokens, x, res),
    }
}

