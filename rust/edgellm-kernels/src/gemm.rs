//! Packed, cache-blocked GEMM for prefill: `C[n × m] = A[n × k] · Bᵀ`, with A the
//! activations (row-major, k contiguous) and B the weights (row-major `[m × k]`).
//!
//! BLIS-style: A is packed once into panels of `MR` rows, k-major; each block of
//! B rows is packed (and widened from f16/bf16) into panels of `NR` columns,
//! k-major; a register-tile micro-kernel computes `MR × NR` outputs per panel pair
//! over `KC` steps of k. Only the micro-kernel is per-ISA.

use half::{bf16, f16};

/// Rows of A per micro-tile.
pub const MR: usize = 6;
/// Columns (B rows) per micro-tile.
pub const NR: usize = 16;
/// k elements per cache block: an A panel (MR×KC) and a B panel (KC×NR) stay in L1.
pub const KC: usize = 256;

/// `acc[r * NR + c] = Σ_kk ap[kk * MR + r] * bp[kk * NR + c]` over `kc` steps.
pub type MicroKernel = fn(kc: usize, ap: &[f32], bp: &[f32], acc: &mut [f32; MR * NR]);

/// Weight rows in their storage type.
#[derive(Clone, Copy)]
pub enum BRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// f32 stored k-major (`Bᵀ` row-major, as the right operand of `A @ B`):
    /// element `(j, kk)` at `data[kk * ld + j]`.
    F32Cols { data: &'a [f32], ld: usize },
}

/// Activations packed for [`gemm_packed`]: for each k-block, for each panel of
/// `MR` rows, `kc × MR` values (rows past `n` are zero).
pub struct PackedA {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedA {
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    fn panels(&self) -> usize {
        self.n.div_ceil(MR)
    }
    fn block(&self, kb: usize, panel: usize) -> &[f32] {
        let k0 = kb * KC;
        let kc = KC.min(self.k - k0);
        let start = k0 * MR * self.panels() + panel * kc * MR;
        &self.data[start..start + kc * MR]
    }
}

/// Packs row-major `a` (`n × k`).
pub fn pack_a(a: &[f32], n: usize, k: usize) -> PackedA {
    assert_eq!(a.len(), n * k, "pack_a: shape mismatch");
    let panels = n.div_ceil(MR);
    let mut data = vec![0f32; panels * MR * k];
    // Row by row (contiguous reads; the strided writes stay within one L1-sized
    // block): reading MR rows in lock-step cost 8% of a 256 × 512 × 2048 product.
    for row in 0..n {
        let (p, r) = (row / MR, row % MR);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let start = k0 * MR * panels + p * kc * MR;
            let dst = &mut data[start..start + kc * MR];
            for (kk, &v) in a[row * k + k0..row * k + k0 + kc].iter().enumerate() {
                dst[kk * MR + r] = v;
            }
        }
    }
    PackedA { data, n, k }
}

/// Packs rows `j0..j1` of B, k-range `k0..k0+kc`, into NR-wide panels (zero-padded).
fn pack_b(b: BRows<'_>, k: usize, j0: usize, j1: usize, k0: usize, kc: usize, out: &mut Vec<f32>, row: &mut Vec<f32>) {
    let panels = (j1 - j0).div_ceil(NR);
    out.clear();
    out.resize(panels * kc * NR, 0.0);
    if let BRows::F32Cols { data, ld } = b {
        // Already k-major: each panel row is a contiguous run of B's columns.
        for (p, panel) in out.chunks_exact_mut(kc * NR).enumerate() {
            let (c0, cols) = (j0 + p * NR, NR.min(j1 - j0 - p * NR));
            for kk in 0..kc {
                panel[kk * NR..kk * NR + cols].copy_from_slice(&data[(k0 + kk) * ld + c0..][..cols]);
            }
        }
        return;
    }
    row.resize(kc, 0.0);
    for j in j0..j1 {
        let src = j * k + k0..j * k + k0 + kc;
        let r: &[f32] = match b {
            BRows::F32(w) => &w[src],
            BRows::F16(w) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[src], row);
                row
            }
            BRows::Bf16(w) => {
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[src], row);
                row
            }
            BRows::F32Cols { .. } => unreachable!("packed above"),
        };
        let (p, c) = ((j - j0) / NR, (j - j0) % NR);
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for (kk, &v) in r.iter().enumerate() {
            panel[kk * NR + c] = v;
        }
    }
}

/// Rows of B handled per packing round: a packed block of `JB × KC` f32 (128 KiB)
/// stays in L2 while every A panel streams past it.
const JB: usize = 128;

/// `c[i * ldc + (j - j0)] = Σ_k a[i][k] · b[j][k]` for rows `j0..j1` of B, every
/// row of A. Buffers are reused across calls through `scratch`.
pub fn gemm_packed(uk: MicroKernel, a: &PackedA, b: BRows<'_>, j0: usize, j1: usize, c: &mut [f32], ldc: usize, scratch: &mut GemmScratch) {
    let (n, k) = (a.n, a.k);
    assert!(j1 >= j0 && ldc >= j1 - j0 && (n == 0 || c.len() >= (n - 1) * ldc + (j1 - j0)), "gemm_packed: output too small");
    let fits = match b {
        BRows::F32(w) => j1 * k <= w.len(),
        BRows::F16(w) => j1 * k <= w.len(),
        BRows::Bf16(w) => j1 * k <= w.len(),
        BRows::F32Cols { data, ld } => j1 <= ld && (k == 0 || (k - 1) * ld + j1 <= data.len()),
    };
    assert!(fits, "gemm_packed: B too small");
    let mut acc = [0f32; MR * NR];
    for jb0 in (j0..j1).step_by(JB) {
        let jb1 = (jb0 + JB).min(j1);
        for (kb, k0) in (0..k).step_by(KC).enumerate() {
            let kc = KC.min(k - k0);
            pack_b(b, k, jb0, jb1, k0, kc, &mut scratch.b, &mut scratch.row);
            for p in 0..a.panels() {
                let ap = a.block(kb, p);
                let rows = MR.min(n - p * MR);
                for (q, bp) in scratch.b.chunks_exact(kc * NR).enumerate() {
                    uk(kc, ap, bp, &mut acc);
                    let col0 = jb0 - j0 + q * NR;
                    let cols = NR.min(jb1 - jb0 - q * NR);
                    for r in 0..rows {
                        let dst = &mut c[(p * MR + r) * ldc + col0..][..cols];
                        let src = &acc[r * NR..r * NR + cols];
                        if kb == 0 {
                            dst.copy_from_slice(src);
                        } else {
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                        }
                    }
                }
            }
        }
    }
}

/// Reusable packing buffers of one thread.
#[derive(Default)]
pub struct GemmScratch {
    b: Vec<f32>,
    row: Vec<f32>,
}

/// Portable micro-kernel (the reference for the SIMD ones).
pub fn micro_kernel_scalar(kc: usize, ap: &[f32], bp: &[f32], acc: &mut [f32; MR * NR]) {
    acc.fill(0.0);
    for kk in 0..kc {
        let a = &ap[kk * MR..(kk + 1) * MR];
        let b = &bp[kk * NR..(kk + 1) * NR];
        for r in 0..MR {
            for c in 0..NR {
                acc[r * NR + c] += a[r] * b[c];
            }
        }
    }
}
