//! `A @ B` for f32 matrices through edgellm's packed GEMM, in parallel over blocks
//! of output columns: numpy's `matmul` for 2-D float32 operands. The same parallel
//! loop runs the prefill products of float (and dequantized) weights in
//! [`super::Linear`].

use super::par::{self, SharedMut};
use super::reuse::{Reused, Slot};
use std::cell::RefCell;
use crate::{Error, Result};
use crate::pool::Pool;
use edgellm_kernels::gemm::{block_columns, gemm_packed_raw, gemm_panels_raw, pack_a_block, AOperand, BRows, GemmScratch, PackedA, KC, MR};
use edgellm_kernels::panels::{Panels, WIDTH};
use edgellm_kernels::{Isa, Kernels};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where the packed GEMM reads B from: rows it can pack directly, or quantized
/// rows widened to f32 by `row(r, out)` one block at a time.
pub(crate) enum BSource<'a> {
    Rows(BRows<'a>),
    Dequant(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
    /// Float weights repacked at load into the micro-kernel's panels, read in place.
    Panels(Panels<'a>),
}

/// A's blocks per packing task.
const PACK_PER_TASK: usize = 8;

/// `out[n × m] = x · Bᵀ` for row-major `x` (`n × k`) on the current pool: x
/// packed ([`PackedA`]), then blocks of output columns ([`column_blocks`]),
/// each written in place, in one parallel region. Threads claim the packing
/// tasks first, then column blocks, each waiting (briefly) until A is whole
/// before its first block: one pool wake-up and one join, where packing and
/// product as two loops took two (+4-5% on 2-thread 512³ and 1024³ products).
/// Every output is computed by one block in a fixed order: results do not
/// depend on the thread count. Where the table's micro-kernels read A's rows
/// in place ([`AOperand::rows`]: k of one k-block, or any k on a table with
/// wide tiles), nothing is packed and the threads go straight to the column blocks, with the same
/// results (resident panels, whose f16/bf16 kernels read packed A only, still
/// pack).
#[allow(clippy::too_many_arguments)]
pub(crate) fn par_matmul(k: &Kernels, x: &[f32], n: usize, kd: usize, b: BSource<'_>, m: usize, out: &mut [f32]) {
    assert!(x.len() == n * kd && out.len() >= n * m, "par_matmul: shape mismatch");
    let unit = if k.gemm_wide.is_some() { 2 * WIDTH } else { WIDTH };
    // B packed per call: blocks as wide as the packer takes ([`block_columns`]),
    // as A is read again per block. Resident panels and dequantized rows (widened
    // into each thread's buffer) keep to 256 columns: 512 ran the 5632-deep
    // down projection of F16 panels 5% slower, the other shapes no faster.
    let widest = if matches!(b, BSource::Rows(_)) { block_columns() } else { NARROW_COLUMNS };
    let cols = column_blocks(m, par::threads(), unit, widest);
    let shared = SharedMut::new(out);
    let in_place = if matches!(b, BSource::Panels(_)) { None } else { AOperand::rows(k, x, n, kd) };
    let mut kept = Reused::take(&PACKING);
    // SAFETY: the packing tasks below fill every block before the product
    // tasks read any (they wait for `packed` to count them all). Read in place,
    // A's packing holds no rows, so there is nothing to pack or wait for.
    let rows = if in_place.is_some() { 0 } else { n };
    let mut pa = unsafe { PackedA::uninit_in(std::mem::take(&mut *kept), rows, kd) };
    let (blocks, panels) = (pa.block_count(), n.div_ceil(MR));
    let dst = SharedMut::new(pa.as_mut_slice());
    let pack_tasks = blocks.div_ceil(PACK_PER_TASK);
    let packed = AtomicUsize::new(0);
    let pa_ref = &pa;
    par::for_each_claimed_with(
        pack_tasks + cols.len(),
        || Reused::take(&SCRATCH),
        |state, t| {
            if t < pack_tasks {
                for i in t * PACK_PER_TASK..((t + 1) * PACK_PER_TASK).min(blocks) {
                    let (k0, p) = (i / panels * KC, i % panels);
                    let r = pa_ref.block_range(k0, p);
                    // SAFETY: each block is packed by one task, and nothing reads the
                    // packing until every task has counted itself in `packed`.
                    pack_a_block(x, n, kd, k0, p, unsafe { dst.slice(r.start, r.len()) });
                }
                packed.fetch_add(1, Ordering::Release);
                return;
            }
            let mut spins = 0u32;
            while packed.load(Ordering::Acquire) < pack_tasks {
                // Yield once the wait is not short: the packer may be waiting
                // for this core (more threads than cores).
                spins += 1;
                if spins < 4096 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            let (j0, j1) = cols[t - pack_tasks];
            // SAFETY: column block `t` alone writes columns j0..j1 of each row.
            unsafe { gemm_columns(k, in_place.unwrap_or(pa_ref.into()), &b, j0, j1, m, shared, state) };
            state.keep_if(state.1.capacity() <= KEEP_PACKING);
        },
    );
    *kept = pa.into_vec();
    kept.keep_if(kept.capacity() <= KEEP_PACKING);
}

thread_local! {
    /// The calling thread's A packing, kept for its next product.
    static PACKING: Slot<Vec<f32>> = const { RefCell::new(None) };
    /// Each pool thread's B packing and dequantized rows, kept for its next
    /// product: fresh ones (a 512 KiB B block) made mimalloc fault in a huge
    /// page on most calls (1% of a 2-thread 512³ product in `clear_page`).
    static SCRATCH: Slot<(GemmScratch, Vec<f32>)> = const { RefCell::new(None) };
}

/// The largest A packing (and a pool thread's largest buffer of dequantized
/// rows) kept between products (4 Mi floats, 16 MiB: a 512-token prompt's
/// widest packing, 11.5 MiB for FFN 5632): a fresh one is faulted in page by
/// page (~2% of a 2-thread 512³ product, whose packing is 1 MiB). Larger ones
/// are freed, so that a long prompt leaves no large buffer behind.
const KEEP_PACKING: usize = 4 << 20;

/// The widest column block of resident panels and dequantized rows.
const NARROW_COLUMNS: usize = 256;

/// Column blocks of an `m`-column product for `threads` threads: each a
/// multiple of `unit`, the micro-tile width (16, or 32 for the wide tiles of
/// 512-bit tables, which run a 16-column block at half speed; `widest` at most),
/// narrowing as the columns left do. Wide blocks up front keep B packing
/// and A re-reads few; narrow ones at the end keep the thread that finishes
/// first from waiting long for the other's last block (with equal blocks,
/// four per thread, that wait cost ~5% of a 2-thread 512³ product).
fn column_blocks(m: usize, threads: usize, unit: usize, widest: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut j = 0;
    while j < m {
        let w = ((m - j) / (2 * threads.max(1))).clamp(unit, widest).next_multiple_of(unit);
        out.push((j, (j + w).min(m)));
        j += w;
    }
    out
}

/// Columns `j0..j1` of `out` (`n × m`, at `shared`) from packed `a` and `b`.
///
/// # Safety
/// `out` holds `a.n()` rows of `m`, and nothing else accesses columns `j0..j1`
/// during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_columns(
    k: &Kernels,
    a: AOperand<'_>,
    b: &BSource<'_>,
    j0: usize,
    j1: usize,
    m: usize,
    shared: SharedMut,
    (scratch, deq): &mut (GemmScratch, Vec<f32>),
) {
    let (kd, w) = (a.k(), j1 - j0);
    let (rows, r0, r1) = match b {
        BSource::Panels(p) => {
            let AOperand::Packed(a) = a else { unreachable!("par_matmul packs A for panels") };
            // `j0` is a multiple of the panel width (as every block start).
            let p = p.slice(kd, j0 / WIDTH, j1.div_ceil(WIDTH));
            return gemm_panels_raw(k, a, p, w, shared.ptr().add(j0), m);
        }
        BSource::Rows(rows) => (*rows, j0, j1),
        BSource::Dequant(row) => {
            deq.resize(w * kd, 0.0);
            for (i, r) in (j0..j1).enumerate() {
                row(r, &mut deq[i * kd..(i + 1) * kd]);
            }
            (BRows::F32(deq), 0, w)
        }
    };
    gemm_packed_raw(k, a, rows, r0, r1, shared.ptr().add(j0), m, scratch)
}

/// `A @ B` with `a` row-major `n × k` and `b` row-major `k × m`, on `threads`
/// worker threads (default: all cores) and the kernel path `isa` (default: the
/// best this CPU has, or `EDGELLM_ISA`). Returns the row-major `n × m` product.
pub fn matmul_f32(
    a: &[f32],
    n: usize,
    k: usize,
    b: &[f32],
    m: usize,
    threads: Option<usize>,
    isa: Option<Isa>,
) -> Result<Vec<f32>> {
    matmul_f32_in(Vec::new(), a, n, k, b, m, threads, isa)
}

/// [`matmul_f32`] into the capacity of `out` (cleared first, grown where it
/// holds less than the product), returned holding the product: callers that
/// must reserve the memory fallibly (the Python binding) do so first.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_in(
    mut out: Vec<f32>,
    a: &[f32],
    n: usize,
    k: usize,
    b: &[f32],
    m: usize,
    threads: Option<usize>,
    isa: Option<Isa>,
) -> Result<Vec<f32>> {
    let len = size(n, m, "the product")?;
    out.clear();
    out.reserve_exact(len);
    // Not zeroed first (numpy's `empty`): the product writes every element
    // before reading it (its first k-block stores), so a memset would only
    // cost time (~2% of a 2-thread 512³ product).
    {
        // SAFETY: `len` values of capacity; none is read before it is written.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr(), len) };
        matmul_f32_into(a, n, k, b, m, dst, threads, isa)?;
    }
    // SAFETY: matmul_f32_into wrote all n × m outputs.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// [`matmul_f32`] into `out` (`n × m`, row-major), which it writes without
/// reading (so `out` may be uninitialised capacity, as [`matmul_f32_in`]'s).
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_into(
    a: &[f32],
    n: usize,
    k: usize,
    b: &[f32],
    m: usize,
    out: &mut [f32],
    threads: Option<usize>,
    isa: Option<Isa>,
) -> Result<()> {
    if a.len() != size(n, k, "A")? || b.len() != size(k, m, "B")? || out.len() != size(n, m, "the product")? {
        return Err(Error::arg(format!(
            "matmul: shapes do not match: A has {} elements for {n} × {k}, B {} for {k} × {m}, the output {} for {n} × {m}",
            a.len(),
            b.len(),
            out.len()
        )));
    }
    let kern = match isa {
        Some(isa) => Kernels::for_isa(isa)?,
        None => edgellm_kernels::kernels()?,
    };
    if out.is_empty() || k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    let pool = Pool::shared(threads)?;
    pool.install(|| par_matmul(kern, a, n, k, BSource::Rows(BRows::F32Cols { data: b, ld: m }), m, out));
    Ok(())
}

/// `r · c` elements, or an error naming `what` when that overflows.
fn size(r: usize, c: usize, what: &str) -> Result<usize> {
    r.checked_mul(c).ok_or_else(|| Error::arg(format!("matmul: {what} of {r} × {c} elements overflows")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn data(seed: u64, len: usize) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..len).map(|_| r.next_f64() as f32 - 0.5).collect()
    }

    /// Several packing tasks, chunks of A and k-blocks, edge panels,
    /// narrowing column blocks and the widest ones ([`block_columns`]): every output within f32 rounding of an f64
    /// product, and the same bits on 1, 2 and 3 threads (whichever thread
    /// packs which blocks).
    #[test]
    fn packed_product_is_exact_and_thread_independent() {
        for &(n, k, m) in &[(200usize, 1100usize, 70usize), (97, 513, 300), (7, 40, 33), (150, 512, 16), (26, 600, 1100)] {
            let (a, b) = (data(n as u64, n * k), data(m as u64 + 7, k * m));
            let runs: Vec<Vec<f32>> = [1, 2, 3].iter().map(|&t| matmul_f32(&a, n, k, &b, m, Some(t), None).unwrap()).collect();
            for i in 0..n {
                for j in 0..m {
                    let (mut want, mut mag) = (0f64, 0f64);
                    for q in 0..k {
                        let p = a[i * k + q] as f64 * b[q * m + j] as f64;
                        want += p;
                        mag += p.abs();
                    }
                    let got = runs[0][i * m + j] as f64;
                    assert!((got - want).abs() <= (k as f64 + 2.0) * f32::EPSILON as f64 * mag + 1e-30, "{n}x{k}x{m} ({i},{j}): {got} vs {want}");
                }
            }
            for r in &runs[1..] {
                assert!(r.iter().zip(&runs[0]).all(|(x, y)| x.to_bits() == y.to_bits()), "{n}x{k}x{m}: thread counts disagree");
            }
        }
    }
}
