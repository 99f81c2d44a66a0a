//! AVX2 [`crate::Kernels::gemm_few`]: prompts of a few tokens on float weights.
//! One weight row at a time against up to `T` tokens: each 8-element step widens
//! the row's values once in a register and multiplies them with every token's
//! activations, into `T` accumulators (two sets for up to 4 tokens, to hide the
//! FMA latency). The weights are read as one sequential stream (row after row)
//! and never written back; passes after the first over a row (more than `T`
//! tokens) find it in L1, and the first prefetches the next row. The activations
//! are interleaved once per call, step-major, so each step reads one contiguous
//! run. On this project's VM, single thread, 64 MiB of f16 weights: 17 GB/s of
//! weights for 2 tokens and 28-34 GFLOP/s for 4, against 7 GB/s and 22-25 for
//! the widen-a-block-then-`matmul_f32` path it replaced; register tiles of 4
//! rows read 4 streams at once and ran at 10 GB/s for 2 tokens. With the 32
//! registers of AVX-512 VL, 5-8 tokens go two rows per pass ([`row2`], each
//! activation load serving both, results bit-identical): 8 tokens 42-50
//! GFLOP/s against 37-40 one row at a time (Zen 4).

use crate::gemm::BRows;
use crate::x86::simd::{hsum_ps, Elem};
use core::arch::x86_64::*;

/// See [`crate::Kernels::gemm_few`]; only reachable through the AVX2 tables.
pub fn gemm_few(w: BRows<'_>, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    few(w, x, n, out, ldo, false)
}

/// [`gemm_few`] for the AVX-512 table: the same code compiled with AVX-512 VL,
/// whose 32 vector registers hold 16 tokens' accumulators.
pub fn gemm_few_avx512(w: BRows<'_>, x: &[f32], n: usize, out: &mut [f32], ldo: usize) {
    few(w, x, n, out, ldo, true)
}

fn few(w: BRows<'_>, x: &[f32], n: usize, out: &mut [f32], ldo: usize, wide: bool) {
    let (k, rows) = crate::scalar::check_gemm_few(w, x, n, out, ldo);
    let (xp, o) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: shapes checked above; the AVX2 tables are handed out only after
    // avx2, fma and f16c were detected, the AVX-512 one (`wide`) after avx512f
    // and avx512vl too.
    unsafe {
        match (w, wide) {
            (BRows::F32(w), false) => run8(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::F16(w), false) => run8(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::Bf16(w), false) => run8(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::F32(w), true) => run16(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::F16(w), true) => run16(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::Bf16(w), true) => run16(w.as_ptr(), rows, k, xp, n, o, ldo),
            (BRows::F32Cols { .. }, _) => unreachable!("checked above"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run8<E: Elem>(w: *const E, rows: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    run::<E, 8>(w, rows, k, x, n, out, ldo)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn run16<E: Elem>(w: *const E, rows: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    run::<E, 16>(w, rows, k, x, n, out, ldo)
}

thread_local! {
    /// The activations interleaved per 8-element step (see [`run`]), reused
    /// across calls on one thread.
    static XPACK: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
unsafe fn run<E: Elem, const T: usize>(w: *const E, rows: usize, k: usize, x: *const f32, n: usize, out: *mut f32, ldo: usize) {
    // The activations step-major: the n tokens' 8 values of step s at
    // `xs[(s·n + t)·8..]`, so each step reads one contiguous run instead of n
    // streams (16 token streams ran 4x slower than one, L1 prefetch lost track).
    let steps = k / 8;
    // Taken out of the thread-local (and put back): the work must not run in a
    // closure, which would not inherit `#[target_feature]`.
    let mut buf = XPACK.with_borrow_mut(core::mem::take);
    {
        let xs = &mut buf;
        xs.clear();
        xs.reserve(steps * n * 8);
        for s in 0..steps {
            for t in 0..n {
                xs.extend_from_slice(core::slice::from_raw_parts(x.add(t * k + 8 * s), 8));
            }
        }
        let xs = xs.as_ptr();
        // A match, not a closure: closures do not inherit `#[target_feature]`.
        macro_rules! pass {
            ($c:expr, $wj:expr, $t0:expr, $ot:expr, $pf:expr; $($tt:literal)*) => {
                match $c {
                    $($tt => row::<E, $tt>($wj, k, xs.add($t0 * 8), n * 8, x.add($t0 * k), $ot, ldo, $pf),)*
                    _ => unreachable!(),
                }
            };
        }
        macro_rules! pass2 {
            ($c:expr, $wj:expr, $t0:expr, $ot:expr; $($tt:literal)*) => {
                match $c {
                    $($tt => row2::<E, $tt>($wj, k, xs.add($t0 * 8), n * 8, x.add($t0 * k), $ot, ldo),)*
                    _ => unreachable!(),
                }
            };
        }
        let mut j = 0;
        // With 32 registers, 5-8 tokens take two rows per pass.
        if T == 16 && (5..=8).contains(&n) {
            while j + 2 <= rows {
                let wj = w.add(j * k);
                pass2!(n, wj, 0, out.add(j); 5 6 7 8);
                j += 2;
            }
        }
        for j in j..rows {
            let wj = w.add(j * k);
            let mut t0 = 0;
            while t0 < n {
                let c = (n - t0).min(T);
                // The first pass over a row prefetches the next one.
                let pf = if t0 == 0 { Some(wj.add(k) as *const u8) } else { None };
                pass!(c, wj, t0, out.add(t0 * ldo + j), pf; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
                t0 += c;
            }
        }
    }
    XPACK.with_borrow_mut(|x| *x = buf);
}

/// `out[t · ldo] = dot(w, x_t)` for `TT` tokens: `xs` their step-major values
/// (`stride` floats per step), `x` their rows (for the last `k % 8` elements),
/// `w` one row of `k`. Prefetches the `k` elements after the row (from `pf`), a
/// line at a time. Few tokens keep two accumulators each (alternate steps), so
/// that the FMA latency stays hidden.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row<E: Elem, const TT: usize>(
    w: *const E,
    k: usize,
    xs: *const f32,
    stride: usize,
    x: *const f32,
    out: *mut f32,
    ldo: usize,
    pf: Option<*const u8>,
) {
    // The second step of a pair goes to a second set of accumulators only for
    // few tokens (a compile-time branch; two plain arrays, which LLVM keeps in
    // registers: indexing or referencing them by that choice spilled them).
    let (mut a0, mut a1) = ([_mm256_setzero_ps(); TT], [_mm256_setzero_ps(); TT]);
    let size = core::mem::size_of::<E>();
    let (mut i, mut step) = (0, 0);
    while i + 16 <= k {
        if let Some(p) = pf {
            // A line of the next row per 64 bytes of this one.
            if (i * size) % 64 < 16 * size {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * size) as *const i8);
            }
        }
        let (w0, w1) = (E::load8(w.add(i)), E::load8(w.add(i + 8)));
        let (x0, x1) = (xs.add(step * stride), xs.add((step + 1) * stride));
        for (t, a) in a0.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0.add(8 * t)), *a);
        }
        if TT <= 4 {
            for (t, a) in a1.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1.add(8 * t)), *a);
            }
        } else {
            for (t, a) in a0.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1.add(8 * t)), *a);
            }
        }
        i += 16;
        step += 2;
    }
    for t in 0..TT {
        a0[t] = _mm256_add_ps(a0[t], a1[t]);
    }
    if i + 8 <= k {
        let (w0, x0) = (E::load8(w.add(i)), xs.add(step * stride));
        for (t, a) in a0.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0.add(8 * t)), *a);
        }
        i += 8;
    }
    for t in 0..TT {
        let mut s = hsum_ps(a0[t]);
        for q in i..k {
            s += (*w.add(q)).widen() * *x.add(t * k + q);
        }
        *out.add(t * ldo) = s;
    }
}

/// [`row`] for two consecutive rows (`w`, `w + k`) and `TT` ≥ 5 tokens: each
/// activation vector loaded once for both, each row summed exactly as [`row`]
/// sums it (bit-identical).
#[inline(always)]
unsafe fn row2<E: Elem, const TT: usize>(
    w: *const E,
    k: usize,
    xs: *const f32,
    stride: usize,
    x: *const f32,
    out: *mut f32,
    ldo: usize,
) {
    let mut a = [[_mm256_setzero_ps(); TT]; 2];
    let (mut i, mut step) = (0, 0);
    while i + 16 <= k {
        let w0 = [E::load8(w.add(i)), E::load8(w.add(k + i))];
        let w1 = [E::load8(w.add(i + 8)), E::load8(w.add(k + i + 8))];
        let (x0, x1) = (xs.add(step * stride), xs.add((step + 1) * stride));
        for t in 0..TT {
            let xv = _mm256_loadu_ps(x0.add(8 * t));
            a[0][t] = _mm256_fmadd_ps(w0[0], xv, a[0][t]);
            a[1][t] = _mm256_fmadd_ps(w0[1], xv, a[1][t]);
        }
        for t in 0..TT {
            let xv = _mm256_loadu_ps(x1.add(8 * t));
            a[0][t] = _mm256_fmadd_ps(w1[0], xv, a[0][t]);
            a[1][t] = _mm256_fmadd_ps(w1[1], xv, a[1][t]);
        }
        i += 16;
        step += 2;
    }
    // `row` adds its (here empty) second accumulator set.
    for r in &mut a {
        for v in r.iter_mut() {
            *v = _mm256_add_ps(*v, _mm256_setzero_ps());
        }
    }
    if i + 8 <= k {
        let x0 = xs.add(step * stride);
        let w0 = [E::load8(w.add(i)), E::load8(w.add(k + i))];
        for t in 0..TT {
            let xv = _mm256_loadu_ps(x0.add(8 * t));
            a[0][t] = _mm256_fmadd_ps(w0[0], xv, a[0][t]);
            a[1][t] = _mm256_fmadd_ps(w0[1], xv, a[1][t]);
        }
        i += 8;
    }
    for (r, ar) in a.iter().enumerate() {
        for t in 0..TT {
            let mut s = hsum_ps(ar[t]);
            for q in i..k {
                s += (*w.add(r * k + q)).widen() * *x.add(t * k + q);
            }
            *out.add(t * ldo + r) = s;
        }
    }
}
