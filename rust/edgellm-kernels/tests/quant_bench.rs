//! Single-thread throughput of `vec_dot` per instruction set, in GB/s of weight
//! bytes: one 4096-element row over and over (hot in L1: the kernel's compute
//! speed), and a 4096 × 4096 matrix-vector product (4.5-18 MB: from L3 on a
//! machine with a large one) as a loop of `vec_dot` and as one `gemv_q` call (the
//! decode path, which prepares the activation once), plus `gemv_q` over 64 rows
//! that stay in L2 (the decode kernel's compute speed). `gemv_q_dram` streams
//! 256 MiB from memory on one and two threads, as decoding does. Run with
//! `cargo test --release -p edgellm-kernels --test quant_bench -- --ignored --nocapture`
//! (`EDGELLM_BENCH_TYPES=q4_0,q8_0` picks types).

use edgellm_kernels::quant::qgemm::QActs;
use edgellm_kernels::quant::{act_row_bytes, quantize_row, resident, GgmlType};
use edgellm_kernels::{Isa, Kernels};
use std::hint::black_box;

mod common;
use common::{best_of, uniform_vec as row};

const K: usize = 4096;
const ROWS: usize = 4096;

/// `rows` quantized rows of `k`: 64 rows quantized from `w_f32`, repeated
/// (quantizing thousands of k-quant rows is slow).
fn weight_rows(ty: GgmlType, k: usize, rows: usize, w_f32: &[f32]) -> Vec<u8> {
    let rb = ty.row_bytes(k).unwrap();
    let mut w = vec![0u8; rb * rows];
    for (r, out) in w.chunks_exact_mut(rb).enumerate().take(64) {
        quantize_row(ty, &w_f32[r * k..(r + 1) * k], out).unwrap();
    }
    for r in 64..rows {
        w.copy_within((r % 64) * rb..(r % 64 + 1) * rb, r * rb);
    }
    w
}

/// `f(rows, outputs)` on two threads, each a contiguous half of the outputs and
/// of the weight rows (`per_row` elements each).
fn on_two_threads<W: Sync>(w: &[W], per_row: usize, y: &mut [f32], f: &(dyn Fn(&[W], &mut [f32]) + Sync)) {
    let half = y.len() / 2;
    let (w0, w1) = w.split_at(half * per_row);
    let (y0, y1) = y.split_at_mut(half);
    std::thread::scope(|s| {
        s.spawn(|| f(w0, y0));
        f(w1, y1);
    });
}

/// [`on_two_threads`] with the outputs taken `piece` at a time, each thread
/// claiming the next piece (and its weight rows) in order.
fn on_two_threads_claimed<W: Sync>(w: &[W], per_row: usize, piece: usize, y: &mut [f32], f: &(dyn Fn(&[W], &mut [f32]) + Sync)) {
    let pieces = std::sync::Mutex::new(w.chunks(piece * per_row).zip(y.chunks_mut(piece)));
    let work = || loop {
        let next = pieces.lock().unwrap().next();
        let Some((w, y)) = next else { break };
        f(w, y);
    };
    std::thread::scope(|s| {
        s.spawn(work);
        work();
    });
}

/// The types of `all` named in `EDGELLM_BENCH_TYPES` (comma-separated), or all.
fn selected<const N: usize>(all: [GgmlType; N]) -> Vec<GgmlType> {
    let names = std::env::var("EDGELLM_BENCH_TYPES").ok();
    all.into_iter().filter(|t| names.as_deref().is_none_or(|v| v.split(',').any(|n| n == t.name()))).collect()
}

#[test]
#[ignore]
fn vec_dot_throughput() {
    use GgmlType::*;
    let x = row(1, K);
    let w_f32 = row(2, 64 * K);
    println!("single thread, k = {K}: GB/s of weight bytes (vec_dot on a hot row in L1 | {ROWS}-row GEMV by vec_dot | by gemv_q | gemv_q on 64 rows in L2 (and on them repacked at load))");
    for ty in selected([Q4_0, Q8_0, Q4K, Q5K, Q6K, Q2K, Q3K, Q4_1, Q5_0, Q5_1, IQ4NL, Q3G128, Q3AG128, Q2G128, Q2AG128]) {
        let (rb, w) = (ty.row_bytes(K).unwrap(), weight_rows(ty, K, ROWS, &w_f32));
        let mut line = format!("{:7}", ty.name());
        for isa in Isa::supported() {
            let k = Kernels::for_isa(isa).unwrap();
            let mut act = vec![0u8; act_row_bytes(ty, K).unwrap()];
            (k.quantize_act)(ty, &x, &mut act);
            let reps = 2000;
            let hot = best_of(5, || {
                for _ in 0..reps {
                    black_box((k.vec_dot)(ty, black_box(&w[..rb]), &act, K));
                }
            });
            let mut y = vec![0f32; ROWS];
            let gemv = best_of(5, || {
                for (r, yr) in y.iter_mut().enumerate() {
                    *yr = (k.vec_dot)(ty, &w[r * rb..(r + 1) * rb], &act, K);
                }
                black_box(&y);
            });
            let gemv_q = best_of(5, || {
                (k.gemv_q)(ty, &w, &act, K, &mut y);
                black_box(&y);
            });
            let hot_reps = 50;
            let gemv_q_hot = best_of(5, || {
                for _ in 0..hot_reps {
                    (k.gemv_q)(ty, black_box(&w[..64 * rb]), &act, K, &mut y[..64]);
                }
                black_box(&y);
            });
            let gbs = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
            line += &format!(
                "  {:>6}: {:6.1} | {:6.1} | {:6.1} | {:6.1}",
                isa.name(),
                gbs(rb * reps, hot),
                gbs(rb * ROWS, gemv),
                gbs(rb * ROWS, gemv_q),
                gbs(64 * rb * hot_reps, gemv_q_hot)
            );
            // The same 64 rows repacked at load, one token.
            if let Some(gemm) = k.resident_gemm(ty) {
                let mut packed = vec![0u8; 64 * rb];
                resident::pack(ty, &w[..64 * rb], K, &mut packed);
                let qa = QActs::new(ty, K, act.clone());
                let t = best_of(5, || {
                    for _ in 0..hot_reps {
                        gemm(ty, black_box(&packed), &qa, &mut y[..64], 64);
                    }
                    black_box(&y);
                });
                line += &format!(" (resident {:6.1})", gbs(64 * rb * hot_reps, t));
            }
        }
        println!("{line}");
    }
    for at in [Q8_0, Q4K] {
        let k = Kernels::for_isa(Isa::best()).unwrap();
        let mut act = vec![0u8; act_row_bytes(at, K).unwrap()];
        let t = best_of(5, || {
            for _ in 0..100 {
                (k.quantize_act)(at, black_box(&x), &mut act);
            }
        }) / 100.0;
        println!("quantize_act to {} of {K} floats: {:.2} µs", edgellm_kernels::quant::vec_dot_type(at).name(), t * 1e6);
    }
}

/// Float decode GEMV (`gemv_f16`), single thread, GB/s of weight bytes: hot in
/// cache (64 rows × 2048, 256 KiB, over and over) and streamed (`16·ROWS` rows,
/// 128 MiB, past the caches like a decode step's layers).
#[test]
#[ignore]
fn float_gemv_throughput() {
    use edgellm_kernels::f16;
    const N: usize = 2048;
    const R: usize = 16 * ROWS;
    let x = row(1, N);
    let w16: Vec<f16> = row(2, N * R).into_iter().map(f16::from_f32).collect();
    println!("single thread gemv_f16, {N} columns: GB/s of weight bytes (64 rows hot | {R} rows streamed)");
    for isa in Isa::supported() {
        let k = Kernels::for_isa(isa).unwrap();
        let mut y = vec![0f32; R];
        let reps = 200;
        let hot = best_of(5, || {
            for _ in 0..reps {
                (k.gemv_f16)(black_box(&w16[..64 * N]), &x, &mut y[..64]);
            }
        });
        let streamed = best_of(5, || {
            (k.gemv_f16)(&w16, &x, &mut y);
            black_box(&y);
        });
        let gbs = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
        println!("  {:>6}: {:6.1} | {:6.1}", isa.name(), gbs(2 * 64 * N * reps, hot), gbs(2 * N * R, streamed));
    }
}

/// Float decode GEMV (`gemv_f16`) streaming 256 MiB of rows from memory, per
/// row length, against one `dot_f16` per row (the GEMV before rows of 4096+
/// went several at a time), on one and two threads (each a contiguous half):
/// GB/s, best of rounds that alternate the two.
#[test]
#[ignore]
fn float_gemv_long_rows() {
    for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
        float_gemv_long_rows_on(Kernels::for_isa(isa).unwrap());
    }
}

fn float_gemv_long_rows_on(k: &Kernels) {
    use edgellm_kernels::f16;
    println!("{}: gemv_f16 from memory, GB/s: k | dot per row t1 t2 | gemv_f16 t1 t2", k.isa.name());
    for n in [2048usize, 4096, 5632, 8192] {
        let rows = (256 << 20) / (2 * n);
        let x = row(1, n);
        let w: Vec<f16> = row(2, 64 * n).into_iter().map(f16::from_f32).cycle().take(rows * n).collect();
        let mut y = vec![0f32; rows];
        let per_row = |w: &[f16], y: &mut [f32]| {
            for (r, yr) in y.iter_mut().enumerate() {
                *yr = (k.dot_f16)(&w[r * n..(r + 1) * n], &x);
            }
        };
        let gemv = |w: &[f16], y: &mut [f32]| (k.gemv_f16)(w, &x, y);
        let two = |f: &(dyn Fn(&[f16], &mut [f32]) + Sync), y: &mut [f32]| on_two_threads(&w, n, y, f);
        let mut best = [0f64; 4];
        for _ in 0..4 {
            let runs: [&dyn Fn(&mut [f32]); 4] =
                [&|y| per_row(&w, y), &|y| two(&per_row, y), &|y| gemv(&w, y), &|y| two(&gemv, y)];
            for (b, run) in best.iter_mut().zip(runs) {
                let t = std::time::Instant::now();
                run(&mut y);
                black_box(&y);
                *b = b.max((2 * rows * n) as f64 / t.elapsed().as_secs_f64() / 1e9);
            }
        }
        println!("  {n:5} | {:5.1} {:5.1} | {:5.1} {:5.1}", best[0], best[1], best[2], best[3]);
    }
}

/// Quantized prompt GEMM (`gemm_q`) of the SIMD paths, single thread, in GOP/s
/// (2·n·m·k): 128 tokens × 2048 weight rows × k = 2048, the weights L2/L3-
/// resident. The paths take turns over several rounds (best of each), so that
/// a noisy machine slows them alike.
#[test]
#[ignore]
fn gemm_q_throughput() {
    use edgellm_kernels::quant::qgemm::{QActs, QGemmScratch};
    use GgmlType::*;
    const N: usize = 128;
    const KD: usize = 2048;
    const M: usize = 2048;
    let x = row(3, N * KD);
    let w_f32 = row(4, 64 * KD);
    println!("single thread gemm_q, {N} tokens x {M} rows x k = {KD}: GOP/s");
    for ty in [Q4_0, Q8_0, Q4K, Q5K, Q6K] {
        let w = weight_rows(ty, KD, M, &w_f32);
        let paths: Vec<(Isa, &Kernels, QActs)> = Isa::supported()
            .into_iter()
            .filter(|&isa| isa != Isa::Scalar)
            .map(|isa| {
                let k = Kernels::for_isa(isa).unwrap();
                let ab = act_row_bytes(ty, KD).unwrap();
                let mut act = vec![0u8; N * ab];
                for (xr, ar) in x.chunks_exact(KD).zip(act.chunks_exact_mut(ab)) {
                    (k.quantize_act)(ty, xr, ar);
                }
                (isa, k, QActs::new(ty, KD, act))
            })
            .collect();
        let mut best = vec![f64::INFINITY; paths.len()];
        let mut out = vec![0f32; N * M];
        let mut s = QGemmScratch::default();
        for _round in 0..3 {
            for (i, (_, k, qa)) in paths.iter().enumerate() {
                best[i] = best[i].min(best_of(3, || {
                    (k.gemm_q)(&w, qa, &mut out, M, &mut s);
                    black_box(&out);
                }));
            }
        }
        let mut line = format!("{:7}", ty.name());
        for ((isa, ..), t) in paths.iter().zip(&best) {
            line += &format!("  {:>6}: {:6.1}", isa.name(), 2.0 * (N * M * KD) as f64 / t / 1e9);
        }
        println!("{line}");
    }
}

/// Decode GEMV (`gemv_q`) streaming weights from DRAM, as in a decode step
/// (256 MiB of rows, past any L3), on one and on two threads (each thread a
/// contiguous half of the rows): GB/s of weight bytes, best of 5.
#[test]
#[ignore]
fn gemv_q_dram() {
    use GgmlType::*;
    let x = row(1, K);
    let w_f32 = row(2, 64 * K);
    println!("gemv_q, k = {K}, 256 MiB of weights: GB/s (1 thread | 2 threads)");
    for ty in selected([Q4_0, Q8_0, Q4K, Q5K, Q6K]) {
        let rb = ty.row_bytes(K).unwrap();
        let rows = (256 << 20) / rb / 16 * 16;
        let w = weight_rows(ty, K, rows, &w_f32);
        let mut line = format!("{:7}", ty.name());
        for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
            let k = Kernels::for_isa(isa).unwrap();
            let mut act = vec![0u8; act_row_bytes(ty, K).unwrap()];
            (k.quantize_act)(ty, &x, &mut act);
            let mut y = vec![0f32; rows];
            let one = best_of(5, || {
                (k.gemv_q)(ty, &w, &act, K, &mut y);
                black_box(&y);
            });
            let two = best_of(5, || {
                on_two_threads(&w, rb, &mut y, &|w, y| (k.gemv_q)(ty, w, &act, K, y));
                black_box(&y);
            });
            let gbs = |t: f64| (rb * rows) as f64 / t / 1e9;
            line += &format!("  {:>6}: {:6.1} | {:6.1}", isa.name(), gbs(one), gbs(two));
            // The same rows repacked at load (`gemm_q_resident`), one token.
            if let Some(gemm) = k.resident_gemm(ty) {
                let mut packed = vec![0u8; w.len()];
                resident::pack(ty, &w, K, &mut packed);
                let qa = QActs::new(ty, K, act.clone());
                let one = best_of(5, || {
                    gemm(ty, &packed, &qa, &mut y, rows);
                    black_box(&y);
                });
                let two = best_of(5, || {
                    on_two_threads(&packed, rb, &mut y, &|w, y| gemm(ty, w, &qa, y, y.len()));
                    black_box(&y);
                });
                // Two threads claiming 1 MiB pieces in order (as the model's pool does).
                let claimed = best_of(5, || {
                    on_two_threads_claimed(&packed, rb, (1 << 20) / (8 * rb) * 8, &mut y, &|w, y| gemm(ty, w, &qa, y, y.len()));
                    black_box(&y);
                });
                line += &format!(" (resident {:6.1} | {:6.1} | claimed {:6.1})", gbs(one), gbs(two), gbs(claimed));
            }
        }
        println!("{line}");
    }
}
