//! NEON kernels on float weights in resident panels ([`crate::panels`]): the
//! micro-kernel of the packed GEMM reading f16/bf16 panels in place, and
//! [`crate::Kernels::gemm_panels`] for decode and short prompts. Both add each
//! product with a fused `fmla` in the reference order (one chain per output and
//! `KC` block, block sums added in order), so they equal
//! [`crate::panels::gemm_panels_ref`] and each other bit for bit. f16 is widened
//! with `fcvtl`/`fcvtl2` (base ARMv8, through `asm!`: the f16 vector types of
//! `core::arch` are not stable Rust); bf16 by a 16-bit shift.

use crate::gemm::{KC, MR, NR};
use crate::panels::{self, Panels, WIDTH};
use core::arch::aarch64::*;
use half::{bf16, f16};

/// A panel element type: 16 consecutive values widened into four vectors.
trait Wide: Copy {
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

/// 8 f16 values (bits) widened to f32: lanes 0..4 and 4..8.
#[inline(always)]
unsafe fn f16x8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
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

/// [`crate::gemm::MicroKernelOf`] on f16 panels; only reachable through the NEON tables.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel_f16(kc: usize, ap: *const f32, bp: *const f16, c: *mut f32, ldc: usize, add: bool) {
    micro(kc, ap, bp, c, ldc, add)
}

/// [`crate::gemm::MicroKernelOf`] on bf16 panels; only reachable through the NEON tables.
#[target_feature(enable = "neon")]
pub unsafe fn micro_kernel_bf16(kc: usize, ap: *const f32, bp: *const bf16, c: *mut f32, ldc: usize, add: bool) {
    micro(kc, ap, bp, c, ldc, add)
}

/// The 6×16 tile of [`super::gemm_neon::micro_kernel`] with B widened per load:
/// the same `fmla`s in the same order.
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
            vst1q_f32(d, if add { vaddq_f32(*cq, vld1q_f32(d)) } else { *cq });
        }
    }
}

/// See [`crate::Kernels::gemm_panels`]; only reachable through the NEON tables.
pub fn gemm_panels(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    let k = panels::check(w, m, x, n, out, ldo);
    let (xp, o) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: shapes checked above; NEON is detected before the tables are handed out.
    unsafe {
        match w {
            Panels::F32(w) => run(w.as_ptr(), m, k, xp, n, o, ldo),
            Panels::F16(w) => run(w.as_ptr(), m, k, xp, n, o, ldo),
            Panels::Bf16(w) => run(w.as_ptr(), m, k, xp, n, o, ldo),
        }
    }
}

/// `P · T` accumulator quads (four vectors per panel and token) within the 32
/// registers: one token four panels at a time, two tokens two, more one.
#[target_feature(enable = "neon")]
unsafe fn run<E: Wide>(w: *const E, m: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    match n {
        1 => sweep::<E, 4, 1>(w, m, k, x, n, out, ldo),
        2 => sweep::<E, 2, 2>(w, m, k, x, n, out, ldo),
        _ => sweep::<E, 1, 4>(w, m, k, x, n, out, ldo),
    }
}

/// Every panel against every token: `P` panels at a time (then one at a time),
/// each group against groups of up to `T` tokens while its panels are in cache.
#[inline(always)]
unsafe fn sweep<E: Wide, const P: usize, const T: usize>(
    w: *const E,
    m: usize,
    k: usize,
    x: *const f32,
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    let count = m.div_ceil(WIDTH);
    let mut p = 0;
    while p < count {
        let full = p + P <= count;
        let mut t0 = 0;
        while t0 < n {
            let (x, out) = (x.add(t0 * k), out.add(t0 * ldo));
            let t = (n - t0).min(T);
            match (full, t) {
                (true, 1) => group::<E, P, 1>(w, m, k, p, x, out, ldo),
                (true, 2) => group::<E, P, 2>(w, m, k, p, x, out, ldo),
                (true, 3) => group::<E, P, 3>(w, m, k, p, x, out, ldo),
                (true, _) => group::<E, P, T>(w, m, k, p, x, out, ldo),
                (false, 1) => group::<E, 1, 1>(w, m, k, p, x, out, ldo),
                (false, 2) => group::<E, 1, 2>(w, m, k, p, x, out, ldo),
                (false, 3) => group::<E, 1, 3>(w, m, k, p, x, out, ldo),
                (false, _) => group::<E, 1, T>(w, m, k, p, x, out, ldo),
            }
            t0 += t;
        }
        p += if full { P } else { 1 };
    }
}

/// Panels `p0..p0 + P` against `T` tokens, k-block by k-block: each block's
/// chains start from zero and are stored (first block) or added to the outputs.
#[inline(always)]
unsafe fn group<E: Wide, const P: usize, const T: usize>(
    w: *const E,
    m: usize,
    k: usize,
    p0: usize,
    x: *const f32,
    out: *mut f32,
    ldo: usize,
) {
    let base = w.add(p0 * k * WIDTH);
    for k0 in (0..k).step_by(KC) {
        let k1 = (k0 + KC).min(k);
        let mut acc = [[[vdupq_n_f32(0.0); 4]; T]; P];
        for kk in k0..k1 {
            let mut wv = [[vdupq_n_f32(0.0); 4]; P];
            for (q, v) in wv.iter_mut().enumerate() {
                *v = E::load16(base.add(q * k * WIDTH + kk * WIDTH));
            }
            for t in 0..T {
                let xv = *x.add(t * k + kk);
                for q in 0..P {
                    for (a, wq) in acc[q][t].iter_mut().zip(&wv[q]) {
                        *a = vfmaq_n_f32(*a, *wq, xv);
                    }
                }
            }
        }
        for (q, aq) in acc.iter().enumerate() {
            let j = (p0 + q) * WIDTH;
            for (t, v) in aq.iter().enumerate() {
                put(out.add(t * ldo + j), WIDTH.min(m - j), v, k0 > 0);
            }
        }
    }
}

/// Stores (or, for `add`, adds to what they hold) the first `cols` outputs at
/// `d`, `acc + old` as the micro-kernel adds.
#[inline(always)]
unsafe fn put(d: *mut f32, cols: usize, v: &[float32x4_t; 4], add: bool) {
    if cols == WIDTH {
        for (q, v) in v.iter().enumerate() {
            let dq = d.add(4 * q);
            vst1q_f32(dq, if add { vaddq_f32(*v, vld1q_f32(dq)) } else { *v });
        }
        return;
    }
    let mut tile = [0f32; WIDTH];
    for (q, v) in v.iter().enumerate() {
        vst1q_f32(tile.as_mut_ptr().add(4 * q), *v);
    }
    for (c, s) in tile.iter().enumerate().take(cols) {
        let d = d.add(c);
        *d = if add { s + *d } else { *s };
    }
}
