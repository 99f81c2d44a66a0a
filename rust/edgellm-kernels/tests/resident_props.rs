//! The resident-panel GEMM (`Kernels::gemm_q_resident`: q4_0/q8_0/q4_K/q5_K/q6_K weights
//! repacked at load) of every instruction set this machine has one on, for
//! every type the table runs, on random shapes (1..10 tokens, 1..5 panels, odd
//! block counts; weights quantized from random floats or random bytes, q8_0's
//! −128, every 6-bit q4_K/q5_K scale and min and every q6_K scale included), bit for bit against the
//! scalar `vec_dot` of the rows the panels were packed from, and against the
//! reference `resident::gemm_q_resident`. Outputs past the rows must stay
//! untouched; packing then unpacking gives the rows back.

use edgellm_kernels::quant::qgemm::QActs;
use edgellm_kernels::quant::{self, act_row_bytes, resident, GgmlType};
use proptest::prelude::*;

mod common;
use common::{paths, Rng};

/// The types with a resident layout.
const TYPES: [GgmlType; 5] = [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

fn check(ty: GgmlType, panels: usize, n: usize, nb: usize, seed: u64, raw: bool) {
    let k = nb * ty.block_elems();
    let rows = 8 * panels;
    let mut r = Rng::new(seed);
    let rb = ty.row_bytes(k).unwrap();
    let w = r.weight_rows(ty, rows, nb, raw);
    let ab = act_row_bytes(ty, k).unwrap();
    let mut acts = vec![0u8; n * ab];
    for a in acts.chunks_exact_mut(ab) {
        quant::quantize_act(ty, &r.row(k), a);
    }
    let mut packed = vec![0u8; w.len()];
    resident::pack(ty, &w, k, &mut packed);
    let mut back = vec![0u8; w.len()];
    resident::unpack(ty, &packed, k, &mut back);
    assert!(back == w, "{} nb={nb}: unpack(pack(rows)) differs from the rows", ty.name());
    let qa = QActs::new(ty, k, acts.clone());
    let ldo = rows + 3;
    const FILL: f32 = -7.25;
    let mut reference = vec![FILL; (n - 1) * ldo + rows + 3];
    resident::gemm_q_resident(ty, &packed, &qa, &mut reference, ldo);
    let mut tested = 0;
    for kern in paths() {
        let Some(gemm) = kern.resident_gemm(ty) else { continue };
        tested += 1;
        let mut out = vec![FILL; reference.len()];
        gemm(ty, &packed, &qa, &mut out, ldo);
        for t in 0..n {
            for j in 0..ldo.min(out.len() - t * ldo) {
                let (o, rf) = (out[t * ldo + j], reference[t * ldo + j]);
                let what = format!("{} {} panels={panels} n={n} nb={nb} raw={raw} (row {j}, token {t})", kern.isa.name(), ty.name());
                if j >= rows {
                    assert_eq!(o, FILL, "{what}: wrote past the rows");
                    assert_eq!(rf, FILL, "{what}: the reference wrote past the rows");
                    continue;
                }
                let dot = quant::vec_dot(ty, &w[j * rb..(j + 1) * rb], &acts[t * ab..(t + 1) * ab], k);
                assert_eq!(rf.to_bits(), dot.to_bits(), "{what}: reference {rf} vs vec_dot {dot}");
                assert_eq!(o.to_bits(), dot.to_bits(), "{what}: resident {o} vs vec_dot {dot}");
            }
        }
    }
    // Every SIMD table (AVX2, AVX-512, the NEON levels) has resident kernels
    // for all five types.
    if paths().iter().any(|k| k.isa != edgellm_kernels::Isa::Scalar) {
        assert!(tested > 0, "no table with a resident {} kernel was tested", ty.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(24, 24)))]

    #[test]
    fn resident_gemm_equals_vec_dot_bitwise(
        seed in any::<u64>(),
        panels in 1usize..5,
        n in 1usize..10,
        nb in prop::sample::select(vec![1usize, 2, 3, 7, 65]),
        raw in any::<bool>(),
    ) {
        for ty in TYPES {
            // q4_K and q5_K blocks hold 256 elements: at most 9 of them.
            let nb = if ty.block_elems() == 256 { nb.min(9) } else { nb };
            check(ty, panels, n, nb, seed, raw);
        }
    }
}

/// Many tokens (several passes of the token loop) over long rows.
#[test]
fn resident_gemm_many_tokens() {
    for ty in TYPES {
        check(ty, 3, 150, if ty.block_elems() == 256 { 8 } else { 64 }, 3, false);
    }
}

/// The largest quants (every quant byte and q5_K's and q6_K's high bits set) against
/// activations of −128 and of 127, where a sub-block's i16 pair sums come
/// nearest to overflowing; prompts (widened panels) and decode alike.
#[test]
fn resident_gemm_extreme_quants() {
    for (ty, quants) in [(GgmlType::Q4K, 16..144), (GgmlType::Q5K, 16..176), (GgmlType::Q6K, 0..192), (GgmlType::Q4_0, 2..18)] {
        let (nb, n) = (3, 9);
        let k = nb * ty.block_elems();
        let mut w = Rng::new(5).weight_rows(ty, 16, nb, true);
        for blk in w.chunks_exact_mut(ty.block_bytes()) {
            blk[quants.clone()].fill(0xFF);
        }
        let ab = act_row_bytes(ty, k).unwrap();
        let mut acts = vec![0u8; n * ab];
        for (t, a) in acts.chunks_exact_mut(ab).enumerate() {
            quant::quantize_act(ty, &vec![if t % 2 == 0 { -1.0 } else { 1.0 }; k], a);
        }
        let mut packed = vec![0u8; w.len()];
        resident::pack(ty, &w, k, &mut packed);
        let rb = ty.row_bytes(k).unwrap();
        for kern in paths() {
            let Some(gemm) = kern.resident_gemm(ty) else { continue };
            for tokens in [1, n] {
                let qa = QActs::new(ty, k, acts[..tokens * ab].to_vec());
                let mut out = vec![0f32; tokens * 16];
                gemm(ty, &packed, &qa, &mut out, 16);
                for t in 0..tokens {
                    for j in 0..16 {
                        let dot = quant::vec_dot(ty, &w[j * rb..(j + 1) * rb], &acts[t * ab..(t + 1) * ab], k);
                        let o = out[t * 16 + j];
                        assert_eq!(o.to_bits(), dot.to_bits(), "{} {} tokens={tokens} (row {j}, token {t}): {o} vs {dot}", kern.isa.name(), ty.name());
                    }
                }
            }
        }
    }
}

#[test]
fn resident_gemm_checks_its_operands() {
    let ty = GgmlType::Q4_0;
    let mut calls: Vec<quant::resident::GemmResidentFn> = vec![resident::gemm_q_resident];
    calls.extend(paths().into_iter().filter_map(|k| k.gemm_q_resident));
    for gemm in calls {
        // No tokens: nothing to do.
        gemm(ty, &[0u8; 144], &QActs::new(ty, 32, vec![]), &mut [], 8);
        // Not whole panels (7 rows), an output too short, a type without a layout.
        assert!(std::panic::catch_unwind(|| gemm(ty, &[0u8; 126], &QActs::new(ty, 32, vec![0u8; 34]), &mut [0f32; 8], 8)).is_err());
        assert!(std::panic::catch_unwind(|| gemm(ty, &[0u8; 144], &QActs::new(ty, 32, vec![0u8; 34]), &mut [0f32; 7], 8)).is_err());
        let q2k = QActs::new(GgmlType::Q2K, 256, vec![0u8; act_row_bytes(GgmlType::Q2K, 256).unwrap()]);
        assert!(std::panic::catch_unwind(|| gemm(GgmlType::Q2K, &[0u8; 8 * 84], &q2k, &mut [0f32; 8], 8)).is_err());
    }
}
