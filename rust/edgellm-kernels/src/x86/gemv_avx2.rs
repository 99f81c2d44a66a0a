//! AVX2 decode GEMV ([`crate::Kernels::gemv_q`]): many weight rows against one
//! quantized activation row.
//!
//! The activation row is prepared once per call (scales widened to f32, block
//! sums, for q4_0 quants rearranged so two weight blocks take one 256-bit
//! product), so a weight block costs only its unpacking and integer multiplies.
//! Eight blocks' integer sums are reduced together (`hadd`), scaled by one
//! vector of scale products and accumulated with one FMA; the per-block scale
//! work of `vec_dot` is gone. For q4_0 the nibbles stay unsigned (`maddubs`
//! takes them as is) and the `−8` offset comes back once per block as `8·Σa`,
//! which the preparation holds. Other types loop their `vec_dot`.
//!
//! The row loops are generic over the block product ([`Q4Pair`], [`Q8Block`]),
//! so the AVX-512 VNNI table ([`super::gemv_vnni`]) reuses them with `vpdpbusd`.

use crate::quant::{self, GgmlType};
use crate::x86::simd::{hsum_i32, hsum_ps, ld256, load_f16, stream_ahead};
use core::arch::x86_64::*;

/// `out[r] = vec_dot(ty, row r of w, act, n)` for every row (see
/// [`crate::Kernels::gemv_q`]). Panics on a length mismatch.
pub(crate) fn gemv_q(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = quant::check_gemv(ty, w, act, n, out.len());
    // Sound: only reachable through the AVX2 table (or the AVX-512 one, a
    // superset), handed out after detecting avx2, fma and f16c.
    match ty {
        GgmlType::Q4_0 if rb > 0 => unsafe { q4_0(w, rb, act, n / 32, out) },
        GgmlType::Q8_0 if rb > 0 => unsafe { q8_0(w, rb, act, n / 32, out) },
        _ => {
            for (r, y) in out.iter_mut().enumerate() {
                // Sound: `check_gemv` checked every row's length and the act's.
                *y = unsafe { super::quant_avx2::vec_dot_unchecked(ty, &w[r * rb..(r + 1) * rb], act, n) };
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q4_0_rows::<MaddubsQ4>(w, rb, act, nb, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    q8_0_rows::<SignMaddubsQ8>(w, rb, act, nb, out)
}

/// Σ (unsigned nibble · activation) of two q4_0 blocks against a prepared pair.
pub(super) trait Q4Pair {
    /// `q`: the 16 + 16 quant bytes of blocks `b` (low lane) and `b + 1` (high
    /// lane); `a`: the prepared pair (low-nibble partners, high-nibble
    /// partners). Returns 4 × i32 partial sums per block, block `b` low.
    unsafe fn pair(q: __m256i, a: *const __m256i) -> __m256i;
    /// The f16 scales of the eight blocks of a group at `w`, in [`PAIR_ORD`].
    #[inline(always)]
    unsafe fn scales(w: *const u8) -> __m256 {
        weight_scales(w, 18, PAIR_ORD)
    }
}

/// The partial sums (8 × i32) of one q8_0 block's 32 products `w · a`, plus
/// `128 · Σ a` when [`Q8Block::OFFSET`] (sign-flipped weights).
pub(super) trait Q8Block {
    const OFFSET: bool;
    unsafe fn block(w: *const u8, a: *const u8) -> __m256i;
    /// The f16 scales of the eight blocks of a group at `w`, in order.
    #[inline(always)]
    unsafe fn scales(w: *const u8) -> __m256 {
        weight_scales(w, 34, NATURAL)
    }
}

struct MaddubsQ4;
impl Q4Pair for MaddubsQ4 {
    #[inline(always)]
    unsafe fn pair(v: __m256i, a: *const __m256i) -> __m256i {
        let (lo, hi) = nibbles2(v);
        // Each i16 lane ≤ 2·(2·15·128): no saturation.
        let s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, *a), _mm256_maddubs_epi16(hi, *a.add(1)));
        _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    }
}

struct SignMaddubsQ8;
impl Q8Block for SignMaddubsQ8 {
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn block(w: *const u8, a: *const u8) -> __m256i {
        // |w| · (a with w's sign): `maddubs` wants one unsigned side. A weight
        // of −128 stays 0x80, which reads as the unsigned 128; the quantized
        // activations hold no −128, so flipping their sign cannot overflow.
        let (x, y) = (ld256(w), ld256(a));
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

/// Low and high nibbles of 32 packed bytes, as unsigned bytes.
#[inline(always)]
pub(super) unsafe fn nibbles2(v: __m256i) -> (__m256i, __m256i) {
    let m = _mm256_set1_epi8(0x0F);
    (_mm256_and_si256(v, m), _mm256_and_si256(_mm256_srli_epi16(v, 4), m))
}

/// The order in which [`reduce_pairs`] leaves the sums of eight blocks.
pub(super) const PAIR_ORD: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
const NATURAL: [usize; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

/// The q8_0 activation row, prepared per group of eight blocks (block order
/// `ord`): scales as f32, and the integer offset each block's sum carries.
#[derive(Default)]
struct Prepared {
    scales: Vec<__m256>,
    offsets: Vec<__m256i>,
    /// The offsets of the blocks past the last whole group, in order.
    tail: Vec<i32>,
    /// q4_0 only: per pair of blocks `(2j, 2j+1)`, `[a₂ⱼ[0..16] ++ a₂ⱼ₊₁[0..16]]`
    /// then `[a₂ⱼ[16..32] ++ a₂ⱼ₊₁[16..32]]` (the low and high nibbles' partners).
    pairs: Vec<__m256i>,
}

thread_local! {
    /// The buffers of [`prepare`], reused across calls on one thread (a decode
    /// step makes hundreds of GEMV calls); boxed, so that the thread-local
    /// block (static TLS, shared with libraries loaded later) holds a pointer.
    static PREPARED: core::cell::RefCell<Option<Box<Prepared>>> = const { core::cell::RefCell::new(None) };
}

/// Scales and `mult · Σa` of the whole groups of eight blocks of `act`, in `ord`,
/// and `mult · Σa` of the blocks after them, into `p` (contents replaced).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare(act: &[u8], nb: usize, ord: [usize; 8], mult: i32, pairs: bool, p: &mut Prepared) {
    let groups = nb / 8;
    let ap = act.as_ptr();
    p.scales.clear();
    p.offsets.clear();
    p.pairs.clear();
    p.tail.clear();
    p.tail.extend((8 * groups..nb).map(|b| if mult != 0 { mult * block_sum(ap.add(34 * b + 2)) } else { 0 }));
    for g in 0..groups {
        let mut d = [0u16; 8];
        let mut s = [0i32; 8];
        for (k, &b) in ord.iter().enumerate() {
            let ab = ap.add(34 * (8 * g + b));
            d[k] = (ab as *const u16).read_unaligned();
            if mult != 0 {
                s[k] = mult * block_sum(ab.add(2));
            }
        }
        p.scales.push(load_f16(d.as_ptr() as *const half::f16));
        p.offsets.push(_mm256_loadu_si256(s.as_ptr() as *const __m256i));
        if pairs {
            for j in 0..4 {
                let (a0, a1) = (ap.add(34 * (8 * g + 2 * j)), ap.add(34 * (8 * g + 2 * j + 1)));
                p.pairs.push(_mm256_loadu2_m128i(a1.add(2) as *const __m128i, a0.add(2) as *const __m128i));
                p.pairs.push(_mm256_loadu2_m128i(a1.add(18) as *const __m128i, a0.add(18) as *const __m128i));
            }
        }
    }
}

/// Σ of the 32 signed quants at `q` (via `maddubs` with ones: |Σ| ≤ 32·128,
/// exact in the i16 pairs).
#[inline(always)]
unsafe fn block_sum(q: *const u8) -> i32 {
    let ones = _mm256_set1_epi8(1);
    hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones, ld256(q)), _mm256_set1_epi16(1)))
}

/// Four pair sums (each 4 × i32 of block 2j in the low half, block 2j+1 in the
/// high half) → one vector of the eight block sums, in [`PAIR_ORD`].
#[inline(always)]
unsafe fn reduce_pairs(p: [__m256i; 4]) -> __m256i {
    let h01 = _mm256_hadd_epi32(p[0], p[1]);
    let h23 = _mm256_hadd_epi32(p[2], p[3]);
    _mm256_hadd_epi32(h01, h23)
}

/// Eight blocks' partial sums (8 × i32 each) → one vector of the eight block
/// sums, in natural order.
#[inline(always)]
unsafe fn reduce8(s: &[__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(s[0], s[1]);
    let h23 = _mm256_hadd_epi32(s[2], s[3]);
    let h45 = _mm256_hadd_epi32(s[4], s[5]);
    let h67 = _mm256_hadd_epi32(s[6], s[7]);
    // [0L 1L 2L 3L | 0H 1H 2H 3H] and the same for blocks 4..8.
    let lo = _mm256_hadd_epi32(h01, h23);
    let hi = _mm256_hadd_epi32(h45, h67);
    _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31))
}

/// The f16 scales at the start of eight blocks of `w` (`stride` bytes apart),
/// in `ord`, as f32.
#[inline(always)]
unsafe fn weight_scales(w: *const u8, stride: usize, ord: [usize; 8]) -> __m256 {
    // Two u64 of four scales each: cheaper than eight `pinsrw` (and than a
    // gather, on Zen 3).
    let r = |k: usize| (w.add(stride * ord[k]) as *const u16).read_unaligned() as u64;
    let a = r(0) | r(1) << 16 | r(2) << 32 | r(3) << 48;
    let b = r(4) | r(5) << 16 | r(6) << 32 | r(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(b as i64, a as i64))
}

/// `f16(w) · f16(a) · isum` for one block (the tails past the last group).
#[inline(always)]
unsafe fn scaled(wb: *const u8, ab: *const u8, isum: i32) -> f32 {
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

/// The quants of the two q4_0 blocks at `w` (block `b` low, `b + 1` high).
#[inline(always)]
unsafe fn quant_pair(w: *const u8) -> __m256i {
    _mm256_loadu2_m128i(w.add(20) as *const __m128i, w.add(2) as *const __m128i)
}

/// The q4_0 GEMV with pair product `P`; inlined into each table's
/// `#[target_feature]` wrapper.
#[inline(always)]
pub(super) unsafe fn q4_0_rows<P: Q4Pair>(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    // Out of the thread-local and back: the loops must not run in a closure,
    // which would not inherit the caller's `#[target_feature]`.
    let mut p = PREPARED.with_borrow_mut(Option::take).unwrap_or_default();
    prepare(act, nb, PAIR_ORD, 8, true, &mut p);
    let groups = nb / 8;
    for (r, y) in out.iter_mut().enumerate() {
        let wr = w.as_ptr().add(r * rb);
        let mut acc = _mm256_setzero_ps();
        for g in 0..groups {
            let wg = wr.add(18 * 8 * g);
            stream_ahead(wg, 18 * 8);
            let a = p.pairs.as_ptr().add(8 * g);
            let sums = reduce_pairs([
                P::pair(quant_pair(wg), a),
                P::pair(quant_pair(wg.add(36)), a.add(2)),
                P::pair(quant_pair(wg.add(72)), a.add(4)),
                P::pair(quant_pair(wg.add(108)), a.add(6)),
            ]);
            let isum = _mm256_sub_epi32(sums, *p.offsets.as_ptr().add(g));
            let d = _mm256_mul_ps(P::scales(wg), *p.scales.as_ptr().add(g));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
        }
        let mut sum = hsum_ps(acc);
        for b in 8 * groups..nb {
            let (wb, ab) = (wr.add(18 * b), act.as_ptr().add(34 * b));
            // One block as a pair with itself: the low lane holds its sums.
            let v = low128(wb.add(2));
            let pair = [low128(ab.add(2)), low128(ab.add(18))];
            let s = _mm256_castsi256_si128(P::pair(v, pair.as_ptr()));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let isum = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)));
            sum += scaled(wb, ab, isum - p.tail[b - 8 * groups]);
        }
        *y = sum;
    }
    PREPARED.with_borrow_mut(|s| *s = Some(p));
}

/// The q8_0 GEMV with block product `B`; inlined into each table's
/// `#[target_feature]` wrapper.
#[inline(always)]
pub(super) unsafe fn q8_0_rows<B: Q8Block>(w: &[u8], rb: usize, act: &[u8], nb: usize, out: &mut [f32]) {
    let mult = if B::OFFSET { 128 } else { 0 };
    let mut p = PREPARED.with_borrow_mut(Option::take).unwrap_or_default();
    prepare(act, nb, NATURAL, mult, false, &mut p);
    let groups = nb / 8;
    let ap = act.as_ptr();
    for (r, y) in out.iter_mut().enumerate() {
        let wr = w.as_ptr().add(r * rb);
        let mut acc = _mm256_setzero_ps();
        for g in 0..groups {
            let (wg, ag) = (wr.add(34 * 8 * g), ap.add(34 * 8 * g));
            stream_ahead(wg, 34 * 8);
            let mut s = [_mm256_setzero_si256(); 8];
            for (b, sb) in s.iter_mut().enumerate() {
                *sb = B::block(wg.add(34 * b + 2), ag.add(34 * b + 2));
            }
            let mut isum = reduce8(&s);
            if B::OFFSET {
                isum = _mm256_sub_epi32(isum, *p.offsets.as_ptr().add(g));
            }
            let d = _mm256_mul_ps(B::scales(wg), *p.scales.as_ptr().add(g));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
        }
        let mut sum = hsum_ps(acc);
        for b in 8 * groups..nb {
            let (wb, ab) = (wr.add(34 * b), ap.add(34 * b));
            let isum = hsum_i32(B::block(wb.add(2), ab.add(2))) - p.tail[b - 8 * groups];
            sum += scaled(wb, ab, isum);
        }
        *y = sum;
    }
    PREPARED.with_borrow_mut(|s| *s = Some(p));
}

/// 16 bytes at `p` in the low lane of a vector, the high lane zero. (A helper
/// rather than a closure: closures do not inherit their caller's target
/// features, so their intrinsics may stay calls.)
#[inline(always)]
unsafe fn low128(p: *const u8) -> __m256i {
    _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(p as *const __m128i))
}
