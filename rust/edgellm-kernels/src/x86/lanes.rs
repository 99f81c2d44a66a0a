//! The two widths the k-quant tiles are written over: the 8 rows of one panel
//! in a ymm ([`Ymm`]), or those of two panels side by side in a zmm ([`Pair`],
//! the first panel in the low half). A tile body generic over [`Lanes`] is one
//! piece of code for both: every operation here works within 128-bit lanes
//! (byte shuffles included), so the paired tile computes each panel's rows
//! exactly as the 256-bit tile does, bit for bit, with half the instructions
//! per weight byte.
//!
//! The bodies are `#[inline(always)]` and reach their features through the
//! `#[target_feature]` entry that instantiates them (AVX2 for [`Ymm`],
//! AVX-512 F/BW/VL for [`Pair`]); the VNNI products, whose encoding is a
//! choice of its own, are in [`super::vnni`].

use super::qgemm_avx2::bcast4;
use crate::quant::qgemm::{PairResults, PANEL, TILE_TOKENS};
use crate::x86::simd::{ld256, load_f16, prefetch_lines};
use core::arch::x86_64::*;

/// Where a tile reads its weights (one panel's block, or two) and the vector
/// operations of its width. Shift counts are plain integers: the callers pass
/// constants, which the compiler turns into immediate shifts.
pub(super) trait Lanes: Copy {
    /// Integer lanes: 32 bytes per panel.
    type I: Copy;
    /// f32 lanes: one per row.
    type F: Copy;
    /// Results of a tile of up to [`TILE_TOKENS`] tokens: a row of f32 lanes each.
    type Results;

    /// The source `off` bytes on, in each panel (in bounds, as `pointer::add`).
    unsafe fn add(self, off: usize) -> Self;
    /// The source `off` bytes on, in each panel, wherever that is (for
    /// prefetches: never read unless in bounds).
    fn wrapping_add(self, off: usize) -> Self;
    /// Asks the cache for the `bytes` bytes at the source, in each panel.
    unsafe fn prefetch(self, bytes: usize);
    /// The 32 bytes at `off`.
    unsafe fn ld(self, off: usize) -> Self::I;
    /// The 8 f32 at `off`.
    unsafe fn ld_ps(self, off: usize) -> Self::F;
    /// The 8 f16 at `off`, widened.
    unsafe fn ld_f16(self, off: usize) -> Self::F;
    /// The 16 i8 at `off`, sign-extended to i16.
    unsafe fn ld_i8_i16(self, off: usize) -> Self::I;
    /// A 32-byte constant (a shuffle mask), in each panel's half.
    unsafe fn mask(m: &[u8; 32]) -> Self::I;
    /// The 4 bytes at `p` in every i32 lane.
    unsafe fn bcast4(p: *const u8) -> Self::I;

    unsafe fn zero() -> Self::I;
    unsafe fn splat8(b: i8) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    /// 16-bit lanes shifted left by `n`.
    unsafe fn shl16(a: Self::I, n: i32) -> Self::I;
    /// 16-bit lanes shifted right (logical) by `n`.
    unsafe fn shr16(a: Self::I, n: i32) -> Self::I;
    /// `vpshufb`: bytes picked within each 128-bit lane.
    unsafe fn shuffle8(a: Self::I, m: Self::I) -> Self::I;
    unsafe fn add16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn add32(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub32(a: Self::I, b: Self::I) -> Self::I;
    /// `vpmaddubsw`: unsigned bytes of `u` times signed bytes of `s`, pairs added (saturating) into i16.
    unsafe fn maddubs(u: Self::I, s: Self::I) -> Self::I;
    /// `vpmaddwd`: i16 products, pairs added into i32.
    unsafe fn madd(a: Self::I, b: Self::I) -> Self::I;
    /// 32-bit lanes shifted left by `n`.
    unsafe fn shl32(a: Self::I, n: i32) -> Self::I;
    /// 32-bit lanes shifted right (logical) by `n`.
    unsafe fn shr32(a: Self::I, n: i32) -> Self::I;
    /// Low 32 bits of the i32 products.
    unsafe fn mullo32(a: Self::I, b: Self::I) -> Self::I;

    unsafe fn zero_ps() -> Self::F;
    unsafe fn splat_ps(x: f32) -> Self::F;
    unsafe fn to_ps(a: Self::I) -> Self::F;
    unsafe fn add_ps(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn sub_ps(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul_ps(a: Self::F, b: Self::F) -> Self::F;
    /// Token `t`'s row of results.
    unsafe fn store(res: &mut Self::Results, t: usize, v: Self::F);
}

/// A block of one panel.
#[derive(Clone, Copy)]
pub(super) struct Ymm(pub(super) *const u8);

/// A block of each of two panels: apart (`ZIP = false`: byte `off` of the
/// block at `.0 + off` and `.1 + off`), or zipped into one run of bytes, 32 of
/// the first panel's then 32 of the second's ([`Zipped`]), where a zmm is one
/// load instead of two and an insert.
#[derive(Clone, Copy)]
pub(super) struct Pair<const ZIP: bool = false>(pub(super) *const u8, pub(super) *const u8);

/// Two zipped per-call panels ([`crate::quant::qgemm::zip_panels`]).
pub(super) type Zipped = Pair<true>;

impl Zipped {
    /// The zipped panels at `at`.
    #[inline(always)]
    pub(super) fn at(at: *const u8) -> Zipped {
        Pair(at, at.wrapping_add(32))
    }
}

impl<const ZIP: bool> Pair<ZIP> {
    /// How far each panel's byte `off` lies from its byte 0.
    #[inline(always)]
    const fn pos(off: usize) -> usize {
        if ZIP {
            2 * (off & !31) + (off & 31)
        } else {
            off
        }
    }

    /// The 16 bytes at `off` of each panel's block, low half first.
    #[inline(always)]
    unsafe fn ld128(self, off: usize) -> __m256i {
        let at = Self::pos(off);
        let lo = _mm256_castsi128_si256(_mm_loadu_si128(self.0.add(at) as *const __m128i));
        _mm256_inserti128_si256::<1>(lo, _mm_loadu_si128(self.1.add(at) as *const __m128i))
    }
}

/// The 4 bytes at `p` in every i32 lane of a zmm.
#[inline(always)]
pub(super) unsafe fn bcast4z(p: *const u8) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

/// The trait's two-operand methods of one vector type (`I` or `F`), each the
/// intrinsic named.
macro_rules! binary {
    ($v:ident: $($name:ident => $f:ident),* $(,)?) => {
        $(
            #[inline(always)]
            unsafe fn $name(a: Self::$v, b: Self::$v) -> Self::$v {
                $f(a, b)
            }
        )*
    };
}

impl Lanes for Ymm {
    type I = __m256i;
    type F = __m256;
    type Results = [[f32; PANEL]; TILE_TOKENS];

    #[inline(always)]
    unsafe fn add(self, off: usize) -> Self {
        Ymm(self.0.add(off))
    }
    #[inline(always)]
    fn wrapping_add(self, off: usize) -> Self {
        Ymm(self.0.wrapping_add(off))
    }
    #[inline(always)]
    unsafe fn prefetch(self, bytes: usize) {
        prefetch_lines(self.0, bytes)
    }
    #[inline(always)]
    unsafe fn ld(self, off: usize) -> __m256i {
        ld256(self.0.add(off))
    }
    #[inline(always)]
    unsafe fn ld_ps(self, off: usize) -> __m256 {
        _mm256_loadu_ps(self.0.add(off) as *const f32)
    }
    #[inline(always)]
    unsafe fn ld_f16(self, off: usize) -> __m256 {
        load_f16(self.0.add(off).cast())
    }
    #[inline(always)]
    unsafe fn ld_i8_i16(self, off: usize) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128(self.0.add(off) as *const __m128i))
    }
    #[inline(always)]
    unsafe fn mask(m: &[u8; 32]) -> __m256i {
        ld256(m.as_ptr())
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m256i {
        bcast4(p)
    }
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn splat8(b: i8) -> __m256i {
        _mm256_set1_epi8(b)
    }
    #[inline(always)]
    unsafe fn shl16(a: __m256i, n: i32) -> __m256i {
        _mm256_sll_epi16(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn shr16(a: __m256i, n: i32) -> __m256i {
        _mm256_srl_epi16(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn zero_ps() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat_ps(x: f32) -> __m256 {
        _mm256_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn to_ps(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn store(res: &mut Self::Results, t: usize, v: __m256) {
        _mm256_storeu_ps(res[t].as_mut_ptr(), v)
    }
    binary!(I:
        and => _mm256_and_si256,
        or => _mm256_or_si256,
        shuffle8 => _mm256_shuffle_epi8,
        add16 => _mm256_add_epi16,
        add32 => _mm256_add_epi32,
        sub32 => _mm256_sub_epi32,
        maddubs => _mm256_maddubs_epi16,
        madd => _mm256_madd_epi16,
        mullo32 => _mm256_mullo_epi32
    );
    #[inline(always)]
    unsafe fn shl32(a: __m256i, n: i32) -> __m256i {
        _mm256_sll_epi32(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn shr32(a: __m256i, n: i32) -> __m256i {
        _mm256_srl_epi32(a, _mm_cvtsi32_si128(n))
    }
    binary!(F:
        add_ps => _mm256_add_ps,
        sub_ps => _mm256_sub_ps,
        mul_ps => _mm256_mul_ps
    );
}

impl<const ZIP: bool> Lanes for Pair<ZIP> {
    type I = __m512i;
    type F = __m512;
    type Results = PairResults;

    #[inline(always)]
    unsafe fn add(self, off: usize) -> Self {
        Pair(self.0.add(Self::pos(off)), self.1.add(Self::pos(off)))
    }
    #[inline(always)]
    fn wrapping_add(self, off: usize) -> Self {
        Pair(self.0.wrapping_add(Self::pos(off)), self.1.wrapping_add(Self::pos(off)))
    }
    #[inline(always)]
    unsafe fn prefetch(self, bytes: usize) {
        if ZIP {
            prefetch_lines(self.0, 2 * bytes);
        } else {
            prefetch_lines(self.0, bytes);
            prefetch_lines(self.1, bytes);
        }
    }
    #[inline(always)]
    unsafe fn ld(self, off: usize) -> __m512i {
        if ZIP {
            // The two halves are adjacent: off is a multiple of 32 wherever zipped panels are read.
            debug_assert_eq!(off % 32, 0);
            _mm512_loadu_si512(self.0.add(Self::pos(off)) as *const _)
        } else {
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(ld256(self.0.add(off))), ld256(self.1.add(off)))
        }
    }
    #[inline(always)]
    unsafe fn ld_ps(self, off: usize) -> __m512 {
        _mm512_castsi512_ps(self.ld(off))
    }
    #[inline(always)]
    unsafe fn ld_f16(self, off: usize) -> __m512 {
        _mm512_cvtph_ps(self.ld128(off))
    }
    #[inline(always)]
    unsafe fn ld_i8_i16(self, off: usize) -> __m512i {
        _mm512_cvtepi8_epi16(self.ld128(off))
    }
    #[inline(always)]
    unsafe fn mask(m: &[u8; 32]) -> __m512i {
        _mm512_broadcast_i64x4(ld256(m.as_ptr()))
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const u8) -> __m512i {
        bcast4z(p)
    }
    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn splat8(b: i8) -> __m512i {
        _mm512_set1_epi8(b)
    }
    #[inline(always)]
    unsafe fn shl16(a: __m512i, n: i32) -> __m512i {
        _mm512_sll_epi16(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn shr16(a: __m512i, n: i32) -> __m512i {
        _mm512_srl_epi16(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn zero_ps() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat_ps(x: f32) -> __m512 {
        _mm512_set1_ps(x)
    }
    #[inline(always)]
    unsafe fn to_ps(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn store(res: &mut PairResults, t: usize, v: __m512) {
        _mm512_storeu_ps(res[t].as_mut_ptr(), v)
    }
    binary!(I:
        and => _mm512_and_si512,
        or => _mm512_or_si512,
        shuffle8 => _mm512_shuffle_epi8,
        add16 => _mm512_add_epi16,
        add32 => _mm512_add_epi32,
        sub32 => _mm512_sub_epi32,
        maddubs => _mm512_maddubs_epi16,
        madd => _mm512_madd_epi16,
        mullo32 => _mm512_mullo_epi32
    );
    #[inline(always)]
    unsafe fn shl32(a: __m512i, n: i32) -> __m512i {
        _mm512_sll_epi32(a, _mm_cvtsi32_si128(n))
    }
    #[inline(always)]
    unsafe fn shr32(a: __m512i, n: i32) -> __m512i {
        _mm512_srl_epi32(a, _mm_cvtsi32_si128(n))
    }
    binary!(F:
        add_ps => _mm512_add_ps,
        sub_ps => _mm512_sub_ps,
        mul_ps => _mm512_mul_ps
    );
}

