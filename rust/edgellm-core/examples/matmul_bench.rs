//! `edgellm.ops.matmul` without Python: f32 `A @ B` on square `n × n` operands
//! through the pool, best and median of `reps` calls, for tuning the parallel
//! split. `cargo run --release -p edgellm-core --example matmul_bench -- [threads]
//! [n,n,...] [reps]` (defaults: 2 threads, 512,1024,2048, 20 repetitions).
use edgellm_core::ops::matmul::matmul_f32;
use std::time::Instant;

// As in the Python extension: freed pages are reused, not faulted in again per call.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let sizes: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![512, 1024, 2048]);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20);
    for n in sizes {
        let mut s = 7u32;
        let mut rnd = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let a: Vec<f32> = (0..n * n).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..n * n).map(|_| rnd()).collect();
        let run = || matmul_f32(&a, n, n, &b, n, Some(threads), None).expect("matmul");
        drop(run());
        let mut t: Vec<f64> = (0..reps)
            .map(|_| {
                let s = Instant::now();
                drop(std::hint::black_box(run()));
                s.elapsed().as_secs_f64()
            })
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        let gf = |s: f64| 2.0 * (n as f64).powi(3) / s / 1e9;
        println!("n={n} threads={threads}: best {:.1} GFLOP/s, median {:.1}", gf(t[0]), gf(t[reps / 2]));
    }
}
