//! VNNI tiles of the quantized prompt GEMM (see [`crate::quant::qgemm`]), on the
//! AVX2 panel layout and packer, for the AVX-512 table (EVEX) and the AVX-VNNI
//! one (VEX, see [`super::vnni`]; the same tiles but for the 512-bit pairs).
//! Per 4-element group and token, one `vpdpbusd` (256-bit) adds the four
//! unsigned × signed byte products of each of the 8 rows straight into its
//! i32 lane, where AVX2 needs `vpmaddubsw` plus a widening step (and for
//! q8_0 a sign transfer first), and the i32 sums cannot saturate. q8_0's signed weights are made unsigned by
//! flipping their sign bits (`w + 128`); the `128 · Σ a` this adds per block is
//! subtracted from the exact integer sum, as q4_0's `8 · Σ a`. The f32 steps are
//! the AVX2 tiles' own, so results stay bit-identical to the scalar `vec_dot`.
//! q4_K, q5_K and q6_K have their own tiles ([`super::qgemm_kquant_vnni`]);
//! their resident tiles (decode) are the AVX2 ones' steps on two panels at a
//! time. Panels go through the 512-bit tiles of [`super::qgemm_pair_vnni`]
//! two at a time (these 256-bit tiles take an odd last one): single thread,
//! 128 tokens × 2048 rows × k = 2048 (`quant_bench gemm_q_throughput`,
//! Emerald Rapids-class VM), GOP/s
//! 256-bit → paired: q4_0 213 → 279, q8_0 200 → 264, q4_K 168 → 229, q5_K
//! 163 → 219, q6_K 159 → 199.

use super::lanes::Ymm;
use super::qgemm_avx2::{bcast4, Avx2Panels, PerCall, ResidentQ4, ResidentQ8, Src};
use super::vnni::{Evex, Vex, Vnni};
use crate::quant::qgemm::{self, by_tokens, panel_layout, PanelKernels, PanelLayout, PairResults, PanelTile, QActs, QGemmScratch, ResidentKernels, PANEL, TILE_TOKENS};
use crate::quant::GgmlType;
use core::arch::x86_64::*;

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` (see [`crate::Kernels::gemm_q`])
/// on AVX-512 VNNI.
pub(crate) fn gemm_q(w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize, s: &mut QGemmScratch) {
    gemm_q_on::<Evex>(w, qa, out, ldo, s)
}

/// [`gemm_q`] on AVX-VNNI.
pub(crate) fn gemm_q_vex(w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize, s: &mut QGemmScratch) {
    gemm_q_on::<Vex>(w, qa, out, ldo, s)
}

fn gemm_q_on<E: Encoding>(w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize, s: &mut QGemmScratch) {
    if panel_layout(qa.ty()).is_none() {
        return qgemm::gemm_q_with(super::quant_avx2::vec_dot, w, qa, out, ldo);
    }
    qgemm::gemm_q_panels(&VnniPanels::<E>(core::marker::PhantomData), w, qa, out, ldo, s)
}

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` on resident panels (see
/// [`crate::Kernels::gemm_q_resident`]), AVX-512 VNNI.
pub(crate) fn gemm_q_resident(ty: GgmlType, w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize) {
    qgemm::gemm_q_resident_panels(&VnniPanels::<Evex>(core::marker::PhantomData), ty, w, qa, out, ldo)
}

/// [`gemm_q_resident`] on AVX-VNNI.
pub(crate) fn gemm_q_resident_vex(ty: GgmlType, w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize) {
    qgemm::gemm_q_resident_panels(&VnniPanels::<Vex>(core::marker::PhantomData), ty, w, qa, out, ldo)
}

/// The tiles of one VNNI encoding, each an entry compiled for its table's
/// features.
trait Encoding: Vnni<Ymm> {
    /// Whether the table has 512-bit registers for pairs of panels.
    const PAIRS: bool;
    /// The q4_0 (`FLIP = false`) or q8_0 (`FLIP = true`) tile.
    unsafe fn q4_q8<S: Src, const FLIP: bool>(x: &PanelTile, offsets: &[i32], tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]);
    /// The k-quant tile ([`super::qgemm_kquant_vnni`]).
    unsafe fn kquant(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]);
}

impl Encoding for Evex {
    const PAIRS: bool = true;
    unsafe fn q4_q8<S: Src, const FLIP: bool>(x: &PanelTile, offsets: &[i32], tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        by_tokens!(tile_evex::<S, FLIP>, tokens, x, offsets, res)
    }
    unsafe fn kquant(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        super::qgemm_kquant_vnni::tile(ty, x, tokens, res)
    }
}

impl Encoding for Vex {
    const PAIRS: bool = false;
    unsafe fn q4_q8<S: Src, const FLIP: bool>(x: &PanelTile, offsets: &[i32], tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        by_tokens!(tile_vex::<S, FLIP>, tokens, x, offsets, res)
    }
    unsafe fn kquant(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        super::qgemm_kquant_vnni::tile_vex(ty, x, tokens, res)
    }
}

/// Only built by the functions above, which the AVX-512 table (`Evex`: after
/// the AVX2 and AVX-512 F/BW/VL/VNNI features were detected) or the AVX-VNNI
/// one (`Vex`: AVX2 and AVX-VNNI) alone reach.
struct VnniPanels<E>(core::marker::PhantomData<E>);

impl<E: Encoding> PanelKernels for VnniPanels<E> {
    fn pack(&self, ty: GgmlType, w: &[u8], rb: usize, k: usize, l: PanelLayout, out: &mut [u8]) {
        Avx2Panels(()).pack(ty, w, rb, k, l, out)
    }

    unsafe fn tile(&self, ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        match ty {
            GgmlType::Q4_0 => E::q4_q8::<PerCall, false>(x, x.sa, tokens, res),
            GgmlType::Q8_0 => E::q4_q8::<PerCall, true>(x, x.sa128, tokens, res),
            _ => E::kquant(ty, x, tokens, res),
        }
    }

    /// Every type with a tile here (all have per-call panels), where the
    /// table has 512-bit registers.
    fn pairs(&self, ty: GgmlType) -> bool {
        E::PAIRS && matches!(ty, GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
    }

    unsafe fn tile_pair(&self, ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut PairResults) {
        debug_assert!(E::PAIRS, "pairs run on 512-bit registers");
        super::qgemm_pair_vnni::tile_pair(ty, x, tokens, res)
    }
}

/// Resident tiles (decode): q4_0 and q8_0 on `vpdpbusd`, the k-quants as on
/// AVX2, two panels at a time in 512-bit registers where the table has them
/// ([`super::resident_q45k`], [`super::resident_q6k`]). Prompts widen every
/// type into the per-call tiles.
impl<E: Encoding> ResidentKernels for VnniPanels<E> {
    const TYPES: &'static [GgmlType] = super::qgemm_avx2::RESIDENT_TYPES;

    unsafe fn resident_tile(&self, ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut [[f32; PANEL]; TILE_TOKENS]) {
        match ty {
            GgmlType::Q4_0 => E::q4_q8::<ResidentQ4, false>(x, x.sa, tokens, res),
            GgmlType::Q8_0 => E::q4_q8::<ResidentQ8, true>(x, x.sa128, tokens, res),
            _ => Avx2Panels(()).resident_tile(ty, x, tokens, res),
        }
    }

    /// Every type. `vpdpbusd` makes the tile's products so cheap that reading
    /// resident panels cost prompts 9-11% against the per-call panels (q4_0:
    /// its nibbles split again per tile of tokens; q8_0: the scales converted
    /// again, the quants apart from them), pp512 matmuls on a Sapphire
    /// Rapids-class VM, 2 threads.
    fn widens(&self, _ty: GgmlType) -> bool {
        true
    }

    unsafe fn widen(&self, ty: GgmlType, panel: *const u8, nb: usize, out: &mut [u8]) {
        Avx2Panels(()).widen(ty, panel, nb, out)
    }

    /// The k-quants, whose 256-bit resident tiles issued about as many
    /// instructions per weight byte as decode has time for (q4_0 and q8_0
    /// decode reach the bandwidth bound on theirs); 512-bit tables only.
    fn resident_pairs(&self, ty: GgmlType) -> bool {
        E::PAIRS && matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
    }

    unsafe fn resident_tile_pair(&self, ty: GgmlType, x: &PanelTile, second: *const u8, tokens: usize, res: &mut PairResults) {
        debug_assert!(E::PAIRS, "pairs run on 512-bit registers");
        qgemm::by_tokens!(resident_pair, tokens, ty, x, second, res)
    }
}

/// The paired resident k-quant tile of `ty` for `T` tokens.
unsafe fn resident_pair<const T: usize>(ty: GgmlType, x: &PanelTile, second: *const u8, res: &mut PairResults) {
    match ty {
        GgmlType::Q4K => super::resident_q45k::tile_pair::<T, false>(x, second, res),
        GgmlType::Q5K => super::resident_q45k::tile_pair::<T, true>(x, second, res),
        GgmlType::Q6K => super::resident_q6k::tile_pair::<T>(x, second, res),
        _ => unreachable!("no paired resident tile for {}", ty.name()),
    }
}

/// [`tile`] on AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_evex<S: Src, const FLIP: bool, const T: usize>(x: &PanelTile, offsets: &[i32], res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile::<Evex, S, T, FLIP>(x, offsets, res)
}

/// [`tile`] on AVX-VNNI: AVX2 and the VEX VNNI instructions.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn tile_vex<S: Src, const FLIP: bool, const T: usize>(x: &PanelTile, offsets: &[i32], res: &mut [[f32; PANEL]; TILE_TOKENS]) {
    tile::<Vex, S, T, FLIP>(x, offsets, res)
}

/// q4_0 (nibbles, `FLIP = false`) or q8_0 (signed bytes, `FLIP = true`) panel
/// times `T` tokens: `res[t][r] = Σ_b (d_w · d_a) · (dot_b - offsets[t, b])`.
#[inline(always)]
unsafe fn tile<V: Vnni<Ymm>, S: Src, const T: usize, const FLIP: bool>(
    x: &PanelTile,
    offsets: &[i32],
    res: &mut [[f32; PANEL]; TILE_TOKENS],
) {
    let nb = x.nb;
    assert!(x.da.len() >= T * nb && offsets.len() >= T * nb);
    // Indexed below without bounds checks (two per token and block otherwise).
    let (da, off) = (x.da.as_ptr(), offsets.as_ptr());
    let sign = _mm256_set1_epi8(i8::MIN);
    let a: [*const u8; T] = core::array::from_fn(|t| x.row(t));
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        S::prefetch(x, b);
        // Two chains per token (groups c and c + 4): one chain of eight
        // dependent `vpdpbusd` per block made the tile latency-bound.
        let mut s32 = [[_mm256_setzero_si256(); 2]; T];
        for c in 0..4 {
            let (w0, w1) = S::groups(x, b, c);
            for (h, (g, mut w)) in [(c, w0), (c + 4, w1)].into_iter().enumerate() {
                if FLIP {
                    w = _mm256_xor_si256(w, sign);
                }
                for t in 0..T {
                    s32[t][h] = V::dpbusd(s32[t][h], w, bcast4(a[t].add(34 * b + 2 + 4 * g)));
                }
            }
        }
        let dw = S::scales(x, b);
        for t in 0..T {
            let dot = _mm256_add_epi32(s32[t][0], s32[t][1]);
            let isum = _mm256_sub_epi32(dot, _mm256_set1_epi32(*off.add(t * nb + b)));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(t * nb + b)));
            acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(isum)));
        }
    }
    for t in 0..T {
        _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}
