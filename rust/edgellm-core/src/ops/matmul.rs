//! `A @ B` for f32 matrices through edgellm's packed GEMM, in parallel over blocks
//! of output columns: numpy's `matmul` for 2-D float32 operands. The same parallel
//! loop runs the prefill products of float (and dequantized) weights in
//! [`super::Linear`].

use super::par::{self, SharedMut};
use crate::{Error, Result};
use edgellm_kernels::gemm::{gemm_packed_raw, gemm_panels_raw, pack_a_block, BRows, GemmScratch, PackedA};
use edgellm_kernels::panels::{Panels, WIDTH};
use edgellm_kernels::{Isa, Kernels};
use crate::pool::Pool;

/// Where the packed GEMM reads B from: rows it can pack directly, or quantized
/// rows widened to f32 by `row(r, out)` one block at a time.
pub(crate) enum BSource<'a> {
    Rows(BRows<'a>),
    Dequant(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
    /// Float weights repacked at load into the micro-kernel's panels, read in place.
    Panels(Panels<'a>),
}

/// Packs row-major `a` (`n × k`) for [`par_gemm`]: its (k-block, panel) blocks in
/// parallel on the current pool, at least 8 per task.
pub(crate) fn par_pack_a(a: &[f32], n: usize, k: usize) -> PackedA {
    let mut pa = PackedA::zeroed(n, k);
    let mut blocks = pa.blocks_mut();
    par::for_each_mut_with(&mut blocks, 8, || (), |_, _, (k0, p, dst)| pack_a_block(a, n, k, *k0, *p, dst));
    pa
}

/// `out[n × m] = A · Bᵀ` (`a` packed), blocks of output columns in parallel on the
/// current pool, each written in place. Every output is computed by one block in
/// a fixed order: results do not depend on the thread count.
pub(crate) fn par_gemm(k: &Kernels, a: &PackedA, b: BSource<'_>, m: usize, out: &mut [f32]) {
    let (n, kd) = (a.n(), a.k());
    assert!(out.len() >= n * m, "par_gemm: output too small");
    // A multiple of the micro-tile width, about four blocks per thread.
    let block = (m / (par::threads() * 4))
        .clamp(16, 256)
        .next_multiple_of(16);
    let shared = SharedMut::new(out);
    par::for_each_claimed_with(
        m.div_ceil(block),
        || (GemmScratch::default(), Vec::<f32>::new()),
        |(scratch, deq), blk| {
            let (j0, j1) = (blk * block, ((blk + 1) * block).min(m));
            let w = j1 - j0;
            let (rows, r0, r1) = match &b {
                BSource::Panels(p) => {
                    let p = p.slice(kd, j0 / WIDTH, j1.div_ceil(WIDTH));
                    // SAFETY: as below; `block` is a multiple of the panel width.
                    unsafe { gemm_panels_raw(k, a, p, w, shared.ptr().add(j0), m) };
                    return;
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
            // SAFETY: `out` holds n rows of m; block `blk` alone writes columns
            // j0..j1 of each row, and nothing reads them during the loop.
            unsafe { gemm_packed_raw(k, a, rows, r0, r1, shared.ptr().add(j0), m, scratch) };
        },
    );
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
    let size = |r: usize, c: usize, what: &str| {
        r.checked_mul(c)
            .ok_or_else(|| Error::arg(format!("matmul: {what} of {r} × {c} elements overflows")))
    };
    if a.len() != size(n, k, "A")? || b.len() != size(k, m, "B")? {
        return Err(Error::arg(format!(
            "matmul: shapes do not match: A has {} elements for {n} × {k}, B {} for {k} × {m}",
            a.len(),
            b.len()
        )));
    }
    let kern = match isa {
        Some(isa) => Kernels::for_isa(isa)?,
        None => edgellm_kernels::kernels()?,
    };
    let mut out = vec![0f32; size(n, m, "the product")?];
    if out.is_empty() {
        return Ok(out);
    }
    if k == 0 {
        return Ok(out);
    }
    Pool::shared(threads)?.install(|| {
        let pa = par_pack_a(a, n, k);
        par_gemm(
            kern,
            &pa,
            BSource::Rows(BRows::F32Cols { data: b, ld: m }),
            m,
            &mut out,
        );
    });
    Ok(out)
}
