//! AVX2 dot products of edgellm's low-bit group formats (`q3_g128`, `q3a_g128`,
//! `q2_g128`, `q2a_g128`) with `q8_0` activations: per 128-weight block, the
//! four activation blocks' integer sums with `maddubs`/`madd` (codes unpacked by
//! shift+mask of the 2-bit plane and a compare against the broadcast 1-bit
//! plane, see `quant::blocks`), reduced to one vector of per-block sums with
//! `hadd` and scaled with one FMA (two for the asymmetric min term).

use crate::quant::{lowbit, GgmlType};
use core::arch::x86_64::*;
use super::simd::hsum_ps as hsum;

/// `Σ dequant(w)·dequant(act)` over `nb` blocks of 128 (lengths already checked).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (this is only reached through the AVX2
/// table), `w` must hold `nb` blocks of `ty` and `act` `4·nb` q8_0 blocks.
pub(super) unsafe fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], nb: usize) -> f32 {
    let sp = lowbit::spec(ty).expect("vec_dot: not a low-bit type");
    debug_assert!(w.len() >= nb * sp.bytes && act.len() >= nb * 4 * 34);
    match (sp.bits, sp.asym) {
        (3, false) => q3s(w, act, nb, &sp),
        (3, true) => q3a(w, act, nb, &sp),
        (2, false) => q2s(w, act, nb, &sp),
        _ => q2a(w, act, nb, &sp),
    }
}

macro_rules! variant {
    ($name:ident, $bits:expr, $asym:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], a: &[u8], nb: usize, sp: &lowbit::Spec) -> f32 {
            body::<$bits, $asym>(w.as_ptr(), a.as_ptr(), nb, sp)
        }
    };
}
variant!(q3s, 3, false);
variant!(q3a, 3, true);
variant!(q2s, 2, false);
variant!(q2a, 2, true);


/// Four i32×8 vectors reduced to `[Σp0, Σp1, Σp2, Σp3]` per 128-bit lane (the
/// low lane holds the sums of lanes 0..4, the high lane of 4..8).
#[inline(always)]
unsafe fn sums4(p: [__m256i; 4]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3])))
}

#[inline(always)]
unsafe fn body<const BITS: u32, const ASYM: bool>(wp: *const u8, ap: *const u8, nb: usize, sp: &lowbit::Spec) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let four = _mm256_set1_epi8(4);
    let one16 = _mm256_set1_epi16(1);
    // Symmetric: subtract `zero·Σa` in i16 (|pair sums| ≤ 2·7·127 + 2·4·127);
    // asymmetric: `maddubs(1, a)` gives the pair sums of `Σa` for the min.
    let z8 = if ASYM { _mm256_set1_epi8(1) } else { _mm256_set1_epi8(sp.zero() as i8) };
    let hbit0 = _mm256_set_m128i(_mm_set1_epi8(16), _mm_set1_epi8(1));
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in 0..nb {
        let (wb, ab) = (wp.add(sp.bytes * i), ap.add(136 * i));
        let mut lo = _mm256_loadu_si256(wb.add(sp.qs) as *const __m256i);
        let qh = if BITS == 3 {
            _mm256_broadcastsi128_si256(_mm_loadu_si128(wb.add(sp.qh) as *const __m128i))
        } else {
            _mm256_setzero_si256()
        };
        let mut hbit = hbit0;
        let mut pu = [_mm256_setzero_si256(); 4];
        let mut pa = [_mm256_setzero_si256(); 4];
        for s in 0..4 {
            let mut u = _mm256_and_si256(lo, m3);
            lo = _mm256_srli_epi16::<2>(lo);
            if BITS == 3 {
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, hbit), hbit);
                u = _mm256_or_si256(u, _mm256_and_si256(set, four));
                hbit = _mm256_add_epi8(hbit, hbit);
            }
            let y = _mm256_loadu_si256(ab.add(34 * s + 2) as *const __m256i);
            let (qy, zy) = (_mm256_maddubs_epi16(u, y), _mm256_maddubs_epi16(z8, y));
            if ASYM {
                pu[s] = _mm256_madd_epi16(qy, one16);
                pa[s] = _mm256_madd_epi16(zy, one16);
            } else {
                pu[s] = _mm256_madd_epi16(_mm256_sub_epi16(qy, zy), one16);
            }
        }
        // The four activation scales, times the weight scale (and min).
        let r = |p: *const u8| (p as *const u16).read_unaligned() as u64;
        let da = _mm_cvtph_ps(_mm_cvtsi64_si128((r(ab) | r(ab.add(34)) << 16 | r(ab.add(68)) << 32 | r(ab.add(102)) << 48) as i64));
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((wb as *const u32).read_unaligned() as i32));
        let dd = _mm_mul_ps(da, _mm_broadcastss_ps(dm));
        let a = &mut acc[i % 2];
        *a = _mm256_fmadd_ps(sums4(pu), _mm256_set_m128(dd, dd), *a);
        if ASYM {
            let md = _mm_mul_ps(da, _mm_broadcastss_ps(_mm_movehdup_ps(dm)));
            *a = _mm256_fmadd_ps(sums4(pa), _mm256_set_m128(md, md), *a);
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}
