//! AVX2 quantized GEMM (see [`crate::quant::qgemm`]): panels of 8 weight rows,
//! repacked once per call into the interleaved layout, times tiles of up to 4
//! tokens. Per 4-element group, one 32-byte weight vector (8 rows × 4 quants) is
//! multiplied with each token's 4 activation bytes, broadcast (`vpmaddubsw`,
//! unsigned weights × signed activations; q8_0 moves the weight's sign onto the
//! activation first). Pair sums of a block stay in i16 while they cannot
//! overflow, then `vpmaddwd` (by ones, or by the sub-block scales) reduces each
//! row to its i32 lane; block scales and the f32 accumulation act on 8 rows at
//! once. Bit-identical to the scalar `vec_dot` (see the module docs of `qgemm`).

use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::x86::simd::{ld256, load_f16, prefetch_lines, st256};
use crate::quant::qgemm::{self, by_tokens, pack_panel, panel_layout, PanelKernels, PanelLayout, PanelTile, QActs, QGemmScratch, ResidentKernels, PANEL, TILE_TOKENS};
use crate::quant::{resident, GgmlType};
use super::lanes::{Lanes, Ymm};
use super::{resident_q45k, resident_q6k};
use core::arch::x86_64::*;

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` (see [`crate::Kernels::gemm_q`]).
pub(crate) fn gemm_q(w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize, s: &mut QGemmScratch) {
    if panel_layout(qa.ty()).is_none() {
        return qgemm::gemm_q_with(super::quant_avx2::vec_dot, w, qa, out, ldo);
    }
    qgemm::gemm_q_panels(&Avx2Panels(()), w, qa, out, ldo, s)
}

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` on resident panels (see
/// [`crate::Kernels::gemm_q_resident`]).
pub(crate) fn gemm_q_resident(ty: GgmlType, w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize) {
    qgemm::gemm_q_resident_panels(&Avx2Panels(()), ty, w, qa, out, ldo)
}

/// The weight types of the AVX2 (and AVX-512) resident tiles.
pub(super) const RESIDENT_TYPES: &[GgmlType] = &[GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

impl ResidentKernels for Avx2Panels {
    const TYPES: &'static [GgmlType] = RESIDENT_TYPES;

    unsafe fn resident_tile(&self, ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        by_tokens!(run_resident, tokens, ty, x, res)
    }

    /// All but q8_0: the resident tile splits every nibble vector again for
    /// every tile of 4 tokens (an AND, a shift and an AND per 32 bytes; q5_K
    /// and q6_K add their high bits), and the k-quants decode their scales again.
    fn widens(&self, ty: GgmlType) -> bool {
        ty != GgmlType::Q8_0
    }

    unsafe fn widen(&self, ty: GgmlType, panel: *const u8, nb: usize, out: &mut [u8]) {
        match ty {
            GgmlType::Q4_0 => widen_q4_0(panel, nb, out),
            GgmlType::Q8_0 => widen_q8_0(panel, nb, out),
            GgmlType::Q4K => resident_q45k::widen::<false>(panel, nb, out),
            GgmlType::Q5K => resident_q45k::widen::<true>(panel, nb, out),
            GgmlType::Q6K => resident_q6k::widen(panel, nb, out),
            _ => unreachable!("AVX2 does not widen resident {} panels", ty.name()),
        }
    }
}

/// A resident q4_0 panel of `nb` blocks into the per-call layout: per block the
/// low nibbles of its four quant vectors (elements `4v ..`), then the high ones
/// (`16 + 4v ..`), a byte each, then the eight scales as f32 (exact).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_q4_0(panel: *const u8, nb: usize, out: &mut [u8]) {
    let l = panel_layout(GgmlType::Q4_0).expect("q4_0 has a panel layout");
    assert!(out.len() >= nb * l.stride, "widen: output too small");
    let m = _mm256_set1_epi8(0x0F);
    let x = PanelTile::weights(panel, nb, l);
    for b in 0..nb {
        let dst = out.as_mut_ptr().add(b * l.stride);
        for c in 0..4 {
            let v = ld256(resident_block::<128>(&x, b).1.add(32 * c));
            _mm256_storeu_si256(dst.add(32 * c) as *mut __m256i, _mm256_and_si256(v, m));
            _mm256_storeu_si256(dst.add(128 + 32 * c) as *mut __m256i, _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
        }
        _mm256_storeu_ps(dst.add(l.d) as *mut f32, resident_scales::<128>(&x, b));
    }
}

/// A resident q8_0 panel of `nb` blocks into the per-call layout: its eight
/// quant vectors as they are (the same groups), then the scales as f32 (exact).
/// AVX2 keeps q8_0 resident (nothing to split); the VNNI table widens it.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_q8_0(panel: *const u8, nb: usize, out: &mut [u8]) {
    let l = panel_layout(GgmlType::Q8_0).expect("q8_0 has a panel layout");
    assert!(out.len() >= nb * l.stride, "widen: output too small");
    let x = PanelTile::weights(panel, nb, l);
    for b in 0..nb {
        let dst = out.as_mut_ptr().add(b * l.stride);
        core::ptr::copy_nonoverlapping(resident_block::<256>(&x, b).1, dst, 256);
        _mm256_storeu_ps(dst.add(l.d) as *mut f32, resident_scales::<256>(&x, b));
    }
}

/// The AVX2 tile kernels and panel packer. Only built by [`gemm_q`] and the
/// AVX-512 table's kernels, reached after avx2, fma and f16c were detected.
pub(super) struct Avx2Panels(pub(super) ());

impl PanelKernels for Avx2Panels {
    fn pack(&self, ty: GgmlType, w: &[u8], rb: usize, k: usize, l: PanelLayout, out: &mut [u8]) {
        match ty {
            // Sound: AVX2 is present (see the type); a full panel of whole rows.
            GgmlType::Q4_0 | GgmlType::Q8_0 if w.len() == PANEL * rb => unsafe { pack::full_panel(ty, w, rb, k / l.elems, l, out) },
            _ => pack_panel(ty, w, rb, k, out),
        }
    }

    unsafe fn tile(&self, ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        by_tokens!(run, tokens, ty, x, res)
    }
}


unsafe fn run_resident<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    match ty {
        GgmlType::Q4_0 => q4_0::<ResidentQ4, T>(x, res),
        GgmlType::Q8_0 => q8_0::<ResidentQ8, T>(x, res),
        GgmlType::Q4K => resident_q45k::tile::<T, false>(x, res),
        GgmlType::Q5K => resident_q45k::tile::<T, true>(x, res),
        GgmlType::Q6K => resident_q6k::tile::<T>(x, res),
        _ => unreachable!("no resident layout for {}", ty.name()),
    }
}

unsafe fn run<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    match ty {
        GgmlType::Q4_0 => q4_0::<PerCall, T>(x, res),
        GgmlType::Q8_0 => q8_0::<PerCall, T>(x, res),
        GgmlType::Q4K => q45_k::<T, 8>(x, res),
        GgmlType::Q5K => q45_k::<T, 4>(x, res),
        GgmlType::Q6K => q6_k::<T>(x, res),
        _ => unreachable!("no AVX2 panel kernel for {}", ty.name()),
    }
}

/// The 4 bytes at `p` broadcast to every 32-bit lane.
#[inline(always)]
pub(super) unsafe fn bcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

/// Where a q4_0/q8_0 tile reads block `b` of its panel: the per-call panels
/// ([`pack_panel`]: a byte per quant, f32 scales) or resident ones
/// ([`crate::quant::resident`]: the file's nibbles and f16 scales, moved).
pub(super) trait Src {
    /// Groups `c` and `c + 4` (`c < 4`) of block `b`: per row, quants `4c..4c+4`
    /// and `16 + 4c..`, one byte each (q4_0: the unsigned nibble).
    unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> (__m256i, __m256i);
    /// The eight rows' scales of block `b`, as f32.
    unsafe fn scales(x: &PanelTile, b: usize) -> __m256;
    /// Asks the cache for what follows block `b` (resident panels stream from
    /// memory when decoding; per-call panels are in cache).
    #[inline(always)]
    unsafe fn prefetch(_x: &PanelTile, _b: usize) {}
}

/// Groups of four blocks ahead of the one being read that a resident tile
/// prefetches.
const PREFETCH_GROUPS: usize = 4;

/// The per-call panels of [`pack_panel`].
pub(super) struct PerCall;
impl Src for PerCall {
    #[inline(always)]
    unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> (__m256i, __m256i) {
        let wb = x.panel.add(b * x.l.stride);
        (ld256(wb.add(32 * c)), ld256(wb.add(32 * c + 128)))
    }
    #[inline(always)]
    unsafe fn scales(x: &PanelTile, b: usize) -> __m256 {
        _mm256_loadu_ps(x.panel.add(b * x.l.stride + x.l.d) as *const f32)
    }
}

/// Resident q4_0 panels: one 32-byte load holds both groups' nibbles.
pub(super) struct ResidentQ4;
impl Src for ResidentQ4 {
    #[inline(always)]
    unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> (__m256i, __m256i) {
        let v = ld256(resident_block::<128>(x, b).1.add(32 * c));
        let m = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m))
    }
    #[inline(always)]
    unsafe fn scales(x: &PanelTile, b: usize) -> __m256 {
        resident_scales::<128>(x, b)
    }
    #[inline(always)]
    unsafe fn prefetch(x: &PanelTile, b: usize) {
        resident_prefetch::<128>(x, b)
    }
}

/// Resident q8_0 panels.
pub(super) struct ResidentQ8;
impl Src for ResidentQ8 {
    #[inline(always)]
    unsafe fn groups(x: &PanelTile, b: usize, c: usize) -> (__m256i, __m256i) {
        let q = resident_block::<256>(x, b).1.add(32 * c);
        (ld256(q), ld256(q.add(128)))
    }
    #[inline(always)]
    unsafe fn scales(x: &PanelTile, b: usize) -> __m256 {
        resident_scales::<256>(x, b)
    }
    #[inline(always)]
    unsafe fn prefetch(x: &PanelTile, b: usize) {
        resident_prefetch::<256>(x, b)
    }
}

/// Block `b`'s scales and quants in a resident panel of `QB` quant bytes per block.
#[inline(always)]
unsafe fn resident_block<const QB: usize>(x: &PanelTile, b: usize) -> (*const u8, *const u8) {
    let (s, q) = resident::block_offsets(x.nb, QB, b);
    (x.panel.add(s), x.panel.add(q))
}

/// The f16 scales of block `b` of a resident panel, widened (exactly).
#[inline(always)]
unsafe fn resident_scales<const QB: usize>(x: &PanelTile, b: usize) -> __m256 {
    load_f16(resident_block::<QB>(x, b).0 as *const half::f16)
}

/// At each block, a block's worth of bytes [`PREFETCH_GROUPS`] groups ahead
/// of its quants (the panel's next bytes, or the next panel's): spread over the
/// blocks, not a whole group's lines at once.
#[inline(always)]
unsafe fn resident_prefetch<const QB: usize>(x: &PanelTile, b: usize) {
    let group = resident::GROUP * (16 + QB);
    prefetch_lines(resident_block::<QB>(x, b).1.wrapping_add(PREFETCH_GROUPS * group), 16 + QB);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0<S: Src, const T: usize>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    let nb = x.nb;
    assert!(x.da.len() >= T * nb && x.sa.len() >= T * nb);
    // Indexed below without bounds checks (two per token and block otherwise,
    // and the registers they hold made the loop spill an accumulator).
    let (da, sa) = (x.da.as_ptr(), x.sa.as_ptr());
    let ones = _mm256_set1_epi16(1);
    let a: [*const u8; T] = core::array::from_fn(|t| x.row(t));
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        S::prefetch(x, b);
        let mut s16 = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let (w0, w1) = S::groups(x, b, c);
            for (g, w) in [(c, w0), (c + 4, w1)] {
                for t in 0..T {
                    let y = bcast4(a[t].add(34 * b + 2 + 4 * g));
                    // nibble (≤ 15) × i8: 8 groups of pair sums stay below 2^15.
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, y));
                }
            }
        }
        let dw = S::scales(x, b);
        for t in 0..T {
            let isum = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(*sa.add(t * nb + b)));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(t * nb + b)));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(isum)));
        }
    }
    for t in 0..T {
        _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0<S: Src, const T: usize>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    let nb = x.nb;
    assert!(x.da.len() >= T * nb);
    let da = x.da.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let a: [*const u8; T] = core::array::from_fn(|t| x.row(t));
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        S::prefetch(x, b);
        let mut s32 = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let (w0, w1) = S::groups(x, b, c);
            for (g, w) in [(c, w0), (c + 4, w1)] {
                let wa = _mm256_abs_epi8(w);
                for t in 0..T {
                    // |w| · (±y): pair sums ≤ 2 · 128 · 127 (activations are never -128).
                    let y = _mm256_sign_epi8(bcast4(a[t].add(34 * b + 2 + 4 * g)), w);
                    s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, y), ones));
                }
            }
        }
        let dw = S::scales(x, b);
        for t in 0..T {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(t * nb + b)));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(s32[t])));
        }
    }
    for t in 0..T {
        _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}

/// The super-block loop of the k-quant tiles (per-call panels of 256-element
/// blocks against q8_K activations) for `$t` tokens on the panel(s) `$panel`
/// of lanes `$l` ([`Lanes`]): `$body` for every block, with `$wb` the block,
/// `$ab` the tokens' q8_K blocks and `$acc` the `&mut [$l::F; $t]` row
/// accumulators, then the rows stored into `$res`. A macro, not a function
/// taking a closure: the body is the tile's whole integer kernel, and a
/// closure does not inherit the tile's target features, so its intrinsics may
/// stay calls (see [`q6_k_pair_sums`]).
macro_rules! super_blocks {
    ($l:ty, $t:ident, $x:expr, $panel:expr, $res:expr, |$wb:ident, $ab:ident, $acc:ident| $body:block) => {{
        let (x, panel, res): (&PanelTile, $l, &mut <$l as Lanes>::Results) = ($x, $panel, $res);
        let mut rows = [<$l as Lanes>::zero_ps(); $t];
        for b in 0..x.nb {
            let $wb = panel.add(b * x.l.stride);
            let $ab: &[*const u8; $t] = &x.q8k_blocks(b);
            let $acc = &mut rows;
            $body
        }
        for (t, &r) in rows.iter().enumerate() {
            <$l as Lanes>::store(res, t, r);
        }
    }};
}
pub(super) use super_blocks;

/// q4_K and q5_K (the same layout, a byte per quant): per sub-block, the pair
/// sums of `RUN` groups add up in i16 before `vpmaddwd` by the scales, as many
/// as cannot overflow (2 · RUN products of a quant and an i8: q4_K's 15 allow
/// all 8 groups, q5_K's 31 only 4).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q45_k<const T: usize, const RUN: usize>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    let l = x.l;
    super_blocks!(Ymm, T, x, Ymm(x.panel), res, |wb, ab, acc| {
        let mut isum = [_mm256_setzero_si256(); T];
        for sb in 0..8 {
            let sc = wb.ld(l.sc + 32 * sb);
            for g0 in (0..8).step_by(RUN) {
                let mut s16 = [_mm256_setzero_si256(); T];
                for g in g0..g0 + RUN {
                    let w = wb.ld(32 * (8 * sb + g));
                    for t in 0..T {
                        let y = bcast4(ab[t].add(Q8K_QS + 32 * sb + 4 * g));
                        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, y));
                    }
                }
                for t in 0..T {
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                }
            }
        }
        q4_k_finish_panel::<Ymm, T>(wb, l, ab, &isum, acc);
    })
}

/// [`q4_k_finish`] for a per-call q4_K/q5_K panel block at `wb` (layout `l`),
/// or a pair of them: its mins, `d` and `dmin` tables.
#[inline(always)]
pub(super) unsafe fn q4_k_finish_panel<L: Lanes, const T: usize>(
    wb: L,
    l: PanelLayout,
    ab: &[*const u8; T],
    isum: &[L::I; T],
    acc: &mut [L::F; T],
) {
    // A loop, not `array::from_fn`: a closure's intrinsics may be left as calls.
    let mut mins = [L::zero(); 8];
    for (s, m) in mins.iter_mut().enumerate() {
        *m = wb.ld(l.sc2 + 32 * s);
    }
    q4_k_finish::<L, T>(&mins, wb.ld_ps(l.d), wb.ld_ps(l.dmin), ab, isum, acc);
}

/// The end of a q4_K super-block for `T` tokens, as the scalar `vec_dot` does
/// it: `msum = Σ_s min_s · (bsum[2s] + bsum[2s + 1])` from the 8 sub-blocks'
/// i16 min pairs, then `acc += (d · da) · isum − (dmin · da) · msum` per row.
#[inline(always)]
pub(super) unsafe fn q4_k_finish<L: Lanes, const T: usize>(
    mins: &[L::I; 8],
    d: L::F,
    dmin: L::F,
    ab: &[*const u8; T],
    isum: &[L::I; T],
    acc: &mut [L::F; T],
) {
    let mut msum = [L::zero(); T];
    for (s, &m) in mins.iter().enumerate() {
        for t in 0..T {
            msum[t] = L::add32(msum[t], L::madd(m, L::bcast4(ab[t].add(Q8K_BSUMS + 4 * s))));
        }
    }
    for t in 0..T {
        let da = L::splat_ps((ab[t] as *const f32).read_unaligned());
        let x = L::mul_ps(L::mul_ps(d, da), L::to_ps(isum[t]));
        let m = L::mul_ps(L::mul_ps(dmin, da), L::to_ps(msum[t]));
        acc[t] = L::add_ps(acc[t], L::sub_ps(x, m));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k<const T: usize>(x: &PanelTile, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    let l = x.l;
    super_blocks!(Ymm, T, x, Ymm(x.panel), res, |wb, ab, acc| {
        let mut isum = [_mm256_setzero_si256(); T];
        for j in 0..16 {
            let sc = wb.ld(l.sc + 32 * j);
            for h in 0..2 {
                let s = q6_k_pair_sums::<Ymm, T>(wb, ab, 4 * j + 2 * h);
                for t in 0..T {
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s[t], sc));
                }
            }
        }
        q6_k_finish::<Ymm, T>(wb, l, ab, &isum, acc);
    })
}

/// The i16 pair sums of q6_K groups `g` and `g + 1` of the per-call panel block
/// (or pair of them) at `wb` for each of `T` tokens (`ab`: their q8_K blocks). 6-bit × i8: two
/// groups' pair sums stay below 2^15.
#[inline(always)]
pub(super) unsafe fn q6_k_pair_sums<L: Lanes, const T: usize>(wb: L, ab: &[*const u8; T], g: usize) -> [L::I; T] {
    let (w0, w1) = (wb.ld(32 * g), wb.ld(32 * g + 32));
    // A loop, not `array::from_fn`: a closure does not inherit the caller's
    // target features, and its intrinsics, left as calls, made q6_K prompts
    // 30× slower in one build.
    let mut s = [L::zero(); T];
    for (t, s) in s.iter_mut().enumerate() {
        let y = ab[t].add(Q8K_QS + 4 * g);
        *s = L::add16(L::maddubs(w0, L::bcast4(y)), L::maddubs(w1, L::bcast4(y.add(4))));
    }
    s
}

/// The end of a q6_K super-block (packed at `wb`, layout `l`: one panel's or a
/// pair's) for `T` tokens,
/// as the scalar `vec_dot` does it: the −32 offset of every value taken off the
/// exact sum as `32 · Σ scale · bsum`, then `acc += (d · da) · isum` per row.
#[inline(always)]
pub(super) unsafe fn q6_k_finish<L: Lanes, const T: usize>(
    wb: L,
    l: PanelLayout,
    ab: &[*const u8; T],
    isum: &[L::I; T],
    acc: &mut [L::F; T],
) {
    let mut off = [L::zero(); T];
    for p in 0..8 {
        let sp = wb.ld(l.sc2 + 32 * p);
        for t in 0..T {
            off[t] = L::add32(off[t], L::madd(sp, L::bcast4(ab[t].add(Q8K_BSUMS + 4 * p))));
        }
    }
    let d = wb.ld_ps(l.d);
    for t in 0..T {
        let da = L::splat_ps((ab[t] as *const f32).read_unaligned());
        let i = L::sub32(isum[t], L::shl32(off[t], 5));
        acc[t] = L::add_ps(acc[t], L::mul_ps(L::mul_ps(d, da), L::to_ps(i)));
    }
}

/// [`pack_panel`] for full panels of q4_0 and q8_0 rows, by 8 × 4-dword
/// transposes in registers instead of one word at a time (the packing was 6% of a
/// q4_0 prompt). Writes the same bytes as [`pack_panel`].
mod pack {
    use super::*;

    /// `[a.d0 b.d0 c.d0 e.d0 ...]` per lane: the 4 × 4 dword transpose of rows
    /// `x[0..4]` within each 128-bit lane.
    #[inline(always)]
    unsafe fn transpose4(x: [__m256i; 4]) -> [__m256i; 4] {
        let t0 = _mm256_unpacklo_epi32(x[0], x[1]);
        let t1 = _mm256_unpackhi_epi32(x[0], x[1]);
        let t2 = _mm256_unpacklo_epi32(x[2], x[3]);
        let t3 = _mm256_unpackhi_epi32(x[2], x[3]);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }

    /// Panel scales: the f16 `d` at the start of block `b` of each of the 8 rows,
    /// as f32 (exact, as `half` converts).
    #[inline(always)]
    unsafe fn scales(w: *const u8, rb: usize) -> __m256 {
        let r = |i: usize| (w.add(i * rb) as *const u16).read_unaligned() as u64;
        let lo = r(0) | r(1) << 16 | r(2) << 32 | r(3) << 48;
        let hi = r(4) | r(5) << 16 | r(6) << 32 | r(7) << 48;
        _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
    }

    /// Packs `PANEL` rows of `nb` blocks (`rb` bytes each) of q4_0 or q8_0 into
    /// `out` (layout `l`). Safety: AVX2 + F16C; `w` holds `PANEL` rows of `rb`
    /// bytes, `out` at least `nb · l.stride`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn full_panel(ty: GgmlType, w: &[u8], rb: usize, nb: usize, l: PanelLayout, out: &mut [u8]) {
        assert!(w.len() == PANEL * rb && out.len() >= nb * l.stride && rb == nb * ty.block_bytes());
        let bb = ty.block_bytes();
        let nib = _mm256_set1_epi8(0x0F);
        for b in 0..nb {
            let src = w.as_ptr().add(b * bb);
            let o = out.as_mut_ptr().add(b * l.stride);
            let row = |r: usize| src.add(r * rb + 2);
            if ty == GgmlType::Q4_0 {
                // Rows r and r + 4 share a register (low / high lane), so the
                // transpose leaves dword g of rows 0..8 in one vector: group g's
                // low nibbles, group g + 4's high nibbles.
                let mut x = [_mm256_setzero_si256(); 4];
                for (r, x) in x.iter_mut().enumerate() {
                    *x = _mm256_loadu2_m128i(row(r + 4) as *const __m128i, row(r) as *const __m128i);
                }
                for (g, v) in transpose4(x).into_iter().enumerate() {
                    st256(o, 32 * g, _mm256_and_si256(v, nib));
                    st256(o, 32 * (g + 4), _mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
                }
            } else {
                // q8_0: dwords 0..4 of each row, then dwords 4..8.
                for half in 0..2 {
                    let mut x = [_mm256_setzero_si256(); 4];
                    for (r, x) in x.iter_mut().enumerate() {
                        *x = _mm256_loadu2_m128i(row(r + 4).add(16 * half) as *const __m128i, row(r).add(16 * half) as *const __m128i);
                    }
                    for (g, v) in transpose4(x).into_iter().enumerate() {
                        st256(o, 32 * (4 * half + g), v);
                    }
                }
            }
            _mm256_storeu_ps(o.add(l.d) as *mut f32, scales(src, rb));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::quant::qgemm::panel_layout;

        #[test]
        fn full_panel_writes_what_pack_panel_writes() {
            if !crate::Isa::Avx2.is_supported() {
                return;
            }
            let mut s = 0x1234_5678_9abc_def0u64;
            for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
                for nb in [1usize, 3, 8] {
                    let l = panel_layout(ty).unwrap();
                    let rb = nb * ty.block_bytes();
                    let mut w: Vec<u8> = (0..PANEL * rb)
                        .map(|_| {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            s as u8
                        })
                        .collect();
                    // Finite f16 scales (random bytes may be NaN, whose payload
                    // conversions need not agree).
                    for blk in w.chunks_exact_mut(ty.block_bytes()) {
                        blk[1] &= 0x3B;
                    }
                    let (mut a, mut b) = (vec![0x55u8; nb * l.stride], vec![0xAAu8; nb * l.stride]);
                    pack_panel(ty, &w, rb, nb * 32, &mut a);
                    unsafe { full_panel(ty, &w, rb, nb, l, &mut b) };
                    assert_eq!(a, b, "{} nb={nb}", ty.name());
                }
            }
        }
    }
}

#[cfg(test)]
mod widen_tests {
    use super::*;

    /// Widening a resident panel (every type) writes the per-call
    /// panel of its rows, byte for byte, so the per-call tile gives the resident
    /// tile's results.
    #[test]
    fn widen_writes_what_pack_panel_writes() {
        if !crate::Isa::Avx2.is_supported() {
            return;
        }
        let kern = Avx2Panels(());
        // q8_0: widened by the VNNI table only.
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            assert_eq!(kern.widens(ty), ty != GgmlType::Q8_0);
            for nb in [1usize, 2, 5] {
                let k = ty.block_elems() * nb;
                let rb = ty.row_bytes(k).unwrap();
                let rows = resident::tests::rows(ty, PANEL, k, 0x2545_F491 + nb as u64);
                let mut res = vec![0u8; rows.len()];
                resident::pack(ty, &rows, k, &mut res);
                let l = panel_layout(ty).unwrap();
                let (mut want, mut got) = (vec![0x55u8; nb * l.stride], vec![0xAAu8; nb * l.stride]);
                pack_panel(ty, &rows, rb, k, &mut want);
                // SAFETY: AVX2 checked above; `res` is one resident panel of `nb` blocks.
                unsafe { kern.widen(ty, res.as_ptr(), nb, &mut got) };
                assert!(want == got, "{} nb={nb}", ty.name());
            }
        }
    }
}
