//! edgellm's low-bit group formats (`q3_g128`, `q3a_g128`, `q2_g128`,
//! `q2a_g128`): explicit codes pack and unpack exactly and dequantize to
//! `d·(u − z)` / `d·u + m`; bad codes and lengths are errors; every kernel path's
//! `vec_dot` matches the scalar reference and an f64 dot on odd block counts
//! (1, 3, 31), for packed codes with extreme and zero scales. (Round-trip error
//! bounds, zero/constant groups and random block bytes are covered for every
//! type in `quant_props`.)

use edgellm_kernels::f16;
use edgellm_kernels::quant::{self, dequantize_row, lowbit, GgmlType, QuantError};
use proptest::prelude::*;

mod common;
use common::{paths, Rng};

const LOWBIT: [GgmlType; 4] = [GgmlType::Q3G128, GgmlType::Q3AG128, GgmlType::Q2G128, GgmlType::Q2AG128];

fn bits(ty: GgmlType) -> u32 {
    if matches!(ty, GgmlType::Q3G128 | GgmlType::Q3AG128) {
        3
    } else {
        2
    }
}

fn asym(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q3AG128 | GgmlType::Q2AG128)
}

/// Random codes, scales (some zero, some subnormal, some large) and mins.
fn grid(ty: GgmlType, nb: usize, seed: u64) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
    let mut r = Rng::new(seed);
    let codes = (0..nb * 128).map(|_| (r.next() % (1 << bits(ty))) as u8).collect();
    let scale = |r: &mut Rng| match r.next() % 8 {
        0 => f16::ZERO,
        1 => f16::from_f32(r.uniform() * 1e-6),
        2 => f16::from_f32(r.uniform() * 300.0),
        _ => f16::from_f32(r.uniform() * 0.05),
    };
    let d = (0..nb).map(|_| scale(&mut r)).collect();
    let m = if asym(ty) { (0..nb).map(|_| scale(&mut r)).collect() } else { Vec::new() };
    (codes, d, m)
}

fn packed(ty: GgmlType, codes: &[u8], d: &[f16], m: &[f16]) -> Vec<u8> {
    let mut w = vec![0u8; ty.row_bytes(codes.len()).unwrap()];
    lowbit::pack_row(ty, codes, d, m, &mut w).unwrap();
    w
}

#[test]
fn geometry() {
    for ty in LOWBIT {
        assert!(ty.is_quantized() && !ty.is_gguf());
        assert_eq!(ty.id(), None);
        assert_eq!(ty.block_elems(), 128);
        assert_eq!(quant::vec_dot_type(ty), GgmlType::Q8_0);
        assert!(GgmlType::ALL.contains(&ty));
    }
    assert!(GgmlType::Q4_0.is_gguf());
    let bpw: Vec<f64> = LOWBIT.iter().map(|t| t.bits_per_weight()).collect();
    assert_eq!(bpw, [3.125, 3.25, 2.125, 2.25]);
    assert_eq!(GgmlType::Q3AG128.name(), "q3a_g128");
    assert_eq!(GgmlType::Q3G128.row_bytes(100), None);
}

#[test]
fn bad_codes_and_lengths_are_errors() {
    for ty in LOWBIT {
        let (mut codes, d, m) = grid(ty, 2, 1);
        let mut w = vec![0u8; ty.row_bytes(256).unwrap()];
        codes[200] = 1 << bits(ty);
        assert_eq!(lowbit::pack_row(ty, &codes, &d, &m, &mut w), Err(QuantError::Code { ty, at: 200, code: codes[200] }));
        codes[200] = 0;
        assert!(lowbit::pack_row(ty, &codes, &d[..1], &m, &mut w).is_err());
        assert!(lowbit::pack_row(ty, &codes, &d, &[f16::ZERO; 3], &mut w).is_err());
        assert!(lowbit::pack_row(ty, &codes, &d, &m, &mut w[1..]).is_err());
        assert!(lowbit::pack_row(ty, &codes[..255], &d, &m, &mut w).is_err());
        assert!(lowbit::pack_row(ty, &codes, &d, &m, &mut w).is_ok());
    }
    assert!(lowbit::pack_row(GgmlType::Q4_0, &[0; 128], &[f16::ZERO], &[], &mut [0u8; 72]).is_err());
}


proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(32, 8)))]

    #[test]
    fn codes_round_trip_and_dequantize_exactly(seed in any::<u64>(), nb in prop::sample::select(vec![1usize, 3, 31])) {
        for ty in LOWBIT {
            let (codes, d, m) = grid(ty, nb, seed);
            let w = packed(ty, &codes, &d, &m);
            let (mut c2, mut d2, mut m2) = (vec![0u8; codes.len()], vec![f16::ZERO; nb], vec![f16::ZERO; m.len()]);
            lowbit::unpack_row(ty, &w, &mut c2, &mut d2, &mut m2).unwrap();
            prop_assert_eq!(&c2, &codes);
            prop_assert!(d2.iter().zip(&d).all(|(a, b)| a.to_bits() == b.to_bits()));
            prop_assert!(m2.iter().zip(&m).all(|(a, b)| a.to_bits() == b.to_bits()));
            // Repacking the unpacked values reproduces the bytes.
            prop_assert_eq!(packed(ty, &c2, &d2, &m2), w.clone());
            let mut y = vec![0f32; codes.len()];
            dequantize_row(ty, &w, &mut y).unwrap();
            let z = if asym(ty) { 0 } else { 1 << (bits(ty) - 1) };
            for (e, v) in y.iter().enumerate() {
                let (b, u) = (e / 128, codes[e] as i32);
                let want = d[b].to_f64() * (u - z) as f64 + if asym(ty) { m[b].to_f64() } else { 0.0 };
                // One f32 rounding at most (exact for the symmetric formats).
                let tol = if asym(ty) { want.abs() * f32::EPSILON as f64 / 2.0 } else { 0.0 };
                prop_assert!((*v as f64 - want).abs() <= tol, "{} element {e}: {v} vs {want}", ty.name());
            }
        }
    }

    #[test]
    fn vec_dot_paths_match_reference(seed in any::<u64>(), nb in prop::sample::select(vec![1usize, 3, 31])) {
        for ty in LOWBIT {
            let (codes, d, m) = grid(ty, nb, seed);
            let w = packed(ty, &codes, &d, &m);
            let n = nb * 128;
            let mut r = Rng::new(seed ^ 0x77);
            let x = r.row(n);
            let mut act = vec![0u8; quant::act_row_bytes(ty, n).unwrap()];
            quant::quantize_act(ty, &x, &mut act);
            let (mut wd, mut ad) = (vec![0f32; n], vec![0f32; n]);
            dequantize_row(ty, &w, &mut wd).unwrap();
            dequantize_row(GgmlType::Q8_0, &act, &mut ad).unwrap();
            let exact: f64 = wd.iter().zip(&ad).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = wd.iter().zip(&ad).map(|(a, b)| (a.abs() as f64 + 1e-3) * b.abs() as f64).sum();
            // Each 32-element sub-block adds one or two rounded terms.
            let tol = (8 * nb + 16) as f64 * f32::EPSILON as f64 * mag;
            let reference = quant::vec_dot(ty, &w, &act, n);
            prop_assert!((reference as f64 - exact).abs() <= tol, "{} scalar {reference} vs f64 {exact}", ty.name());
            for k in paths() {
                let got = (k.vec_dot)(ty, &w, &act, n);
                prop_assert!((got as f64 - exact).abs() <= tol, "{} {} {got} vs f64 {exact} (scalar {reference})", k.isa.name(), ty.name());
            }
        }
    }
}

/// The same codes in the 4-bit container blocks (q4_0: `q + 8`, q4_1: `u`; d and m
/// repeated for the four 32-element blocks of each group).
fn container(ty: GgmlType, codes: &[u8], d: &[f16], m: &[f16]) -> (GgmlType, Vec<u8>) {
    let (cty, z) = if asym(ty) { (GgmlType::Q4_1, 0) } else { (GgmlType::Q4_0, 8 - (1 << (bits(ty) - 1))) };
    let mut out = Vec::new();
    for (b, c) in codes.chunks_exact(32).enumerate() {
        out.extend_from_slice(&d[b / 4].to_bits().to_le_bytes());
        if asym(ty) {
            out.extend_from_slice(&m[b / 4].to_bits().to_le_bytes());
        }
        out.extend((0..16).map(|j| (c[j] + z) | ((c[j + 16] + z) << 4)));
    }
    (cty, out)
}

#[test]
fn reference_dot_is_bit_identical_to_the_4bit_container() {
    for ty in LOWBIT {
        for seed in 0..20 {
            let nb = 1 + seed as usize % 5;
            let (codes, d, m) = grid(ty, nb, seed);
            let w = packed(ty, &codes, &d, &m);
            let (cty, cw) = container(ty, &codes, &d, &m);
            let n = nb * 128;
            let (mut y, mut yc) = (vec![0f32; n], vec![0f32; n]);
            dequantize_row(ty, &w, &mut y).unwrap();
            dequantize_row(cty, &cw, &mut yc).unwrap();
            assert_eq!(y, yc, "{} dequantizes differently from {}", ty.name(), cty.name());
            let x = Rng::new(seed + 100).row(n);
            let mut act = vec![0u8; quant::act_row_bytes(ty, n).unwrap()];
            quant::quantize_act(ty, &x, &mut act);
            let (a, b) = (quant::vec_dot(ty, &w, &act, n), quant::vec_dot(cty, &cw, &act, n));
            assert_eq!(a.to_bits(), b.to_bits(), "{}: {a} vs {} {b}", ty.name(), cty.name());
        }
    }
}
