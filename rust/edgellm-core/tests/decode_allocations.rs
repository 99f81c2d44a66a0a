//! A decode step allocates nothing once warm: the forward pass of one token
//! (embedding, every layer's fused GEMVs, RoPE, attention, the logits) reuses
//! the buffers of the steps before it. Counted by a global allocator that
//! counts every allocation on every thread (the pool's workers included) while
//! a step runs; steps in which the KV cache grew its storage (a block at a
//! time) are the only ones allowed to allocate.
//!
//! The calling thread runs a part of every parallel loop, so it must allocate
//! nothing at all. A pool worker may allocate its own buffers where it first
//! takes a kind of task, and when that happens depends on the scheduler: on a
//! loaded machine the caller claimed every GEMV chunk for 35 steps while the
//! worker waited for a core. Workers may therefore allocate in a few steps
//! ([`WORKER_FIRST_USES`]), not in most: a buffer not kept allocates anew in
//! every step it is used.
//!
//! Every kernel path the machine has; the file's f16 weights and weights
//! quantized at load, in the row layout and repacked into resident panels; one
//! and two threads; long contexts; packed KV stores, windows and StreamingLLM.
//!
//! One test in this file, so no other test allocates while counting.
//! `EDGELLM_ALLOC_TRACE=1` adds the backtrace of a failing step's first
//! allocation to the message (build with debug line tables to read it:
//! `CARGO_PROFILE_RELEASE_DEBUG=1`).

use edgellm_core::kv_cache::{Budget, Eviction, KvCache, KvConfig, KvQuant};
use edgellm_core::model::{LoadOptions, LogitsRows, Model, Repack};
use edgellm_kernels::quant::GgmlType;
use edgellm_kernels::Isa;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Allocations of the step on the calling thread, and on every other thread.
static COUNT: AtomicUsize = AtomicUsize::new(0);
static WORKER_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Counted steps in which pool workers may allocate (first uses of their buffers).
const WORKER_FIRST_USES: usize = 4;
/// Keep the backtrace of the step's first allocation, for the failure message.
static TRACE: AtomicBool = AtomicBool::new(false);
static FIRST: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

thread_local! {
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
    /// The thread that runs the steps.
    static CALLER: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    if !CALLER.try_with(Cell::get).unwrap_or(false) {
        WORKER_COUNT.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if COUNT.fetch_add(1, Ordering::Relaxed) == 0 && TRACE.load(Ordering::Relaxed) {
        // The backtrace allocates: not counted, not traced again.
        let _ = IN_TRACE.try_with(|t| {
            if !t.replace(true) {
                COUNTING.store(false, Ordering::SeqCst);
                let trace = std::backtrace::Backtrace::force_capture().to_string();
                *FIRST.lock().unwrap() = trace;
                COUNTING.store(true, Ordering::SeqCst);
                t.set(false);
            }
        });
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        note();
        System.realloc(p, l, size)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../python/edgellm/models/default")
}

/// Allocations made by one decode step of `tok` (on the calling thread, on
/// the pool's workers), with the logits into `logits`; `trace`: a step that
/// must not allocate.
fn counted_step(m: &Model, cache: &mut KvCache, tok: u32, logits: &mut Vec<f32>, trace: bool) -> (usize, usize) {
    CALLER.with(|c| c.set(true));
    TRACE.store(trace && std::env::var_os("EDGELLM_ALLOC_TRACE").is_some(), Ordering::SeqCst);
    FIRST.lock().unwrap().clear();
    COUNT.store(0, Ordering::SeqCst);
    WORKER_COUNT.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    m.forward_into(&[tok], cache, LogitsRows::Last, logits).unwrap();
    COUNTING.store(false, Ordering::SeqCst);
    (COUNT.load(Ordering::SeqCst), WORKER_COUNT.load(Ordering::SeqCst))
}

/// Decodes 40 tokens after a `prompt`-token prompt, checking the steps in
/// which the cache kept its storage.
fn check(isa: Isa, ty: Option<GgmlType>, threads: usize, repack: Repack, prompt: usize, kv_cache: KvConfig) {
    let opts = LoadOptions { threads: Some(threads), isa: Some(isa), quant: ty, repack, kv_cache: kv_cache.clone(), ..Default::default() };
    let m = Model::load(&default_model(), &opts).unwrap();
    let vocab = m.config.vocab_size as u32;
    let what = format!("{} {} {repack:?}, {threads} threads, {prompt}-token prompt, {kv_cache:?}", isa.name(), ty.map_or("file weights", |t| t.name()));
    let mut cache = m.new_cache();
    let mut logits = Vec::new();
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    m.forward_into(&ids, &mut cache, LogitsRows::Last, &mut logits).unwrap();
    let (mut steps, mut worker_steps) = (0, Vec::new());
    for i in 0..40u32 {
        let bytes = cache.bytes();
        // The first steps size the buffers.
        let (n, workers) = counted_step(&m, &mut cache, (i * 37 + 11) % vocab, &mut logits, i >= 2);
        assert!(logits.iter().all(|v| v.is_finite()), "{what}: non-finite logits");
        // A grown cache allocates.
        if i < 2 || cache.bytes() != bytes {
            continue;
        }
        assert_eq!(n, 0, "{what}: decode step {i} made {n} allocations on the calling thread; the first:\n{}", FIRST.lock().unwrap());
        if workers > 0 {
            worker_steps.push((i, workers));
        }
        steps += 1;
    }
    assert!(steps >= 30, "{what}: too few steps without cache growth ({steps})");
    assert!(
        worker_steps.len() <= WORKER_FIRST_USES,
        "{what}: pool workers allocated in {} steps (step, allocations): {worker_steps:?}",
        worker_steps.len()
    );
}

#[test]
fn a_warm_decode_step_allocates_nothing() {
    let types: [Option<GgmlType>; 4] = [None, Some(GgmlType::Q4_0), Some(GgmlType::Q8_0), Some(GgmlType::Q4K)];
    if std::env::var_os("EDGELLM_ALLOC_SIMD_ONLY").is_some() {
        // Under an emulator (scripts/test-aarch64.sh), where the whole matrix
        // takes ten minutes: each SIMD table, each weight type, repacked, on two
        // threads.
        for isa in Isa::supported().into_iter().filter(|&i| i != Isa::Scalar) {
            for ty in types {
                check(isa, ty, 2, Repack::All, 7, KvConfig::default());
            }
        }
        return;
    }
    for isa in Isa::supported() {
        for ty in types {
            for (threads, repack) in [(1, Repack::Auto), (2, Repack::Auto), (2, Repack::All), (2, Repack::Off)] {
                check(isa, ty, threads, repack, 7, KvConfig::default());
            }
        }
        // Past 512 keys attention splits them into chunks (flash-decoding).
        check(isa, Some(GgmlType::Q4_0), 2, Repack::All, 600, KvConfig::default());
        // Packed KV stores (decoded a block at a time into the task scratch),
        // a sliding window (the store reuses its ring) and StreamingLLM.
        for (eviction, quant) in [
            (Eviction::Full, KvQuant::F16),
            (Eviction::Full, KvQuant::Int8),
            (Eviction::Full, KvQuant::Kivi { bits: 2, group_size: 32, residual: 32 }),
            (Eviction::Window { size: 24 }, KvQuant::F32),
        ] {
            check(isa, Some(GgmlType::Q4_0), 2, Repack::Auto, 7, KvConfig { eviction, quant, select_blocks: None });
        }
        // StreamingLLM past its window (sinks rotated at every step).
        let streaming = KvConfig { eviction: Eviction::Streaming { sinks: 4, window: 20 }, quant: KvQuant::F32, select_blocks: None };
        check(isa, Some(GgmlType::Q4_0), 2, Repack::Auto, 30, streaming);
        // H2O past its budget (the key-mass pass and an eviction at every step).
        let h2o = KvConfig { eviction: Eviction::H2o { budget: Budget::Tokens(24), recent: 8 }, quant: KvQuant::F32, select_blocks: None };
        check(isa, Some(GgmlType::Q4_0), 2, Repack::Auto, 30, h2o);
        // Query-aware block selection over a long cache (4 of its 10 blocks).
        let select = KvConfig { select_blocks: Some(4), ..KvConfig::default() };
        check(isa, Some(GgmlType::Q4_0), 2, Repack::Auto, 600, select);
    }
}
