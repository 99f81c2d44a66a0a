//! edgellm's NF4 and FP8 (E4M3, E5M2) block formats: the reference routines
//! against the codecs, and every kernel path this machine has against the
//! reference and an f64 dot product:
//!
//! - every FP8 code (NaN and infinity included) and every NF4 code dequantizes,
//!   through each path's `dequantize_row`, to the codec's value;
//! - SIMD `dequantize_row` is bit-identical to the scalar one on random blocks;
//! - `vec_dot` of each path ≈ scalar ≈ f64 dot of the dequantized row, on
//!   1, 3, 127 blocks and random odd counts, quantized and random weights;
//! - round trips within the format's bound, zero blocks give zeros (not NaN),
//!   saturation, ties to even; GGUF ids never name these types.

use edgellm_kernels::f16;
use edgellm_kernels::quant::minifloat::{Fp8, NF4_VALUES};
use edgellm_kernels::quant::{self, dequantize_row, quantize_row, GgmlType};
use proptest::prelude::*;

mod common;
use common::{paths, Rng};

const TYPES: [GgmlType; 3] = [GgmlType::NF4, GgmlType::F8E4M3, GgmlType::F8E5M2];

fn fmt(ty: GgmlType) -> Option<Fp8> {
    match ty {
        GgmlType::F8E4M3 => Some(Fp8::E4M3),
        GgmlType::F8E5M2 => Some(Fp8::E5M2),
        _ => None,
    }
}

fn quant(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequant(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Random blocks of `ty`: random codes (FP8: finite ones unless `specials`) and
/// an f16 absmax of random magnitude (subnormal f16 included).
fn random_blocks(ty: GgmlType, nb: usize, seed: u64, specials: bool) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut w: Vec<u8> = (0..nb * 34).map(|_| r.next() as u8).collect();
    for blk in w.chunks_exact_mut(34) {
        let e = (r.next() % 30) as i32 - 22;
        let d = f16::from_f32(r.uniform().abs() * 2f32.powi(e));
        blk[0..2].copy_from_slice(&d.to_bits().to_le_bytes());
        if let (Some(f), false) = (fmt(ty), specials) {
            for q in &mut blk[2..] {
                while !f.decode(*q).is_finite() {
                    *q = r.next() as u8;
                }
            }
        }
    }
    w
}

fn row(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    r.row(n).into_iter().map(|v| v * scale).collect()
}

#[test]
fn geometry_and_names() {
    for ty in TYPES {
        assert_eq!(ty.block_bytes(), 34);
        assert!(ty.is_quantized() && !ty.is_gguf() && ty.id().is_none());
        assert!(!GgmlType::ALL.contains(&ty));
        assert_eq!(GgmlType::from_name(ty.name()), Some(ty));
        assert_eq!(GgmlType::from_name(&ty.name().to_uppercase()), Some(ty));
        assert_eq!(quant::vec_dot_type(ty), GgmlType::F32);
    }
    assert_eq!(GgmlType::NF4.block_elems(), 64);
    assert_eq!(GgmlType::F8E4M3.block_elems(), 32);
    assert_eq!(GgmlType::NF4.bits_per_weight(), 4.25);
    assert_eq!(GgmlType::F8E5M2.bits_per_weight(), 8.5);
    assert_eq!((GgmlType::NF4.name(), GgmlType::F8E4M3.name(), GgmlType::F8E5M2.name()), ("nf4", "fp8_e4m3", "fp8_e5m2"));
    // No GGUF id maps to them.
    for id in 0..4096 {
        if let Some(t) = GgmlType::from_id(id) {
            assert!(!TYPES.contains(&t) && t.id() == Some(id));
        }
    }
}

#[test]
fn every_code_decodes_to_the_codec_value_on_every_path() {
    for (ty, f) in [(GgmlType::F8E4M3, Fp8::E4M3), (GgmlType::F8E5M2, Fp8::E5M2)] {
        // d = the format's max: the scale is exactly 1.
        let d = f16::from_f32(f.max());
        assert_eq!(d.to_f32(), f.max());
        let mut w = Vec::new();
        for blk in 0..8u32 {
            w.extend_from_slice(&d.to_bits().to_le_bytes());
            w.extend((0..32u32).map(|j| (32 * blk + j) as u8));
        }
        for k in paths() {
            let mut y = vec![0f32; 256];
            (k.dequantize_row)(ty, &w, &mut y);
            for (code, v) in y.iter().enumerate() {
                assert!(same(*v, f.decode(code as u8)), "{} {}: code {code:#04x} → {v}, codec {}", k.isa.name(), ty.name(), f.decode(code as u8));
            }
        }
    }
    let d = f16::from_f32(1.0);
    let mut w = d.to_bits().to_le_bytes().to_vec();
    w.extend((0..32u8).map(|j| (j % 16) | ((15 - j % 16) << 4)));
    for k in paths() {
        let mut y = vec![0f32; 64];
        (k.dequantize_row)(GgmlType::NF4, &w, &mut y);
        for j in 0..32 {
            assert_eq!(y[j], NF4_VALUES[j % 16], "{} nf4 low nibble {j}", k.isa.name());
            assert_eq!(y[32 + j], NF4_VALUES[15 - j % 16], "{} nf4 high nibble {j}", k.isa.name());
        }
    }
}

#[test]
fn roundtrip_zero_saturation_and_ties() {
    for ty in TYPES {
        let be = ty.block_elems();
        // Zero blocks: d = 0 and zeros, never NaN; next to a normal block.
        let mut x = vec![0f32; 3 * be];
        x[be..2 * be].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 - 10.0);
        let y = dequant(ty, &quant(ty, &x), x.len());
        assert!(y[..be].iter().chain(&y[2 * be..]).all(|v| *v == 0.0 && v.is_sign_positive() || *v == 0.0), "{}", ty.name());
        assert!(y.iter().all(|v| v.is_finite()));
        // Huge and tiny blocks stay finite; the absmax element is kept (up to f16 rounding).
        for c in [1e6f32, 7e4, 1e-9, 3e-38] {
            let x: Vec<f32> = (0..be).map(|i| if i == 3 { -c } else { c * (i as f32 / be as f32) }).collect();
            let y = dequant(ty, &quant(ty, &x), be);
            assert!(y.iter().all(|v| v.is_finite()), "{} {c}: {y:?}", ty.name());
            let want = -c.min(f16::MAX.to_f32());
            assert!((y[3] - want).abs() <= want.abs() * 1e-3 + 6e-8, "{} {c}: {} vs {want}", ty.name(), y[3]);
        }
        // Random data: within half the widest level gap (relative to the block absmax).
        let bound = match ty {
            GgmlType::NF4 => 0.5 * (1.0 - 0.6961928009986877),
            GgmlType::F8E4M3 => 1.0 / 16.0,
            _ => 1.0 / 8.0,
        } + 1.0 / 2048.0;
        for seed in 0..20 {
            let x = row(seed, 4 * be, 1.0);
            let y = dequant(ty, &quant(ty, &x), x.len());
            for (b, (xb, yb)) in x.chunks(be).zip(y.chunks(be)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, v) in xb.iter().zip(yb) {
                    assert!((a - v).abs() <= bound * amax + 1e-7, "{} block {b}: {a} → {v}", ty.name());
                }
            }
        }
    }
    // Ties to even at scale 1 (absmax = max): E4M3 1.0625 lies between 1 and 1.125.
    let mut x = vec![0f32; 32];
    x[0] = 448.0;
    x[1] = 1.0625;
    x[2] = 1.1875;
    let y = dequant(GgmlType::F8E4M3, &quant(GgmlType::F8E4M3, &x), 32);
    assert_eq!((y[0], y[1], y[2]), (448.0, 1.0, 1.25));
}

/// `vec_dot` of every path against the scalar reference and the f64 dot of the
/// dequantized row with the (f32) activations.
fn check_dot(ty: GgmlType, w: &[u8], x: &[f32], what: &str) {
    let n = x.len();
    let wd = dequant(ty, w, n);
    let act: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (mut exact, mut mag) = (0f64, 0f64);
    for i in 0..n {
        exact += wd[i] as f64 * x[i] as f64;
        mag += (wd[i] as f64).abs() * (x[i] as f64).abs();
    }
    let tol = (n / ty.block_elems() + 64) as f64 * f32::EPSILON as f64 * mag + 1e-30;
    let reference = quant::vec_dot(ty, w, &act, n);
    assert!((reference as f64 - exact).abs() <= tol, "{} ({what}, n={n}): scalar {reference} vs f64 {exact}", ty.name());
    for k in paths() {
        let mut a = vec![0u8; act.len()];
        (k.quantize_act)(ty, x, &mut a);
        assert_eq!(a, act, "{} {}: quantize_act is not the f32 row", k.isa.name(), ty.name());
        let got = (k.vec_dot)(ty, w, &act, n);
        assert!(
            (got as f64 - exact).abs() <= tol,
            "{} {} ({what}, n={n}): vec_dot {got} vs f64 {exact} (scalar {reference}, tol {tol})",
            k.isa.name(),
            ty.name()
        );
    }
}

fn check_dequant_paths(ty: GgmlType, w: &[u8], n: usize) {
    let want = dequant(ty, w, n);
    for k in paths() {
        let mut y = vec![0f32; n];
        (k.dequantize_row)(ty, w, &mut y);
        for i in 0..n {
            assert!(same(y[i], want[i]), "{} {}: element {i}: {} vs scalar {}", k.isa.name(), ty.name(), y[i], want[i]);
        }
    }
}

#[test]
fn fixed_block_counts() {
    for ty in TYPES {
        for nb in [1usize, 3, 127] {
            let n = nb * ty.block_elems();
            let x = row(nb as u64, n, 1.0);
            let w = quant(ty, &row(nb as u64 ^ 77, n, 0.1));
            check_dot(ty, &w, &x, "quantized");
            check_dequant_paths(ty, &w, n);
            let w = random_blocks(ty, nb, nb as u64, false);
            check_dot(ty, &w, &x, "random blocks");
            check_dequant_paths(ty, &random_blocks(ty, nb, nb as u64, true), n);
        }
    }
}

#[test]
fn zero_rows_dot_to_zero() {
    for ty in TYPES {
        let n = 3 * ty.block_elems();
        let w = quant(ty, &vec![0.0; n]);
        let x: Vec<u8> = row(5, n, 1.0).iter().flat_map(|v| v.to_le_bytes()).collect();
        for k in paths() {
            assert_eq!((k.vec_dot)(ty, &w, &x, n), 0.0, "{} {}", k.isa.name(), ty.name());
        }
    }
}

#[test]
fn lengths_are_checked() {
    for ty in TYPES {
        let be = ty.block_elems();
        assert!(quantize_row(ty, &vec![0.0; be + 1], &mut [0u8; 34]).is_err());
        assert!(dequantize_row(ty, &[0u8; 33], &mut vec![0.0; be]).is_err());
        for k in paths() {
            let r = std::panic::catch_unwind(|| (k.vec_dot)(ty, &[0u8; 34], &vec![0u8; 4 * be - 4], be));
            assert!(r.is_err(), "{} {}: short activation row accepted", k.isa.name(), ty.name());
            let r = std::panic::catch_unwind(|| (k.dequantize_row)(ty, &[0u8; 34], &mut vec![0.0; be + 1]));
            assert!(r.is_err(), "{} {}: wrong dequantize length accepted", k.isa.name(), ty.name());
        }
    }
}


proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64, 12)))]

    #[test]
    fn paths_agree(seed in any::<u64>(), nb in 1usize..40, e in -4i32..3) {
        for ty in TYPES {
            let n = nb * ty.block_elems();
            let x = row(seed, n, 1.0);
            let w = quant(ty, &row(seed ^ 0xA5A5, n, 10f32.powi(e)));
            check_dot(ty, &w, &x, "quantized");
            check_dequant_paths(ty, &w, n);
            check_dot(ty, &random_blocks(ty, nb, seed, false), &x, "random blocks");
            check_dequant_paths(ty, &random_blocks(ty, nb, seed, true), n);
        }
    }
}
