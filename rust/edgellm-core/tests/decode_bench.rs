//! Decode-step linear layers of a TinyLlama-1.1B-shape model (22 layers, hidden
//! 2048, 4 KV heads of 64, FFN 5632) from memory, as the transformer calls them:
//! GB/s of weights read per op kind and over a whole step. Each repetition first
//! reads as many plain bytes in the same op sequence (16 claimed items per op,
//! on the same pool): the step's bound on this machine at this minute, which
//! the bandwidth probe (one large read) overstates. It then reads them in a
//! single op, which shows what splitting a step into ops costs. A benchmark,
//! not a test:
//! `EDGELLM_BENCH_TYPE=q4_0 cargo test --release -p edgellm-core --test decode_bench -- --ignored --nocapture`
//! (type: any weight type, e.g. q4_0, q8_0, q4_K, q6_K, f16, f32;
//! `EDGELLM_BENCH_THREADS`, default 2).

use edgellm_core::ops::bandwidth::read_bandwidth;
use edgellm_core::ops::linear::quantize_tensor;
use edgellm_core::ops::Linear;
use edgellm_core::rng::Rng;
use edgellm_core::tensor::{DType, Tensor};
use edgellm_kernels::quant::GgmlType;
use edgellm_kernels::Kernels;
use std::time::Instant;

const LAYERS: usize = 22;
const HIDDEN: usize = 2048;
const KV: usize = 256;
const FFN: usize = 5632;

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// One random matrix per shape, quantized once; its bytes copied into every layer.
fn make(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Tensor {
    let mut r = Rng::new(seed);
    let vals: Vec<f32> = (0..rows * cols).map(|_| (2.0 * r.next_f64() - 1.0) as f32 * 0.05).collect();
    let t = Tensor::from_f32(&vals, vec![rows, cols]).unwrap();
    match ty {
        GgmlType::F32 => t,
        GgmlType::F16 => {
            let b: Vec<u8> = vals.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
            Tensor::from_bytes(&b, DType::F16, vec![rows, cols]).unwrap()
        }
        q => quantize_tensor(&t, q).unwrap(),
    }
}

fn linear(t: &Tensor, k: &Kernels) -> Linear {
    let mut l = Linear::new(Tensor::from_bytes(t.as_bytes(), t.dtype(), t.shape().to_vec()).unwrap(), None);
    l.make_resident(k);
    l
}

#[test]
#[ignore]
fn decode_linears_throughput() {
    let name = std::env::var("EDGELLM_BENCH_TYPE").unwrap_or_else(|_| "q4_0".into());
    let ty = GgmlType::from_name(&name).unwrap_or_else(|| panic!("EDGELLM_BENCH_TYPE: unknown type {name}"));
    let threads: usize = std::env::var("EDGELLM_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let k = edgellm_kernels::kernels().unwrap();
    let pool = edgellm_core::pool::Pool::new(threads).unwrap();
    let shapes = [(HIDDEN, HIDDEN), (KV, HIDDEN), (FFN, HIDDEN), (HIDDEN, FFN)];
    let protos: Vec<Tensor> = shapes.iter().enumerate().map(|(i, &(r, c))| make(ty, r, c, i as u64)).collect();
    let layers: Vec<Layer> = pool.install(|| {
        (0..LAYERS)
            .map(|_| Layer {
                q: linear(&protos[0], k),
                k: linear(&protos[1], k),
                v: linear(&protos[1], k),
                o: linear(&protos[0], k),
                gate: linear(&protos[2], k),
                up: linear(&protos[2], k),
                down: linear(&protos[3], k),
            })
            .collect()
    });
    let bytes = |t: &Tensor| t.as_bytes().len() as f64;
    let (b_qkv, b_o) = (bytes(&protos[0]) + 2.0 * bytes(&protos[1]), bytes(&protos[0]));
    let (b_gu, b_down) = (2.0 * bytes(&protos[2]), bytes(&protos[3]));
    let x = vec![0.01f32; FFN];
    let (mut q, mut kk, mut v) = (vec![0f32; HIDDEN], vec![0f32; KV], vec![0f32; KV]);
    let (mut o, mut g, mut u, mut d) = (vec![0f32; HIDDEN], vec![0f32; FFN], vec![0f32; FFN], vec![0f32; HIDDEN]);
    // As many bytes as plain buffers, read in the same op sequence.
    let bufs: Vec<Vec<Vec<u64>>> = (0..LAYERS)
        .map(|_| [b_qkv, b_o, b_gu, b_down].iter().map(|&b| vec![1u64; b as usize / 8]).collect())
        .collect();
    // The same bytes again, in one op of as many items: what the op structure
    // (a pool dispatch and a join per op, each op's streams starting cold) costs.
    let whole: Vec<u64> = vec![1u64; bufs.iter().flatten().map(Vec::len).sum()];
    // GB/s of each op kind (q/k/v, o, gate/up, down) from its summed seconds.
    let per_kind = |secs: &[f64; 4]| {
        let gbs = |b: f64, t: f64| LAYERS as f64 * b / t / 1e9;
        let (qkv, o) = (gbs(b_qkv, secs[0]), gbs(b_o, secs[1]));
        format!("qkv {qkv:.1} o {o:.1} gate/up {:.1} down {:.1}", gbs(b_gu, secs[2]), gbs(b_down, secs[3]))
    };
    let sink = std::sync::atomic::AtomicU64::new(0);
    // Sums `b` in `items` claimed pieces on the pool.
    let read = |b: &[u64], items: usize| {
        let chunk = b.len().div_ceil(items);
        let next = std::sync::atomic::AtomicUsize::new(0);
        edgellm_core::pool::broadcast(threads, |_| loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= items {
                break;
            }
            let c = &b[(i * chunk).min(b.len())..((i + 1) * chunk).min(b.len())];
            let mut acc = [0u64; 8];
            for w in c.chunks_exact(8) {
                for (a, v) in acc.iter_mut().zip(w) {
                    *a = a.wrapping_add(*v);
                }
            }
            sink.fetch_add(acc.iter().sum::<u64>(), std::sync::atomic::Ordering::Relaxed);
        });
    };
    // Weight bytes of one step's linear layers.
    let all = LAYERS as f64 * (b_qkv + b_o + b_gu + b_down);
    let stream = |rep: usize| {
        let mut kinds = [0f64; 4];
        let t = Instant::now();
        pool.install(|| {
            for layer in &bufs {
                for (kind, b) in layer.iter().enumerate() {
                    let t = Instant::now();
                    read(b, 16);
                    kinds[kind] += t.elapsed().as_secs_f64();
                }
            }
        });
        let ops = t.elapsed().as_secs_f64();
        let t = Instant::now();
        pool.install(|| read(&whole, 16 * 4 * LAYERS));
        let one = t.elapsed().as_secs_f64();
        println!(
            "stream rep {rep}: {} ops {:.2} ms {:.1} GB/s ({}) | one op {:.2} ms {:.1} GB/s",
            4 * LAYERS,
            ops * 1e3,
            all / ops / 1e9,
            per_kind(&kinds),
            one * 1e3,
            all / one / 1e9
        );
    };
    println!("{} threads, {}, isa {}", threads, ty.name(), k.isa.name());
    for rep in 0..8 {
        stream(rep);
        let mut times = [0f64; 4];
        let total = Instant::now();
        pool.install(|| {
            for l in &layers {
                let t = Instant::now();
                Linear::forward_group(k, &x[..HIDDEN], &mut [(&l.q, &mut q[..]), (&l.k, &mut kk[..]), (&l.v, &mut v[..])]);
                times[0] += t.elapsed().as_secs_f64();
                let t = Instant::now();
                l.o.forward(k, &x[..HIDDEN], &mut o);
                times[1] += t.elapsed().as_secs_f64();
                let t = Instant::now();
                Linear::forward_group(k, &x[..HIDDEN], &mut [(&l.up, &mut u[..]), (&l.gate, &mut g[..])]);
                times[2] += t.elapsed().as_secs_f64();
                let t = Instant::now();
                l.down.forward(k, &x, &mut d);
                times[3] += t.elapsed().as_secs_f64();
            }
        });
        let step = total.elapsed().as_secs_f64();
        println!("rep {rep}: step {:.2} ms {:.1} GB/s | {} GB/s", step * 1e3, all / step / 1e9, per_kind(&times));
    }
    println!("probe {:.1} GB/s", read_bandwidth(1024, 5, Some(threads)).unwrap());
}
