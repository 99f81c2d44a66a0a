//! Scalar reference dot products of a quantized weight row with an activation
//! row quantized to the weight type's [`vec_dot_type`]: integer sums per block,
//! scaled and accumulated in f32 (ggml's scheme). The SIMD paths compute the same
//! integer sums and differ from these only in the order of the f32 accumulation.

use super::blocks::*;
use super::{f16_at, q3k_scales, scale_min_k4, GgmlType, QK_K};

/// The activation format a weight type's dot product consumes: `q8_0` for the
/// 32-element block formats (`q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`, `q8_1`,
/// `iq4_nl`, and edgellm's 128-weight low-bit formats), `q8_K` for the k-quants,
/// `f32` for the float formats and for NF4 and FP8.
///
/// Unlike ggml, `q4_1`/`q5_1` take `q8_0` too (ggml uses `q8_1`, whose f16 block
/// sum costs accuracy); the block sum is recomputed from the integers instead.
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    use GgmlType::*;
    match ty {
        // NF4 / FP8: f32 activations (their levels are not integers).
        F32 | F16 | BF16 | NF4 | F8E4M3 | F8E5M2 => F32,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | IQ4NL => Q8_0,
        Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => Q8_0,
        Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => Q8K,
    }
}

/// Bytes of an activation row of `n` elements for weights of type `ty`, or `None`
/// if `n` is not a whole number of `ty`'s blocks.
pub fn act_row_bytes(ty: GgmlType, n: usize) -> Option<usize> {
    ty.row_bytes(n)?;
    vec_dot_type(ty).row_bytes(n)
}

/// Panics unless `w` is a row of `n` elements of `ty` and `act` one of its vec-dot type.
#[inline]
pub(crate) fn check_vec_dot(ty: GgmlType, w: &[u8], act: &[u8], n: usize) {
    assert!(
        ty.row_bytes(n) == Some(w.len()),
        "vec_dot: a {} row of {n} elements is {:?} bytes, got {}",
        ty.name(),
        ty.row_bytes(n),
        w.len()
    );
    let at = vec_dot_type(ty);
    assert!(
        at.row_bytes(n) == Some(act.len()),
        "vec_dot: a {} activation row of {n} elements is {:?} bytes, got {}",
        at.name(),
        at.row_bytes(n),
        act.len()
    );
}

/// Panics unless `w` is `rows` whole rows of `n` elements of `ty` and `act` an
/// activation row for them; returns the bytes of one weight row.
#[inline]
pub(crate) fn check_gemv(ty: GgmlType, w: &[u8], act: &[u8], n: usize, rows: usize) -> usize {
    let rb = ty.row_bytes(n).unwrap_or_else(|| panic!("gemv_q: {n} elements are not whole {} blocks", ty.name()));
    assert!(
        rows.checked_mul(rb) == Some(w.len()),
        "gemv_q: {rows} {} rows of {n} elements are {rb} bytes each, got {} bytes",
        ty.name(),
        w.len()
    );
    assert!(
        vec_dot_type(ty).row_bytes(n) == Some(act.len()),
        "gemv_q: the activation row of {n} elements for {} is not {} bytes",
        ty.name(),
        act.len()
    );
    rb
}

/// Reference decode GEMV: `out[r] =` [`vec_dot`]`(ty, row r of w, act, n)` for
/// every row `r < out.len()` of `w` (whole rows of `n` elements of `ty`). Panics
/// on a length mismatch.
pub fn gemv_q(ty: GgmlType, w: &[u8], act: &[u8], n: usize, out: &mut [f32]) {
    let rb = check_gemv(ty, w, act, n, out.len());
    for (r, y) in out.iter_mut().enumerate() {
        *y = vec_dot_unchecked(ty, &w[r * rb..(r + 1) * rb], act, n);
    }
}

/// Quantizes an activation row for dot products with `ty` weights (to
/// [`vec_dot_type`]`(ty)`, ggml's reference rounding). Panics on a length mismatch.
pub fn quantize_act(ty: GgmlType, x: &[f32], dst: &mut [u8]) {
    let at = vec_dot_type(ty);
    assert!(ty.row_bytes(x.len()).is_some(), "quantize_act: {} elements are not whole {} blocks", x.len(), ty.name());
    if let Err(e) = super::quantize_row(at, x, dst) {
        panic!("quantize_act: {e}");
    }
}

/// Reference `Σ dequant(w)[i] · dequant(act)[i]` over `n` elements, `w` of type `ty`
/// and `act` from [`quantize_act`]. Panics on a length mismatch.
pub fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    check_vec_dot(ty, w, act, n);
    vec_dot_unchecked(ty, w, act, n)
}

/// [`vec_dot`] after the lengths were checked.
pub(crate) fn vec_dot_unchecked(ty: GgmlType, w: &[u8], act: &[u8], n: usize) -> f32 {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => float_dot(ty, w, act, n, crate::scalar::dot_f32),
        Q4_0 => q4_0(w, act),
        Q4_1 => q4_1(w, act),
        Q5_0 => q5_0(w, act),
        Q5_1 => q5_1(w, act),
        Q8_0 => q8_0(w, act, 2),
        Q8_1 => q8_0(w, act, Q8_1_QS),
        IQ4NL => iq4_nl(w, act),
        Q2K => q2_k(w, act),
        Q3K => q3_k(w, act),
        Q4K => q4_k(w, act),
        Q5K => q5_k(w, act),
        Q6K => q6_k(w, act),
        Q8K => q8_k(w, act),
        Q3G128 | Q3AG128 | Q2G128 | Q2AG128 => super::lowbit::vec_dot(&super::lowbit::spec(ty).expect("low-bit type"), w, act),
        NF4 => super::nf4_fp8::dot_nf4(w, act),
        F8E4M3 => super::nf4_fp8::dot_fp8(super::minifloat::Fp8::E4M3, w, act),
        F8E5M2 => super::nf4_fp8::dot_fp8(super::minifloat::Fp8::E5M2, w, act),
    }
}

/// Float weights against an f32 activation row, widened in chunks and reduced by `dot`.
pub(crate) fn float_dot(ty: GgmlType, w: &[u8], act: &[u8], n: usize, dot: fn(&[f32], &[f32]) -> f32) -> f32 {
    const CHUNK: usize = 256;
    let (wb, ab) = (ty.block_bytes(), 4);
    let mut wf = [0f32; CHUNK];
    let mut af = [0f32; CHUNK];
    let mut sum = 0f32;
    let mut i = 0;
    while i < n {
        let m = CHUNK.min(n - i);
        super::dequantize_row(ty, &w[i * wb..(i + m) * wb], &mut wf[..m]).expect("checked lengths");
        super::dequant::f32_row(&act[i * ab..(i + m) * ab], &mut af[..m]);
        sum += dot(&wf[..m], &af[..m]);
        i += m;
    }
    sum
}

#[inline(always)]
fn a8(b: &[u8], at: usize) -> i32 {
    b[at] as i8 as i32
}

#[inline(always)]
fn f32_at(b: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
fn i16_at(b: &[u8], at: usize) -> i32 {
    i16::from_le_bytes([b[at], b[at + 1]]) as i32
}

fn q4_0(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(18).zip(act.chunks_exact(34)) {
        let mut isum = 0i32;
        for j in 0..16 {
            let q = wb[2 + j];
            isum += ((q & 0x0F) as i32 - 8) * a8(ab, 2 + j) + ((q >> 4) as i32 - 8) * a8(ab, 18 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * isum as f32;
    }
    sum
}

fn q4_1(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(20).zip(act.chunks_exact(34)) {
        let (mut isum, mut asum) = (0i32, 0i32);
        for j in 0..16 {
            let q = wb[Q4_1_QS + j];
            let (a0, a1) = (a8(ab, 2 + j), a8(ab, 18 + j));
            isum += (q & 0x0F) as i32 * a0 + (q >> 4) as i32 * a1;
            asum += a0 + a1;
        }
        let da = f16_at(ab, 0);
        sum += f16_at(wb, 0) * da * isum as f32 + f16_at(wb, Q4_1_M) * da * asum as f32;
    }
    sum
}

fn q5_0(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(22).zip(act.chunks_exact(34)) {
        let qh = u32::from_le_bytes([wb[Q5_0_QH], wb[Q5_0_QH + 1], wb[Q5_0_QH + 2], wb[Q5_0_QH + 3]]);
        let mut isum = 0i32;
        for j in 0..16 {
            let q = wb[Q5_0_QS + j] as u32;
            let x0 = ((q & 0x0F) | (((qh >> j) & 1) << 4)) as i32 - 16;
            let x1 = ((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
            isum += x0 * a8(ab, 2 + j) + x1 * a8(ab, 18 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * isum as f32;
    }
    sum
}

fn q5_1(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(24).zip(act.chunks_exact(34)) {
        let qh = u32::from_le_bytes([wb[Q5_1_QH], wb[Q5_1_QH + 1], wb[Q5_1_QH + 2], wb[Q5_1_QH + 3]]);
        let (mut isum, mut asum) = (0i32, 0i32);
        for j in 0..16 {
            let q = wb[Q5_1_QS + j] as u32;
            let x0 = ((q & 0x0F) | (((qh >> j) & 1) << 4)) as i32;
            let x1 = ((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) as i32;
            let (a0, a1) = (a8(ab, 2 + j), a8(ab, 18 + j));
            isum += x0 * a0 + x1 * a1;
            asum += a0 + a1;
        }
        let da = f16_at(ab, 0);
        sum += f16_at(wb, 0) * da * isum as f32 + f16_at(wb, Q5_1_M) * da * asum as f32;
    }
    sum
}

/// q8_0 (`qs_at = 2`) or q8_1 (`qs_at = 4`) weights.
fn q8_0(w: &[u8], act: &[u8], qs_at: usize) -> f32 {
    let bw = qs_at + 32;
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(bw).zip(act.chunks_exact(34)) {
        let mut isum = 0i32;
        for j in 0..32 {
            isum += a8(wb, qs_at + j) * a8(ab, 2 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * isum as f32;
    }
    sum
}

fn iq4_nl(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(18).zip(act.chunks_exact(34)) {
        let mut isum = 0i32;
        for j in 0..16 {
            let q = wb[IQ4NL_QS + j];
            isum += KVALUES_IQ4NL[(q & 0x0F) as usize] as i32 * a8(ab, 2 + j)
                + KVALUES_IQ4NL[(q >> 4) as usize] as i32 * a8(ab, 18 + j);
        }
        sum += f16_at(wb, 0) * f16_at(ab, 0) * isum as f32;
    }
    sum
}

// q8_K activation block: f32 d at 0, 256 × i8 at Q8K_QS, 16 × i16 sums at Q8K_BSUMS.

fn q2_k(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(84).zip(act.chunks_exact(292)) {
        let da = f32_at(ab, 0);
        let (mut isum, mut msum) = (0i32, 0i32);
        for k in 0..16 {
            msum += (wb[k] >> 4) as i32 * i16_at(ab, Q8K_BSUMS + 2 * k);
        }
        for n in 0..2 {
            for s in 0..4 {
                for h in 0..2 {
                    let mut t = 0i32;
                    for l in 0..16 {
                        let q = ((wb[Q2K_QS + 32 * n + 16 * h + l] >> (2 * s)) & 3) as i32;
                        t += q * a8(ab, Q8K_QS + 128 * n + 32 * s + 16 * h + l);
                    }
                    isum += (wb[8 * n + 2 * s + h] & 0x0F) as i32 * t;
                }
            }
        }
        sum += f16_at(wb, Q2K_D) * da * isum as f32 - f16_at(wb, Q2K_DMIN) * da * msum as f32;
    }
    sum
}

fn q3_k(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(110).zip(act.chunks_exact(292)) {
        let scales = q3k_scales(&wb[Q3K_SCALES..Q3K_SCALES + 12]);
        let mut isum = 0i32;
        for n in 0..2 {
            for s in 0..4 {
                let m = 1u8 << (4 * n + s);
                for h in 0..2 {
                    let mut t = 0i32;
                    for l in 0..16 {
                        let lo = ((wb[Q3K_QS + 32 * n + 16 * h + l] >> (2 * s)) & 3) as i32;
                        let q = lo - if wb[16 * h + l] & m != 0 { 0 } else { 4 };
                        t += q * a8(ab, Q8K_QS + 128 * n + 32 * s + 16 * h + l);
                    }
                    isum += (scales[8 * n + 2 * s + h] as i32 - 32) * t;
                }
            }
        }
        sum += f16_at(wb, Q3K_D) * f32_at(ab, 0) * isum as f32;
    }
    sum
}

/// q4_K (`qh = None`) and q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
fn q45_k(w: &[u8], act: &[u8], five: bool) -> f32 {
    let (bw, dmin_at, sc_at, qs_at) =
        if five { (176, Q5K_DMIN, Q5K_SCALES, Q5K_QS) } else { (144, Q4K_DMIN, Q4K_SCALES, Q4K_QS) };
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(bw).zip(act.chunks_exact(292)) {
        let scales = &wb[sc_at..sc_at + 12];
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..4 {
            for h in 0..2 {
                let (sc, m) = scale_min_k4(2 * j + h, scales);
                let sub = 2 * j + h;
                msum += m as i32 * (i16_at(ab, Q8K_BSUMS + 4 * sub) + i16_at(ab, Q8K_BSUMS + 4 * sub + 2));
                let mut t = 0i32;
                for l in 0..32 {
                    let byte = wb[qs_at + 32 * j + l];
                    let mut q = if h == 0 { byte & 0x0F } else { byte >> 4 } as i32;
                    if five {
                        q |= (((wb[Q5K_QH + l] >> (2 * j + h)) & 1) as i32) << 4;
                    }
                    t += q * a8(ab, Q8K_QS + 64 * j + 32 * h + l);
                }
                isum += sc as i32 * t;
            }
        }
        let da = f32_at(ab, 0);
        sum += f16_at(wb, 0) * da * isum as f32 - f16_at(wb, dmin_at) * da * msum as f32;
    }
    sum
}

fn q4_k(w: &[u8], act: &[u8]) -> f32 {
    q45_k(w, act, false)
}

fn q5_k(w: &[u8], act: &[u8]) -> f32 {
    q45_k(w, act, true)
}

fn q6_k(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(210).zip(act.chunks_exact(292)) {
        let mut isum = 0i32;
        for n in 0..2 {
            for s in 0..4 {
                for h in 0..2 {
                    let mut t = 0i32;
                    for l in 16 * h..16 * h + 16 {
                        let lb = wb[64 * n + l + 32 * (s % 2)];
                        let lo = if s < 2 { lb & 0x0F } else { lb >> 4 };
                        let hi = (wb[Q6K_QH + 32 * n + l] >> (2 * s)) & 3;
                        let q = (lo | (hi << 4)) as i32 - 32;
                        t += q * a8(ab, Q8K_QS + 128 * n + 32 * s + l);
                    }
                    isum += (wb[Q6K_SCALES + 8 * n + 2 * s + h] as i8) as i32 * t;
                }
            }
        }
        sum += f16_at(wb, Q6K_D) * f32_at(ab, 0) * isum as f32;
    }
    sum
}

fn q8_k(w: &[u8], act: &[u8]) -> f32 {
    let mut sum = 0f32;
    for (wb, ab) in w.chunks_exact(292).zip(act.chunks_exact(292)) {
        let mut isum = 0i32;
        for j in 0..QK_K {
            isum += a8(wb, Q8K_QS + j) * a8(ab, Q8K_QS + j);
        }
        sum += f32_at(wb, 0) * f32_at(ab, 0) * isum as f32;
    }
    sum
}
