//! Portable reference kernels. Deliberately plain: these define what the SIMD
//! paths must compute.

use crate::{Isa, Kernels};
use half::{bf16, f16};

pub static KERNELS: Kernels = Kernels {
    isa: Isa::Scalar,
    dot_f32,
    dot_f16,
    dot_bf16,
    gemv_f32: |w, x, out| gemv_with(dot_f32, w, x, out),
    gemv_f16: |w, x, out| gemv_with(dot_f16, w, x, out),
    gemv_bf16: |w, x, out| gemv_with(dot_bf16, w, x, out),
    gemm_few: |w, x, n, out, ldo| gemm_few_with(dot_f32, dot_f16, dot_bf16, w, x, n, out, ldo),
    axpy,
    f16_to_f32,
    bf16_to_f32,
    matmul_f32,
    matmul_nn_f32,
    exp_sum,
    gemm_micro: crate::gemm::micro_kernel_scalar,
    gemm_micro_rows: Some(crate::gemm::micro_kernel_rows_scalar),
    gemm_micro_stream: Some(crate::gemm::micro_kernel_stream_scalar),
    gemm_pack_b: crate::gemm::pack_b,
    quantize_act: crate::quant::quantize_act,
    vec_dot: crate::quant::vec_dot,
    gemv_q: crate::quant::gemv_q,
    gemm_q: crate::quant::qgemm::gemm_q,
    gemm_q_resident: None,
    gemm_q_resident_types: &[],
    gemm_micro_f16: None,
    gemm_micro_bf16: None,
    gemm_wide: None,
    gemm_panels: None,
    dequantize_row,
};

/// [`crate::quant::dequantize_row`], panicking on a length mismatch (the table's contract).
pub fn dequantize_row(ty: crate::quant::GgmlType, src: &[u8], dst: &mut [f32]) {
    if let Err(e) = crate::quant::dequantize_row(ty, src, dst) {
        panic!("dequantize_row: {e}");
    }
}

/// A float GEMV as one `dot` per row (`out.len()` rows of `x.len()` elements):
/// the reference, and the tables without a multi-row kernel.
pub(crate) fn gemv_with<E>(dot: fn(&[E], &[f32]) -> f32, w: &[E], x: &[f32], out: &mut [f32]) {
    let n = x.len();
    assert_eq!(w.len(), n * out.len(), "gemv: weight length mismatch");
    for (r, y) in out.iter_mut().enumerate() {
        *y = dot(&w[r * n..(r + 1) * n], x);
    }
}

/// Checks the operands of [`Kernels::gemm_few`]; returns (k, weight rows).
pub fn check_gemm_few(w: crate::gemm::BRows<'_>, x: &[f32], n: usize, out: &[f32], ldo: usize) -> (usize, usize) {
    use crate::gemm::BRows;
    assert!(n > 0 && x.len() % n == 0 && x.len() > 0, "gemm_few: x is not n whole rows");
    let k = x.len() / n;
    let len = match w {
        BRows::F32(w) => w.len(),
        BRows::F16(w) => w.len(),
        BRows::Bf16(w) => w.len(),
        BRows::F32Cols { .. } => panic!("gemm_few: weights must be row-major"),
    };
    assert_eq!(len % k, 0, "gemm_few: weights are not whole rows of k");
    let rows = len / k;
    assert!(ldo >= rows && out.len() >= (n - 1) * ldo + rows, "gemm_few: output too small");
    (k, rows)
}

/// [`Kernels::gemm_few`] as one `dot` per (weight row, token): the reference,
/// and the tables without a register-blocked kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_few_with(
    d32: fn(&[f32], &[f32]) -> f32,
    d16: fn(&[f16], &[f32]) -> f32,
    db16: fn(&[bf16], &[f32]) -> f32,
    w: crate::gemm::BRows<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    ldo: usize,
) {
    use crate::gemm::BRows;
    fn each<E>(dot: fn(&[E], &[f32]) -> f32, w: &[E], x: &[f32], k: usize, out: &mut [f32], ldo: usize) {
        for (j, wr) in w.chunks_exact(k).enumerate() {
            for (t, xt) in x.chunks_exact(k).enumerate() {
                out[t * ldo + j] = dot(wr, xt);
            }
        }
    }
    let (k, _) = check_gemm_few(w, x, n, out, ldo);
    match w {
        BRows::F32(w) => each(d32, w, x, k, out, ldo),
        BRows::F16(w) => each(d16, w, x, k, out, ldo),
        BRows::Bf16(w) => each(db16, w, x, k, out, ldo),
        BRows::F32Cols { .. } => unreachable!("checked above"),
    }
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot_f32: length mismatch");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_f16: length mismatch");
    w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
}

pub fn dot_bf16(w: &[bf16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot_bf16: length mismatch");
    w.iter().zip(x).map(|(w, x)| w.to_f32() * x).sum()
}

pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Checks the shapes shared by every `matmul_f32` implementation; returns (n, m).
pub(crate) fn matmul_dims(a: &[f32], b: &[f32], k: usize, c: &[f32], ldc: usize) -> (usize, usize) {
    assert!(k > 0, "matmul_f32: k must be positive");
    assert!(
        a.len() % k == 0 && b.len() % k == 0,
        "matmul_f32: operands are not multiples of k"
    );
    let (n, m) = (a.len() / k, b.len() / k);
    assert!(
        ldc >= m,
        "matmul_f32: ldc smaller than the number of columns"
    );
    assert!(
        n == 0 || c.len() >= (n - 1) * ldc + m,
        "matmul_f32: output too small"
    );
    (n, m)
}

/// A SIMD register tile of `matmul_f32`: `MR` rows of `a` by `NR` rows of `b`.
pub(crate) trait F32Tile {
    const MR: usize;
    const NR: usize;
    /// Writes the `MR × NR` dot products of length `k` of the rows at `a` and
    /// `b` (row stride `k`) to `c` (row stride `ldc`).
    unsafe fn tile(a: *const f32, b: *const f32, k: usize, c: *mut f32, ldc: usize);
    /// The same instruction set's dot product, for the ragged edges.
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32;
}

/// `c[i·ldc + j] = a_i · b_j` (shapes checked by [`matmul_dims`]) by register
/// tiles `T` over the whole `MR × NR` blocks and `T::dot` over the ragged
/// edges; inlined into each instruction set's `#[target_feature]` entry.
///
/// # Safety
/// The CPU has the features `T`'s kernels are compiled for, and the shapes
/// passed [`matmul_dims`].
#[inline(always)]
pub(crate) unsafe fn matmul_tiled<T: F32Tile>(a: &[f32], b: &[f32], n: usize, m: usize, k: usize, c: &mut [f32], ldc: usize) {
    let (n_full, m_full) = (n - n % T::MR, m - m % T::NR);
    let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    for i in (0..n_full).step_by(T::MR) {
        for j in (0..m_full).step_by(T::NR) {
            T::tile(ap.add(i * k), bp.add(j * k), k, cp.add(i * ldc + j), ldc);
        }
    }
    for i in 0..n {
        let j0 = if i < n_full { m_full } else { 0 };
        for j in j0..m {
            c[i * ldc + j] = T::dot(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
        }
    }
}

/// The constants of [`exp_neg`] (Cephes' `expf`), shared with the SIMD
/// versions, which repeat its operations one for one (no fused multiply-adds)
/// and so give its bits.
pub(crate) mod exp_consts {
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// 1.5 · 2^23: adding it rounds to an integer.
    pub const MAGIC: f32 = 12_582_912.0;
    /// `MAGIC`'s bits: subtracted from a rounded value's bits, the integer.
    pub const MAGIC_BITS: i32 = 0x4B40_0000;
    /// Below this, `exp` is 0 (and the exponent would underflow).
    pub const LOW: f32 = -87.0;
    /// The polynomial's coefficients, highest degree first.
    pub const P: [f32; 6] = [1.987_569_2e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

/// `exp(x)` for `x ≤ 0` (`−∞` and anything below −87 give 0), to about 1 ulp
/// (Cephes' `expf`); branch-free, so loops over it vectorise.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    use exp_consts::*;
    let xc = x.max(LOW);
    let z = xc * LOG2E + MAGIC;
    let n = z - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly = ((((P[0] * r + P[1]) * r + P[2]) * r + P[3]) * r + P[4]) * r + P[5];
    let e = poly * r * r + r + 1.0;
    let ni = (z.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let y = e * f32::from_bits(((ni + 127) << 23) as u32);
    if x < LOW {
        0.0
    } else {
        y
    }
}

/// [`Kernels::exp_sum`]: [`exp_neg`] of every `x[i] − shift`, summed in order.
pub fn exp_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut s = 0.0;
    for v in x {
        *v = exp_neg(*v - shift);
        s += *v;
    }
    s
}

/// Checks the shapes shared by every `matmul_nn_f32` implementation; returns n.
pub(crate) fn matmul_nn_dims(a: &[f32], b: &[f32], k: usize, m: usize, c: &[f32], ldc: usize) -> usize {
    assert!(k > 0, "matmul_nn_f32: k must be positive");
    assert!(a.len() % k == 0, "matmul_nn_f32: a is not whole rows of k");
    assert_eq!(b.len(), k * m, "matmul_nn_f32: b is not k × m");
    assert!(ldc >= m, "matmul_nn_f32: ldc smaller than the number of columns");
    let n = a.len() / k;
    assert!(n == 0 || c.len() >= (n - 1) * ldc + m, "matmul_nn_f32: output too small");
    n
}

/// [`crate::MatmulNnFn`]: each output a plain multiply-then-add chain over `p`
/// (a fused one would call libm's software `fmaf` on cores without FMA).
pub fn matmul_nn_f32(a: &[f32], b: &[f32], k: usize, m: usize, c: &mut [f32], ldc: usize) {
    let n = matmul_nn_dims(a, b, k, m, c, ldc);
    for i in 0..n {
        let row = &mut c[i * ldc..i * ldc + m];
        row.fill(0.0);
        for (p, &x) in a[i * k..(i + 1) * k].iter().enumerate() {
            for (o, &y) in row.iter_mut().zip(&b[p * m..(p + 1) * m]) {
                *o += x * y;
            }
        }
    }
}

pub fn matmul_f32(a: &[f32], b: &[f32], k: usize, c: &mut [f32], ldc: usize) {
    let (n, m) = matmul_dims(a, b, k, c, ldc);
    for i in 0..n {
        for j in 0..m {
            c[i * ldc + j] = dot_f32(&a[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]);
        }
    }
}
