//! The quantized GEMM (`Kernels::gemm_q`) of every instruction set this machine
//! supports, on random odd shapes (1..9 tokens, row counts that are not multiples
//! of the 8-row panel, odd block counts), against:
//!
//! - the scalar `vec_dot` per (row, token): bit-identical on the paths that
//!   `qgemm::bit_exact` names (the interleaved kernels keep the reference's exact
//!   integer sums and f32 operation order), within f32 summation order elsewhere;
//! - an f64 dot product of the dequantized weight and activation rows.
//!
//! Outputs outside the weight rows (`ldo > rows`) must stay untouched.

use edgellm_kernels::quant::qgemm::{self, QActs, QGemmScratch};
use edgellm_kernels::quant::{self, act_row_bytes, GgmlType};
use proptest::prelude::*;

mod common;
use common::{f64_dot_and_tol, paths, Rng};

const TYPES: [GgmlType; 13] = [
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_1,
    GgmlType::IQ4NL,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q5K,
    GgmlType::Q8K,
];

/// `rows` weight rows of `ty` (quantized from random floats, or random bytes with
/// sane f16 scales when `raw`), and `n` quantized activation rows.
fn operands(ty: GgmlType, rows: usize, n: usize, k: usize, seed: u64, raw: bool) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
    let mut r = Rng::new(seed);
    let w = r.weight_rows(ty, rows, k / ty.block_elems(), raw);
    let x: Vec<f32> = (0..n).flat_map(|_| r.row(k)).collect();
    let ab = act_row_bytes(ty, k).unwrap();
    let mut acts = vec![0u8; n * ab];
    for (a, xr) in acts.chunks_exact_mut(ab).zip(x.chunks_exact(k)) {
        quant::quantize_act(ty, xr, a);
    }
    (w, acts, x)
}

fn check(ty: GgmlType, rows: usize, n: usize, nb: usize, seed: u64, raw: bool) {
    let k = nb * ty.block_elems();
    let (w, acts, _) = operands(ty, rows, n, k, seed, raw);
    let (rb, ab) = (ty.row_bytes(k).unwrap(), act_row_bytes(ty, k).unwrap());
    let qa = QActs::new(ty, k, acts.clone());
    let ldo = rows + 3;
    const FILL: f32 = -7.25;
    for kern in paths() {
        let mut out = vec![FILL; (n - 1) * ldo + rows + 3];
        let mut scratch = QGemmScratch::default();
        // Twice through one scratch: reuse must not leak state between calls.
        for _ in 0..2 {
            (kern.gemm_q)(&w, &qa, &mut out, ldo, &mut scratch);
        }
        let exact = qgemm::bit_exact(kern.isa, ty);
        for t in 0..n {
            for (j, &o) in out[t * ldo..(t + 1) * ldo].iter().enumerate().take(ldo.min(out.len() - t * ldo)) {
                if j >= rows {
                    assert_eq!(o, FILL, "{} {}: wrote past the rows at t={t} col={j}", kern.isa.name(), ty.name());
                    continue;
                }
                let reference = quant::vec_dot(ty, &w[j * rb..(j + 1) * rb], &acts[t * ab..(t + 1) * ab], k);
                let (e64, tol) = f64_dot_and_tol(ty, &w[j * rb..(j + 1) * rb], &acts[t * ab..(t + 1) * ab], k);
                let what = format!("{} {} rows={rows} n={n} nb={nb} raw={raw} (row {j}, token {t})", kern.isa.name(), ty.name());
                if exact {
                    assert_eq!(o.to_bits(), reference.to_bits(), "{what}: gemm_q {o} vs scalar vec_dot {reference}");
                } else {
                    assert!(((o - reference) as f64).abs() <= tol, "{what}: gemm_q {o} vs scalar {reference} (tol {tol})");
                }
                assert!((o as f64 - e64).abs() <= tol, "{what}: gemm_q {o} vs f64 {e64} (tol {tol})");
            }
        }
    }
}


proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24, 24)))]

    #[test]
    fn gemm_q_matches_vec_dot_and_f64(
        seed in any::<u64>(),
        rows in prop::sample::select(vec![1usize, 3, 7, 8, 9, 13, 17, 24]),
        n in 1usize..10,
        nb in prop::sample::select(vec![1usize, 2, 3, 7]),
    ) {
        for ty in TYPES {
            check(ty, rows, n, nb, seed, false);
        }
    }

    #[test]
    fn gemm_q_random_weight_bytes(
        seed in any::<u64>(),
        rows in prop::sample::select(vec![1usize, 5, 9, 16]),
        n in 1usize..10,
        nb in prop::sample::select(vec![1usize, 3]),
    ) {
        for ty in TYPES {
            check(ty, rows, n, nb, seed, true);
        }
    }
}

/// Larger shapes than the property test (several token passes, long rows).
#[test]
fn gemm_q_long_rows_and_many_tokens() {
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
        let nb = 4096 / ty.block_elems() + 1;
        check(ty, 19, 9, nb, 11, false);
    }
    // More tokens than one pass over the panels holds (q8_K rows of 16 blocks: 4.6 KiB).
    check(GgmlType::Q4K, 9, 37, 16, 5, false);
}

/// The largest quants against activations of -128 (a constant -1 row), where
/// the i16 pair sums of a sub-block come nearest to overflowing: every quant
/// byte (and q5_K's and q6_K's high bits) set, scales random. Bit-identical to
/// the scalar `vec_dot` wherever `bit_exact` says so.
#[test]
fn gemm_q_extreme_quants() {
    // The bytes of each block holding quants (nibbles, high bits).
    for (ty, quants) in [(GgmlType::Q4K, 16..144), (GgmlType::Q5K, 16..176), (GgmlType::Q6K, 0..192), (GgmlType::Q4_0, 2..18)] {
        let (rows, nb) = (9, 3);
        let k = nb * ty.block_elems();
        let mut w = Rng::new(3).weight_rows(ty, rows, nb, true);
        for blk in w.chunks_exact_mut(ty.block_bytes()) {
            blk[quants.clone()].fill(0xFF);
        }
        let ab = act_row_bytes(ty, k).unwrap();
        let mut acts = vec![0u8; 2 * ab];
        quant::quantize_act(ty, &vec![-1.0; k], &mut acts[..ab]);
        quant::quantize_act(ty, &vec![1.0; k], &mut acts[ab..]);
        let qa = QActs::new(ty, k, acts.clone());
        let rb = ty.row_bytes(k).unwrap();
        for kern in paths() {
            let mut out = vec![0f32; 2 * rows];
            (kern.gemm_q)(&w, &qa, &mut out, rows, &mut QGemmScratch::default());
            for t in 0..2 {
                for j in 0..rows {
                    let (o, a) = (out[t * rows + j], &acts[t * ab..(t + 1) * ab]);
                    let reference = quant::vec_dot(ty, &w[j * rb..(j + 1) * rb], a, k);
                    let (e64, tol) = f64_dot_and_tol(ty, &w[j * rb..(j + 1) * rb], a, k);
                    let what = format!("{} {} (row {j}, token {t})", kern.isa.name(), ty.name());
                    if qgemm::bit_exact(kern.isa, ty) {
                        assert_eq!(o.to_bits(), reference.to_bits(), "{what}: gemm_q {o} vs scalar vec_dot {reference}");
                    }
                    assert!((o as f64 - e64).abs() <= tol, "{what}: gemm_q {o} vs f64 {e64} (tol {tol})");
                }
            }
        }
    }
}

#[test]
fn gemm_q_zero_sizes_and_length_checks() {
    for kern in paths() {
        let mut s = QGemmScratch::default();
        let ty = GgmlType::Q4_0;
        // No rows, no tokens: nothing to do.
        (kern.gemm_q)(&[], &QActs::new(ty, 32, vec![0u8; 34]), &mut [], 0, &mut s);
        (kern.gemm_q)(&[0u8; 18], &QActs::new(ty, 32, vec![]), &mut [], 1, &mut s);
        let r = std::panic::catch_unwind(|| {
            (kern.gemm_q)(&[0u8; 17], &QActs::new(ty, 32, vec![0u8; 34]), &mut [0f32; 4], 1, &mut QGemmScratch::default())
        });
        assert!(r.is_err(), "{}: ragged weight bytes accepted", kern.isa.name());
        let r = std::panic::catch_unwind(|| {
            (kern.gemm_q)(&[0u8; 36], &QActs::new(ty, 32, vec![0u8; 34]), &mut [0f32; 1], 2, &mut QGemmScratch::default())
        });
        assert!(r.is_err(), "{}: short output accepted", kern.isa.name());
    }
    assert!(std::panic::catch_unwind(|| QActs::new(GgmlType::Q4_0, 32, vec![0u8; 35])).is_err());
    assert!(std::panic::catch_unwind(|| QActs::new(GgmlType::Q4K, 32, vec![])).is_err());
}
