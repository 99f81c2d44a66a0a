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

/// `impl Vnni<$lanes> for $enc` by the two intrinsics named.
macro_rules! vnni {
    ($enc:ty, $lanes:ty, $v:ty, $dpbusd:ident, $dpwssd:ident $(, $g:tt)?) => {
        impl$(<const $g: bool>)? Vnni<$lanes> for $enc {
            #[inline(always)]
            unsafe fn dpbusd(acc: $v, u: $v, s: $v) -> $v {
                $dpbusd(acc, u, s)
            }
            #[inline(always)]
            unsafe fn dpwssd(acc: $v, a: $v, b: $v) -> $v {
                $dpwssd(acc, a, b)
            }
        }
    };
}

vnni!(Evex, Ymm, __m256i, _mm256_dpbusd_epi32, _mm256_dpwssd_epi32);
vnni!(Evex, Pair<ZIP>, __m512i, _mm512_dpbusd_epi32, _mm512_dpwssd_epi32, ZIP);
vnni!(Vex, Ymm, __m256i, _mm256_dpbusd_avx_epi32, _mm256_dpwssd_avx_epi32);
