//! The worker pool every parallel loop of the engine runs on.
//!
//! A decode step is about a hundred short parallel ops (the GEMVs of every
//! layer, attention), each tens to hundreds of microseconds of streaming. A
//! general work-stealing pool (rayon, used before) has its idle threads yield
//! and sleep between them, and each op then waits for a thread to come back:
//! a futex wake, and on a VM an interrupt into a halted vCPU. On a 2-core
//! Zen 4 VM, TinyLlama q4_0 decode went from 28.7-36.5 to 36.8-51.3 tok/s
//! (alternating processes) with this pool.
//!
//! So this pool is built for that pattern: `threads - 1` persistent workers
//! plus the calling thread, which takes part in every job. A job is broadcast
//! to all of them by bumping an epoch counter. Idle workers spin on it for
//! `SPIN` (2 ms) before parking on a condition variable, so the ops of a step (and
//! consecutive steps) find them awake, while an idle process does not burn CPU.
//!
//! One job runs at a time per pool; models with the same thread count share a
//! pool ([`Pool::shared`]), so a draft and a target model do not spin against
//! each other. Parallel calls made inside a job run serially on the thread
//! that makes them. A panic in a job (on any thread) is re-raised on the
//! caller after every thread has left the job.

use crate::{Error, Result};
use std::any::Any;
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker waits for the next job awake before parking: longer
/// than the gaps between the ops of a decode step and between steps (sampling,
/// the Python side), short enough not to matter to an idle process.
const SPIN: Duration = Duration::from_millis(2);

/// Rounds of 64 spins before a waiting thread starts yielding its core
/// (a few microseconds).
const SPIN_ROUNDS: u32 = 16;

/// A job as the workers see it: `f(thread index)`, on the dispatcher's stack.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
}

struct Shared {
    threads: usize,
    /// The process that started the workers: a forked child has none of them.
    pid: u32,
    /// Bumped once per job; workers run the job when it moves.
    epoch: AtomicUsize,
    /// The current job, valid while `pending > 0` (set before the epoch moves).
    job: AtomicPtr<Job<'static>>,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    shutdown: AtomicBool,
    /// Workers parked on `wake`.
    sleeping: Mutex<usize>,
    wake: Condvar,
    /// Held while a job runs: one job at a time.
    busy: Mutex<()>,
    /// The first panic a worker hit in the current job.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// A fixed set of worker threads (see the module docs).
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The pool [`Pool::install`] made current on this thread.
    static CURRENT: Cell<*const Shared> = const { Cell::new(std::ptr::null()) };
    /// Whether this thread is running a job (nested parallel calls run serially).
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves nothing half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// A pool of `threads` threads in all: the caller of a job and
    /// `threads - 1` workers.
    pub fn new(threads: usize) -> Result<Pool> {
        if threads == 0 {
            return Err(Error::arg("threads must be at least 1"));
        }
        let shared = Arc::new(Shared {
            threads,
            pid: std::process::id(),
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            busy: Mutex::new(()),
            panic: Mutex::new(None),
        });
        let mut pool = Pool { shared: shared.clone(), workers: Vec::new() };
        for i in 1..threads {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("edgellm-{i}"))
                .spawn(move || s.work(i))
                .map_err(|e| Error::arg(format!("cannot start {threads} threads: {e}")))?;
            // On an error the pool built so far is dropped, which stops these.
            pool.workers.push(h);
        }
        Ok(pool)
    }

    /// The process-wide pool of `threads` threads (default: the machine's
    /// parallelism), started on first use and kept: models and calls with the
    /// same thread count share it.
    pub fn shared(threads: Option<usize>) -> Result<Arc<Pool>> {
        static POOLS: OnceLock<Mutex<HashMap<usize, Arc<Pool>>>> = OnceLock::new();
        // Zero is refused by `Pool::new`.
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut pools = lock(POOLS.get_or_init(Default::default));
        if let Some(p) = pools.get(&threads) {
            return Ok(p.clone());
        }
        let p = Arc::new(Pool::new(threads)?);
        pools.insert(threads, p.clone());
        Ok(p)
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` on the calling thread with this pool current: the parallel
    /// loops it makes run on this pool's threads.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Shared);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(Arc::as_ptr(&self.shared))));
        f()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.shared.pid != std::process::id() {
            // A forked child: the workers are the parent's threads.
            return;
        }
        {
            let _g = lock(&self.shared.sleeping);
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Shared {
    /// A worker's life: wait for the next job, run it as thread `index`.
    fn work(&self, index: usize) {
        IN_JOB.with(|c| c.set(true));
        let mut seen = 0;
        while let Some(epoch) = self.next_job(seen) {
            seen = epoch;
            // SAFETY: the dispatcher set `job` before moving the epoch and keeps
            // it alive until `pending` reaches zero, which this worker's
            // decrement below is part of.
            let job = unsafe { &*self.job.load(Ordering::Acquire) };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (job.f)(index))) {
                lock(&self.panic).get_or_insert(p);
            }
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The epoch of the next job after `seen`: spinning briefly, then
    /// yielding between checks until [`SPIN`] has passed, then parked; `None`
    /// once the pool shuts down.
    fn next_job(&self, seen: usize) -> Option<usize> {
        let start = Instant::now();
        for round in 0u32.. {
            for _ in 0..64 {
                let e = self.epoch.load(Ordering::Acquire);
                if self.shutdown.load(Ordering::Relaxed) {
                    return None;
                }
                if e != seen {
                    return Some(e);
                }
                std::hint::spin_loop();
            }
            if round >= SPIN_ROUNDS {
                // Lets a thread with work run on this core when there are
                // more threads than cores (a pure spin held the core: 2 tok/s
                // instead of 34 with 4 threads on 2 cores); returns at once
                // when there is none.
                std::thread::yield_now();
            }
            if round % 16 == 15 && start.elapsed() >= SPIN {
                let mut sleeping = lock(&self.sleeping);
                *sleeping += 1;
                // Checked under the lock the dispatcher takes after moving the
                // epoch: either this sees the new epoch or the dispatcher sees
                // this worker asleep and wakes it.
                while self.epoch.load(Ordering::Acquire) == seen && !self.shutdown.load(Ordering::SeqCst) {
                    sleeping = self.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
                }
                *sleeping -= 1;
            }
        }
        unreachable!("the rounds do not run out")
    }

    /// Runs `f(i)` on every thread `i < threads` of the pool (the caller is 0)
    /// and returns when all have finished; re-raises the first panic.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let _busy = lock(&self.busy);
        let job = Job { f };
        // SAFETY (lifetime): workers read the job only until `pending` reaches
        // zero, which this function waits for before `job` goes out of scope,
        // even when `f` panics on this thread.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        self.job.store(ptr, Ordering::Release);
        self.pending.store(self.threads - 1, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let sleeping = lock(&self.sleeping);
            if *sleeping > 0 {
                self.wake.notify_all();
            }
        }
        IN_JOB.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        IN_JOB.with(|c| c.set(false));
        let mut spins = 0u32;
        while self.pending.load(Ordering::Acquire) != 0 {
            // Yield once the wait is not short: a worker may be waiting for
            // this core (more threads than cores).
            if spins < 64 * SPIN_ROUNDS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.job.store(std::ptr::null_mut(), Ordering::Release);
        let theirs = lock(&self.panic).take();
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = theirs {
            resume_unwind(p);
        }
    }
}

/// `f` of the current pool ([`Pool::install`]; otherwise the process-wide
/// default one, `None` if it cannot start).
fn with_current<R>(f: impl FnOnce(Option<&Shared>) -> R) -> R {
    let cur = CURRENT.with(|c| c.get());
    if cur.is_null() {
        return f(Pool::shared(None).ok().as_deref().map(|p| &*p.shared));
    }
    // SAFETY: `install` keeps the pool alive while it is current.
    f(Some(unsafe { &*cur }))
}

/// Threads of the current pool; 1 inside a job, whose parallel calls run
/// serially.
pub fn current_threads() -> usize {
    if IN_JOB.with(|c| c.get()) {
        return 1;
    }
    with_current(|s| s.map_or(1, |s| s.threads))
}

/// Runs `f(i)` on `width` threads `i = 0..width` of the current pool (at most
/// its thread count; the rest of its threads skip the job) and returns when all
/// have finished. Runs `f(0)` alone on this thread for `width` ≤ 1, inside a
/// job, or on a one-thread pool, and every `f(i)` in turn in a forked child.
pub fn broadcast(width: usize, f: impl Fn(usize) + Sync) {
    if width == 0 {
        return;
    }
    if width == 1 || IN_JOB.with(|c| c.get()) {
        return f(0);
    }
    with_current(|s| match s {
        None => f(0),
        Some(s) if s.threads == 1 => f(0),
        // In a child forked after the workers started (Python's
        // multiprocessing): run every thread's part here, in order.
        Some(s) if s.pid != std::process::id() => (0..width.min(s.threads)).for_each(&f),
        Some(s) => s.run(&|i| {
            if i < width {
                f(i)
            }
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_a_broadcast_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            for width in [1, 2, 3, 8] {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.install(|| broadcast(width, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }));
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(Ordering::Relaxed), usize::from(i < width.min(threads)), "threads {threads} width {width} thread {i}");
                }
            }
        }
    }

    #[test]
    fn jobs_after_the_workers_parked_still_run() {
        let pool = Pool::new(3).unwrap();
        let sum = AtomicU64::new(0);
        for round in 0..3u64 {
            pool.install(|| broadcast(3, |i| {
                sum.fetch_add(i as u64 + 10 * round, Ordering::Relaxed);
            }));
            std::thread::sleep(SPIN * 3);
        }
        let want: u64 = (0..3u64).flat_map(|r| (0..3).map(move |i| i + 10 * r)).sum();
        assert_eq!(sum.load(Ordering::Relaxed), want);
    }

    #[test]
    fn nested_calls_run_serially_on_their_thread() {
        let pool = Pool::new(2).unwrap();
        let inner = AtomicUsize::new(0);
        pool.install(|| broadcast(2, |_| {
            assert_eq!(current_threads(), 1);
            broadcast(2, |j| {
                assert_eq!(j, 0);
                inner.fetch_add(1, Ordering::Relaxed);
            });
        }));
        assert_eq!(inner.load(Ordering::Relaxed), 2);
        assert_eq!(pool.install(current_threads), 2);
    }

    #[test]
    fn a_panic_in_a_worker_or_the_caller_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2).unwrap();
        for bad in [0, 1] {
            let r = catch_unwind(AssertUnwindSafe(|| pool.install(|| broadcast(2, |i| {
                if i == bad {
                    panic!("job failed on thread {i}");
                }
            }))));
            let msg = r.unwrap_err();
            let msg = msg.downcast_ref::<String>().unwrap();
            assert_eq!(msg, &format!("job failed on thread {bad}"));
        }
        let n = AtomicUsize::new(0);
        pool.install(|| broadcast(2, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        }));
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn threads_of_several_callers_share_a_pool() {
        let pool = Arc::new(Pool::new(2).unwrap());
        let total = Arc::new(AtomicU64::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        pool.install(|| broadcast(2, |i| {
                            total.fetch_add(1 + i as u64, Ordering::Relaxed);
                        }));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 3);
    }

    #[test]
    fn zero_threads_is_an_error_and_shared_pools_are_reused() {
        assert!(Pool::new(0).is_err());
        assert!(Pool::shared(Some(0)).is_err());
        let (a, b) = (Pool::shared(Some(3)).unwrap(), Pool::shared(Some(3)).unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.threads(), 3);
    }
}
