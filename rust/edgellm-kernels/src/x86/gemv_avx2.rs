//! AVX2 decode GEMV ([`crate::Kernels::gemv_q`]): many weight rows against one
//! quantized activation row.
//!
//! The activation row is prepared once per call (scales widened to f32, block
//! sums, quants rearranged so two weight blocks take one 256-bit product), so a
//! weight block costs only its unpacking and two integer multiplies. For q4_0 the
//! nibbles stay unsigned (`maddubs` takes them as is) and the `−8` offset comes
//! back once per block as `8·Σa`, which the preparation holds. Eight blocks' sums
//! are reduced together (`hadd`), scaled by one vector of scale products and
//! accumulated with one FMA. Other types loop their `vec_dot`.

use crate::quant::{self, GgmlType};
use core::arch::x86_64::*;

/// `out[r] = vec_dot(ty, row r of w, act, n)` for every row (see
/// [`crate::Kernels::gemv_q`]). Panics on a length mismatch.
pub(crate) fn gemv_q(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = quant::check_gemv(ty, w, act, n, out.len());
    match ty {
        // Sound: only reachable through the AVX2 table, handed out after
        // detecting avx2, fma and f16c.
        GgmlType::Q4_0 if rb > 0 => unsafe { imp::q4_0(w, rb, act, n / 32, out) },
        _ => {
            for (r, y) in out.iter_mut().enumerate() {
                *y = super::quant_avx2::vec_dot(ty, &w[r * rb..(r + 1) * rb], act, n);
            }
        }
    }
}

mod imp {
    use super::*;
    use crate::x86::simd::{hsum_i32, hsum_ps};

    /// The order in which [`reduce8`] leaves the sums of eight blocks.
    const ORD: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

    /// The q8_0 activation row, prepared for q4_0 weights.
    struct Q4Act {
        /// Per pair of blocks `(2j, 2j+1)`: `[a₂ⱼ[0..16] ++ a₂ⱼ₊₁[0..16]]`, then
        /// `[a₂ⱼ[16..32] ++ a₂ⱼ₊₁[16..32]]` (the low and high nibbles' partners).
        pairs: Vec<__m256i>,
        /// Per group of eight blocks, in [`ORD`]: the activation scales, and
        /// `8·Σa` (the q4_0 offset times the block's integer sum).
        scales: Vec<__m256>,
        offsets: Vec<__m256i>,
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prepare_q4(act: &[u8], nb: usize) -> Q4Act {
        let groups = nb / 8;
        let mut p = Q4Act {
            pairs: Vec::with_capacity(groups * 8),
            scales: Vec::with_capacity(groups),
            offsets: Vec::with_capacity(groups),
        };
        let ap = act.as_ptr();
        let ones = _mm256_set1_epi8(1);
        for g in 0..groups {
            let mut d = [0u16; 8];
            let mut s = [0i32; 8];
            for (k, &b) in ORD.iter().enumerate() {
                let ab = ap.add(34 * (8 * g + b));
                d[k] = (ab as *const u16).read_unaligned();
                // Σa via maddubs with ones (|Σ| ≤ 32·128: exact in i16 pairs).
                let v = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, ld256(ab.add(2))), _mm256_set1_epi16(1));
                s[k] = 8 * hsum_i32(v);
            }
            p.scales.push(_mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr() as *const __m128i)));
            p.offsets.push(_mm256_loadu_si256(s.as_ptr() as *const __m256i));
            for j in 0..4 {
                let (a0, a1) = (ap.add(34 * (8 * g + 2 * j)), ap.add(34 * (8 * g + 2 * j + 1)));
                p.pairs.push(_mm256_loadu2_m128i(a1.add(2) as *const __m128i, a0.add(2) as *const __m128i));
                p.pairs.push(_mm256_loadu2_m128i(a1.add(18) as *const __m128i, a0.add(18) as *const __m128i));
            }
        }
        p
    }

    #[inline(always)]
    unsafe fn ld256(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }



    /// Four pair sums (each 4 × i32 of block 2j in the low half, block 2j+1 in the
    /// high half) → one vector of the eight block sums, in [`ORD`].
    #[inline(always)]
    unsafe fn reduce8(p: [__m256i; 4]) -> __m256i {
        let h01 = _mm256_hadd_epi32(p[0], p[1]);
        let h23 = _mm256_hadd_epi32(p[2], p[3]);
        _mm256_hadd_epi32(h01, h23)
    }

    /// Σ (unsigned nibble · activation) of q4_0 blocks `b` and `b + 1` (quants at
    /// `q`, 18 bytes apart) with prepared pair `a`: 4 × i32 per block.
    #[inline(always)]
    unsafe fn pair_dot(q: *const u8, a: *const __m256i) -> __m256i {
        let v = _mm256_loadu2_m128i(q.add(18) as *const __m128i, q as *const __m128i);
        let m = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(v, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        // Each i16 lane ≤ 2·(2·15·128): no saturation.
        let s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, *a), _mm256_maddubs_epi16(hi, *a.add(1)));
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }

    /// The f16 scales of the eight weight blocks from `w` (18 bytes apart), in
    /// [`ORD`], as f32.
    #[inline(always)]
    unsafe fn weight_scales(w: *const u8) -> __m256 {
        // Two u64 of four scales each: cheaper than eight `pinsrw` (and than a
        // gather, on Zen 3).
        let r = |b: usize| (w.add(18 * b) as *const u16).read_unaligned() as u64;
        let a = r(0) | r(2) << 16 | r(4) << 32 | r(6) << 48;
        let b = r(1) | r(3) << 16 | r(5) << 32 | r(7) << 48;
        _mm256_cvtph_ps(_mm_set_epi64x(b as i64, a as i64))
    }

    /// One q4_0 block against the natural q8_0 block at `ab` (for the blocks past
    /// the last whole group of eight).
    #[inline(always)]
    unsafe fn q4_0_block(wb: *const u8, ab: *const u8) -> f32 {
        let b = _mm_loadu_si128(wb.add(2) as *const __m128i);
        let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
        let y = ld256(ab.add(2));
        let s = _mm256_sub_epi16(_mm256_maddubs_epi16(q, y), _mm256_maddubs_epi16(_mm256_set1_epi8(8), y));
        let isum = hsum_i32(_mm256_madd_epi16(s, _mm256_set1_epi16(1)));
        let d = _mm_cvtph_ps(_mm_setr_epi16(
            (wb as *const i16).read_unaligned(),
            (ab as *const i16).read_unaligned(),
            0,
            0,
            0,
            0,
            0,
            0,
        ));
        _mm_cvtss_f32(d) * _mm_cvtss_f32(_mm_movehdup_ps(d)) * isum as f32
    }

    /// Bytes ahead of the group being read that the loop asks the cache for: the
    /// rows stream through memory, and one core's hardware prefetcher alone left
    /// the single-thread DRAM rate below the kernel's cache-resident rate.
    const PREFETCH: usize = 1024;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
        let p = prepare_q4(act, nb);
        let groups = nb / 8;
        for (r, y) in out.iter_mut().enumerate() {
            let wr = w.as_ptr().add(r * rb);
            let mut acc = _mm256_setzero_ps();
            for g in 0..groups {
                let wg = wr.add(18 * 8 * g);
                _mm_prefetch::<_MM_HINT_T0>(wg.wrapping_add(PREFETCH) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(wg.wrapping_add(PREFETCH + 64) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(wg.wrapping_add(PREFETCH + 128) as *const i8);
                let a = p.pairs.as_ptr().add(8 * g);
                let sums = reduce8([
                    pair_dot(wg.add(2), a),
                    pair_dot(wg.add(2 + 36), a.add(2)),
                    pair_dot(wg.add(2 + 72), a.add(4)),
                    pair_dot(wg.add(2 + 108), a.add(6)),
                ]);
                let isum = _mm256_sub_epi32(sums, *p.offsets.as_ptr().add(g));
                let d = _mm256_mul_ps(weight_scales(wg), *p.scales.as_ptr().add(g));
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
            }
            let mut sum = hsum_ps(acc);
            for b in 8 * groups..nb {
                sum += q4_0_block(wr.add(18 * b), act.as_ptr().add(34 * b));
            }
            *y = sum;
        }
    }
}
