//! Timing of the NF4 / FP8 kernels (ignored by default; single thread):
//! `cargo test --release -p edgellm-kernels --test nf4_fp8_bench -- --ignored --nocapture`
//!
//! - decode: `vec_dot` over a 2048 × 2048 matrix, best-ISA vs scalar, and the f16
//!   `dot_f16` of the same matrix for reference;
//! - prefill (64 tokens): the two candidate paths, `gemm_q` (the table's `vec_dot`
//!   per row and token) against `dequantize_row` + the packed f32 GEMM.

use edgellm_kernels::gemm::{gemm_packed, pack_a, BRows, GemmScratch};
use edgellm_kernels::quant::qgemm::{QActs, QGemmScratch};
use edgellm_kernels::quant::{quantize_row, GgmlType};
use edgellm_kernels::{f16, Isa, Kernels};

mod common;
use common::{best_of, Rng};

#[test]
#[ignore]
fn nf4_fp8_timings() {
    let (m, k, n) = (2048usize, 2048usize, 64usize);
    let mut r = Rng::new(1);
    let wf: Vec<f32> = (0..m * k).map(|_| r.normalish() * 0.02).collect();
    let x: Vec<f32> = (0..n * k).map(|_| r.uniform()).collect();
    let best = Kernels::for_isa(Isa::best()).unwrap();
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    let t = best_of(5, || {
        let mut s = 0f32;
        for row in wh.chunks_exact(k) {
            s += (best.dot_f16)(row, &x[..k]);
        }
        std::hint::black_box(s);
    });
    println!(
        "f16      decode {:7.3} ms ({:5.2} GB/s of weights)",
        t * 1e3,
        (m * k * 2) as f64 / t / 1e9
    );
    for ty in [GgmlType::NF4, GgmlType::F8E4M3, GgmlType::F8E5M2] {
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; m * rb];
        for (src, dst) in wf.chunks_exact(k).zip(w.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst).unwrap();
        }
        let act: Vec<u8> = x[..k].iter().flat_map(|v| v.to_le_bytes()).collect();
        for kt in [best, scalar] {
            let t = best_of(5, || {
                let mut s = 0f32;
                for row in w.chunks_exact(rb) {
                    s += (kt.vec_dot)(ty, row, &act, k);
                }
                std::hint::black_box(s);
            });
            println!(
                "{:8} decode {:7.3} ms ({:5.2} GB/s of weights) [{}]",
                ty.name(),
                t * 1e3,
                (m * rb) as f64 / t / 1e9,
                kt.isa.name()
            );
        }
        // Prefill candidates.
        let acts: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let qa = QActs::new(ty, k, acts);
        let mut out = vec![0f32; n * m];
        let mut qs = QGemmScratch::default();
        let t_q = best_of(2, || (best.gemm_q)(&w, &qa, &mut out, m, &mut qs));
        let a = pack_a(&x, n, k);
        let mut deq = vec![0f32; 256 * k];
        let mut tile = vec![0f32; n * 256];
        let mut gs = GemmScratch::default();
        let t_d = best_of(2, || {
            for b in 0..m / 256 {
                for i in 0..256 {
                    let r0 = b * 256 + i;
                    (best.dequantize_row)(
                        ty,
                        &w[r0 * rb..(r0 + 1) * rb],
                        &mut deq[i * k..(i + 1) * k],
                    );
                }
                gemm_packed(best, &a, BRows::F32(&deq), 0, 256, &mut tile, 256, &mut gs);
            }
        });
        let t_deq = best_of(3, || {
            for (i, row) in w.chunks_exact(rb).enumerate() {
                let j = i % 256;
                (best.dequantize_row)(ty, row, &mut deq[j * k..(j + 1) * k]);
            }
        });
        let gops = 2.0 * (n * m * k) as f64 / 1e9;
        println!(
            "{:8} prefill {n} tokens: gemm_q (vec_dot loop) {:7.2} ms ({:5.1} GOP/s), dequantize + f32 GEMM {:7.2} ms ({:5.1} GOP/s; dequantize alone {:5.2} ms)",
            ty.name(), t_q * 1e3, gops / t_q, t_d * 1e3, gops / t_d, t_deq * 1e3
        );
    }
}
