//! A memory read-bandwidth probe: the bound a decode step (which reads every
//! weight once) is measured against.

use super::par::for_each_claimed;
use crate::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bytes each work item of the probe reads.
const BLOCK: usize = 1 << 20;

/// Best sustained read rate in GB/s over `reps` passes of `threads` threads (the
/// machine's parallelism by default) over a freshly written buffer of `mib` MiB,
/// which should be several times the last-level cache. Threads claim 1 MiB
/// blocks in order, as the decode GEMVs do, and sum them as u64 lanes (plain
/// code the compiler vectorizes: far faster than memory on any SIMD machine).
pub fn read_bandwidth(mib: usize, reps: usize, threads: Option<usize>) -> Result<f64> {
    if mib == 0 || reps == 0 {
        return Err(Error::arg("bandwidth probe: mib and reps must be at least 1"));
    }
    let bytes = mib.checked_mul(1 << 20).ok_or_else(|| Error::arg(format!("bandwidth probe: {mib} MiB overflows")))?;
    let words = bytes / 8;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(words).map_err(|_| Error::arg(format!("bandwidth probe: cannot allocate {mib} MiB")))?;
    buf.extend((0..words as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let pool = crate::pool::Pool::shared(threads)?;
    let per_block = BLOCK / 8;
    let sink = AtomicU64::new(0);
    let mut best = 0f64;
    for _ in 0..reps {
        let t = Instant::now();
        pool.install(|| {
            for_each_claimed(words.div_ceil(per_block), |b| {
                let block = &buf[b * per_block..((b + 1) * per_block).min(words)];
                let mut acc = [0u64; 8];
                let mut chunks = block.chunks_exact(8);
                for c in &mut chunks {
                    for (a, v) in acc.iter_mut().zip(c) {
                        *a = a.wrapping_add(*v);
                    }
                }
                let s = chunks.remainder().iter().fold(acc.iter().fold(0u64, |s, v| s.wrapping_add(*v)), |s, v| s.wrapping_add(*v));
                sink.fetch_add(s, Ordering::Relaxed);
            })
        });
        best = best.max(bytes as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(sink.load(Ordering::Relaxed));
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_measures_a_positive_rate_and_rejects_bad_arguments() {
        let gbs = read_bandwidth(8, 2, Some(2)).unwrap();
        assert!(gbs.is_finite() && gbs > 0.0, "{gbs}");
        assert!(read_bandwidth(0, 1, None).is_err());
        assert!(read_bandwidth(1, 0, None).is_err());
        assert!(read_bandwidth(1, 1, Some(0)).is_err());
        assert!(read_bandwidth(usize::MAX, 1, None).is_err());
    }
}
