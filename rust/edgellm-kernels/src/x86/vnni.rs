//! The two encodings of the VNNI byte and word dot products. AVX-512 VNNI
//! (Ice Lake, Sapphire Rapids, Zen 4) encodes `vpdpbusd`/`vpdpwssd` in EVEX,
//! for xmm/ymm with AVX-512 VL and for zmm; AVX-VNNI (Alder Lake and later
//! client cores, which have no AVX-512; also Sapphire Rapids and Zen 5)
//! encodes the same operations in VEX, ymm only. A tile body generic over
//! [`Vnni`] is one piece of code for both tables, and computes the same
//! integers either way.
//!
//! The VEX forms' intrinsics (`_mm256_dpbusd_avx_epi32`, the `avxvnni`
//! target feature) are stable from Rust 1.89, the workspace's minimum.

use super::lanes::{Lanes, Pair, Ymm};
use core::arch::x86_64::*;

/// `vpdpbusd` and `vpdpwssd` on the integer lanes of `L`, in one encoding.
pub(super) trait Vnni<L: Lanes> {
    /// `acc` plus, per i32 lane, the 4 products of the unsigned bytes of `u`
    /// with the signed bytes of `s` (no saturation).
    unsafe fn dpbusd(acc: L::I, u: L::I, s: L::I) -> L::I;
    /// `acc` plus, per i32 lane, the 2 products of the i16 of `a` and `b`.
    unsafe fn dpwssd(acc: L::I, a: L::I, b: L::I) -> L::I;
}

/// AVX-512 VNNI (with VL for ymm): the intrinsics.
pub(super) struct Evex;

/// AVX-VNNI: the VEX forms, ymm only.
pub(super) struct Vex;

impl Vnni<Ymm> for Evex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
}

impl<const ZIP: bool> Vnni<Pair<ZIP>> for Evex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        _mm512_dpwssd_epi32(acc, a, b)
    }
}

impl Vnni<Ymm> for Vex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    }
}
