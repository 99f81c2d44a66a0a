//! Single-thread packed-GEMM throughput per instruction set, in GFLOP/s: the
//! micro-kernel alone on L1/L2-resident panels (its compute ceiling), the whole
//! GEMM (`pack_a` + `gemm_packed`) on square f32 products, and a prefill-shaped
//! product with f16 weights larger than the L3 (256 tokens, 2048 → 5632), and
//! `gemm_few` (prompts of 1-16 tokens) on f16 weights streamed from memory. Run with
//! `cargo test --release -p edgellm-kernels --test gemm_bench -- --ignored --nocapture`.

use edgellm_kernels::gemm::{gemm_packed, pack_a, BRows, GemmScratch, KC, MR, NR};
use edgellm_kernels::{f16, Isa, Kernels};
use std::hint::black_box;

mod common;
use common::{best_of, uniform_vec as data};

#[test]
#[ignore]
fn gemm_f32_throughput() {
    for isa in Isa::supported() {
        let k = Kernels::for_isa(isa).unwrap();
        // Micro-kernel: one A panel against 8 B panels (as in gemm_packed), KC deep.
        let ap = data(1, KC * MR);
        let bp = data(2, 8 * KC * NR);
        let mut acc = [0f32; MR * NR];
        let reps = 2000;
        let t = best_of(5, || {
            for _ in 0..reps {
                for q in 0..8 {
                    // SAFETY: full panels and an MR × NR output; the table runs here.
                    unsafe {
                        (k.gemm_micro)(
                            KC,
                            ap.as_ptr(),
                            bp[q * KC * NR..].as_ptr(),
                            acc.as_mut_ptr(),
                            NR,
                            false,
                        )
                    };
                }
                black_box(&acc);
            }
        });
        let micro = 2.0 * (reps * 8 * KC * MR * NR) as f64 / t / 1e9;
        let mut line = format!("{:>7}  micro {micro:6.1}", isa.name());
        // The same on f16 B panels (resident float weights), widened per load.
        if let Some(micro16) = k.gemm_micro_f16 {
            let bp16: Vec<f16> = bp.iter().map(|&v| f16::from_f32(v)).collect();
            let t = best_of(5, || {
                for _ in 0..reps {
                    for q in 0..8 {
                        // SAFETY: as above.
                        unsafe { micro16(KC, ap.as_ptr(), bp16[q * KC * NR..].as_ptr(), acc.as_mut_ptr(), NR, false) };
                    }
                    black_box(&acc);
                }
            });
            line += &format!(" f16 {:6.1}", 2.0 * (reps * 8 * KC * MR * NR) as f64 / t / 1e9);
        }
        for n in [512usize, 1024, 2048] {
            let (a, b) = (data(3, n * n), data(4, n * n));
            let mut c = vec![0f32; n * n];
            let mut s = GemmScratch::default();
            let t = best_of(5, || {
                let pa = pack_a(&a, n, n);
                gemm_packed(k, &pa, BRows::F32(&b), 0, n, &mut c, n, &mut s);
                black_box(&c);
            });
            line += &format!("  n={n} {:6.1}", 2.0 * (n * n * n) as f64 / t / 1e9);
        }
        let (n, kd, m) = (256, 2048, 5632);
        let a = data(5, n * kd);
        let w: Vec<f16> = data(6, m * kd).into_iter().map(f16::from_f32).collect();
        let mut c = vec![0f32; n * m];
        let mut s = GemmScratch::default();
        let pa = pack_a(&a, n, kd);
        let t = best_of(5, || {
            gemm_packed(k, &pa, BRows::F16(&w), 0, m, &mut c, m, &mut s);
            black_box(&c);
        });
        line += &format!(
            "  f16 {n}x{kd}x{m} {:6.1}",
            2.0 * (n * kd * m) as f64 / t / 1e9
        );
        println!("{line}  GFLOP/s");
    }
}

/// `Kernels::gemm_few` on 16384 × 2048 f16 weights (64 MiB, past the caches),
/// single thread: GB/s of weights and GFLOP/s, beside `gemv_f16` (one token).
#[test]
#[ignore]
fn gemm_few_throughput() {
    let (m, k) = (16384usize, 2048usize);
    let w: Vec<f16> = data(7, m * k).into_iter().map(f16::from_f32).collect();
    for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
        let kern = Kernels::for_isa(isa).unwrap();
        let mut y = vec![0f32; m];
        let x1 = data(8, k);
        let t = best_of(3, || {
            (kern.gemv_f16)(&w, &x1, &mut y);
            black_box(&y);
        });
        let mut line = format!("{:>7}  gemv {:5.1} GB/s", isa.name(), (2 * m * k) as f64 / t / 1e9);
        for n in [2usize, 4, 8, 16] {
            let x = data(9, n * k);
            let mut out = vec![0f32; n * m];
            let t = best_of(3, || {
                (kern.gemm_few)(BRows::F16(&w), &x, n, &mut out, m);
                black_box(&out);
            });
            line += &format!(
                "  n={n} {:5.1} GB/s {:5.1} GFLOP/s",
                (2 * m * k) as f64 / t / 1e9,
                (2 * m * k * n) as f64 / t / 1e9
            );
        }
        println!("{line}");
    }
}

/// Float weights in resident panels, single thread, 16384 × 2048 f16 (64 MiB,
/// from memory), GFLOP/s: the row layout's path (`gemm_few` below 9 tokens, the
/// packing GEMM from 9) | `Kernels::gemm_panels` | the packed GEMM reading the
/// panels in place (from 9 tokens).
#[test]
#[ignore]
fn gemm_panels_throughput() {
    use edgellm_kernels::gemm::gemm_panels_raw;
    use edgellm_kernels::panels::{self, Panels, WIDTH};
    let (m, k) = (16384usize, 2048usize);
    let w: Vec<f16> = data(7, m * k).into_iter().map(f16::from_f32).collect();
    let mut p = vec![f16::ZERO; panels::panels_len(m, k).unwrap()];
    for (i, out) in p.chunks_exact_mut(k * WIDTH).enumerate() {
        panels::pack_panel(&w, m, k, i, out);
    }
    for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
        let kern = Kernels::for_isa(isa).unwrap();
        let Some(run) = kern.gemm_panels else { continue };
        println!("{:>7}, GFLOP/s: rows | gemm_panels | GEMM on panels", isa.name());
        for n in [1usize, 2, 4, 8, 16, 32, 64, 128] {
            let x = data(9, n * k);
            let mut out = vec![0f32; n * m];
            let a = pack_a(&x, n, k);
            let mut scratch = GemmScratch::default();
            let gf = |t: f64| (2 * m * k * n) as f64 / t / 1e9;
            let rows = gf(best_of(3, || {
                if n < 9 {
                    (kern.gemm_few)(BRows::F16(&w), &x, n, &mut out, m);
                } else {
                    gemm_packed(kern, &a, BRows::F16(&w), 0, m, &mut out, m, &mut scratch);
                }
                black_box(&out);
            }));
            let few = gf(best_of(3, || {
                run(Panels::F16(&p), m, &x, n, &mut out, m);
                black_box(&out);
            }));
            let mut line = format!("  n={n:3} {rows:5.1} | {few:5.1}");
            if n >= 9 {
                let gemm = gf(best_of(3, || {
                    // SAFETY: `out` holds n rows of m.
                    unsafe { gemm_panels_raw(kern, &a, Panels::F16(&p), m, out.as_mut_ptr(), m) };
                    black_box(&out);
                }));
                line += &format!(" | {gemm:5.1}");
            }
            println!("{line}");
        }
    }
}
