//! Single-thread GEMM throughput: `cargo run --release -p edgellm-kernels --example gemm_bench`.
use edgellm_kernels::gemm::{gemm_packed, pack_a, BRows, GemmScratch};
use edgellm_kernels::{f16, kernels};
use std::time::Instant;

fn main() {
    let (n, m, k) = (256, 512, 2048);
    let a: Vec<f32> = (0..n * k).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
    let b: Vec<f32> = (0..m * k).map(|i| ((i % 89) as f32 - 44.0) / 89.0).collect();
    let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
    let kern = kernels().unwrap();
    let mut c = vec![0f32; n * m];
    let flops = 2.0 * (n * m * k) as f64;
    for (name, rows) in [("f32", BRows::F32(&b)), ("f16", BRows::F16(&bh))] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let pa = pack_a(&a, n, k);
            gemm_packed(kern.gemm_micro, &pa, rows, 0, m, &mut c, m, &mut GemmScratch::default());
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("packed {name}: {:.1} GFLOP/s", flops / best / 1e9);
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        (kern.matmul_f32)(&a, &b, k, &mut c, m);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("tile 3x4 f32: {:.1} GFLOP/s ({})", flops / best / 1e9, kern.isa.name());
}
