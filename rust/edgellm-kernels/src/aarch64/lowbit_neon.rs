//! NEON dot products of edgellm's low-bit group formats (`q3_g128`, `q3a_g128`,
//! `q2_g128`, `q2a_g128`) with `q8_0` activations. Codes of activation block `s`
//! come from a shift+mask of the two 16-byte halves of the 2-bit plane and two
//! `vtst` of the 1-bit plane (bits `s` and `4 + s`, see `quant::blocks`); the
//! integer sums use `sdot` where the CPU has dotprod, widening multiplies
//! otherwise (the shared `dot16` of `quant_neon`).

use super::quant_neon::imp::{dot16, f16_ld};
use crate::quant::{lowbit, GgmlType};
use core::arch::aarch64::*;

/// `Σ dequant(w)·dequant(act)` over `nb` blocks of 128 (lengths already
/// checked); `dot`: use the dotprod variant.
///
/// # Safety
/// NEON must be present (always, where the NEON table is handed out) and, with
/// `dot`, the dotprod feature; `w` holds `nb` blocks of `ty`, `act` `4·nb` q8_0 blocks.
pub(super) unsafe fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], nb: usize, dot: bool) -> f32 {
    let sp = lowbit::spec(ty).expect("vec_dot: not a low-bit type");
    debug_assert!(w.len() >= nb * sp.bytes && act.len() >= nb * 4 * 34);
    let (w, a) = (w.as_ptr(), act.as_ptr());
    match (sp.bits, sp.asym, dot) {
        (3, false, true) => q3s_dot(w, a, nb, &sp),
        (3, false, false) => q3s_neon(w, a, nb, &sp),
        (3, true, true) => q3a_dot(w, a, nb, &sp),
        (3, true, false) => q3a_neon(w, a, nb, &sp),
        (2, false, true) => q2s_dot(w, a, nb, &sp),
        (2, false, false) => q2s_neon(w, a, nb, &sp),
        (_, _, true) => q2a_dot(w, a, nb, &sp),
        (_, _, false) => q2a_neon(w, a, nb, &sp),
    }
}

macro_rules! variants {
    ($dot:ident, $neon:ident, $bits:expr, $asym:expr) => {
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $dot(w: *const u8, a: *const u8, nb: usize, sp: &lowbit::Spec) -> f32 {
            body::<$bits, $asym, true>(w, a, nb, sp)
        }
        #[target_feature(enable = "neon")]
        unsafe fn $neon(w: *const u8, a: *const u8, nb: usize, sp: &lowbit::Spec) -> f32 {
            body::<$bits, $asym, false>(w, a, nb, sp)
        }
    };
}
variants!(q3s_dot, q3s_neon, 3, false);
variants!(q3a_dot, q3a_neon, 3, true);
variants!(q2s_dot, q2s_neon, 2, false);
variants!(q2a_dot, q2a_neon, 2, true);

#[inline(always)]
unsafe fn body<const BITS: u32, const ASYM: bool, const DOT: bool>(
    wp: *const u8,
    ap: *const u8,
    nb: usize,
    sp: &lowbit::Spec,
) -> f32 {
    let m3 = vdupq_n_u8(3);
    let four = vdupq_n_u8(4);
    let zero = vdupq_n_s8(sp.zero() as i8);
    let ones = vdupq_n_s8(1);
    let mut acc = [vdupq_n_f32(0.0); 2];
    for i in 0..nb {
        let (wb, ab) = (wp.add(sp.bytes * i), ap.add(136 * i));
        let mut lo0 = vld1q_u8(wb.add(sp.qs));
        let mut lo1 = vld1q_u8(wb.add(sp.qs + 16));
        let qh = if BITS == 3 { vld1q_u8(wb.add(sp.qh)) } else { vdupq_n_u8(0) };
        let d = f16_ld(wb);
        let m = if ASYM { f16_ld(wb.add(2)) } else { 0.0 };
        let a = &mut acc[i % 2];
        for s in 0..4 {
            let mut u0 = vandq_u8(lo0, m3);
            let mut u1 = vandq_u8(lo1, m3);
            lo0 = vshrq_n_u8::<2>(lo0);
            lo1 = vshrq_n_u8::<2>(lo1);
            if BITS == 3 {
                u0 = vorrq_u8(u0, vandq_u8(vtstq_u8(qh, vdupq_n_u8(1 << s)), four));
                u1 = vorrq_u8(u1, vandq_u8(vtstq_u8(qh, vdupq_n_u8(16 << s)), four));
            }
            let y = ab.add(34 * s);
            let (y0, y1) = (vld1q_s8(y.add(2) as *const i8), vld1q_s8(y.add(18) as *const i8));
            let da = f16_ld(y);
            let (q0, q1) = if ASYM {
                (vreinterpretq_s8_u8(u0), vreinterpretq_s8_u8(u1))
            } else {
                (vsubq_s8(vreinterpretq_s8_u8(u0), zero), vsubq_s8(vreinterpretq_s8_u8(u1), zero))
            };
            let p = dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), q0, y0), q1, y1);
            *a = vfmaq_n_f32(*a, vcvtq_f32_s32(p), d * da);
            if ASYM {
                let sa = dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), ones, y0), ones, y1);
                *a = vfmaq_n_f32(*a, vcvtq_f32_s32(sa), m * da);
            }
        }
    }
    vaddvq_f32(vaddq_f32(acc[0], acc[1]))
}
