//! AVX-512 VNNI tiles of the quantized prompt GEMM on two panels at once
//! ([`crate::quant::qgemm::PanelKernels::tile_pair`]): each 512-bit vector
//! holds the 8 rows of one per-call panel in its low half and those of the
//! next panel in its high half, so one `vpdpbusd`/`vpdpwssd` does the work of
//! two 256-bit ones of [`super::qgemm_vnni`] and [`super::qgemm_kquant_vnni`]
//! (whose steps these repeat lane for lane, integer sums exact and f32
//! operations in the same order, so results stay bit-identical to the scalar
//! `vec_dot`). A token's broadcast activation group serves both panels.
//!
//! On cores with two 512-bit FMA units (Intel server parts) that doubles the
//! products per cycle; the panels' halves are joined by one `vinserti64x4` per
//! weight group, shared by the tile's tokens.

use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::quant::qgemm::{by_tokens, PairResults, PanelLayout, PanelTile};
use crate::quant::GgmlType;
use crate::x86::simd::ld256;
use core::arch::x86_64::*;

/// `res[i][r] = vec_dot(row r of the pair, token i)` for the panel of `x`
/// (rows `0..8`) and `second` (rows `8..16`), 1 ..= [`TILE_TOKENS`] tokens.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; as
/// [`crate::quant::qgemm::PanelKernels::tile_pair`].
pub(super) unsafe fn tile_pair(ty: GgmlType, x: &PanelTile, second: *const u8, tokens: usize, res: &mut PairResults) {
    by_tokens!(run, tokens, ty, x, second, res)
}

unsafe fn run<const T: usize>(ty: GgmlType, x: &PanelTile, second: *const u8, res: &mut PairResults) {
    match ty {
        GgmlType::Q4_0 => q4_0_q8_0::<T, false>(x, second, x.sa, res),
        GgmlType::Q8_0 => q4_0_q8_0::<T, true>(x, second, x.sa128, res),
        GgmlType::Q4K | GgmlType::Q5K => q45_k::<T>(x, second, res),
        GgmlType::Q6K => q6_k::<T>(x, second, res),
        _ => unreachable!("no paired tile for {}", ty.name()),
    }
}

/// A block of each of two panels (the resident tiles' pairs too).
#[derive(Clone, Copy)]
pub(super) struct Pair(pub(super) *const u8, pub(super) *const u8);

impl Pair {
    /// Block `b` of both per-call panels.
    #[inline(always)]
    unsafe fn block(x: &PanelTile, second: *const u8, b: usize) -> Pair {
        Pair(x.panel.add(b * x.l.stride), second.add(b * x.l.stride))
    }

    /// The 32 bytes at `off` of each panel's block, low half first.
    #[inline(always)]
    pub(super) unsafe fn ld(self, off: usize) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ld256(self.0.add(off))), ld256(self.1.add(off)))
    }

    /// The 16 bytes at `off` of each panel's block, low half first.
    #[inline(always)]
    pub(super) unsafe fn ld128(self, off: usize) -> __m256i {
        let lo = _mm256_castsi128_si256(_mm_loadu_si128(self.0.add(off) as *const __m128i));
        _mm256_inserti128_si256::<1>(lo, _mm_loadu_si128(self.1.add(off) as *const __m128i))
    }

    /// The 8 f32 at `off` of each panel's block.
    #[inline(always)]
    unsafe fn ld_ps(self, off: usize) -> __m512 {
        _mm512_castsi512_ps(self.ld(off))
    }
}

/// The 4 bytes at `p` in every i32 lane.
#[inline(always)]
pub(super) unsafe fn bcast4z(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// q4_0 (`FLIP = false`, unsigned nibbles) or q8_0 (`FLIP = true`, sign bits
/// flipped to `w + 128`): as the 256-bit VNNI tile,
/// `res[t][r] = Σ_b (d_w · d_a) · (dot_b - offsets[t, b])`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4_0_q8_0<const T: usize, const FLIP: bool>(x: &PanelTile, second: *const u8, offsets: &[i32], res: &mut PairResults) {
    let (nb, l) = (x.nb, x.l);
    assert!(x.da.len() >= T * nb && offsets.len() >= T * nb);
    // Indexed below without bounds checks (two per token and block otherwise).
    let (da, off) = (x.da.as_ptr(), offsets.as_ptr());
    let sign = _mm512_set1_epi8(i8::MIN);
    let a: [*const u8; T] = core::array::from_fn(|t| x.row(t));
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        let wb = Pair::block(x, second, b);
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

/// q4_K and q5_K: per sub-block, `vpdpbusd` in two chains per token, then one
/// `vpmulld` by the rows' scales, as the 256-bit k-quant tile.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q45_k<const T: usize>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    let l = x.l;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..x.nb {
        let wb = Pair::block(x, second, b);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let mut isum = [_mm512_setzero_si512(); T];
        for sb in 0..8 {
            // Row r's 6-bit scale, from the upper copy of its i16 pair.
            let scale = _mm512_srli_epi32(wb.ld(l.sc + 32 * sb), 16);
            let mut s32 = [[_mm512_setzero_si512(); 2]; T];
            for g in 0..8 {
                let w = wb.ld(32 * (8 * sb + g));
                for t in 0..T {
                    s32[t][g & 1] = _mm512_dpbusd_epi32(s32[t][g & 1], w, bcast4z(ab[t].add(Q8K_QS + 32 * sb + 4 * g)));
                }
            }
            for t in 0..T {
                let dot = _mm512_add_epi32(s32[t][0], s32[t][1]);
                isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(dot, scale));
            }
        }
        q4_k_finish(wb, l, &ab, &isum, &mut acc);
    }
    store(&acc, res);
}

/// [`q4_k_finish_with`] for a per-call panel pair: its mins, `d` and `dmin` tables.
#[inline(always)]
unsafe fn q4_k_finish<const T: usize>(wb: Pair, l: PanelLayout, ab: &[*const u8; T], isum: &[__m512i; T], acc: &mut [__m512; T]) {
    let mut mins = [_mm512_setzero_si512(); 8];
    for (s, m) in mins.iter_mut().enumerate() {
        *m = wb.ld(l.sc2 + 32 * s);
    }
    q4_k_finish_with(&mins, wb.ld_ps(l.d), wb.ld_ps(l.dmin), ab, isum, acc)
}

/// The end of a q4_K/q5_K super-block, as `qgemm_avx2::q4_k_finish`:
/// `msum = Σ_s min_s · (bsum[2s] + bsum[2s + 1])` from the 8 sub-blocks' i16
/// min pairs, then `acc += (d · da) · isum − (dmin · da) · msum` per row.
#[inline(always)]
pub(super) unsafe fn q4_k_finish_with<const T: usize>(
    mins: &[__m512i; 8],
    d: __m512,
    dmin: __m512,
    ab: &[*const u8; T],
    isum: &[__m512i; T],
    acc: &mut [__m512; T],
) {
    let mut msum = [_mm512_setzero_si512(); T];
    for (s, &m) in mins.iter().enumerate() {
        for t in 0..T {
            msum[t] = _mm512_add_epi32(msum[t], _mm512_madd_epi16(m, bcast4z(ab[t].add(Q8K_BSUMS + 4 * s))));
        }
    }
    for t in 0..T {
        let da = _mm512_set1_ps((ab[t] as *const f32).read_unaligned());
        let x = _mm512_mul_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(isum[t]));
        let m = _mm512_mul_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(msum[t]));
        acc[t] = _mm512_add_ps(acc[t], _mm512_sub_ps(x, m));
    }
}

/// q6_K: the i16 pair sums of two groups (`vpmaddubsw`), multiplied by the
/// 16-element sub-blocks' scales and added in i32 by `vpdpwssd`, in two chains
/// per token, as the 256-bit k-quant tile.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q6_k<const T: usize>(x: &PanelTile, second: *const u8, res: &mut PairResults) {
    let l = x.l;
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..x.nb {
        let wb = Pair::block(x, second, b);
        let ab: [*const u8; T] = x.q8k_blocks(b);
        let mut i2 = [[_mm512_setzero_si512(); 2]; T];
        // Chain h: the pair sums of groups 4j + 2h and 4j + 2h + 1 times the
        // scale of sub-block j.
        for j in 0..16 {
            let sc = wb.ld(l.sc + 32 * j);
            for h in 0..2 {
                let g = 4 * j + 2 * h;
                let (w0, w1) = (wb.ld(32 * g), wb.ld(32 * g + 32));
                for t in 0..T {
                    let y = ab[t].add(Q8K_QS + 4 * g);
                    let s = _mm512_add_epi16(_mm512_maddubs_epi16(w0, bcast4z(y)), _mm512_maddubs_epi16(w1, bcast4z(y.add(4))));
                    i2[t][h] = _mm512_dpwssd_epi32(i2[t][h], s, sc);
                }
            }
        }
        // The −32 offset of every value, as `32 · Σ scale · bsum`.
        let mut off = [_mm512_setzero_si512(); T];
        for p in 0..8 {
            let sp = wb.ld(l.sc2 + 32 * p);
            for t in 0..T {
                off[t] = _mm512_add_epi32(off[t], _mm512_madd_epi16(sp, bcast4z(ab[t].add(Q8K_BSUMS + 4 * p))));
            }
        }
        let d = wb.ld_ps(l.d);
        for t in 0..T {
            let isum = _mm512_add_epi32(i2[t][0], i2[t][1]);
            let da = _mm512_set1_ps((ab[t] as *const f32).read_unaligned());
            let i = _mm512_sub_epi32(isum, _mm512_slli_epi32(off[t], 5));
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(i)));
        }
    }
    store(&acc, res);
}

#[inline(always)]
unsafe fn store<const T: usize>(acc: &[__m512; T], res: &mut PairResults) {
    for t in 0..T {
        _mm512_storeu_ps(res[t].as_mut_ptr(), acc[t]);
    }
}
