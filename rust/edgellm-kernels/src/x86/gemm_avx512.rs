//! AVX-512 GEMM: the wide tile of [`crate::gemm::WideKernelOf`], two A panels
//! (12 rows) by two B panels (32 columns) in 24 zmm accumulators. Per k step
//! two B loads (a panel row of 16 values each), twelve broadcasts of A and 24
//! FMAs: FMA-bound at two 512-bit FMAs a cycle, where the 6×16 AVX2 tile
//! caps the same core at half that. Each output sums the same FMAs in the
//! same order as the AVX2 tile (one chain from zero per k-block), so the two
//! tables give the same bits.

use crate::gemm::{MR, NR};
use core::arch::x86_64::*;
use half::{bf16, f16};

/// Rows of the wide tile.
const ROWS: usize = 2 * MR;

/// See [`crate::gemm::WideKernelOf`]; only reachable through the AVX-512 table.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn wide_f32(kc: usize, ap: *const f32, lda: usize, bp: *const f32, bs: usize, c: *mut f32, ldc: usize, add: bool) {
    match lda {
        0 => wide::<f32, false>(kc, ap, 0, bp, bs, c, ldc, add),
        _ => wide::<f32, true>(kc, ap, lda, bp, bs, c, ldc, add),
    }
}

/// [`wide_f32`] on f16 B panels (resident weights), widened per load.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn wide_f16(kc: usize, ap: *const f32, lda: usize, bp: *const f16, bs: usize, c: *mut f32, ldc: usize, add: bool) {
    match lda {
        0 => wide::<f16, false>(kc, ap, 0, bp, bs, c, ldc, add),
        _ => wide::<f16, true>(kc, ap, lda, bp, bs, c, ldc, add),
    }
}

/// [`wide_f32`] on bf16 B panels (resident weights), widened per load.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub unsafe fn wide_bf16(kc: usize, ap: *const f32, lda: usize, bp: *const bf16, bs: usize, c: *mut f32, ldc: usize, add: bool) {
    match lda {
        0 => wide::<bf16, false>(kc, ap, 0, bp, bs, c, ldc, add),
        _ => wide::<bf16, true>(kc, ap, lda, bp, bs, c, ldc, add),
    }
}

/// A B element type widened sixteen at a time into a zmm register.
trait Elem16: Copy {
    unsafe fn load16(p: *const Self) -> __m512;
}
impl Elem16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}
impl Elem16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}
impl Elem16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// The 12×32 tile. A's value `(r, kk)` is at `ap[r · lda + kk]` for `IN_PLACE`,
/// else in the packed panels (`ap[kk · MR + r]` for the first six rows, the
/// second panel `kc · MR` values on); B's panels at `bp` and `bp + bs`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wide<E: Elem16, const IN_PLACE: bool>(
    kc: usize,
    ap: *const f32,
    lda: usize,
    bp: *const E,
    bs: usize,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    // As the AVX2 tile: C's lines are fetched now, long before the stores.
    for r in 0..ROWS {
        let row = c.add(r * ldc);
        _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.add(NR) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(row.add(2 * NR - 1) as *const i8);
    }
    let (b0p, b1p) = (bp, bp.add(bs));
    let a1 = ap.add(kc * MR);
    let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
    // Four steps per iteration: read in place, the twelve row addresses are
    // computed once for the four (displacements after the first), where one
    // step per iteration spent a dozen integer µops on them. The tile alone,
    // A rows 16 KiB apart: 174 → 186 GFLOP/s on one Emerald Rapids core.
    let mut kk = 0;
    while kk + 4 <= kc {
        for u in 0..4 {
            step::<E, IN_PLACE>(&mut acc, kk + u, ap, a1, lda, b0p, b1p);
        }
        kk += 4;
    }
    while kk < kc {
        step::<E, IN_PLACE>(&mut acc, kk, ap, a1, lda, b0p, b1p);
        kk += 1;
    }
    for (r, cr) in acc.iter().enumerate() {
        let d = c.add(r * ldc);
        let (mut v0, mut v1) = (cr[0], cr[1]);
        if add {
            v0 = _mm512_add_ps(v0, _mm512_loadu_ps(d));
            v1 = _mm512_add_ps(v1, _mm512_loadu_ps(d.add(NR)));
        }
        _mm512_storeu_ps(d, v0);
        _mm512_storeu_ps(d.add(NR), v1);
    }
}

/// One k step of [`wide`]: two B loads, then a broadcast of A and two FMAs
/// per row.
#[inline(always)]
unsafe fn step<E: Elem16, const IN_PLACE: bool>(
    acc: &mut [[__m512; 2]; ROWS],
    kk: usize,
    ap: *const f32,
    a1: *const f32,
    lda: usize,
    b0p: *const E,
    b1p: *const E,
) {
    let (b0, b1) = (E::load16(b0p.add(kk * NR)), E::load16(b1p.add(kk * NR)));
    for (r, cr) in acc.iter_mut().enumerate() {
        let at = match (IN_PLACE, r < MR) {
            (true, _) => ap.add(r * lda + kk),
            (false, true) => ap.add(kk * MR + r),
            (false, false) => a1.add(kk * MR + r - MR),
        };
        let av = _mm512_set1_ps(*at);
        cr[0] = _mm512_fmadd_ps(av, b0, cr[0]);
        cr[1] = _mm512_fmadd_ps(av, b1, cr[1]);
    }
}
