//! AVX2 quantized GEMM (see [`crate::quant::qgemm`]): panels of 8 weight rows,
//! repacked once per call into the interleaved layout, times tiles of up to 4
//! tokens. Per 4-element group, one 32-byte weight vector (8 rows × 4 quants) is
//! multiplied with each token's 4 activation bytes, broadcast (`vpmaddubsw`,
//! unsigned weights × signed activations; q8_0 moves the weight's sign onto the
//! activation first). Pair sums of a block stay in i16 while they cannot
//! overflow, then `vpmaddwd` (by ones, or by the sub-block scales) reduces each
//! row to its i32 lane; block scales and the f32 accumulation act on 8 rows at
//! once. Bit-identical to the scalar `vec_dot` (see the module docs of `qgemm`).

use crate::quant::blocks::{Q8K_BSUMS, Q8K_QS};
use crate::quant::qgemm::{self, check_gemm_q, pack_panel, panel_layout, PanelLayout, QActs, QGemmScratch, PANEL};
use crate::quant::{vec_dot_type, GgmlType};
use core::arch::x86_64::*;

/// Tokens per register tile.
const TT: usize = 4;

/// `out[t * ldo + r] = vec_dot(w_r, act_t)` (see [`crate::Kernels::gemm_q`]).
pub(crate) fn gemm_q(w: &[u8], qa: &QActs, out: &mut [f32], ldo: usize, s: &mut QGemmScratch) {
    let (ty, k) = (qa.ty(), qa.k());
    let Some(l) = panel_layout(ty) else {
        return qgemm::gemm_q_with(super::quant_avx2::vec_dot, w, qa, out, ldo);
    };
    let (rows, n) = check_gemm_q(w, qa, out, ldo);
    let acts = qa.bytes();
    if rows == 0 || n == 0 {
        return;
    }
    let rb = ty.row_bytes(k).unwrap();
    let ab = vec_dot_type(ty).row_bytes(k).unwrap();
    let nb = k / l.elems;
    let panels = rows.div_ceil(PANEL);
    let pb = nb * l.stride;
    s.w.resize(panels * pb, 0);
    for p in 0..panels {
        let (r0, r1) = (p * PANEL, ((p + 1) * PANEL).min(rows));
        pack_panel(ty, &w[r0 * rb..r1 * rb], rb, k, &mut s.w[p * pb..(p + 1) * pb]);
    }
    // Tokens per pass over the panels: their activations (~96 KiB) stay in L2.
    let nt = ((96 * 1024) / ab).clamp(TT, 1024) / TT * TT;
    let mut res = [[0f32; PANEL]; TT];
    for t0 in (0..n).step_by(nt) {
        let t1 = (t0 + nt).min(n);
        for p in 0..panels {
            let panel = s.w[p * pb..(p + 1) * pb].as_ptr();
            let (r0, nr) = (p * PANEL, PANEL.min(rows - p * PANEL));
            let mut t = t0;
            while t < t1 {
                let c = TT.min(t1 - t);
                let ctx = Tile { panel, nb, l, acts: acts[t * ab..].as_ptr(), ab, da: &qa.da[(t * nb).min(qa.da.len())..], sa: &qa.sa[(t * nb).min(qa.sa.len())..] };
                // Sound: this table is only handed out after avx2, fma and f16c were
                // detected; `ctx` covers `c` whole activation rows and the panel.
                unsafe {
                    match c {
                        4 => ctx.run::<4>(ty, &mut res),
                        3 => ctx.run::<3>(ty, &mut res),
                        2 => ctx.run::<2>(ty, &mut res),
                        _ => ctx.run::<1>(ty, &mut res),
                    }
                }
                for (i, rr) in res.iter().enumerate().take(c) {
                    out[(t + i) * ldo + r0..][..nr].copy_from_slice(&rr[..nr]);
                }
                t += c;
            }
        }
    }
}

/// One register tile: a packed panel and `T` consecutive activation rows.
struct Tile<'a> {
    panel: *const u8,
    nb: usize,
    l: PanelLayout,
    /// First activation row (`ab` bytes per row).
    acts: *const u8,
    ab: usize,
    /// q4_0/q8_0: activation scales from the first row on (`nb` per row).
    da: &'a [f32],
    /// q4_0: `8 · Σ a` per block from the first row on.
    sa: &'a [i32],
}

#[inline(always)]
unsafe fn ld256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The 4 bytes at `p` broadcast to every 32-bit lane.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m256i {
    _mm256_set1_epi32((p as *const i32).read_unaligned())
}

impl Tile<'_> {
    unsafe fn run<const T: usize>(&self, ty: GgmlType, res: &mut [[f32; PANEL]; TT]) {
        debug_assert!(T <= TT);
        match ty {
            GgmlType::Q4_0 => self.q4_0::<T>(res),
            GgmlType::Q8_0 => self.q8_0::<T>(res),
            GgmlType::Q4K => self.q4_k::<T>(res),
            GgmlType::Q6K => self.q6_k::<T>(res),
            _ => unreachable!(),
        }
    }

    #[inline(always)]
    unsafe fn row(&self, t: usize) -> *const u8 {
        self.acts.add(t * self.ab)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0<const T: usize>(&self, res: &mut [[f32; PANEL]; TT]) {
        let (nb, stride) = (self.nb, self.l.stride);
        assert!(self.da.len() >= T * nb && self.sa.len() >= T * nb);
        let ones = _mm256_set1_epi16(1);
        let a: [*const u8; T] = core::array::from_fn(|t| self.row(t));
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let wb = self.panel.add(b * stride);
            let mut s16 = [_mm256_setzero_si256(); T];
            for g in 0..8 {
                let w = ld256(wb.add(32 * g));
                for t in 0..T {
                    let y = bcast4(a[t].add(34 * b + 2 + 4 * g));
                    // nibble (≤ 15) × i8: 8 groups of pair sums stay below 2^15.
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, y));
                }
            }
            let dw = _mm256_loadu_ps(wb.add(self.l.d) as *const f32);
            for t in 0..T {
                let isum = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(self.sa[t * nb + b]));
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(self.da[t * nb + b]));
                acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(isum)));
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0<const T: usize>(&self, res: &mut [[f32; PANEL]; TT]) {
        let (nb, stride) = (self.nb, self.l.stride);
        assert!(self.da.len() >= T * nb);
        let ones = _mm256_set1_epi16(1);
        let a: [*const u8; T] = core::array::from_fn(|t| self.row(t));
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let wb = self.panel.add(b * stride);
            let mut s32 = [_mm256_setzero_si256(); T];
            for g in 0..8 {
                let w = ld256(wb.add(32 * g));
                let wa = _mm256_abs_epi8(w);
                for t in 0..T {
                    // |w| · (±y): pair sums ≤ 2 · 128 · 127 (activations are never -128).
                    let y = _mm256_sign_epi8(bcast4(a[t].add(34 * b + 2 + 4 * g)), w);
                    s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(_mm256_maddubs_epi16(wa, y), ones));
                }
            }
            let dw = _mm256_loadu_ps(wb.add(self.l.d) as *const f32);
            for t in 0..T {
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(self.da[t * nb + b]));
                acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(s32[t])));
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k<const T: usize>(&self, res: &mut [[f32; PANEL]; TT]) {
        let (nb, l) = (self.nb, self.l);
        let a: [*const u8; T] = core::array::from_fn(|t| self.row(t));
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let wb = self.panel.add(b * l.stride);
            let ab: [*const u8; T] = core::array::from_fn(|t| a[t].add(292 * b));
            let mut isum = [_mm256_setzero_si256(); T];
            for sb in 0..8 {
                let mut s16 = [_mm256_setzero_si256(); T];
                for g in 0..8 {
                    let w = ld256(wb.add(32 * (8 * sb + g)));
                    for t in 0..T {
                        let y = bcast4(ab[t].add(Q8K_QS + 32 * sb + 4 * g));
                        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, y));
                    }
                }
                let sc = ld256(wb.add(l.sc + 32 * sb));
                for t in 0..T {
                    isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s16[t], sc));
                }
            }
            // Σ min · (bsum[2 sb] + bsum[2 sb + 1]).
            let mut msum = [_mm256_setzero_si256(); T];
            for sb in 0..8 {
                let mn = ld256(wb.add(l.sc2 + 32 * sb));
                for t in 0..T {
                    msum[t] = _mm256_add_epi32(msum[t], _mm256_madd_epi16(mn, bcast4(ab[t].add(Q8K_BSUMS + 4 * sb))));
                }
            }
            let d = _mm256_loadu_ps(wb.add(l.d) as *const f32);
            let dmin = _mm256_loadu_ps(wb.add(l.dmin) as *const f32);
            for t in 0..T {
                let da = _mm256_set1_ps((ab[t] as *const f32).read_unaligned());
                let x = _mm256_mul_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(isum[t]));
                let m = _mm256_mul_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(msum[t]));
                acc[t] = _mm256_add_ps(acc[t], _mm256_sub_ps(x, m));
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k<const T: usize>(&self, res: &mut [[f32; PANEL]; TT]) {
        let (nb, l) = (self.nb, self.l);
        let a: [*const u8; T] = core::array::from_fn(|t| self.row(t));
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let wb = self.panel.add(b * l.stride);
            let ab: [*const u8; T] = core::array::from_fn(|t| a[t].add(292 * b));
            let mut isum = [_mm256_setzero_si256(); T];
            for j in 0..16 {
                let sc = ld256(wb.add(l.sc + 32 * j));
                for h in 0..2 {
                    let g = 4 * j + 2 * h;
                    let (w0, w1) = (ld256(wb.add(32 * g)), ld256(wb.add(32 * g + 32)));
                    for t in 0..T {
                        let y = ab[t].add(Q8K_QS + 4 * g);
                        // 6-bit × i8: two groups of pair sums stay below 2^15.
                        let s = _mm256_add_epi16(
                            _mm256_maddubs_epi16(w0, bcast4(y)),
                            _mm256_maddubs_epi16(w1, bcast4(y.add(4))),
                        );
                        isum[t] = _mm256_add_epi32(isum[t], _mm256_madd_epi16(s, sc));
                    }
                }
            }
            // The -32 offset of every value: 32 · Σ scale · bsum.
            let mut off = [_mm256_setzero_si256(); T];
            for p in 0..8 {
                let sp = ld256(wb.add(l.sc2 + 32 * p));
                for t in 0..T {
                    off[t] = _mm256_add_epi32(off[t], _mm256_madd_epi16(sp, bcast4(ab[t].add(Q8K_BSUMS + 4 * p))));
                }
            }
            let d = _mm256_loadu_ps(wb.add(l.d) as *const f32);
            for t in 0..T {
                let da = _mm256_set1_ps((ab[t] as *const f32).read_unaligned());
                let i = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(off[t], 5));
                acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(i)));
            }
        }
        for t in 0..T {
            _mm256_storeu_ps(res[t].as_mut_ptr(), acc[t]);
        }
    }
}
