//! AVX-512 VNNI tiles of the quantized prompt GEMM on two panels at once
//! ([`crate::quant::qgemm::PanelKernels::tile_pair`]): each 512-bit vector
//! holds the 8 rows of one per-call panel in its low half and those of the
//! next panel in its high half, so one `vpdpbusd`/`vpdpwssd` does the work of
//! two 256-bit ones of [`super::qgemm_vnni`] and [`super::qgemm_kquant_vnni`]
//! (lane for lane the same steps, integer sums exact and f32 operations in the
//! same order, so results stay bit-identical to the scalar `vec_dot`). A
//! token's broadcast activation group serves both panels. The k-quant pairs
//! are the 256-bit tiles' own bodies on [`Zipped`] lanes; q4_0 and q8_0 are
//! here.
//!
//! On cores with two 512-bit FMA units (Intel server parts) that doubles the
//! products per cycle. The two panels are zipped when packed
//! ([`crate::quant::qgemm::zip_panels`]), so each weight group of both is one
//! 512-bit load.

use super::lanes::{bcast4z, Lanes, Zipped};
use crate::quant::qgemm::{by_tokens, PairResults, PanelTile};
use crate::quant::GgmlType;
use core::arch::x86_64::*;

/// `res[i][r] = vec_dot(row r of the pair, token i)` for the two zipped panels
/// at `x.panel` (rows `0..8`, then `8..16`), 1 ..= [`TILE_TOKENS`](crate::quant::qgemm::TILE_TOKENS) tokens.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; as
/// [`crate::quant::qgemm::PanelKernels::tile_pair`].
pub(super) unsafe fn tile_pair(ty: GgmlType, x: &PanelTile, tokens: usize, res: &mut PairResults) {
    by_tokens!(run, tokens, ty, x, res)
}

unsafe fn run<const T: usize>(ty: GgmlType, x: &PanelTile, res: &mut PairResults) {
    match ty {
        GgmlType::Q4_0 => q4_0_q8_0::<T, false>(x, x.sa, res),
        GgmlType::Q8_0 => q4_0_q8_0::<T, true>(x, x.sa128, res),
        GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => super::qgemm_kquant_vnni::pair::<T>(ty, x, res),
        _ => unreachable!("no paired tile for {}", ty.name()),
    }
}

/// Block `b` of both zipped per-call panels.
#[inline(always)]
unsafe fn block(x: &PanelTile, b: usize) -> Zipped {
    Zipped::at(x.panel).add(b * x.l.stride)
}

/// q4_0 (`FLIP = false`, unsigned nibbles) or q8_0 (`FLIP = true`, sign bits
/// flipped to `w + 128`): as the 256-bit VNNI tile,
/// `res[t][r] = Σ_b (d_w · d_a) · (dot_b - offsets[t, b])`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_q8_0<const T: usize, const FLIP: bool>(x: &PanelTile, offsets: &[i32], res: &mut PairResults) {
    let (nb, l) = (x.nb, x.l);
    assert!(x.da.len() >= T * nb && offsets.len() >= T * nb);
    // Indexed below without bounds checks (two per token and block otherwise).
    let (da, off) = (x.da.as_ptr(), offsets.as_ptr());
    let sign = _mm512_set1_epi8(i8::MIN);
    let a: [*const u8; T] = core::array::from_fn(|t| x.row(t));
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let wb = block(x, b);
        // Two chains per token, as the 256-bit tile: groups c and c + 4.
        let mut s32 = [[_mm512_setzero_si512(); 2]; T];
        for c in 0..4 {
            for (h, g) in [(0, c), (1, c + 4)] {
                let mut w = wb.ld(32 * g);
                if FLIP {
                    w = _mm512_xor_si512(w, sign);
                }
                for t in 0..T {
                    s32[t][h] = _mm512_dpbusd_epi32(s32[t][h], w, bcast4z(a[t].add(34 * b + 2 + 4 * g)));
                }
            }
        }
        let dw = wb.ld_ps(l.d);
        for t in 0..T {
            let dot = _mm512_add_epi32(s32[t][0], s32[t][1]);
            let isum = _mm512_sub_epi32(dot, _mm512_set1_epi32(*off.add(t * nb + b)));
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da.add(t * nb + b)));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(scale, _mm512_cvtepi32_ps(isum)));
        }
    }
    for t in 0..T {
        _mm512_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}
