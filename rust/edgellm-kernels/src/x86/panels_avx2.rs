//! [`crate::Kernels::gemm_panels`] on AVX2 and AVX-512 VL: decode and short
//! prompts on float weights repacked into panels ([`crate::panels`]). Each k
//! step widens a panel's 16 weights into two vectors, broadcasts each token's
//! activation and adds the products into that token's two accumulators: one
//! fused chain per output and `KC` block, the micro-kernel's order, so the
//! results equal the packed GEMM's bit for bit. `P` panels go at once (more
//! independent chains to hide the FMA latency); `P · T` accumulator pairs fill
//! the register file (16 ymm with AVX2, 32 with AVX-512 VL).
//!
//! From memory (256 MiB of f16 weights, Zen 4, two threads), the prototype read
//! 27-29 GB/s at k = 2048 and 5632 alike, where the row-major GEMV read 27-28
//! at 2048 but 23-24 at 5632: its f32 activation row, re-read per weight row,
//! no longer stayed in L1 beside the weight stream.

use crate::gemm::KC;
use crate::panels::{self, PanelTile, Panels, WIDTH};
use crate::x86::simd::Elem;
use core::arch::x86_64::*;

/// See [`crate::Kernels::gemm_panels`]; only reachable through the AVX2 table.
pub fn gemm_panels(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    run(w, m, x, n, out, ldo, false)
}

/// [`gemm_panels`] for the AVX-512 table: up to 8 tokens per pass.
pub fn gemm_panels_avx512(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    run(w, m, x, n, out, ldo, true)
}

fn run(w: Panels<'_>, m: usize, x: &[f32], n: usize, out: &mut [f32], ldo: usize, wide: bool) {
    let k = panels::check(w, m, x, n, out, ldo);
    let (xp, o) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: shapes checked above; the tables that hold these functions are
    // handed out only after their features were detected (AVX2, FMA, F16C; and
    // AVX-512 F/VL for `wide`).
    unsafe {
        match (w, wide) {
            (Panels::F32(w), false) => avx2(w.as_ptr(), m, k, xp, n, o, ldo),
            (Panels::F16(w), false) => avx2(w.as_ptr(), m, k, xp, n, o, ldo),
            (Panels::Bf16(w), false) => avx2(w.as_ptr(), m, k, xp, n, o, ldo),
            (Panels::F32(w), true) => avx512(w.as_ptr(), m, k, xp, n, o, ldo),
            (Panels::F16(w), true) => avx512(w.as_ptr(), m, k, xp, n, o, ldo),
            (Panels::Bf16(w), true) => avx512(w.as_ptr(), m, k, xp, n, o, ldo),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2<E: Elem>(w: *const E, m: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    match n {
        1 => panels::sweep::<AvxTiles<E>, 4, 1>(w, m, k, x, n, out, ldo),
        2 => panels::sweep::<AvxTiles<E>, 2, 2>(w, m, k, x, n, out, ldo),
        _ => panels::sweep::<AvxTiles<E>, 1, 4>(w, m, k, x, n, out, ldo),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn avx512<E: Elem>(w: *const E, m: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    match n {
        1 | 2 => panels::sweep::<AvxTiles<E>, 4, 2>(w, m, k, x, n, out, ldo),
        _ => panels::sweep::<AvxTiles<E>, 2, 4>(w, m, k, x, n, out, ldo),
    }
}

/// The register tiles of this kernel, for [`panels::sweep`].
struct AvxTiles<E>(core::marker::PhantomData<E>);

impl<E: Elem> PanelTile for AvxTiles<E> {
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
            let mut acc = [[[_mm256_setzero_ps(); 2]; T]; P];
            for kk in k0..k1 {
                let mut wv = [[_mm256_setzero_ps(); 2]; P];
                for (q, v) in wv.iter_mut().enumerate() {
                    let at = base.add(q * k * WIDTH + kk * WIDTH);
                    *v = [E::load8(at), E::load8(at.add(8))];
                }
                for t in 0..T {
                    let xb = _mm256_broadcast_ss(&*x.add(t * k + kk));
                    for q in 0..P {
                        acc[q][t][0] = _mm256_fmadd_ps(xb, wv[q][0], acc[q][t][0]);
                        acc[q][t][1] = _mm256_fmadd_ps(xb, wv[q][1], acc[q][t][1]);
                    }
                }
            }
            for (q, aq) in acc.iter().enumerate() {
                let j = (p0 + q) * WIDTH;
                for (t, v) in aq.iter().enumerate() {
                    put(out.add(t * ldo + j), WIDTH.min(m - j), *v, k0 > 0);
                }
            }
        }
    }
}

/// Stores (or, for `add`, adds to what they hold) the first `cols` outputs at
/// `d`, `acc + old` as the micro-kernel adds.
#[inline(always)]
unsafe fn put(d: *mut f32, cols: usize, v: [__m256; 2], add: bool) {
    if cols == WIDTH {
        let (mut v0, mut v1) = (v[0], v[1]);
        if add {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(d));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(d.add(8)));
        }
        _mm256_storeu_ps(d, v0);
        _mm256_storeu_ps(d.add(8), v1);
        return;
    }
    let mut tile = [0f32; WIDTH];
    _mm256_storeu_ps(tile.as_mut_ptr(), v[0]);
    _mm256_storeu_ps(tile.as_mut_ptr().add(8), v[1]);
    for (c, s) in tile.iter().enumerate().take(cols) {
        let d = d.add(c);
        *d = if add { s + *d } else { *s };
    }
}
