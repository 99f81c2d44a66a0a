//! [`crate::Kernels::exp_sum`] on NEON, 4 lanes: [`crate::scalar::exp_neg`]'s
//! operations one for one (separate multiplies and adds, no FMA), so every
//! value keeps its bits; the sum runs per lane, then across the lanes.

use crate::scalar::exp_consts::*;
use crate::scalar::exp_neg;
use core::arch::aarch64::*;

pub(super) fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    // Sound: the NEON tables are built only after NEON was detected.
    unsafe { run(x, shift) }
}

#[target_feature(enable = "neon")]
unsafe fn run(x: &mut [f32], shift: f32) -> f32 {
    let (n, p) = (x.len(), x.as_mut_ptr());
    let sh = vdupq_n_f32(shift);
    let mut acc = vdupq_n_f32(0.0);
    let mut i = 0;
    while i + 4 <= n {
        let e = exp4(vsubq_f32(vld1q_f32(p.add(i)), sh));
        vst1q_f32(p.add(i), e);
        acc = vaddq_f32(acc, e);
        i += 4;
    }
    let mut s = vaddvq_f32(acc);
    for v in &mut x[i..] {
        *v = exp_neg(*v - shift);
        s += *v;
    }
    s
}

/// `exp_neg` of 4 lanes.
#[inline(always)]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let xc = vmaxq_f32(x, vdupq_n_f32(LOW));
    let z = vaddq_f32(vmulq_f32(xc, vdupq_n_f32(LOG2E)), vdupq_n_f32(MAGIC));
    let n = vsubq_f32(z, vdupq_n_f32(MAGIC));
    let r = vsubq_f32(vsubq_f32(xc, vmulq_f32(n, vdupq_n_f32(LN2_HI))), vmulq_f32(n, vdupq_n_f32(LN2_LO)));
    let mut poly = vdupq_n_f32(P[0]);
    for &c in &P[1..] {
        poly = vaddq_f32(vmulq_f32(poly, r), vdupq_n_f32(c));
    }
    let e = vaddq_f32(vaddq_f32(vmulq_f32(vmulq_f32(poly, r), r), r), vdupq_n_f32(1.0));
    let ni = vsubq_s32(vreinterpretq_s32_f32(z), vdupq_n_s32(MAGIC_BITS));
    let scale = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(ni, vdupq_n_s32(127))));
    let y = vmulq_f32(e, scale);
    // Zero where x < LOW.
    let low = vcltq_f32(x, vdupq_n_f32(LOW));
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), low))
}
