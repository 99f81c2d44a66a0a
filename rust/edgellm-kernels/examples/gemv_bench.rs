//! Single-thread decode GEMV throughput per weight type, for a cache-resident
//! matrix (the kernel's compute ceiling) and a DRAM-sized one (its streaming rate):
//! `cargo run --release -p edgellm-kernels --example gemv_bench [types...]`.
use edgellm_kernels::quant::{act_row_bytes, quantize_row, GgmlType};
use edgellm_kernels::kernels;
use std::time::Instant;

fn main() {
    let k = kernels().unwrap();
    let names: Vec<String> = std::env::args().skip(1).collect();
    let types = [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
    let n = 2048usize;
    let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    for ty in types {
        if !names.is_empty() && !names.iter().any(|s| s == ty.name()) {
            continue;
        }
        let rb = ty.row_bytes(n).unwrap();
        let mut act = vec![0u8; act_row_bytes(ty, n).unwrap()];
        (k.quantize_act)(ty, &x, &mut act);
        for (label, rows) in [("L2", 256usize), ("DRAM", 96 * 1024)] {
            let w_f: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0).collect();
            let mut row = vec![0u8; rb];
            quantize_row(ty, &w_f, &mut row).unwrap();
            let w: Vec<u8> = row.iter().copied().cycle().take(rb * rows).collect();
            let mut out = vec![0f32; rows];
            let reps = if rows < 1024 { 200 } else { 3 };
            // Interleaved repetitions of the row-by-row `vec_dot` loop and `gemv_q`,
            // so both see the same machine load.
            let (mut best_dot, mut best_gemv) = (f64::MAX, f64::MAX);
            let mut out2 = vec![0f32; rows];
            for _ in 0..reps {
                let t = Instant::now();
                for (r, o) in out.iter_mut().enumerate() {
                    *o = (k.vec_dot)(ty, &w[r * rb..(r + 1) * rb], &act, n);
                }
                best_dot = best_dot.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                (k.gemv_q)(ty, &w, &act, n, &mut out2);
                best_gemv = best_gemv.min(t.elapsed().as_secs_f64());
            }
            std::hint::black_box((&out, &out2));
            let bytes = (rb * rows) as f64;
            for (how, best) in [("vec_dot", best_dot), ("gemv_q", best_gemv)] {
                println!(
                    "{:6} {:5} {:8}: {:6.1} GB/s  {:6.2} Gweights/s  ({})",
                    ty.name(),
                    label,
                    how,
                    bytes / best / 1e9,
                    (n * rows) as f64 / best / 1e9,
                    k.isa.name()
                );
            }
        }
    }
}
