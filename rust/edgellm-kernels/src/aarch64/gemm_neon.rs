//! NEON GEMM micro-kernel: a 6×16 tile in 24 q-register accumulators, added to
//! C in place. B panels are packed (f32) by the reference packer, or are resident
//! float weights ([`crate::panels`]) read in place and widened per load.

use crate::gemm::{MR, NR};
use core::arch::aarch64::*;
use half::{bf16, f16};

/// A B-panel element type: 16 consecutive values widened into four vectors.
pub(in crate::aarch64) trait Wide: Copy {
    unsafe fn load16(p: *const Self) -> [float32x4_t; 4];
}

impl Wide for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> [float32x4_t; 4] {
        [vld1q_f32(p), vld1q_f32(p.add(4)), vld1q_f32(p.add(8)), vld1q_f32(p.add(12))]
    }
}

impl Wide for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> [float32x4_t; 4] {
        let (a, b) = f16x8(vld1q_u16(p as *const u16));
        let (c, d) = f16x8(vld1q_u16((p as *const u16).add(8)));
        [a, b, c, d]
    }
}

impl Wide for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> [float32x4_t; 4] {
        let h = [vld1q_u16(p as *const u16), vld1q_u16((p as *const u16).add(8))];
        let w = |v: uint32x4_t| vreinterpretq_f32_u32(v);
        [
            w(vshll_n_u16::<16>(vget_low_u16(h[0]))),
            w(vshll_high_n_u16::<16>(h[0])),
            w(vshll_n_u16::<16>(vget_low_u16(h[1]))),
            w(vshll_high_n_u16::<16>(h[1])),
        ]
    }
}

/// 8 f16 values (bits) widened to f32: lanes 0..4 and 4..8, with `fcvtl`/`fcvtl2`
/// (base ARMv8, through `asm!`: the f16 vector types of `core::arch` are not
/// stable Rust).
#[inline(always)]
pub(in crate::aarch64) unsafe fn f16x8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let lo: float32x4_t;
    let hi: float32x4_t;
    core::arch::asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        h = in(vreg) h,
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        options(pure, nomem, nostack, preserves_flags)
    );
    (lo, hi)
}

/// See [`crate::gemm::MicroKernel`]; only reachable through the NEON tables.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, add: bool) {
    micro(kc, ap, bp, c, ldc, add)
}

/// [`micro_kernel`] on f16 B panels (resident weights), widened per load.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel_f16(kc: usize, ap: *const f32, bp: *const f16, c: *mut f32, ldc: usize, add: bool) {
    micro(kc, ap, bp, c, ldc, add)
}

/// [`micro_kernel`] on bf16 B panels (resident weights), widened per load.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel_bf16(kc: usize, ap: *const f32, bp: *const bf16, c: *mut f32, ldc: usize, add: bool) {
    micro(kc, ap, bp, c, ldc, add)
}

/// The 6×16 tile over B panels of `E`: the same fused `fmla`s in the same order
/// whatever `E`, so the widened types give what the f32 kernel gives on widened
/// panels.
#[inline(always)]
unsafe fn micro<E: Wide>(kc: usize, ap: *const f32, bp: *const E, c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    for kk in 0..kc {
        let b = E::load16(bp.add(kk * NR));
        let a = ap.add(kk * MR);
        for (r, cr) in acc.iter_mut().enumerate() {
            let av = *a.add(r);
            for (q, cq) in cr.iter_mut().enumerate() {
                *cq = vfmaq_n_f32(*cq, b[q], av);
            }
        }
    }
    for (r, cr) in acc.iter().enumerate() {
        for (q, cq) in cr.iter().enumerate() {
            let d = c.add(r * ldc + 4 * q);
            let v = if add {
                vaddq_f32(*cq, vld1q_f32(d))
            } else {
                *cq
            };
            vst1q_f32(d, v);
        }
    }
}
