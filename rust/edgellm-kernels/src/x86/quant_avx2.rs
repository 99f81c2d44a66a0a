//! AVX2 dot products of quantized weight rows with quantized activations
//! (`maddubs`/`madd` integer sums per block, f32 FMA accumulation).
//!
//! SIMD paths: q4_0, q4_1, q5_0, q5_1, q8_0, q8_1, iq4_nl (against q8_0) and
//! q2_K, q3_K, q4_K, q5_K, q6_K, q8_K (against q8_K); the float types reuse the
//! table's f32 dot. Activation quantization to q8_0 and q8_K is vectorised and
//! bit-identical to the scalar reference (same scale arithmetic and rounding).

use crate::quant::{self, GgmlType};
use core::arch::x86_64::*;

/// Quantizes an activation row to `vec_dot_type(ty)`, bit-identical to
/// [`quant::quantize_act`].
pub(crate) fn quantize_act(ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    let at = quant::vec_dot_type(ty);
    let ok = ty.row_bytes(x.len()).is_some() && at.row_bytes(x.len()) == Some(dst.len());
    match at {
        // Sound: only reachable through the AVX2 table (see `vec_dot`).
        GgmlType::Q8_0 if ok => unsafe { imp::quantize_q8_0(x, dst) },
        GgmlType::Q8K if ok => unsafe { imp::quantize_q8_k(x, dst) },
        _ => quant::quantize_act(ty, x, dst), // floats, and the length-error panic
    }
}

/// `Σ dequant(w)·dequant(act)` over `n` elements (see [`crate::Kernels::vec_dot`]).
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    quant::check_vec_dot(ty, w, act, n);
    // Sound: lengths checked; this function is only reachable through the AVX2
    // table (or the AVX-512 superset), handed out after detecting avx2, fma
    // and f16c.
    unsafe { vec_dot_unchecked(ty, w, act, n) }
}

/// [`vec_dot`] without the length checks (the GEMV checks its rows once per
/// call: per row, the checks cost ~5% of a q4_K decode step).
///
/// # Safety
/// `quant::check_vec_dot(ty, w, act, n)` would pass, and the CPU has avx2, fma
/// and f16c.
#[inline]
pub(crate) unsafe fn vec_dot_unchecked(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    let nb = n / ty.block_elems();
    use GgmlType::*;
    unsafe {
        match ty {
            Q4_0 => imp::q4_0(w, act, nb),
            Q4_1 => imp::q4_1(w, act, nb),
            Q5_0 => imp::q5_0(w, act, nb),
            Q5_1 => imp::q5_1(w, act, nb),
            Q8_0 => imp::q8_0(w, act, nb, 34, 2),
            Q8_1 => imp::q8_0(w, act, nb, 36, 4),
            IQ4NL => imp::iq4_nl(w, act, nb),
            Q2K => imp::q2_k(w, act, nb),
            Q3K => imp::q3_k(w, act, nb),
            Q4K => imp::q4_k(w, act, nb),
            Q5K => imp::q5_k(w, act, nb),
            Q6K => imp::q6_k(w, act, nb),
            Q8K => imp::q8_k(w, act, nb),
            Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => super::lowbit_avx2::vec_dot(ty, w, act, nb),
            F32 | F16 | BF16 => quant::float_dot(ty, w, act, n, super::avx2::KERNELS.dot_f32),
            NF4 | F8E4M3 | F8E5M2 => super::nf4_fp8_avx2::vec_dot(ty, w, act, nb),
        }
    }
}

mod imp {
    use super::*;
    use crate::x86::simd::hsum_ps as hsum;
    use crate::x86::simd::{ld256, stream_ahead};
    use crate::quant::blocks::*;
    use crate::quant::q3k_scales;


    /// The two f16 values at `p` (4 readable bytes) as lanes 0 and 1. One `vmovd`
    /// writes the whole register: converting a lone u16 let LLVM insert it into a
    /// live accumulator register (`vpinsrw`), a false dependency that serialised
    /// the loops on the FMA latency.
    #[inline(always)]
    unsafe fn f16x2(p: *const u8) -> __m128 {
        _mm_cvtph_ps(_mm_cvtsi32_si128((p as *const u32).read_unaligned() as i32))
    }

    /// Lane 0 (1) of `v`, broadcast.
    #[inline(always)]
    unsafe fn lane0(v: __m128) -> __m256 {
        _mm256_broadcastss_ps(v)
    }
    #[inline(always)]
    unsafe fn lane1(v: __m128) -> __m256 {
        _mm256_broadcastss_ps(_mm_movehdup_ps(v))
    }

    /// The product of the f16 scales at `w` and `a`, broadcast (see [`f16x2`]).
    #[inline(always)]
    unsafe fn f16_prod(w: *const u8, a: *const u8) -> __m256 {
        let bw = (w as *const u16).read_unaligned() as u32;
        let ba = (a as *const u16).read_unaligned() as u32;
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((bw | (ba << 16)) as i32));
        _mm256_broadcastss_ps(_mm_mul_ss(v, _mm_movehdup_ps(v)))
    }

    #[inline(always)]
    unsafe fn f32_ld(p: *const u8) -> f32 {
        (p as *const f32).read_unaligned()
    }

    #[inline(always)]
    unsafe fn ld128(p: *const u8) -> __m128i {
        _mm_loadu_si128(p as *const __m128i)
    }

    /// Σ of products of adjacent signed bytes, as 8 × i32. `y` must not hold -128.
    #[inline(always)]
    unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }

    /// Σ of products of adjacent unsigned `x` and signed `y` bytes, as 8 × i32
    /// (`x` small enough that pairs do not saturate i16).
    #[inline(always)]
    unsafe fn dot_u8_i8(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }

    /// The 32 nibbles of 16 bytes in ggml's order: low nibbles, then high nibbles.
    #[inline(always)]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let b = ld128(p);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F))
    }

    /// 0xFF in byte `j` where bit `j` of the little-endian u32 at `p` is set.
    #[inline(always)]
    unsafe fn bytes_from_bits(p: *const u8) -> __m256i {
        let x = (p as *const u32).read_unaligned() as i32;
        let shuf = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
        let v = _mm256_shuffle_epi8(_mm256_set1_epi32(x), shuf);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit)
    }

    /// A `vpshufb` mask filling the low 128-bit lane with i16 word `lo` of that
    /// lane and the high lane with word `hi` of its own.
    const fn word_mask(lo: usize, hi: usize) -> [u8; 32] {
        let mut m = [0u8; 32];
        let mut b = 0;
        while b < 32 {
            let word = if b < 16 { lo } else { hi };
            m[b] = (2 * word + b % 2) as u8;
            b += 1;
        }
        m
    }

    /// Masks picking, from 8 × i16 (repeated in both 128-bit lanes), word `2s`
    /// for the low lane and word `2s + 1` for the high lane.
    const PAIR_MASKS: [[u8; 32]; 4] = [word_mask(0, 1), word_mask(2, 3), word_mask(4, 5), word_mask(6, 7)];

    /// Masks broadcasting word `k` of each 128-bit lane.
    const WORD_MASKS: [[u8; 32]; 8] = {
        let mut m = [[0u8; 32]; 8];
        let mut k = 0;
        while k < 8 {
            m[k] = word_mask(k, k);
            k += 1;
        }
        m
    };

    /// For 16 sub-block scales `sc` (16 × i16) and a 128-element half `n`: the
    /// scale vectors of its four 32-element groups, each `[sc[k]; 8] ++ [sc[k+1]; 8]`
    /// with `k = 8n + 2s` — the i16 lanes of `maddubs` over that group.
    #[inline(always)]
    unsafe fn group_scales(sc: __m256i, n: usize) -> [__m256i; 4] {
        let half = if n == 0 { _mm256_permute2x128_si256(sc, sc, 0x00) } else { _mm256_permute2x128_si256(sc, sc, 0x11) };
        let mut out = [_mm256_setzero_si256(); 4];
        for (s, o) in out.iter_mut().enumerate() {
            *o = _mm256_shuffle_epi8(half, ld256(PAIR_MASKS[s].as_ptr()));
        }
        out
    }

    /// Runs `$body` for blocks `$i` in `0..$nb`, alternating two f32 accumulators
    /// (`$acc: &mut __m256`) to hide FMA latency, and returns their sum.
    macro_rules! sum_blocks {
        ($nb:expr, |$i:ident, $acc:ident| $body:block) => {{
            let nb = $nb;
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut $i = 0usize;
            while $i + 1 < nb {
                {
                    let $acc = &mut acc0;
                    $body
                }
                $i += 1;
                {
                    let $acc = &mut acc1;
                    $body
                }
                $i += 1;
            }
            if $i < nb {
                let $acc = &mut acc0;
                $body
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0(w: &[u8], a: &[u8], nb: usize, stride: usize, qs: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        sum_blocks!(nb, |i, acc| {
            let (wb, ab) = (wp.add(stride * i), ap.add(34 * i));
            let d = f16_prod(wb, ab);
            let p = dot_i8(ld256(wb.add(qs)), ld256(ab.add(2)));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        })
    }

    /// The products of the f16 scales of blocks `i` and `i + 1` (weights at `w`,
    /// `ws` bytes per block; q8_0 activations at `a`), as `[dA; 4] ++ [dB; 4]`: the
    /// i32 lanes that `pair_dot`'s sums of the two blocks land in.
    #[inline(always)]
    unsafe fn f16_prod2(w: *const u8, ws: usize, a: *const u8) -> __m256 {
        let r = |p: *const u8| (p as *const u16).read_unaligned() as u64;
        let x = r(w) | r(a) << 16 | r(w.add(ws)) << 32 | r(a.add(34)) << 48;
        let v = _mm_cvtph_ps(_mm_cvtsi64_si128(x as i64)); // [wA, aA, wB, aB]
        let p = _mm_mul_ps(v, _mm_movehdup_ps(v));
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(p), _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2))
    }

    /// The 16 quant bytes of blocks `i` and `i + 1` (`ws` bytes apart), as
    /// `(low nibbles of A ++ low of B, high nibbles of A ++ high of B)`.
    #[inline(always)]
    unsafe fn nibbles2(p: *const u8, ws: usize) -> (__m256i, __m256i) {
        let v = _mm256_inserti128_si256(_mm256_castsi128_si256(ld128(p)), ld128(p.add(ws)), 1);
        let m = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m))
    }

    /// The q8_0 quants of activation blocks `i` and `i + 1` (at `a`), in the
    /// layout of [`nibbles2`]: `(A[0..16] ++ B[0..16], A[16..32] ++ B[16..32])`.
    #[inline(always)]
    unsafe fn act2(a: *const u8) -> (__m256i, __m256i) {
        let lo = _mm256_inserti128_si256(_mm256_castsi128_si256(ld128(a.add(2))), ld128(a.add(36)), 1);
        let hi = _mm256_inserti128_si256(_mm256_castsi128_si256(ld128(a.add(18))), ld128(a.add(52)), 1);
        (lo, hi)
    }

    /// `Σ q·y − off·Σ y` per pair of adjacent bytes summed over `lo` and `hi`, as
    /// 8 × i32, for unsigned `q ≤ 15` and `off ≤ 8` (each i16 half is at most
    /// 2·15·128 + 2·8·128 in magnitude: no overflow for any activation bytes).
    #[inline(always)]
    unsafe fn pair_dot_off(q: (__m256i, __m256i), y: (__m256i, __m256i), off: __m256i) -> __m256i {
        let a = _mm256_sub_epi16(_mm256_maddubs_epi16(q.0, y.0), _mm256_maddubs_epi16(off, y.0));
        let b = _mm256_sub_epi16(_mm256_maddubs_epi16(q.1, y.1), _mm256_maddubs_epi16(off, y.1));
        _mm256_madd_epi16(_mm256_add_epi16(a, b), _mm256_set1_epi16(1))
    }

    /// Runs `$pair` for block pairs `($i, $i + 1)` with two alternating f32
    /// accumulators (`$acc: &mut __m256`), then `$single` for a last odd block,
    /// and returns the sum of the accumulators.
    macro_rules! sum_pairs {
        ($nb:expr, |$i:ident, $acc:ident| $pair:block, $single:block) => {{
            let nb = $nb;
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut $i = 0usize;
            while $i + 3 < nb {
                {
                    let $acc = &mut acc0;
                    $pair
                }
                $i += 2;
                {
                    let $acc = &mut acc1;
                    $pair
                }
                $i += 2;
            }
            if $i + 1 < nb {
                let $acc = &mut acc0;
                $pair
                $i += 2;
            }
            if $i < nb {
                let $acc = &mut acc1;
                $single
            }
            hsum(_mm256_add_ps(acc0, acc1))
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let eight = _mm256_set1_epi8(8);
        sum_pairs!(nb, |i, acc| {
            let (wb, ab) = (wp.add(18 * i), ap.add(34 * i));
            let d = f16_prod2(wb, 18, ab);
            let p = pair_dot_off(nibbles2(wb.add(2), 18), act2(ab), eight);
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        }, {
            let (wb, ab) = (wp.add(18 * i), ap.add(34 * i));
            let d = f16_prod(wb, ab);
            let q = _mm256_sub_epi8(nibbles(wb.add(2)), eight);
            let p = dot_i8(q, ld256(ab.add(2)));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_1(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let ones = _mm256_set1_epi8(1);
        sum_blocks!(nb, |i, acc| {
            let (wb, ab) = (wp.add(20 * i), ap.add(34 * i));
            // [d·da, m·da] (d and m are adjacent f16s; da is followed by the quants).
            let dm = _mm_mul_ps(f16x2(wb), _mm_broadcastss_ps(f16x2(ab)));
            let y = ld256(ab.add(2));
            let p = dot_u8_i8(nibbles(wb.add(Q4_1_QS)), y);
            let s = dot_u8_i8(ones, y);
            *acc = _mm256_fmadd_ps(lane0(dm), _mm256_cvtepi32_ps(p), *acc);
            *acc = _mm256_fmadd_ps(lane1(dm), _mm256_cvtepi32_ps(s), *acc);
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q5_0(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let hi = _mm256_set1_epi8(0xF0u8 as i8);
        sum_blocks!(nb, |i, acc| {
            let (wb, ab) = (wp.add(22 * i), ap.add(34 * i));
            let d = f16_prod(wb, ab);
            // (nibble | bit << 4) - 16: the nibble as is where the bit is set,
            // else the nibble with 0xF0 (two's complement of nibble - 16).
            let q = _mm256_or_si256(nibbles(wb.add(Q5_0_QS)), _mm256_andnot_si256(bytes_from_bits(wb.add(Q5_0_QH)), hi));
            let p = dot_i8(q, ld256(ab.add(2)));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q5_1(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let ones = _mm256_set1_epi8(1);
        let b4 = _mm256_set1_epi8(0x10);
        sum_blocks!(nb, |i, acc| {
            let (wb, ab) = (wp.add(24 * i), ap.add(34 * i));
            let dm = _mm_mul_ps(f16x2(wb), _mm_broadcastss_ps(f16x2(ab)));
            let y = ld256(ab.add(2));
            let q = _mm256_or_si256(nibbles(wb.add(Q5_1_QS)), _mm256_and_si256(bytes_from_bits(wb.add(Q5_1_QH)), b4));
            let p = dot_u8_i8(q, y);
            let s = dot_u8_i8(ones, y);
            *acc = _mm256_fmadd_ps(lane0(dm), _mm256_cvtepi32_ps(p), *acc);
            *acc = _mm256_fmadd_ps(lane1(dm), _mm256_cvtepi32_ps(s), *acc);
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn iq4_nl(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let lut128 = ld128(KVALUES_IQ4NL.as_ptr() as *const u8);
        let lut = _mm256_set_m128i(lut128, lut128);
        sum_blocks!(nb, |i, acc| {
            let (wb, ab) = (wp.add(18 * i), ap.add(34 * i));
            let d = f16_prod(wb, ab);
            let q = _mm256_shuffle_epi8(lut, nibbles(wb.add(IQ4NL_QS)));
            let p = dot_i8(q, ld256(ab.add(2)));
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), *acc);
        })
    }

    // --- activation quantization ---

    /// `|v|` lane-wise.
    #[inline(always)]
    unsafe fn abs_ps(v: __m256) -> __m256 {
        _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
    }

    #[inline(always)]
    unsafe fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
    }

    /// Four vectors of 8 integral floats (|v| ≤ 127) to 32 bytes in order.
    #[inline(always)]
    unsafe fn pack_i8(v: [__m256; 4], out: *mut u8) {
        let i = [_mm256_cvttps_epi32(v[0]), _mm256_cvttps_epi32(v[1]), _mm256_cvttps_epi32(v[2]), _mm256_cvttps_epi32(v[3])];
        let a = _mm256_packs_epi32(i[0], i[1]);
        let b = _mm256_packs_epi32(i[2], i[3]);
        let p = _mm256_packs_epi16(a, b);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out as *mut __m256i, p);
    }

    /// q8_0: `d = max|x| / 127`, `q = roundf(x · (1/d))` (half away from zero).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_q8_0(x: &[f32], y: &mut [u8]) {
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
            let mut v = [_mm256_setzero_ps(); 4];
            for (j, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(xb.as_ptr().add(8 * j));
            }
            let m = _mm256_max_ps(_mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])), _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])));
            let d = hmax(m) / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            b[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
            let mut q = v;
            for q in q.iter_mut() {
                let t = _mm256_mul_ps(*q, id);
                let r = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                // t - trunc(t) is exact; step away from zero where it is ≥ 0.5.
                let up = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(t, r)), half, _CMP_GE_OQ);
                let step = _mm256_and_ps(up, _mm256_or_ps(_mm256_and_ps(t, sign), one));
                *q = _mm256_add_ps(r, step);
            }
            pack_i8(q, b.as_mut_ptr().add(Q8_0_QS));
        }
    }

    /// q8_K: `iscale = -127 / max` (max the first element of largest |x|, signed),
    /// `q = min(127, nearest_int(iscale · x))` (half to even), `d = 1 / iscale`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_q8_k(x: &[f32], y: &mut [u8]) {
        let q127 = _mm256_set1_ps(127.0);
        for (xb, b) in x.chunks_exact(256).zip(y.chunks_exact_mut(292)) {
            let mut m = _mm256_setzero_ps();
            for j in 0..32 {
                m = _mm256_max_ps(m, abs_ps(_mm256_loadu_ps(xb.as_ptr().add(8 * j))));
            }
            let amax = hmax(m);
            if amax == 0.0 {
                b.fill(0);
                continue;
            }
            let max = *xb.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
            let iscale = -127.0 / max;
            let is = _mm256_set1_ps(iscale);
            for j in 0..8 {
                let mut v = [_mm256_setzero_ps(); 4];
                for (o, v) in v.iter_mut().enumerate() {
                    let t = _mm256_mul_ps(is, _mm256_loadu_ps(xb.as_ptr().add(32 * j + 8 * o)));
                    *v = _mm256_min_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), q127);
                }
                pack_i8(v, b.as_mut_ptr().add(Q8K_QS + 32 * j));
            }
            for j in 0..16 {
                let sum: i32 = b[Q8K_QS + 16 * j..Q8K_QS + 16 * j + 16].iter().map(|&q| q as i8 as i32).sum();
                b[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2].copy_from_slice(&(sum as i16).to_le_bytes());
            }
            b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        }
    }

    // --- k-quants against q8_K (d: f32 at 0, qs at 4, bsums at 260) ---

    /// `Σ_k c[k] · bsums[k]` as 8 × i32 partial sums, `c` 16 × i16.
    #[inline(always)]
    unsafe fn bsums_dot(c: __m256i, ab: *const u8) -> __m256i {
        _mm256_madd_epi16(c, ld256(ab.add(Q8K_BSUMS)))
    }

    /// Scales (bytes 0..8) and mins (bytes 8..16) of a q4_K/q5_K block's 12
    /// packed bytes at `p` (16 readable bytes). Scale/min `j < 4` is the low six
    /// bits of byte `j` / `j + 4`; `j ≥ 4` takes its low four bits from the low /
    /// high nibble of byte `j + 4` and its top two from the top of byte `j - 4`
    /// / `j`. Two byte shuffles line the sources up, so that one mask and one
    /// shift per source do the rest (scalar, ~35 instructions per block).
    #[inline(always)]
    unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
        let v = ld128(p);
        // [s0..4, s8..12, s4..8, s8..12]: the low bits of sc0..4, sc4..8, m0..4, m4..8.
        let low = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
        // m4..8 take the high nibbles.
        let low = _mm_blend_epi32::<0b1000>(low, _mm_srli_epi16::<4>(low));
        let low = _mm_and_si128(low, _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f));
        // [-, s0..4, -, s4..8]: bits 6-7 become bits 4-5 of sc4..8 and m4..8.
        let top = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
        let top = _mm_and_si128(_mm_srli_epi16::<2>(top), _mm_set1_epi8(0x30));
        _mm_or_si128(low, top)
    }

    /// The shared body of q4_K and q5_K: per super-block, the mins correction from
    /// the activation's 16-element sums, then four chunks of 64 quants whose low and
    /// high halves `unpack(block, chunk)` returns as unsigned bytes.
    #[inline(always)]
    unsafe fn k4_dot(
        w: &[u8],
        a: &[u8],
        nb: usize,
        block_bytes: usize,
        scales: usize,
        unpack: impl Fn(*const u8, usize) -> (__m256i, __m256i),
    ) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        // Opaque to the optimiser: with constant masks LLVM turns each
        // one-uop `vpshufb` into a shift and a `vpbroadcastw` (three uops on
        // Zen 3), the largest share of the loop.
        let masks = core::hint::black_box(WORD_MASKS.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut accm = _mm256_setzero_ps();
        for i in 0..nb {
            let (wb, ab) = (wp.add(block_bytes * i), ap.add(292 * i));
            stream_ahead(wb, block_bytes);
            // [d·da, dmin·da]
            let dm = _mm_mul_ps(f16x2(wb), _mm_set1_ps(f32_ld(ab)));
            let sm = k4_scales_mins(wb.add(scales));
            // Each min twice, against the activation's 16-element sums.
            let mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
            let msum = bsums_dot(mins, ab);
            accm = _mm256_fmadd_ps(lane1(dm), _mm256_cvtepi32_ps(msum), accm);
            // The eight scales as i16 in both lanes, broadcast one at a time.
            let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let (ql, qh) = unpack(wb, j);
                let pl = _mm256_maddubs_epi16(ql, ld256(ab.add(Q8K_QS + 64 * j)));
                let ph = _mm256_maddubs_epi16(qh, ld256(ab.add(Q8K_QS + 64 * j + 32)));
                let pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(sc, ld256((*masks.add(2 * j)).as_ptr())));
                let ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(sc, ld256((*masks.add(2 * j + 1)).as_ptr())));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc = _mm256_fmadd_ps(lane0(dm), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) - hsum(accm)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        k4_dot(w, a, nb, 144, Q4K_SCALES, |wb, j| {
            let q = ld256(wb.add(Q4K_QS + 32 * j));
            (_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4))
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q5_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let b4 = _mm256_set1_epi8(0x10);
        k4_dot(w, a, nb, 176, Q5K_SCALES, |wb, j| {
            // Bit 2j (2j+1) of qh[l] is the fifth bit of element l (l + 32) of chunk j:
            // shift it down to bit 0 and move it to bit 4.
            let h = _mm256_srl_epi16(ld256(wb.add(Q5K_QH)), _mm_cvtsi32_si128(2 * j as i32));
            let hl = _mm256_and_si256(_mm256_slli_epi16(h, 4), b4);
            let hh = _mm256_and_si256(_mm256_slli_epi16(h, 3), b4);
            let q = ld256(wb.add(Q5K_QS + 32 * j));
            let ql = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
            let qh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
            (ql, qh)
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(0x03);
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let (wb, ab) = (wp.add(210 * i), ap.add(292 * i));
            stream_ahead(wb, 210);
            let sc = wb.add(Q6K_SCALES) as *const i8;
            // The -32 offset of every 6-bit value, via the activation's 16-element sums.
            let sc16 = _mm256_cvtepi8_epi16(ld128(sc as *const u8));
            let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(bsums_dot(sc16, ab), 5));
            for h in 0..2 {
                let scv = group_scales(sc16, h);
                let ql0 = ld256(wb.add(64 * h));
                let ql1 = ld256(wb.add(64 * h + 32));
                let qh = ld256(wb.add(Q6K_QH + 32 * h));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4),
                    ),
                ];
                for (s, &qs) in q.iter().enumerate() {
                    let p = _mm256_maddubs_epi16(qs, ld256(ab.add(Q8K_QS + 128 * h + 32 * s)));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv[s]));
                }
            }
            // d is the block's last f16: lane 1 of the pair ending there.
            let d = _mm_mul_ps(f16x2(wb.add(Q6K_D - 2)), _mm_set1_ps(f32_ld(ab)));
            acc = _mm256_fmadd_ps(lane1(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q2_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let m3 = _mm256_set1_epi8(0x03);
        let mut acc = _mm256_setzero_ps();
        let mut accm = _mm256_setzero_ps();
        for i in 0..nb {
            let (wb, ab) = (wp.add(84 * i), ap.add(292 * i));
            stream_ahead(wb, 84);
            let dm = _mm_mul_ps(f16x2(wb.add(Q2K_D)), _mm_set1_ps(f32_ld(ab)));
            let sc = ld128(wb);
            let m4 = _mm_set1_epi8(0x0F);
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), m4));
            let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sc, m4));
            let msum = bsums_dot(mins, ab);
            accm = _mm256_fmadd_ps(lane1(dm), _mm256_cvtepi32_ps(msum), accm);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let qs = ld256(wb.add(Q2K_QS + 32 * n));
                let scv = group_scales(sc16, n);
                for s in 0..4 {
                    let q = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * s as i32)), m3);
                    let p = _mm256_maddubs_epi16(q, ld256(ab.add(Q8K_QS + 128 * n + 32 * s)));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv[s]));
                }
            }
            acc = _mm256_fmadd_ps(lane0(dm), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc) - hsum(accm)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q3_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let m3 = _mm256_set1_epi8(0x03);
        let four = _mm256_set1_epi8(4);
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let (wb, ab) = (wp.add(110 * i), ap.add(292 * i));
            stream_ahead(wb, 110);
            let sc = q3k_scales(core::slice::from_raw_parts(wb.add(Q3K_SCALES), 12));
            let sc16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(ld128(sc.as_ptr())), _mm256_set1_epi16(32));
            let hmask = ld256(wb);
            let mut sumi = _mm256_setzero_si256();
            for n in 0..2 {
                let qs = ld256(wb.add(Q3K_QS + 32 * n));
                let scv = group_scales(sc16, n);
                for s in 0..4 {
                    let ql = _mm256_and_si256(_mm256_srl_epi16(qs, _mm_cvtsi32_si128(2 * s as i32)), m3);
                    // 4 where the high bit is clear: the value is ql - 4 there.
                    let bit = _mm256_set1_epi8((1u8 << (4 * n + s)) as i8);
                    let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hmask, bit), _mm256_setzero_si256());
                    let y = ld256(ab.add(Q8K_QS + 128 * n + 32 * s));
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(ql, y),
                        _mm256_maddubs_epi16(_mm256_and_si256(clear, four), y),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv[s]));
                }
            }
            let d = _mm_mul_ps(f16x2(wb.add(Q3K_D - 2)), _mm_set1_ps(f32_ld(ab)));
            acc = _mm256_fmadd_ps(lane1(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_k(w: &[u8], a: &[u8], nb: usize) -> f32 {
        let (wp, ap) = (w.as_ptr(), a.as_ptr());
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let (wb, ab) = (wp.add(292 * i), ap.add(292 * i));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..8 {
                let p = dot_i8(ld256(wb.add(Q8K_QS + 32 * j)), ld256(ab.add(Q8K_QS + 32 * j)));
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f32_ld(wb) * f32_ld(ab)), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }
}
