//! VNNI tiles of the quantized prompt GEMM for q4_K, q5_K and q6_K, on the
//! per-call panel layout (and resident panels widened into it), one panel in
//! 256-bit registers or two in 512-bit ones ([`super::lanes`]; the pairs serve
//! [`super::qgemm_pair_vnni`]), with the EVEX (AVX-512 VNNI) or, for one
//! panel, the VEX (AVX-VNNI) instructions ([`super::vnni`]). All keep
//! the integer sum of every super-block exactly the scalar `vec_dot`'s and the
//! f32 steps the AVX2 tiles' own, so results are bit-identical to the scalar
//! reference.
//!
//! - q4_K and q5_K (unsigned quants ≤ 31): one `vpdpbusd` per 4-element group
//!   and token adds the 8 rows' products into their i32 lanes, where AVX2 needs
//!   `vpmaddubsw` and an i16 add; each 32-element sub-block's sum is then
//!   multiplied by its row's scale (`vpmulld`).
//! - q6_K: its sub-blocks hold only 16 elements, and a `vpmulld` per 4 groups
//!   made that route slower than AVX2. It keeps AVX2's pair sums and lets
//!   `vpdpwssd` fold the multiply by the scales and the i32 add into one
//!   instruction, in two chains per token.
//!
//! Single thread, 128 tokens × 2048 rows × k = 2048 (`quant_bench
//! gemm_q_throughput`, Sapphire Rapids-class VM), GOP/s AVX2 → these tiles:
//! q4_K 170 → 184, q5_K 159 → 178, q6_K 151 → 171. Tried: q4_K on pair sums
//! and `vpdpwssd` as q6_K (157-162 against 181 for this route then).

use super::lanes::{Lanes, Ymm, Zipped};
use super::vnni::{Evex, Vex, Vnni};
use super::qgemm_avx2::{q4_k_finish_panel, q6_k_finish, q6_k_pair_sums, super_blocks};
use crate::quant::blocks::Q8K_QS;
use crate::quant::qgemm::{by_tokens, PairResults, PanelTile, PANEL, TILE_TOKENS};
use crate::quant::GgmlType;

/// `res[i][r] = vec_dot(row r of the panel, token i)` for a q4_K, q5_K (the same
/// per-call layout) or q6_K panel and 1 ..= [`TILE_TOKENS`] tokens.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; as [`crate::quant::qgemm::PanelKernels::tile`].
pub(super) unsafe fn tile(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    by_tokens!(one, tokens, ty, x, res)
}

/// [`tile`] on AVX-VNNI.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-VNNI; as [`crate::quant::qgemm::PanelKernels::tile`].
pub(super) unsafe fn tile_vex(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    by_tokens!(one_vex, tokens, ty, x, res)
}

/// `isum += scale · Σ_g dot(group g)` over the 8 groups of sub-block `sb` of
/// the q4_K/q5_K super-block at `wb`, for `T` tokens (`ab[t]`: the token's q8_K
/// block; `sc`: the sub-block's scale table, i16 pairs): `vpdpbusd` into i32,
/// then one `vpmulld` by the scale. Two chains per token: one chain of
/// dependent `vpdpbusd` leaves the tile waiting on their latency.
#[inline(always)]
unsafe fn sub_block<L: Lanes, V: Vnni<L>, const T: usize>(wb: L, ab: &[*const u8; T], sb: usize, sc: L::I, isum: &mut [L::I; T]) {
    // Row r's 6-bit scale, from the upper copy of its i16 pair.
    let scale = L::shr32(sc, 16);
    let mut s32 = [[L::zero(); 2]; T];
    for g in 0..8 {
        let wg = wb.ld(32 * (8 * sb + g));
        for t in 0..T {
            s32[t][g & 1] = V::dpbusd(s32[t][g & 1], wg, L::bcast4(ab[t].add(Q8K_QS + 32 * sb + 4 * g)));
        }
    }
    for t in 0..T {
        let dot = L::add32(s32[t][0], s32[t][1]);
        isum[t] = L::add32(isum[t], L::mullo32(dot, scale));
    }
}

/// The tile of a q4_K, q5_K or q6_K panel.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn one<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile_of::<Ymm, Evex, T>(ty, x, Ymm(x.panel), res)
}

/// [`one`] in VEX: AVX2 and the VEX VNNI instructions.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn one_vex<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile_of::<Ymm, Vex, T>(ty, x, Ymm(x.panel), res)
}

/// [`one`] on the two zipped panels at `x.panel` (rows `0..8` and `8..16`) at
/// once, in 512-bit registers ([`super::qgemm_pair_vnni`]).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn pair<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut PairResults) {
    tile_of::<Zipped, Evex, T>(ty, x, Zipped::at(x.panel), res)
}

#[inline(always)]
unsafe fn tile_of<L: Lanes, V: Vnni<L>, const T: usize>(ty: GgmlType, x: &PanelTile, panel: L, res: &mut L::Results) {
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => q45_k::<L, V, T>(x, panel, res),
        GgmlType::Q6K => q6_k::<L, V, T>(x, panel, res),
        _ => unreachable!("no VNNI k-quant tile for {}", ty.name()),
    }
}

#[inline(always)]
unsafe fn q45_k<L: Lanes, V: Vnni<L>, const T: usize>(x: &PanelTile, panel: L, res: &mut L::Results) {
    let l = x.l;
    super_blocks!(L, T, x, panel, res, |wb, ab, acc| {
        let mut isum = [L::zero(); T];
        for sb in 0..8 {
            sub_block::<L, V, T>(wb, ab, sb, wb.ld(l.sc + 32 * sb), &mut isum);
        }
        q4_k_finish_panel::<L, T>(wb, l, ab, &isum, acc);
    })
}

#[inline(always)]
unsafe fn q6_k<L: Lanes, V: Vnni<L>, const T: usize>(x: &PanelTile, panel: L, res: &mut L::Results) {
    let l = x.l;
    super_blocks!(L, T, x, panel, res, |wb, ab, acc| {
        let mut i2 = [[L::zero(); 2]; T];
        // Chain h: the pair sums of groups 4j + 2h and 4j + 2h + 1 times the
        // scale of sub-block j.
        for j in 0..16 {
            let sc = wb.ld(l.sc + 32 * j);
            for h in 0..2 {
                let s = q6_k_pair_sums::<L, T>(wb, ab, 4 * j + 2 * h);
                for t in 0..T {
                    i2[t][h] = V::dpwssd(i2[t][h], s[t], sc);
                }
            }
        }
        let mut isum = [L::zero(); T];
        for (s, i2) in isum.iter_mut().zip(&i2) {
            *s = L::add32(i2[0], i2[1]);
        }
        q6_k_finish::<L, T>(wb, l, ab, &isum, acc);
    })
}
