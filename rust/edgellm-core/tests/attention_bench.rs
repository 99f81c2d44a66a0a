//! Timing of flash attention, with and without the per-key mass (not a correctness
//! test). Run with
//! `cargo test --release -p edgellm-core --test attention_bench -- --ignored --nocapture`
//! (`ATTN_BENCH=decode` keeps the cases whose name contains "decode").

mod attention_util;

use attention_util::Rng;
use attention_util::*;
use edgellm_core::attention::flash::flash_attend;
use std::time::Instant;

/// CPU time of the calling thread in ns, where the platform has it.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_ns() -> Option<u64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    (unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0)
        .then(|| ts.sec as u64 * 1_000_000_000 + ts.nsec as u64)
}
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// Best of `reps` runs, in milliseconds: CPU time of the calling thread when
/// `cpu` (a one-thread pool runs everything there; the machine may be shared),
/// wall-clock time otherwise.
fn best_ms(reps: usize, cpu: bool, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let (t, c) = (Instant::now(), thread_cpu_ns());
            f();
            match (cpu, c, thread_cpu_ns()) {
                (true, Some(a), Some(b)) => (b - a) as f64 / 1e6,
                _ => t.elapsed().as_secs_f64() * 1e3,
            }
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore]
fn flash_vs_attend_timing() {
    let k = edgellm_kernels::kernels().unwrap();
    let (nh, hd) = (32, 64);
    println!("isa {:?}; best of several runs, ms (1 thread: thread CPU time; 2 threads: wall time)", k.isa);
    println!("{:<34} {:>8} {:>10} {:>14}", "case", "threads", "flash", "flash+mass");
    for (name, nkv, pos0, n, reps) in [
        ("prefill 512, MHA 32/32", 32, 0, 512, 5),
        ("prefill 512, GQA 32/8", 8, 0, 512, 5),
        ("decode @4096, MHA 32/32", 32, 4095, 1, 30),
        ("decode @4096, GQA 32/8", 8, 4095, 1, 30),
    ] {
        if !name.contains(std::env::var("ATTN_BENCH").as_deref().unwrap_or("")) {
            continue; // e.g. ATTN_BENCH=decode
        }
        let mut rng = Rng(1);
        let len = pos0 + n;
        let kk = rng.vec(len * nkv * hd, 1.0);
        let vv = rng.vec(len * nkv * hd, 1.0);
        let q = rng.vec(n * nh * hd, 1.0);
        let cache = cache_with(nkv, hd, &kk, &vv);
        let p = params(nh, nkv, hd, 1.0 / (hd as f32).sqrt(), None, None);
        let mut out = vec![0f32; q.len()];
        let mut mass = vec![0f32; len];
        for pool in pools() {
            let cpu = pool.threads() == 1;
            let tf = pool.install(|| best_ms(reps, cpu, || flash_attend(k, &p, &cache, 0, pos0, &q, &mut out, None)));
            let tm = pool
                .install(|| best_ms(reps, cpu, || flash_attend(k, &p, &cache, 0, pos0, &q, &mut out, Some(&mut mass))));
            println!("{name:<34} {:>8} {tf:>10.3} {tm:>14.3}", pool.threads());
        }
    }
}
