//! AVX2+FMA GEMM: the 6×16 micro-kernel (12 ymm accumulators; per k step two B
//! loads, six broadcasts of A and twelve FMAs, the tile added to C in place),
//! its streaming twin, which may first copy its panel from k-major f32 B (see
//! [`crate::gemm::MicroKernelStream`]), and the B packer, which widens and
//! transposes 8 × 8 tiles of weight rows in registers (a value-by-value scatter
//! cost ~10% of an f16 prefill).

use crate::gemm::{check_pack_b, BRows, BStream, MR, NR};
use crate::x86::simd::Elem;
use core::arch::x86_64::*;
use half::{bf16, f16};

/// See [`crate::gemm::MicroKernel`]; only reachable through the AVX2 table.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn micro_kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, add: bool) {
    micro::<f32, false, false>(kc, ap, 0, bp, &NO_STREAM, c, ldc, add)
}

/// See [`crate::gemm::MicroKernelRows`]: [`micro_kernel`] reading A's rows in
/// place, `lda` apart; only reachable through the AVX2 table.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn micro_kernel_rows(kc: usize, ap: *const f32, lda: usize, bp: *const f32, c: *mut f32, ldc: usize, add: bool) {
    micro::<f32, true, false>(kc, ap, lda, bp, &NO_STREAM, c, ldc, add)
}

/// See [`crate::gemm::MicroKernelStream`]; only reachable through the AVX2 table.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn micro_kernel_stream(kc: usize, ap: *const f32, lda: usize, b: &BStream, c: *mut f32, ldc: usize, add: bool) {
    match lda {
        0 => micro::<f32, false, true>(kc, ap, 0, b.panel, b, c, ldc, add),
        _ => micro::<f32, true, true>(kc, ap, lda, b.panel, b, c, ldc, add),
    }
}

/// The plain kernels' (unused) stream.
const NO_STREAM: BStream = BStream {
    panel: core::ptr::null_mut(),
    src: core::ptr::null(),
    ld: 0,
    ahead: core::ptr::null(),
    ahead_rows: 0,
};

/// [`micro_kernel`] on f16 B panels (resident weights), widened per load (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn micro_kernel_f16(kc: usize, ap: *const f32, bp: *const f16, c: *mut f32, ldc: usize, add: bool) {
    micro::<_, false, false>(kc, ap, 0, bp, &NO_STREAM, c, ldc, add)
}

/// [`micro_kernel`] on bf16 B panels (resident weights), widened per load.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn micro_kernel_bf16(kc: usize, ap: *const f32, bp: *const bf16, c: *mut f32, ldc: usize, add: bool) {
    micro::<_, false, false>(kc, ap, 0, bp, &NO_STREAM, c, ldc, add)
}

/// The 6×16 tile over B panels of `E`: the same FMAs in the same order whatever
/// `E` and A's layout, so the widened types give what the f32 kernel gives on
/// widened panels, and A read in place what packed A gives. A's value `(r, kk)`
/// is at `ap[r * lda + kk]` for `ROWS` (row-major, in place), else at
/// `ap[kk * MR + r]` (packed). With `STREAM`, `s` says whether the panel `bp`
/// is first copied from source rows, and which source rows to fetch ahead,
/// one every `kc / ahead_rows` steps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<E: Elem, const ROWS: bool, const STREAM: bool>(
    kc: usize,
    ap: *const f32,
    lda: usize,
    bp: *const E,
    s: &BStream,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    // The C tile is read (or written) only after the k loop, far beyond the
    // out-of-order window: fetch its lines now (for large outputs they come from
    // L3 or memory, and the exposed misses cost up to a quarter of the time).
    for r in 0..MR {
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + NR - 1) as *const i8);
    }
    if STREAM && !s.src.is_null() {
        debug_assert!(core::mem::size_of::<E>() == 4, "streams pack f32 panels");
        // The panel is copied before the k loop, not inside it: there each
        // step's FMAs waited on its row, which misses (rows ld apart), so only
        // the ~10 steps in the out-of-order window overlapped their misses
        // (the tile took 5-9 plain tiles); a bare copy keeps far more in flight.
        // The AVX2 table is only handed out with F16C too (pack_cols's features).
        pack_cols(s.src, s.ld, 0, NR, 0, kc, bp as *mut f32);
    }
    let every = if STREAM { (kc / s.ahead_rows.max(1)).max(1) } else { 1 };
    let (mut ahead, mut left, mut wait) = (s.ahead, s.ahead_rows, every);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for kk in 0..kc {
        let (b0, b1) = (E::load8(bp.add(kk * NR)), E::load8(bp.add(kk * NR + 8)));
        if STREAM && left > 0 {
            wait -= 1;
            if wait == 0 {
                // A row's 16 values span one or two lines.
                _mm_prefetch::<_MM_HINT_T1>(ahead as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(NR - 1) as *const i8);
                ahead = ahead.wrapping_add(s.ld);
                (left, wait) = (left - 1, every);
            }
        }
        for (r, cr) in acc.iter_mut().enumerate() {
            let at = if ROWS { ap.add(r * lda + kk) } else { ap.add(kk * MR + r) };
            let av = _mm256_broadcast_ss(&*at);
            cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
            cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
        }
    }
    for (r, cr) in acc.iter().enumerate() {
        let d = c.add(r * ldc);
        let (mut v0, mut v1) = (cr[0], cr[1]);
        if add {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(d));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(d.add(8)));
        }
        _mm256_storeu_ps(d, v0);
        _mm256_storeu_ps(d.add(8), v1);
    }
}

/// See [`crate::gemm::PackBFn`]; bit-identical to [`crate::gemm::pack_b`].
pub fn pack_b(b: BRows<'_>, k: usize, j0: usize, j1: usize, k0: usize, kc: usize, out: &mut [f32]) {
    check_pack_b(b, k, j0, j1, k0, kc, out);
    let o = out.as_mut_ptr();
    // SAFETY: ranges checked above; the AVX2 table is only handed out after
    // AVX2, FMA and F16C were detected.
    unsafe {
        match b {
            BRows::F32(w) => pack_rows(w.as_ptr(), k, j0, j1, k0, kc, o),
            BRows::F16(w) => pack_rows(w.as_ptr(), k, j0, j1, k0, kc, o),
            BRows::Bf16(w) => pack_rows(w.as_ptr(), k, j0, j1, k0, kc, o),
            BRows::F32Cols { data, ld } => pack_cols(data.as_ptr(), ld, j0, j1, k0, kc, o),
        }
    }
}

/// Rows `j0..j1` (`k` elements apart), elements `k0..k0 + kc`, into the panels at
/// `out`: groups of 8 rows, 8 elements at a time, transposed in registers.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_rows<E: Elem>(
    w: *const E,
    k: usize,
    j0: usize,
    j1: usize,
    k0: usize,
    kc: usize,
    out: *mut f32,
) {
    let rows = j1 - j0;
    if rows % NR != 0 {
        // The padding columns of the last panel.
        std::slice::from_raw_parts_mut(out.add(rows / NR * kc * NR), kc * NR).fill(0.0);
    }
    let mut g = 0;
    while g + 8 <= rows {
        let dst = out.add(g / NR * kc * NR + g % NR);
        let src = w.add((j0 + g) * k + k0);
        let mut kk = 0;
        while kk + 8 <= kc {
            let mut v = [_mm256_setzero_ps(); 8];
            for (i, vi) in v.iter_mut().enumerate() {
                *vi = E::load8(src.add(i * k + kk));
            }
            let t = transpose8(v);
            for (i, v) in t.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((kk + i) * NR), v);
            }
            kk += 8;
        }
        for kk in kk..kc {
            for i in 0..8 {
                *dst.add(kk * NR + i) = (*src.add(i * k + kk)).widen();
            }
        }
        g += 8;
    }
    for j in g..rows {
        let dst = out.add(j / NR * kc * NR + j % NR);
        let src = w.add((j0 + j) * k + k0);
        for kk in 0..kc {
            *dst.add(kk * NR) = (*src.add(kk)).widen();
        }
    }
}

/// k-major B (element `(j, kk)` at `data[kk * ld + j]`): each panel row is a
/// contiguous run of 16 columns, copied with two vector moves.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_cols(
    data: *const f32,
    ld: usize,
    j0: usize,
    j1: usize,
    k0: usize,
    kc: usize,
    out: *mut f32,
) {
    let rows = j1 - j0;
    for p in 0..rows.div_ceil(NR) {
        let (c0, cols) = (j0 + p * NR, NR.min(rows - p * NR));
        let dst = out.add(p * kc * NR);
        for kk in 0..kc {
            let (s, d) = (data.add((k0 + kk) * ld + c0), dst.add(kk * NR));
            if cols == NR {
                _mm256_storeu_ps(d, _mm256_loadu_ps(s));
                _mm256_storeu_ps(d.add(8), _mm256_loadu_ps(s.add(8)));
            } else {
                for c in 0..NR {
                    *d.add(c) = if c < cols { *s.add(c) } else { 0.0 };
                }
            }
        }
    }
}

/// `out[j][i] = v[i][j]` for an 8 × 8 tile.
#[inline(always)]
unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    // Pairs of rows interleaved: (0,1), (2,3), (4,5), (6,7). (No closures here:
    // they would not inherit the caller's target features.)
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    // Quads: element e of rows 0-3 (low 128 bits: e, high: e + 4).
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}
