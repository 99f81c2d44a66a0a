//! Single-thread f32 GEMM speed of one kernel table, for tuning the micro-kernel
//! without the pool or Python: `cargo run --release -p edgellm-kernels --example
//! gemm_bench [n] [reps]` (`EDGELLM_ISA` picks the table). Prints GFLOP/s, best of
//! `reps` calls on square `n × n` operands.
use edgellm_kernels::gemm::{gemm_packed, pack_a, BRows, GemmScratch};
use std::time::Instant;

fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, reps) = (arg(1, 1024), arg(2, 10));
    let kern = edgellm_kernels::kernels().expect("no kernel table");
    let mut s = 1u32;
    let mut rnd = || {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    let a: Vec<f32> = (0..n * n).map(|_| rnd()).collect();
    let b: Vec<f32> = (0..n * n).map(|_| rnd()).collect();
    let mut c = vec![0f32; n * n];
    let mut scratch = GemmScratch::default();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let pa = pack_a(&a, n, n);
        gemm_packed(kern, &pa, BRows::F32Cols { data: &b, ld: n }, 0, n, &mut c, n, &mut scratch);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("{:?} n={n}: {:.1} GFLOP/s", kern.isa, 2.0 * (n as f64).powi(3) / best / 1e9);
}
