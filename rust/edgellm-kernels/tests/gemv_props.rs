//! The decode GEMV (`Kernels::gemv_q`) of every instruction set this machine
//! supports, for every quantized type, against the scalar `vec_dot` of each row
//! (within f32 summation order) and an f64 dot product of the dequantized rows.
//! Block counts cover the eight-block groups of the AVX2 q4_0 kernel, their
//! tails (1, 3, 7, 9, 17 ...) and long rows; weights are quantized from random
//! floats or random bytes with sane scales.

use edgellm_kernels::quant::{self, act_row_bytes, GgmlType};
use proptest::prelude::*;

mod common;
use common::{f64_dot_and_tol, paths, Rng};

fn check(ty: GgmlType, rows: usize, nb: usize, seed: u64, raw: bool) {
    let mut r = Rng::new(seed);
    let k = nb * ty.block_elems();
    let rb = ty.row_bytes(k).unwrap();
    let w = r.weight_rows(ty, rows, nb, raw);
    let mut act = vec![0u8; act_row_bytes(ty, k).unwrap()];
    quant::quantize_act(ty, &r.row(k), &mut act);
    for kern in paths() {
        let mut out = vec![f32::NAN; rows];
        (kern.gemv_q)(ty, &w, &act, k, &mut out);
        for (j, &o) in out.iter().enumerate() {
            let row = &w[j * rb..(j + 1) * rb];
            let reference = quant::vec_dot(ty, row, &act, k);
            let (e64, tol) = f64_dot_and_tol(ty, row, &act, k);
            let what = format!("{} {} rows={rows} nb={nb} raw={raw} row {j}", kern.isa.name(), ty.name());
            assert!(((o - reference) as f64).abs() <= tol, "{what}: gemv_q {o} vs scalar vec_dot {reference} (tol {tol})");
            assert!((o as f64 - e64).abs() <= tol, "{what}: gemv_q {o} vs f64 {e64} (tol {tol})");
        }
    }
}


fn quantized_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::ALL.into_iter().chain(GgmlType::MINIFLOATS).filter(|t| t.is_quantized())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24, 24)))]

    #[test]
    fn gemv_q_matches_vec_dot_and_f64(
        seed in any::<u64>(),
        rows in 1usize..6,
        nb in prop::sample::select(vec![1usize, 2, 3, 7, 8, 9, 16, 17, 23, 24, 33]),
        raw in any::<bool>(),
    ) {
        for ty in quantized_types() {
            check(ty, rows, nb, seed, raw);
        }
    }
}

/// Rows of 4097 elements rounded to whole blocks, as in the model's widest layers.
#[test]
fn gemv_q_long_rows() {
    for ty in quantized_types() {
        check(ty, 3, 4097 / ty.block_elems() + 1, 7, false);
    }
}

#[test]
fn gemv_q_length_checks() {
    let ty = GgmlType::Q4_0;
    for kern in paths() {
        let (rb, ab) = (ty.row_bytes(64).unwrap(), act_row_bytes(ty, 64).unwrap());
        // No rows: nothing to do, nothing read.
        (kern.gemv_q)(ty, &[], &vec![0u8; ab], 64, &mut []);
        for (w, a, n, rows) in [(2 * rb + 1, ab, 64, 2), (2 * rb, ab - 1, 64, 2), (2 * rb, ab, 63, 2), (rb, ab, 64, 2)] {
            let r = std::panic::catch_unwind(|| {
                let mut out = vec![0f32; rows];
                (kern.gemv_q)(ty, &vec![0u8; w], &vec![0u8; a], n, &mut out);
            });
            assert!(r.is_err(), "{}: gemv_q accepted w={w} act={a} n={n} rows={rows}", kern.isa.name());
        }
    }
}

/// The VNNI GEMVs' integer sums are exact, and their f32 steps are the AVX2
/// path's: on machines with both, q4_0 and q8_0 agree bit for bit, weights
/// holding −128 included (AVX-512 VNNI and AVX-VNNI alike).
#[cfg(target_arch = "x86_64")]
#[test]
fn gemv_q_vnni_equals_avx2_bitwise() {
    use edgellm_kernels::{Isa, Kernels};
    let Ok(avx2) = Kernels::for_isa(Isa::Avx2) else {
        return eprintln!("skipped: this CPU lacks AVX2");
    };
    let vnni: Vec<_> = [Isa::AvxVnni, Isa::Avx512].into_iter().filter_map(|i| Kernels::for_isa(i).ok()).collect();
    if vnni.is_empty() {
        eprintln!("skipped: this CPU lacks AVX-512 VNNI and AVX-VNNI");
    }
    for vnni in vnni {
        gemv_q_equals_bitwise(avx2, vnni);
    }
}

#[cfg(target_arch = "x86_64")]
fn gemv_q_equals_bitwise(avx2: &edgellm_kernels::Kernels, vnni: &edgellm_kernels::Kernels) {
    let mut r = Rng::new(11);
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
        for nb in [1usize, 7, 8, 9, 24, 129] {
            let (k, rows) = (32 * nb, 5);
            let rb = ty.row_bytes(k).unwrap();
            let mut w: Vec<u8> = (0..rows).flat_map(|_| r.blocks(ty, nb)).collect();
            if ty == GgmlType::Q8_0 {
                w[rb + 2] = 0x80;
            }
            let mut act = vec![0u8; act_row_bytes(ty, k).unwrap()];
            quant::quantize_act(ty, &r.row(k), &mut act);
            let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
            (avx2.gemv_q)(ty, &w, &act, k, &mut a);
            (vnni.gemv_q)(ty, &w, &act, k, &mut b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{} {} nb={nb}", vnni.isa.name(), ty.name());
        }
    }
}
