//! Prefill matrix products of quantized weights, TinyLlama-1.1B shapes: the
//! integer multi-row GEMM (`Linear::forward`, activations quantized to int8
//! blocks) against the previous path (`Linear::forward_dequantized`: weights
//! dequantized to f32, packed f32 GEMM). Median of repeated runs, and the
//! matmul-only prompt tokens/s of a 22-layer model (q, k, v, o, gate, up, down).
//! On a shared machine, prefer the best time (also printed) or count cycles with
//! `perf stat` and the `old` / `new` mode, which runs one path only. Mode
//! `resident` compares the weights in the file's layout (old: `gemm_q`, packing
//! panels per call) with the same weights repacked at load (new).
//!
//! `cargo run --release -p edgellm-core --example prefill_bench -- [threads] [tokens] [reps] [types] [both|old|new|resident]`
//! (defaults: 2 threads, 512 tokens, 5 repetitions, `q4_0,q8_0,q4_K,q6_K`, both).
use edgellm_core::ops::Linear;
use edgellm_core::tensor::Tensor;
use edgellm_kernels::quant::GgmlType;
use std::time::Instant;

fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 0.05
        })
        .collect()
}

/// (median, best) of `v`.
fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let types: Vec<GgmlType> = args
        .get(4)
        .map(|s| s.as_str())
        .unwrap_or("q4_0,q8_0,q4_K,q6_K")
        .split(',')
        .map(|name| GgmlType::from_name(name).expect("unknown type"))
        .collect();
    let mode = args.get(5).map(|s| s.as_str()).unwrap_or("both");
    let (run_old, run_new) = (mode != "new", mode != "old");
    let resident = mode == "resident";
    let k = edgellm_kernels::kernels().unwrap();
    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
    // (rows, cols, uses per layer)
    let shapes = [(2048usize, 2048usize, 2usize), (256, 2048, 2), (5632, 2048, 2), (2048, 5632, 1)];
    println!("isa {}, {threads} threads, {n} tokens, median of {reps}", k.isa.name());
    for ty in types {
        let (mut layer_old, mut layer_new, mut best_old, mut best_new) = (0f64, 0f64, 0f64, 0f64);
        for (si, &(m, kd, uses)) in shapes.iter().enumerate() {
            let w = Tensor::from_f32(&rand_vec(si as u64 + 1, m * kd), vec![m, kd]).unwrap();
            let lin = pool.install(|| Linear::new(w, None).quantized(ty).unwrap());
            let mut packed = lin.clone();
            if resident {
                assert!(pool.install(|| packed.make_resident(k)), "{} has no resident kernel here", ty.name());
            }
            let x = rand_vec(100 + si as u64, n * kd);
            let mut y_old = vec![0f32; n * m];
            let mut y_new = vec![0f32; n * m];
            let time = |run: bool, f: &mut dyn FnMut()| {
                if !run {
                    return (f64::NAN, f64::NAN);
                }
                f();
                stats((0..reps).map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                }).collect())
            };
            let (t_old, b_old) = match resident {
                true => time(run_old, &mut || pool.install(|| lin.forward(k, &x, &mut y_old))),
                false => time(run_old, &mut || pool.install(|| lin.forward_dequantized(k, &x, &mut y_old))),
            };
            let (t_new, b_new) = time(run_new, &mut || pool.install(|| packed.forward(k, &x, &mut y_new)));
            let scale = y_old.iter().fold(0f32, |a, v| a.max(v.abs()));
            let diff = y_old.iter().zip(&y_new).fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            let gops = 2.0 * (n * m * kd) as f64 / 1e9;
            println!(
                "{:5} {m:5}x{kd:<5}  old {:7.2} ms ({:5.1} GOP/s, best {:5.1})  new {:7.2} ms ({:5.1} GOP/s, best {:5.1})  x{:.2} (best x{:.2})  max|diff|/max|y| {:.1e}",
                ty.name(),
                t_old * 1e3,
                gops / t_old,
                gops / b_old,
                t_new * 1e3,
                gops / t_new,
                gops / b_new,
                t_old / t_new,
                b_old / b_new,
                diff / scale
            );
            layer_old += uses as f64 * t_old;
            layer_new += uses as f64 * t_new;
            best_old += uses as f64 * b_old;
            best_new += uses as f64 * b_new;
        }
        println!(
            "{:5} 22-layer matmuls, pp{n}: old {:.1} tok/s, new {:.1} tok/s (x{:.2}); best times: old {:.1}, new {:.1} (x{:.2})",
            ty.name(),
            n as f64 / (22.0 * layer_old),
            n as f64 / (22.0 * layer_new),
            layer_old / layer_new,
            n as f64 / (22.0 * best_old),
            n as f64 / (22.0 * best_new),
            best_old / best_new
        );
    }
}
