//! Small AVX helpers shared by the x86 kernels (inlined into their
//! `#[target_feature]` callers).

use core::arch::x86_64::*;
use half::{bf16, f16};

/// 32 bytes from `p` (unaligned).
#[inline(always)]
pub(crate) unsafe fn ld256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Stores `v` at `o + at` (unaligned).
#[inline(always)]
pub(crate) unsafe fn st256(o: *mut u8, at: usize, v: __m256i) {
    _mm256_storeu_si256(o.add(at) as *mut __m256i, v)
}

/// Bytes ahead of the weights being read that [`stream_ahead`] asks the cache
/// for: decode GEMVs stream their rows through memory front to back, and one
/// core's hardware prefetcher alone left the DRAM rate below the kernels'
/// cache-resident rate (a 2-thread q4_K step: 0.80 of a plain read of the
/// same bytes without, 0.89 with).
const STREAM_AHEAD: usize = 1024;

/// Asks the cache (L1) for the lines of the `bytes` bytes [`STREAM_AHEAD`]
/// past `p`, the block being read; never faults, so they may lie past the data.
#[inline(always)]
pub(crate) unsafe fn stream_ahead(p: *const u8, bytes: usize) {
    prefetch_lines(p.wrapping_add(STREAM_AHEAD), bytes)
}

/// Asks the cache (L1) for the `bytes` bytes at `p`, a line at a time; never
/// faults, so they may lie past the data.
#[inline(always)]
pub(crate) unsafe fn prefetch_lines(p: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
        off += 64;
    }
}

/// Sum of the eight f32 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Sum of the eight i32 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
}

/// Eight f16 values widened to f32 (F16C).
#[inline(always)]
pub(crate) unsafe fn load_f16(p: *const f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Eight bf16 values widened to f32 (a 16-bit shift).
#[inline(always)]
pub(crate) unsafe fn load_bf16(p: *const bf16) -> __m256 {
    let h = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
}

/// A weight element type the float dots read: its 8-wide load to f32 and its
/// scalar widening (for tails).
pub(crate) trait Elem: Copy {
    unsafe fn load8(p: *const Self) -> __m256;
    fn widen(self) -> f32;
}
impl Elem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}
impl Elem for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> __m256 {
        load_f16(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}
impl Elem for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> __m256 {
        load_bf16(p)
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}
