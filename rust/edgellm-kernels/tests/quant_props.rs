//! Quantization properties for every GGML type, and the quantized dot products of
//! every instruction set this machine supports against the scalar reference and
//! an f64 reference:
//!
//! - dequantize(quantize(x)) is within a per-type bound of x, relative to the
//!   largest magnitude of the block (super-block for k-quants);
//! - zero, constant and tiny blocks quantize without NaN;
//! - `vec_dot` of every path == the scalar `vec_dot` (up to f32 summation order)
//!   ≈ the f64 dot of the dequantized rows (exactly what is computed) ≈ the f64 dot
//!   with the unquantized activations (within the activation quantization error),
//!   on odd numbers of blocks, for quantized weights and for random weight bytes.

use edgellm_kernels::quant::{self, dequantize_row, quantize_row, vec_dot_type, GgmlType};
use proptest::prelude::*;

mod common;
use common::{paths, Rng};

/// Test rows: per block a random scale, some blocks shifted (asymmetric), some sparse.
fn test_row(seed: u64, n: usize, block: usize, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    let mut x = Vec::with_capacity(n);
    for _ in 0..n / block {
        let s = scale * (0.05 + r.uniform().abs() * 2.0);
        let kind = r.next() % 8;
        let shift = if kind == 1 { r.uniform() * 2.0 * s } else { 0.0 };
        for _ in 0..block {
            let v = match kind {
                2 if r.next() % 4 != 0 => 0.0,
                3 => r.uniform() * s,
                _ => r.normalish() * s,
            };
            x.push(v + shift);
        }
    }
    x
}

fn dequant(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

fn quant(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

/// Largest |dequantize(quantize(x)) - x|, relative to the block's largest |x|,
/// that each type's reference quantizer may give (from the format: half a level
/// for round-to-nearest formats, a whole level where the opposite extreme clamps,
/// plus f16 scale rounding). The k-quant and iq4_nl bounds are empirical: their
/// searches trade the extremes of a block for a smaller total error, so they are
/// set with a margin over the maxima `roundtrip_error_stats` observes.
fn roundtrip_bound(ty: GgmlType) -> f64 {
    use GgmlType::*;
    match ty {
        F32 => 0.0,
        F16 => 1.0 / 2048.0,
        BF16 => 1.0 / 256.0,
        // Half a level (a whole one at the clamped extreme of q4_0/q5_0), plus the
        // f16 rounding of the scale times the largest level (relative 2⁻¹¹).
        Q8_0 | Q8_1 => 0.5 / 127.0 + 1.0 / 2048.0,
        Q8K => 0.5 / 127.0 + 1e-6,
        Q4_0 => 1.0 / 8.0 + 1.0 / 2048.0,
        Q5_0 => 1.0 / 16.0 + 1.0 / 2048.0,
        // Range ≤ 2·amax; half a level of range/15 (range/31), f16 d and m.
        Q4_1 => 2.0 / 30.0 + 3.0 / 2048.0,
        Q5_1 => 2.0 / 62.0 + 3.0 / 2048.0,
        IQ4NL => 0.2,
        Q2K => 0.6,
        Q3K => 0.35,
        Q4K => 0.15,
        Q5K => 0.08,
        Q6K => 0.04,
        // Symmetric: a whole level (d = amax / 2^(b-1)) at the clamped extreme;
        // asymmetric: half a level of range/(2^b - 1) with range ≤ 2·amax; f16 d, m.
        Q3G128 => 1.0 / 4.0 + 1.0 / 2048.0,
        Q2G128 => 1.0 / 2.0 + 1.0 / 2048.0,
        Q3AG128 => 1.0 / 7.0 + 3.0 / 2048.0,
        Q2AG128 => 1.0 / 3.0 + 3.0 / 2048.0,
        // Not in `ALL` (edgellm-only; see nf4_fp8_props.rs): half the widest gap (-1 to -0.696)
        // of the code book / half an ulp of the format, plus f16 absmax rounding.
        NF4 => 0.5 * (1.0 - 0.6961928009986877) + 1.0 / 2048.0,
        F8E4M3 => 1.0 / 16.0 + 1.0 / 2048.0,
        F8E5M2 => 1.0 / 8.0 + 1.0 / 2048.0,
    }
}

/// The absolute error f16 scales add where they are subnormal (below 6.1e-5, in
/// steps of 2⁻²⁴): one step times the largest level multiplier of the type.
fn f16_floor(ty: GgmlType) -> f64 {
    use GgmlType::*;
    let levels = match ty {
        F32 | BF16 => 0.0,
        // q8_K's f32 scale: -127/max overflows for |max| < 3.7e-37 (as in ggml).
        Q8K => 1e-29,
        F16 => 1.0,
        Q8_0 | Q8_1 | IQ4NL => 127.0,
        Q4_0 => 8.0,
        Q5_0 => 16.0,
        Q4_1 => 16.0,
        Q5_1 => 32.0,
        Q2K => 15.0 * 3.0 + 15.0,
        Q3K => 32.0 * 4.0,
        Q4K => 63.0 * 15.0 + 63.0,
        Q5K => 63.0 * 31.0 + 63.0,
        Q6K => 128.0 * 32.0,
        Q3G128 => 4.0,
        Q2G128 => 2.0,
        Q3AG128 => 8.0,
        Q2AG128 => 4.0,
        // The absmax field's own rounding, times levels of magnitude ≤ 1.
        NF4 | F8E4M3 | F8E5M2 => 1.0,
    };
    levels * 2f64.powi(-24)
}

fn block_amax(x: &[f32], i: usize, block: usize) -> f32 {
    x[i / block * block..][..block].iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Largest error of a round trip in units of its bound (≤ 1 passes), and where.
fn roundtrip_err(ty: GgmlType, x: &[f32]) -> (f64, usize) {
    let y = dequant(ty, &quant(ty, x), x.len());
    let block = if ty.is_quantized() { ty.block_elems() } else { 1 };
    let mut worst = (0f64, 0);
    for (i, (a, b)) in x.iter().zip(&y).enumerate() {
        assert!(b.is_finite(), "{}: non-finite {b} at {i} (x = {a})", ty.name());
        let amax = block_amax(x, i, block) as f64;
        if amax == 0.0 {
            assert_eq!(*b, 0.0, "{}: zero block dequantizes to {b}", ty.name());
            continue;
        }
        let e = (a - b).abs() as f64 / (roundtrip_bound(ty) * amax + f16_floor(ty));
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Largest relative round-trip error of each type on unit-scale data (run with
/// `--ignored --nocapture` to see how tight [`roundtrip_bound`] is).
#[test]
#[ignore]
fn roundtrip_error_stats() {
    for ty in GgmlType::ALL {
        let block = if ty.is_quantized() { ty.block_elems() } else { 32 };
        let mut worst = 0f64;
        for seed in 0..400 {
            let x = test_row(seed, 8 * block, block, 1.0);
            let y = dequant(ty, &quant(ty, &x), x.len());
            for (i, (a, b)) in x.iter().zip(&y).enumerate() {
                let amax = block_amax(&x, i, if ty.is_quantized() { block } else { 1 });
                if amax > 0.0 {
                    worst = worst.max((a - b).abs() as f64 / amax as f64);
                }
            }
        }
        println!("{:7} max |error| / amax = {worst:.5} (bound {:.5})", ty.name(), roundtrip_bound(ty));
    }
}


proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(48, 12)))]

    #[test]
    fn roundtrip_within_bound(seed in any::<u64>(), nb in prop::sample::select(vec![1usize, 3, 7]), e in -6i32..4) {
        for ty in GgmlType::ALL {
            let block = if ty.is_quantized() { ty.block_elems() } else { 32 };
            let x = test_row(seed, nb * block, block, 10f32.powi(e));
            let (err, at) = roundtrip_err(ty, &x);
            prop_assert!(err <= 1.0, "{}: error {err} × its bound at element {at}: {} vs {}", ty.name(), x[at],
                dequant(ty, &quant(ty, &x), x.len())[at]);
        }
    }

    #[test]
    fn vec_dot_paths_agree(seed in any::<u64>(), nb in prop::sample::select(vec![1usize, 3, 7, 33]), e in -3i32..3) {
        for ty in GgmlType::ALL {
            let block = if ty.is_quantized() { ty.block_elems() } else { 32 };
            let n = nb * block;
            let w = quant(ty, &test_row(seed, n, block, 10f32.powi(e)));
            check_vec_dot(ty, &w, &test_row(seed ^ 0xA5A5, n, block, 1.0), "quantized weights");
        }
    }

    #[test]
    fn vec_dot_random_weight_bytes(seed in any::<u64>(), nb in prop::sample::select(vec![1usize, 3, 7, 33])) {
        for ty in GgmlType::ALL {
            if !ty.is_quantized() {
                continue;
            }
            let n = nb * ty.block_elems();
            let w = Rng::new(seed).blocks(ty, nb);
            check_vec_dot(ty, &w, &test_row(seed ^ 0x5A5A, n, ty.block_elems(), 3.0), "random weight bytes");
        }
    }
}

fn check_vec_dot(ty: GgmlType, w: &[u8], x: &[f32], what: &str) {
    let n = x.len();
    let at = vec_dot_type(ty);
    let wd = dequant(ty, w, n);
    let block = if ty.is_quantized() { ty.block_elems() } else { 1 };
    let ablock = if at.is_quantized() { at.block_elems() } else { 1 };

    let mut act = vec![0u8; quant::act_row_bytes(ty, n).unwrap()];
    quant::quantize_act(ty, x, &mut act);
    let ad = dequant(at, &act, n);

    // f64 references and magnitudes for the error bounds.
    let (mut exact, mut mag, mut vs_x, mut act_err) = (0f64, 0f64, 0f64, 0f64);
    for i in 0..n {
        let (wi, ai) = (wd[i] as f64, ad[i] as f64);
        exact += wi * ai;
        // Each dequantized weight is a rounded f32 `d·q - m`; bound with the block's largest |w|.
        mag += (wi.abs() + block_amax(&wd, i, block) as f64) * ai.abs();
        vs_x += wi * x[i] as f64;
        // |a - x| ≤ 0.6·d_a: half a level, plus the f16 rounding of q8_0's scale.
        act_err += wi.abs() * 0.6 * block_amax(x, i, ablock) as f64 / 127.0;
    }
    let eps = f32::EPSILON as f64;
    let tol = (n / block + 16) as f64 * eps * mag + 1e-30;

    let reference = quant::vec_dot(ty, w, &act, n);
    assert!(
        (reference as f64 - exact).abs() <= tol,
        "{} ({what}, n={n}): scalar vec_dot {reference} vs f64 {exact} (tol {tol})",
        ty.name()
    );
    assert!(
        (reference as f64 - vs_x).abs() <= act_err + tol + 1e-6 * vs_x.abs(),
        "{} ({what}, n={n}): scalar vec_dot {reference} vs unquantized activations {vs_x} (bound {act_err})",
        ty.name()
    );
    for k in paths() {
        let mut act_k = vec![0u8; act.len()];
        (k.quantize_act)(ty, x, &mut act_k);
        assert_eq!(act_k, act, "{} {}: quantize_act differs from the reference", k.isa.name(), ty.name());
        let got = (k.vec_dot)(ty, w, &act, n);
        assert!(
            (got as f64 - reference as f64).abs() <= tol,
            "{} {} ({what}, n={n}): vec_dot {got} vs scalar {reference} (f64 {exact}, tol {tol})",
            k.isa.name(),
            ty.name()
        );
    }
}

#[test]
fn zero_constant_and_tiny_blocks_have_no_nan() {
    for ty in GgmlType::ALL {
        let block = if ty.is_quantized() { ty.block_elems() } else { 32 };
        for c in [0.0f32, 1.0, -1.0, 0.37, -1234.5, 1e-3, -1e-7, 1e-20, 3e-38, 1e4] {
            let x = vec![c; 3 * block];
            let y = dequant(ty, &quant(ty, &x), x.len());
            for (i, v) in y.iter().enumerate() {
                assert!(v.is_finite(), "{}: constant {c} → {v} at {i}", ty.name());
                if c == 0.0 {
                    assert_eq!(*v, 0.0, "{}: zeros → {v}", ty.name());
                }
                let tol = roundtrip_bound(ty) * c.abs() as f64 + f16_floor(ty);
                assert!(
                    ((*v - c).abs() as f64) <= tol,
                    "{}: constant {c} → {v} at {i}",
                    ty.name()
                );
            }
        }
        // One spike in a zero block, and a block of the same magnitude with alternating signs.
        let mut x = vec![0.0f32; 2 * block];
        x[5] = -2.5;
        for (i, v) in x[block..].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 0.75 } else { -0.75 };
        }
        let y = dequant(ty, &quant(ty, &x), x.len());
        assert!(y.iter().all(|v| v.is_finite()), "{}: spike/alternating blocks → {y:?}", ty.name());
    }
}

#[test]
fn vec_dot_of_zero_rows_is_zero() {
    for ty in GgmlType::ALL {
        let n = if ty.is_quantized() { 3 * ty.block_elems() } else { 96 };
        let w = quant(ty, &vec![0.0; n]);
        let x = test_row(7, n, if ty.is_quantized() { ty.block_elems() } else { 32 }, 1.0);
        for k in paths() {
            let mut act = vec![0u8; quant::act_row_bytes(ty, n).unwrap()];
            (k.quantize_act)(ty, &x, &mut act);
            assert_eq!((k.vec_dot)(ty, &w, &act, n), 0.0, "{} {}", k.isa.name(), ty.name());
            let mut zact = vec![0u8; act.len()];
            (k.quantize_act)(ty, &vec![0.0; n], &mut zact);
            let wr = quant(ty, &x);
            assert_eq!((k.vec_dot)(ty, &wr, &zact, n), 0.0, "{} {} (zero activations)", k.isa.name(), ty.name());
        }
    }
}

#[test]
fn lengths_are_checked() {
    assert!(quantize_row(GgmlType::Q4K, &[0.0; 255], &mut [0u8; 144]).is_err());
    assert!(quantize_row(GgmlType::Q4_0, &[0.0; 32], &mut [0u8; 17]).is_err());
    assert!(dequantize_row(GgmlType::Q6K, &[0u8; 210], &mut [0.0; 128]).is_err());
    for k in paths() {
        let r = std::panic::catch_unwind(|| (k.vec_dot)(GgmlType::Q4_0, &[0u8; 18], &[0u8; 33], 32));
        assert!(r.is_err(), "{}: short activation row accepted", k.isa.name());
        let r = std::panic::catch_unwind(|| (k.vec_dot)(GgmlType::Q4K, &[0u8; 144], &[0u8; 292], 128));
        assert!(r.is_err(), "{}: wrong n accepted", k.isa.name());
    }
}

#[test]
fn vec_dot_types() {
    use GgmlType::*;
    for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, IQ4NL] {
        assert_eq!(vec_dot_type(ty), Q8_0);
    }
    for ty in [Q2K, Q3K, Q4K, Q5K, Q6K, Q8K] {
        assert_eq!(vec_dot_type(ty), Q8K);
    }
    for ty in [F32, F16, BF16] {
        assert_eq!(vec_dot_type(ty), F32);
    }
    assert_eq!(quant::act_row_bytes(Q4K, 512), Some(2 * 292));
    assert_eq!(quant::act_row_bytes(Q4_0, 48), None);
}

#[test]
fn quantize_act_ties_and_extremes_match_reference() {
    // With max |x| = 127 the q8_0 scale is 1 and the q8_K scale -1, so x.5 values
    // are exact rounding ties (q8_0 rounds them away from zero, q8_K to even).
    let mut x: Vec<f32> = (0..512).map(|i| (i % 254) as f32 - 126.5).collect();
    x[0] = 127.0;
    x[300] = -127.0;
    x[40] = 1e-30;
    x[41] = -0.0;
    for (i, v) in x[256..].iter_mut().enumerate().step_by(7) {
        *v = -(i as f32) * 0.49999997;
    }
    for ty in [GgmlType::Q4_0, GgmlType::Q4K] {
        let mut want = vec![0u8; quant::act_row_bytes(ty, x.len()).unwrap()];
        quant::quantize_act(ty, &x, &mut want);
        for k in paths() {
            let mut got = vec![0u8; want.len()];
            (k.quantize_act)(ty, &x, &mut got);
            assert_eq!(got, want, "{} quantize_act for {}", k.isa.name(), ty.name());
        }
    }
}
