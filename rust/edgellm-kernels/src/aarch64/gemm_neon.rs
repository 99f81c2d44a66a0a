//! NEON GEMM micro-kernel: a 6×16 tile in 24 q-register accumulators, added to
//! C in place. B panels are packed by the reference packer.

use crate::gemm::{MR, NR};
use core::arch::aarch64::*;

/// See [`crate::gemm::MicroKernel`]; only reachable through the NEON tables.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel(
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    for kk in 0..kc {
        let b = [
            vld1q_f32(bp.add(kk * NR)),
            vld1q_f32(bp.add(kk * NR + 4)),
            vld1q_f32(bp.add(kk * NR + 8)),
            vld1q_f32(bp.add(kk * NR + 12)),
        ];
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
