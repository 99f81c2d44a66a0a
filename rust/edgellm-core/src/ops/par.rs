//! Parallel loops on the current [`crate::pool`]: items claimed in order, and
//! disjoint parallel writes into one output buffer.

use crate::pool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A raw pointer that may cross threads. Users guarantee that concurrent
/// accesses touch disjoint ranges.
pub(crate) struct SharedMut<T = f32>(*mut T, usize);
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr(), s.len())
    }
    /// The start of the buffer, for kernels that write disjoint parts in place.
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }
    /// # Safety
    /// No other live reference may overlap `start..start+len`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.1, "SharedMut: range out of bounds");
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// Threads of the current pool (1 inside a parallel loop's item).
pub(crate) fn threads() -> usize {
    pool::current_threads()
}

/// Runs `f(i)` for every `i < items` on the current pool, each pool thread
/// claiming the next unclaimed item in order. For streaming GEMVs: the threads
/// read neighbouring row blocks, one front moving through the weights, where a
/// split into halves reads two distant streams (2-core Zen 3, f16 rows from
/// memory, one run: 41.7 GB/s in halves, 46.5–49.6 GB/s claimed in blocks of
/// 256–4096 rows). Which thread runs an item never changes what it computes.
pub(crate) fn for_each_claimed(items: usize, f: impl Fn(usize) + Sync) {
    for_each_claimed_with(items, || (), |_, i| f(i));
}

/// `f(a, b)` for ranges `a..b` that cover `0..units` once, claimed in order as
/// threads come free: `most` units each (one front through the weights, as
/// [`for_each_claimed`]) until the units left are few, then about
/// `1 / (2 · threads)` of those left, down to one (guided self-scheduling), so
/// that the threads finish within a unit or so of each other. Equal items, eight
/// per thread, left the first thread done waiting up to an eighth of its share
/// at every join of a decode step (22-layer q4_0/q8_0 step, alternating in one
/// process: +0-6% GB/s, median of pairs). Uncapped ranges (a quarter of an op
/// first) were no better for q8_0: two distant streams. The ranges follow from
/// `units`, `most` and the thread count alone (one range on one thread).
pub(crate) fn for_each_guided(units: usize, most: usize, f: impl Fn(usize, usize) + Sync) {
    let t = threads();
    if t == 1 {
        if units > 0 {
            f(0, units);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    pool::broadcast(t.min(units), |_| {
        let mut cur = next.load(Ordering::Relaxed);
        while cur < units {
            let end = cur + ((units - cur) / (2 * t)).clamp(1, most.max(1));
            match next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    f(cur, end);
                    cur = next.load(Ordering::Relaxed);
                }
                Err(now) => cur = now,
            }
        }
    });
}

/// [`for_each_claimed`] with a state per pool thread (`init()`, e.g. a scratch
/// buffer), handed to every item that thread runs.
pub(crate) fn for_each_claimed_with<S>(items: usize, init: impl Fn() -> S + Sync, f: impl Fn(&mut S, usize) + Sync) {
    let next = AtomicUsize::new(0);
    pool::broadcast(threads().min(items), |_| {
        let mut state = init();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            f(&mut state, i);
        }
    });
}

/// `f(state, i, &mut items[i])` for every item, claimed `per` at a time in order.
pub(crate) fn for_each_mut_with<T: Send, S>(
    items: &mut [T],
    per: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut T) + Sync,
) {
    let (n, per) = (items.len(), per.max(1));
    let shared = SharedMut::new(items);
    for_each_claimed_with(n.div_ceil(per), init, |s, c| {
        for i in c * per..((c + 1) * per).min(n) {
            // SAFETY: every index is claimed by exactly one item.
            f(s, i, unsafe { &mut shared.slice(i, 1)[0] })
        }
    });
}

/// Rows from which row-wise steps of a forward pass (norms, RoPE) run on the
/// pool: a prompt's. Alone on the calling thread they left the other threads
/// waiting (a 512-token TinyLlama prompt sampled 6% of its time in RoPE with a
/// worker idle); a decode step's few rows cost less than a parallel loop.
pub(crate) const PAR_MIN_ROWS: usize = 16;

/// `f(first row, rows)` over `x` (rows of `width`), in pieces of
/// [`PAR_MIN_ROWS`] rows on the pool when there are at least that many, else
/// in one call. Each row's result is the same either way.
pub(crate) fn rows_in_parallel(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = x.len().checked_div(width).unwrap_or(0);
    if rows < PAR_MIN_ROWS {
        return f(0, x);
    }
    for_each_chunk_mut(x, PAR_MIN_ROWS * width, |i, piece| f(i * PAR_MIN_ROWS, piece));
}

/// Elements per piece of the elementwise loops over a forward pass's
/// activations ([`zip_pieces`]). A decode step's rows (a few thousand) stay on
/// the calling thread, where a dispatch would cost about what it saves; a
/// 512-token prompt's (millions) run on the pool.
pub(crate) const PIECE: usize = 16 * 1024;

/// `f(x piece, y piece)` over matching [`PIECE`]-long pieces of `x` and `y`
/// (same length), on the pool from `min_pieces` pieces of `x` on, else in one
/// call. Elementwise `f` computes the same values either way.
pub(crate) fn zip_pieces(x: &mut [f32], y: &[f32], min_pieces: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    assert_eq!(x.len(), y.len(), "zip_pieces: lengths differ");
    if x.len() < min_pieces * PIECE {
        return f(x, y);
    }
    for_each_chunk_mut(x, PIECE, |i, xs| f(xs, &y[i * PIECE..][..xs.len()]));
}

/// `f(i, chunk)` for every `chunk`-long piece of `buf` (the last may be shorter).
pub(crate) fn for_each_chunk_mut<T: Send>(buf: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let (n, chunk) = (buf.len(), chunk.max(1));
    let shared = SharedMut::new(buf);
    // SAFETY: every piece is claimed by exactly one item.
    for_each_claimed(n.div_ceil(chunk), |i| f(i, unsafe { shared.slice(i * chunk, chunk.min(n - i * chunk)) }));
}

/// [`for_each_mut_with`] for fallible items: the first error (in claim order of
/// the thread that met it) is returned; items after it may or may not run.
pub(crate) fn try_for_each_mut_with<T: Send, S, E: Send>(
    items: &mut [T],
    per: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let err = Mutex::new(None);
    for_each_mut_with(items, per, init, |s, i, t| {
        if let Err(e) = f(s, i, t) {
            err.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    });
    match err.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_visit_every_item_once_at_every_thread_count() {
        for threads in [1, 2, 3] {
            let p = pool::Pool::new(threads).unwrap();
            p.install(|| {
                for items in [0usize, 1, 2, 7, 100] {
                    let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                    for_each_claimed(items, |i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    let mut v = vec![0usize; items];
                    for_each_mut_with(&mut v, 3, || (), |_, i, x| *x = 2 * i);
                    assert_eq!(v, (0..items).map(|i| 2 * i).collect::<Vec<_>>());
                    let mut buf = vec![0usize; items];
                    for_each_chunk_mut(&mut buf, 4, |c, s| s.iter_mut().for_each(|x| *x = c));
                    assert_eq!(buf, (0..items).map(|i| i / 4).collect::<Vec<_>>());
                    let mut w = vec![0u8; items];
                    let r = try_for_each_mut_with(&mut w, 2, || (), |_, i, _| if i == 5 { Err(i) } else { Ok(()) });
                    assert_eq!(r, if items > 5 { Err(5) } else { Ok(()) });
                }
            });
        }
    }

    /// Guided ranges cover every unit once, shrink in claim order down to one
    /// unit, and are the same ranges on every run at a thread count.
    #[test]
    fn guided_ranges_cover_every_unit_once_and_shrink() {
        for threads in [1, 2, 3] {
            let p = pool::Pool::new(threads).unwrap();
            p.install(|| {
                for (units, most) in [(0usize, 4usize), (1, 4), (2, 1), (5, 2), (16, 16), (160, 8), (704, 44), (704, 1000)] {
                    let ranges = || {
                        let got = Mutex::new(Vec::new());
                        for_each_guided(units, most, |a, b| got.lock().unwrap().push((a, b)));
                        let mut got = got.into_inner().unwrap();
                        got.sort();
                        got
                    };
                    let got = ranges();
                    let mut at = 0;
                    for &(a, b) in &got {
                        assert!(a == at && b > a, "{units} units, {threads} threads: {got:?}");
                        at = b;
                    }
                    assert_eq!(at, units);
                    if threads == 1 {
                        assert!(got.len() == usize::from(units > 0), "{got:?}");
                    } else if units > 0 {
                        assert!(got.windows(2).all(|w| w[1].1 - w[1].0 <= w[0].1 - w[0].0), "{got:?}");
                        assert!(got.iter().all(|r| r.1 - r.0 <= most), "{got:?}");
                        assert_eq!(got.last().map(|r| r.1 - r.0), Some(1));
                    }
                    assert_eq!(ranges(), got);
                }
            });
        }
    }
}
