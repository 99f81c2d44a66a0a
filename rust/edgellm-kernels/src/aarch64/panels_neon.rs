//! NEON [`crate::Kernels::gemm_panels`]: decode and short prompts on float
//! weights in resident panels ([`crate::panels`]). Each product is added with a
//! fused `fmla` in the reference order (one chain per output and `KC` block,
//! block sums added in order), the order of the micro-kernel that reads the same
//! panels for long prompts ([`super::gemm_neon::micro_kernel_f16`]), so they
//! equal [`crate::panels::gemm_panels_ref`] and each other bit for bit.

use super::gemm_neon::Wide;
use crate::gemm::KC;
use crate::panels::{self, PanelTile, Panels, WIDTH};
use core::arch::aarch64::*;

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
        1 => panels::sweep::<NeonTiles<E>, 4, 1>(w, m, k, x, n, out, ldo),
        2 => panels::sweep::<NeonTiles<E>, 2, 2>(w, m, k, x, n, out, ldo),
        _ => panels::sweep::<NeonTiles<E>, 1, 4>(w, m, k, x, n, out, ldo),
    }
}

/// The register tiles of this kernel, for [`panels::sweep`].
struct NeonTiles<E>(core::marker::PhantomData<E>);

impl<E: Wide> PanelTile for NeonTiles<E> {
    type Elem = E;
    /// Panels `p0..p0 + P` against `T` tokens, k-block by k-block: each block's
    /// chains start from zero and are stored (first block) or added to the outputs.
    #[inline(always)]
    unsafe fn tile<const P: usize, const T: usize>(
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
