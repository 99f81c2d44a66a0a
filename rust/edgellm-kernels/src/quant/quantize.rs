//! Reference quantizers: ports of ggml's `quantize_row_*_ref` (the paths without
//! an importance matrix), with the same float evaluation order. Output is
//! bit-identical to the `gguf` package's quantizers where it has them, and to
//! ggml built without floating-point contraction (a C compiler that fuses
//! `a * b + c` into FMA may differ in rare last-bit cases of the k-quant searches).
//!
//! Lengths are checked by the caller ([`super::quantize_row`]).

use super::blocks::*;
use super::{scale_min_k4, QK_K};
use half::f16;

/// ggml's `GROUP_MAX_EPS`: blocks whose largest magnitude is below this are zero.
const GROUP_MAX_EPS: f32 = 1e-15;

#[inline]
fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

#[inline]
fn get_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// ggml's `nearest_int`: round half to even via the 1.5·2²³ trick (valid for
/// |x| ≤ 2²² - 1, which every caller guarantees for finite input).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007F_FFFF) - 0x0040_0000
}

/// ggml's float → bf16: NaN made quiet, otherwise round to nearest even.
#[inline]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u as u64 + (0x7FFF + ((u >> 16) & 1)) as u64) >> 16) as u16
}

pub(super) fn f32_row(x: &[f32], y: &mut [u8]) {
    for (o, v) in y.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

pub(super) fn f16_row(x: &[f32], y: &mut [u8]) {
    for (o, v) in y.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
    }
}

pub(super) fn bf16_row(x: &[f32], y: &mut [u8]) {
    for (o, v) in y.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f32_to_bf16_bits(*v).to_le_bytes());
    }
}

/// The first element of largest magnitude, with its sign (0 for an all-zero block).
#[inline]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

pub(super) fn q4_0(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let (_, max) = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for j in 0..16 {
            let x0 = xb[j] * id;
            let x1 = xb[16 + j] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            b[2 + j] = q0 | (q1 << 4);
        }
    }
}

pub(super) fn q4_1(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(20)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, Q4_1_M, min);
        for j in 0..16 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[16 + j] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            b[Q4_1_QS + j] = q0 | (q1 << 4);
        }
    }
}

pub(super) fn q5_0(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(22)) {
        let (_, max) = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = xb[j] * id;
            let x1 = xb[16 + j] * id;
            let q0 = ((x0 + 16.5) as i8).min(31) as u8;
            let q1 = ((x1 + 16.5) as i8).min(31) as u8;
            b[Q5_0_QS + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[Q5_0_QH..Q5_0_QH + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

pub(super) fn q5_1(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(24)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, Q5_1_M, min);
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[16 + j] - min) * id;
            let q0 = (x0 + 0.5) as u8;
            let q1 = (x1 + 0.5) as u8;
            b[Q5_1_QS + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        b[Q5_1_QH..Q5_1_QH + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// The q8_0 scale of a block: `(d, 1/d)` with `d = max|x| / 127` (`1/d = 0` if zero).
#[inline]
pub(crate) fn q8_scale(xb: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for &v in xb {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

pub(super) fn q8_0(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(34)) {
        let (d, id) = q8_scale(xb);
        put_f16(b, 0, d);
        for (o, &v) in b[Q8_0_QS..].iter_mut().zip(xb) {
            *o = (v * id).round() as i8 as u8;
        }
    }
}

pub(super) fn q8_1(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(36)) {
        let (d, id) = q8_scale(xb);
        put_f16(b, 0, d);
        let mut sum = 0i32;
        for (o, &v) in b[Q8_1_QS..].iter_mut().zip(xb) {
            let q = (v * id).round() as i8;
            *o = q as u8;
            sum += q as i32;
        }
        put_f16(b, Q8_1_S, sum as f32 * d);
    }
}

pub(super) fn q8_k(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(292)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            b.fill(0);
            continue;
        }
        let iscale = -127.0 / max;
        for (o, &v) in b[Q8K_QS..Q8K_QS + QK_K].iter_mut().zip(xb) {
            *o = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for j in 0..QK_K / 16 {
            let s: i32 = b[Q8K_QS + 16 * j..Q8K_QS + 16 * j + 16].iter().map(|&q| q as i8 as i32).sum();
            b[Q8K_BSUMS + 2 * j..Q8K_BSUMS + 2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
        b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    }
}

/// ggml's `make_qkx2_quants`: scale and (negated) min of an asymmetric `n`-element
/// group with levels `0..=nmax`, searching `nstep + 1` candidate scales around the
/// min/max one for the smallest weighted error.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric levels `-nmax..nmax`, refined
/// by coordinate descent on the x²-weighted error. `l_out` gets `level + nmax`.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (amax, max) = {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        (amax, max)
    };
    if amax < GROUP_MAX_EPS {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (i, &xi) in x.iter().enumerate() {
            let w = xi * xi;
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * xi * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out[..x.len()].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights:
/// symmetric levels `-nmax..nmax` (x²-weighted), best of 19 candidate scales.
/// `l_out` gets `level + nmax`.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let level = |iscale: f32, xi: f32| nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &xi) in x.iter().enumerate() {
        let l = level(iscale, xi);
        l_out[i] = (l + nmax) as i8;
        let w = xi * xi;
        sumlx += w * xi * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &xi in x {
            let l = level(iscale, xi);
            let w = xi * xi;
            sumlx += w * xi * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &xi) in x.iter().enumerate() {
                l_out[i] = (nmax + level(iscale, xi)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

pub(super) fn q2_k(x: &[f32], y: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(84)) {
        let mut l = [0u8; QK_K];
        let mut weights = [0f32; 16];
        let mut mins = [0f32; 16];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..16 {
            let xs = &xb[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..], -0.5, 0.1, 15, true);
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        b.fill(0);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                b[j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16(b, Q2K_D, max_scale / Q4SCALE);
        } else {
            put_f16(b, Q2K_D, 0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                b[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            put_f16(b, Q2K_DMIN, max_min / Q4SCALE);
        } else {
            put_f16(b, Q2K_DMIN, 0.0);
        }
        let (dd, dmin) = (get_f16(b, Q2K_D), get_f16(b, Q2K_DMIN));
        for j in 0..16 {
            let d = dd * (b[j] & 0x0F) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin * (b[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((xb[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for i in 0..32 {
                b[Q2K_QS + j / 4 + i] =
                    l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
            }
        }
    }
}

pub(super) fn q3_k(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(110)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &xb[16 * j..16 * j + 16], &mut l[16 * j..]);
            let s = scales[j].abs();
            if s > amax {
                amax = s;
                max_scale = scales[j];
            }
        }
        b.fill(0);
        let sc = &mut b[Q3K_SCALES..Q3K_SCALES + 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                let lj = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = lj & 0x0F;
                } else {
                    sc[j - 8] |= (lj & 0x0F) << 4;
                }
                sc[8 + j % 4] |= (lj >> 4) << (2 * (j / 4));
            }
            put_f16(b, Q3K_D, 1.0 / iscale);
        } else {
            put_f16(b, Q3K_D, 0.0);
        }
        let dall = get_f16(b, Q3K_D);
        let s6 = super::q3k_scales(&b[Q3K_SCALES..Q3K_SCALES + 12]);
        for j in 0..16 {
            let d = dall * (s6[j] as i32 - 32) as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(xb[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        // hmask: the high bit of element j goes to bit j / 32 of byte j % 32.
        for (j, lj) in l.iter_mut().enumerate() {
            if *lj > 3 {
                b[j % 32] |= 1 << (j / 32);
                *lj -= 4;
            }
        }
        for j in (0..QK_K).step_by(128) {
            for i in 0..32 {
                let q = |k: usize| (l[j + i + 32 * k] as u8) << (2 * k);
                b[Q3K_QS + j / 4 + i] = q(0) | q(1) | q(2) | q(3);
            }
        }
    }
}

/// Shared by q4_K and q5_K: 8 sub-blocks of 32, asymmetric, 6-bit scales and mins.
/// Returns the levels (`0..=nmax`) with the block's header (d, dmin, scales) written.
fn q45_k_block(nmax: i32, rmin: f32, nstep: i32, xb: &[f32], b: &mut [u8]) -> [u8; QK_K] {
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &xb[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..], rmin, 0.1, nstep, false);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut b[4..16];
    sc.fill(0);
    for j in 0..8 {
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(b, 0, max_scale / 63.0);
    put_f16(b, 2, max_min / 63.0);
    let (dd, dmin) = (get_f16(b, 0), get_f16(b, 2));
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &b[4..16]);
        let d = dd * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((xb[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

pub(super) fn q4_k(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(144)) {
        let l = q45_k_block(15, -1.0, 20, xb, b);
        for j in 0..4 {
            for i in 0..32 {
                b[Q4K_QS + 32 * j + i] = l[64 * j + i] | (l[64 * j + i + 32] << 4);
            }
        }
    }
}

pub(super) fn q5_k(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(176)) {
        let l = q45_k_block(31, -0.5, 15, xb, b);
        b[Q5K_QH..Q5K_QH + 32].fill(0);
        for j in 0..4 {
            let (m1, m2) = (1u8 << (2 * j), 2u8 << (2 * j));
            for i in 0..32 {
                let mut l1 = l[64 * j + i];
                if l1 > 15 {
                    l1 -= 16;
                    b[Q5K_QH + i] |= m1;
                }
                let mut l2 = l[64 * j + i + 32];
                if l2 > 15 {
                    l2 -= 16;
                    b[Q5K_QH + i] |= m2;
                }
                b[Q5K_QS + 32 * j + i] = l1 | (l2 << 4);
            }
        }
    }
}

pub(super) fn q6_k(x: &[f32], y: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(y.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let s = make_qx_quants(32, &xb[16 * ib..16 * ib + 16], &mut l[16 * ib..]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        b.fill(0);
        if max_abs_scale < GROUP_MAX_EPS {
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(b, Q6K_D, 1.0 / iscale);
        for ib in 0..16 {
            b[Q6K_SCALES + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
        }
        let dd = get_f16(b, Q6K_D);
        for j in 0..16 {
            let d = dd * (b[Q6K_SCALES + j] as i8) as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(xb[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for j in (0..QK_K).step_by(128) {
            let (ql, qh) = (64 * (j / 128), Q6K_QH + 32 * (j / 128));
            for i in 0..32 {
                let lv = |k: usize| l[j + i + 32 * k] as u8;
                b[ql + i] = (lv(0) & 0x0F) | ((lv(2) & 0x0F) << 4);
                b[ql + i + 32] = (lv(1) & 0x0F) | ((lv(3) & 0x0F) << 4);
                b[qh + i] = (lv(0) >> 4) | ((lv(1) >> 4) << 2) | ((lv(2) >> 4) << 4) | ((lv(3) >> 4) << 6);
            }
        }
    }
}

/// ggml's `best_index_int8`: index of the level nearest `x` (ties to the upper one).
fn best_index_int8(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// `quantize_row_iq4_nl_ref` (ggml's `quantize_row_iq4_nl_impl` with `ntry = -1`,
/// no weights): one least-squares scale from the max-based levels.
pub(super) fn iq4_nl(x: &[f32], y: &mut [u8]) {
    let values = &KVALUES_IQ4NL;
    // ggml keeps the level buffer across blocks; an all-zero block reuses the
    // previous levels (its scale is 0, so they do not matter).
    let mut l = [0u8; 32];
    for (xb, b) in x.chunks_exact(32).zip(y.chunks_exact_mut(18)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut scale = 0f32;
        if amax >= GROUP_MAX_EPS {
            let d = max / values[0] as f32;
            let id = 1.0 / d;
            let (mut sumqx, mut sumq2) = (0f32, 0f32);
            for (j, &xj) in xb.iter().enumerate() {
                let li = best_index_int8(values, id * xj);
                l[j] = li as u8;
                let q = values[li] as f32;
                let w = xj * xj;
                sumqx += w * q * xj;
                sumq2 += w * q * q;
            }
            scale = sumqx / sumq2;
        }
        put_f16(b, 0, scale);
        for j in 0..16 {
            b[IQ4NL_QS + j] = l[j] | (l[16 + j] << 4);
        }
    }
}
