//! Linear layers (`y = x Wᵀ + b`) split over the thread pool by output rows, so
//! every output element is computed by one thread in a fixed order: results do not
//! depend on the number of threads.

use super::matmul::{par_matmul, BSource};
use super::par::{self, for_each_claimed, for_each_claimed_with, SharedMut};
use super::reuse::{Reused, Slot};
use super::norm::Norm;
use crate::tensor::{DType, Tensor};
use edgellm_kernels::gemm::BRows;
use edgellm_kernels::panels::{self, Panels};
use edgellm_kernels::quant::{
    self,
    qgemm::{QActs, QGemmScratch},
    resident,
};
use edgellm_kernels::Kernels;
use std::cell::RefCell;
use std::sync::Arc;

/// Row counts from which packing the activations pays off: below, `gemm_few`
/// (single thread, 16384 × 2048 f16: 8 tokens 37-39 GFLOP/s against 28-34
/// packed; 12 tokens 32-40 against 49-52).
const PACKED_MIN_ROWS: usize = 9;
/// Row counts from which float panels go through the packed GEMM (which reads
/// them in place) instead of `Kernels::gemm_panels`: single thread, 16384 × 2048
/// f16 panels, GFLOP/s gemm_panels | GEMM: 16 tokens 70 | 50-58, 32 tokens 81-84
/// | 65-68, 64 tokens 82-84 | 79, 128 tokens 67-86 | 82-91 (AVX2 | AVX-512).
const PANELS_GEMM_MIN_ROWS: usize = 64;
/// [`PANELS_GEMM_MIN_ROWS`] on tables with wide GEMM tiles (512-bit): there the
/// GEMM wins from 16 tokens (same bench, an Intel AVX-512 core, gemm_panels |
/// GEMM: 16 tokens 64 | 87, 32 tokens 69 | 96, 64 tokens 72 | 122).
const PANELS_GEMM_MIN_ROWS_WIDE: usize = 16;
/// Row counts from which quantized weights take the multi-row integer GEMM
/// (`Kernels::gemm_q`) instead of one GEMV per row: below, repacking the weight
/// panels costs more than reading the weights once per row (measured, AVX2, 2
/// threads, 2048 × 2048 q4_0: GEMV 0.17 ms per row; GEMM 0.64 ms for 2 rows,
/// 0.71 ms for 4, 0.88 ms for 8).
const QGEMM_MIN_ROWS: usize = 5;
/// Weight rows per parallel work item of `gemm_q` (a multiple of the kernels'
/// 8-row panels; fixed, so the split never depends on the thread count).
const QGEMM_BLOCK: usize = 32;

/// Quantized activations up to this size (decode rows, a few tokens) are kept
/// by the calling thread for its next call; a prompt's are dropped.
const KEEP_ACT_BYTES: usize = 256 << 10;
/// Layers one [`Linear::forward_group`] pass runs at most (q, k, v; gate, up).
const MAX_GROUP: usize = 4;

thread_local! {
    /// The calling thread's quantized activations, reused from call to call.
    static ACTS: Slot<[QActs; MAX_GROUP]> = const { RefCell::new(None) };
}

/// Runs `f` with the calling thread's quantized-activation buffers, kept for
/// its next call when decode-sized: a decode step then allocates none.
fn with_acts<R>(f: impl FnOnce(&mut [QActs; MAX_GROUP]) -> R) -> R {
    let mut bufs = Reused::take(&ACTS);
    let r = f(&mut bufs);
    let small = bufs.iter().all(|b| b.bytes().len() <= KEEP_ACT_BYTES);
    bufs.keep_if(small);
    r
}

/// Output rows per parallel GEMV work item (for one row, the longest guided
/// range): about eight per thread, so a slow thread does not hold the others up
/// (which thread computes a row never changes its value). A multiple of 16, so
/// that items are whole resident panels (8 rows for quantized weights, 16 for
/// float weights).
fn gemv_chunk(rows: usize) -> usize {
    (rows / (par::threads() * 8)).clamp(16, 1024).next_multiple_of(panels::WIDTH)
}

/// Output rows per unit of a one-row GEMV's guided ranges: whole resident
/// panels (8 rows for quantized weights, 16 for float weights).
const GEMV_UNIT: usize = panels::WIDTH;

/// The longest guided range, in units, of a one-row GEMV pass over `rows`
/// output rows ([`gemv_chunk`]'s rows).
fn gemv_most_units(rows: usize) -> usize {
    gemv_chunk(rows) / GEMV_UNIT
}

/// `f(r0, r1)` over ranges of a one-row GEMV's `m` output rows, claimed as the
/// threads come free, shrinking to one unit at the end ([`par::for_each_guided`]);
/// starts are multiples of [`GEMV_UNIT`].
fn for_each_gemv_range(m: usize, f: impl Fn(usize, usize) + Sync) {
    par::for_each_guided(m.div_ceil(GEMV_UNIT), gemv_most_units(m), |a, b| f(a * GEMV_UNIT, (b * GEMV_UNIT).min(m)));
}

/// Blocks of `block` output columns of `out` (`n` rows of `m`), claimed in
/// order: `f(r0, r1, tile)` fills `tile`, the `n × (r1 - r0)` outputs of columns
/// `r0..r1` (row-major), which are then copied into place. One row is written
/// straight into `out`, in guided ranges instead of blocks.
fn for_each_column_block(m: usize, block: usize, n: usize, out: &mut [f32], f: impl Fn(usize, usize, &mut [f32]) + Sync) {
    let shared = SharedMut::new(out);
    if n == 1 {
        // SAFETY: each range is claimed once.
        return for_each_gemv_range(m, |r0, r1| f(r0, r1, unsafe { shared.slice(r0, r1 - r0) }));
    }
    for_each_claimed_with(m.div_ceil(block), Vec::<f32>::new, |tile, b| {
        let (r0, r1) = (b * block, ((b + 1) * block).min(m));
        let width = r1 - r0;
        tile.resize(n * width, 0.0);
        f(r0, r1, tile);
        for t in 0..n {
            // SAFETY: item b alone writes columns r0..r1 of each row.
            let dst = unsafe { shared.slice(t * m + r0, width) };
            dst.copy_from_slice(&tile[t * width..(t + 1) * width]);
        }
    });
}

/// A quantized input as layers read it: q4_0 and q8_0 with the per-block
/// tables of their own type (the resident kernels check it; q5_0 also reads
/// q8_0 blocks but must not share them), other types just the int8 blocks of
/// their `vec_dot` format (q4_K and q6_K share q8_K).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ActFormat {
    Tables(quant::GgmlType),
    Plain(quant::GgmlType),
}

#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out_features × in_features]`, row-major. Replace it through
    /// [`Self::set_weight`], which drops a resident copy of the old weight.
    pub weight: Tensor,
    pub bias: Option<Vec<f32>>,
    /// The weight repacked at load into the kernels' resident panels
    /// ([`Self::make_resident`]); decode and prefill then read these instead.
    pub resident: Option<Resident>,
}

/// Weight rows in a resident panel layout ([`quant::resident`] for q4_0/q8_0,
/// [`panels`] for float weights), in an anonymous mapping (transparent huge
/// pages asked for on Linux: fewer TLB misses on a stream of hundreds of
/// megabytes).
#[derive(Clone)]
pub struct Resident(Arc<memmap2::MmapMut>);

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resident({} bytes)", self.0.len())
    }
}

impl Resident {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The float panels held, as elements of `dtype`.
    fn panels(&self, dtype: DType) -> Option<Panels<'_>> {
        let b = self.bytes();
        // SAFETY: the mapping is page-aligned and was filled with `dtype`
        // elements (`make_resident_float`); f32/f16/bf16 accept every bit pattern.
        unsafe {
            Some(match dtype {
                DType::F32 => Panels::F32(std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / 4)),
                DType::F16 => Panels::F16(std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / 2)),
                DType::BF16 => Panels::Bf16(std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / 2)),
                DType::Quant(_) => return None,
            })
        }
    }
}

/// An anonymous mapping of `len` bytes for resident panels, huge pages asked for.
fn anon_panels(len: usize) -> Option<memmap2::MmapMut> {
    let buf = memmap2::MmapMut::map_anon(len).ok()?;
    #[cfg(target_os = "linux")]
    let _ = buf.advise(memmap2::Advice::HugePage);
    Some(buf)
}

/// Packs row-major `w` (`m × k`, the elements of `weight`) into float panels
/// in `buf`, in parallel.
fn pack_float_panels<E: Copy + Default + Send + Sync>(weight: &Tensor, w: &[E], m: usize, k: usize, buf: &mut [u8]) {
    let size = std::mem::size_of::<E>();
    assert!(buf.len() % size == 0 && buf.as_ptr().align_offset(std::mem::align_of::<E>()) == 0);
    let panel = k * panels::WIDTH * size;
    pack_in_slabs(weight, panel, buf, panel, |p, dst| {
        // SAFETY: `dst` is a whole panel of `buf` (a multiple of `size` bytes
        // from an aligned start, as checked); every bit pattern of the float
        // types is valid, and nothing else uses `dst` meanwhile.
        let out: &mut [E] = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast(), dst.len() / size) };
        panels::pack_panel(w, m, k, p, out)
    });
}

/// Source bytes per slab of [`pack_in_slabs`].
const SLAB_BYTES: usize = 2 << 20;

/// Fills `buf` with `pack(p, dst)` for each unit `p` (`dst_unit` bytes of
/// `buf` each, made from `src_unit` bytes of `weight`), in parallel, releasing
/// a mapped weight's pages slab by slab (about [`SLAB_BYTES`] of the source)
/// once every unit up to the slab's end is packed. Packing a whole matrix
/// before releasing any of it held it twice for a moment: TinyLlama's 54 MB
/// q6_K output matrix raised a Q4_0 model's peak during loading by that much
/// over its resting size. One parallel pass, units claimed in order: a pass
/// per slab (a pool round trip each) made a warm F16 load 20-30% slower.
fn pack_in_slabs(weight: &Tensor, src_unit: usize, buf: &mut [u8], dst_unit: usize, pack: impl Fn(usize, &mut [u8]) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let units = buf.len().div_ceil(dst_unit.max(1));
    let per_slab = (SLAB_BYTES / src_unit.max(1)).max(1);
    let slabs = units.div_ceil(per_slab);
    // Units packed per slab, and the slabs released (a prefix, advanced by
    // whichever thread completes the slab at its end).
    let packed: Vec<AtomicUsize> = (0..slabs).map(|_| AtomicUsize::new(0)).collect();
    let released = std::sync::Mutex::new(0usize);
    let size = |s: usize| per_slab.min(units - s * per_slab);
    par::for_each_chunk_mut(buf, dst_unit, |u, dst| {
        pack(u, dst);
        let s = u / per_slab;
        if packed[s].fetch_add(1, Ordering::AcqRel) + 1 < size(s) {
            return;
        }
        let Ok(mut next) = released.lock() else { return };
        let start = *next;
        while *next < slabs && packed[*next].load(Ordering::Acquire) == size(*next) {
            *next += 1;
        }
        if *next > start {
            // Everything packed so far: a slab's edges share pages (up to
            // 2 MiB ones, see `release_range`) with its neighbours.
            weight.release_range(0, (*next * per_slab).min(units) * src_unit);
        }
    });
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Vec<f32>>) -> Linear {
        Linear { weight, bias, resident: None }
    }

    /// Replaces the weight (same shape), dropping a resident copy of the old one.
    pub fn set_weight(&mut self, weight: Tensor) {
        self.weight = weight;
        self.resident = None;
    }

    /// This layer with its weight quantized to `ty` (bias kept in f32). Rows must
    /// be whole blocks of `ty`.
    pub fn quantized(&self, ty: quant::GgmlType) -> crate::Result<Linear> {
        Ok(Linear::new(quantize_tensor(&self.weight, ty)?, self.bias.clone()))
    }

    /// Repacks the weight into resident panels when `k` has kernels for them
    /// (q4_0, q8_0, q4_K, q5_K and q6_K with rows a multiple of 8: every x86
    /// and NEON table; f32, f16 and bf16: see `make_resident_float`), in parallel on the
    /// current pool. A memory-mapped weight's pages are then released, so the weight is
    /// not held twice. Returns whether it was repacked; the row layout stays
    /// readable (paths without a resident kernel, `forward_dequantized`).
    pub fn make_resident(&mut self, k: &Kernels) -> bool {
        if self.resident.is_some() {
            return false;
        }
        let DType::Quant(ty) = self.weight.dtype() else { return self.make_resident_float(k) };
        let (m, kd) = (self.out_features(), self.in_features());
        let Some(pb) = resident::panel_bytes(ty, kd) else { return false };
        if k.resident_gemm(ty).is_none() || m == 0 || m % resident::ROWS != 0 {
            return false;
        }
        let src = self.weight.as_bytes();
        let Some(mut buf) = anon_panels(src.len()) else { return false };
        pack_in_slabs(&self.weight, pb, &mut buf, pb, |p, dst| resident::pack(ty, &src[p * pb..(p + 1) * pb], kd, dst));
        self.keep_resident(buf)
    }

    /// Serves the weight from `buf` from now on, releasing a mapped weight's pages.
    fn keep_resident(&mut self, buf: memmap2::MmapMut) -> bool {
        self.weight.release_pages();
        self.resident = Some(Resident(Arc::new(buf)));
        true
    }

    /// [`Self::make_resident`] for f32/f16/bf16 weights: into [`panels`], at the
    /// weight's size (rows padded to a whole panel), when `k` has the kernels.
    fn make_resident_float(&mut self, k: &Kernels) -> bool {
        let (m, kd, dt) = (self.out_features(), self.in_features(), self.weight.dtype());
        let size = match dt {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Quant(_) => return false,
        };
        let Some(bytes) = panels::panels_len(m, kd).and_then(|n| n.checked_mul(size)) else { return false };
        if !Self::has_float_kernels(k, dt) || bytes == 0 {
            return false;
        }
        let Some(mut buf) = anon_panels(bytes) else { return false };
        let w = &self.weight;
        match dt {
            DType::F32 => pack_float_panels(w, w.as_f32(), m, kd, &mut buf),
            DType::F16 => pack_float_panels(w, w.as_f16(), m, kd, &mut buf),
            _ => pack_float_panels(w, w.as_bf16(), m, kd, &mut buf),
        }
        self.keep_resident(buf)
    }

    /// Whether `k` runs float panels of `dt`: the decode/short-prompt kernel and
    /// a micro-kernel that reads `dt` panels in place.
    fn has_float_kernels(k: &Kernels, dt: DType) -> bool {
        k.gemm_panels.is_some()
            && match dt {
                DType::F32 => true,
                DType::F16 => k.gemm_micro_f16.is_some(),
                DType::BF16 => k.gemm_micro_bf16.is_some(),
                DType::Quant(_) => false,
            }
    }

    /// The float panels this layer runs on under `k`, if any.
    fn float_panels(&self, k: &Kernels) -> Option<Panels<'_>> {
        let dt = self.weight.dtype();
        if !Self::has_float_kernels(k, dt) {
            return None;
        }
        self.resident.as_ref()?.panels(dt)
    }

    /// `out = x Wᵀ` (no bias) on float panels: up to `PANELS_GEMM_MIN_ROWS` rows
    /// (`PANELS_GEMM_MIN_ROWS_WIDE` on tables with wide tiles)
    /// through `Kernels::gemm_panels` on blocks of panels claimed in order (one
    /// front through the weights), longer prompts through the packed GEMM reading
    /// the panels in place. Both sum in the same order: a token's outputs are the same bits
    /// however many tokens come with it.
    fn forward_panels(&self, k: &Kernels, p: Panels<'_>, x: &[f32], n: usize, out: &mut [f32]) {
        let (m, kd) = (self.out_features(), self.in_features());
        let min_rows = if k.gemm_wide.is_some() { PANELS_GEMM_MIN_ROWS_WIDE } else { PANELS_GEMM_MIN_ROWS };
        if n >= min_rows {
            return par_matmul(k, x, n, kd, BSource::Panels(p), m, out);
        }
        let run = k.gemm_panels.expect("float panels need gemm_panels");
        for_each_column_block(m, gemv_chunk(m), n, out, |r0, r1, tile| {
            let w = p.slice(kd, r0 / panels::WIDTH, r1.div_ceil(panels::WIDTH));
            run(w, r1 - r0, x, n, tile, r1 - r0)
        });
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// `out[n × out] = x[n × in] · Wᵀ (+ b)`.
    pub fn forward(&self, k: &Kernels, x: &[f32], out: &mut [f32]) {
        let (m, kd) = (self.out_features(), self.in_features());
        let n = x.len() / kd;
        debug_assert_eq!(x.len(), n * kd);
        debug_assert_eq!(out.len(), n * m);
        if let Some(p) = self.float_panels(k) {
            self.forward_panels(k, p, x, n, out);
        } else {
            self.forward_rows(k, x, n, out);
        }
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(m) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
    }

    /// [`Self::forward`] without the bias, on anything but float panels.
    fn forward_rows(&self, k: &Kernels, x: &[f32], n: usize, out: &mut [f32]) {
        match self.float_rows() {
            None if self.is_resident_for(k) => self.gemm_resident(k, x, n, out),
            None if n >= QGEMM_MIN_ROWS && self.uses_gemm_q(k) => self.gemm_q(k, x, n, out),
            _ if n >= PACKED_MIN_ROWS => self.gemm_packed(k, x, n, out),
            Some(rows) if n > 1 => self.gemm_few(k, rows, x, n, out),
            // One row, or a few of quantized weights.
            _ => self.gemv(k, x, out),
        }
    }

    /// The weight matrix as float rows; `None` for quantized weights, which take
    /// the integer-dot or dequantizing paths.
    fn float_rows(&self) -> Option<BRows<'_>> {
        match self.weight.dtype() {
            DType::F32 => Some(BRows::F32(self.weight.as_f32())),
            DType::F16 => Some(BRows::F16(self.weight.as_f16())),
            DType::BF16 => Some(BRows::Bf16(self.weight.as_bf16())),
            DType::Quant(_) => None,
        }
    }

    /// GEMVs: one activation row (decode; bandwidth-bound) or a few rows of
    /// quantized weights. For each block of weight rows (claimed in order), the
    /// GEMV of every row of `x` in turn, each row quantized once to the weights'
    /// int8 activation format. With several rows a block is at most 256 KiB, so
    /// that it stays in L2 for the rows after the first: the weights come from
    /// memory once instead of once per row. Rows are computed independently, so
    /// the block size never changes a result.
    fn gemv(&self, k: &Kernels, x: &[f32], out: &mut [f32]) {
        let (m, kd) = (self.out_features(), self.in_features());
        let n = x.len() / kd;
        with_acts(|bufs| {
            let act = self.quantize_input(k, x, &mut bufs[0]).then_some(&bufs[0]);
            let shared = SharedMut::new(out);
            if n == 1 {
                return for_each_gemv_range(m, |r0, r1| {
                    // SAFETY: each range is claimed once.
                    let o = unsafe { shared.slice(r0, r1 - r0) };
                    self.gemv_rows(k, x, act.map(|a| (a, 0)), r0, o);
                });
            }
            let chunk = gemv_chunk(m).min(((256 << 10) / self.weight.row_bytes().max(1)).max(16) / 16 * 16);
            for_each_claimed(m.div_ceil(chunk), |c| {
                let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(m));
                for t in 0..n {
                    // SAFETY: chunk c alone writes columns r0..r1 of each output row.
                    let o = unsafe { shared.slice(t * m + r0, r1 - r0) };
                    self.gemv_rows(k, &x[t * kd..(t + 1) * kd], act.map(|a| (a, t)), r0, o);
                }
            });
        })
    }

    /// Quantizes the input rows (`x`, whole rows of `in_features`) into `acts`,
    /// in this layer's activation format, in parallel when there are many;
    /// `false` (and `acts` untouched) for float weights, which dot with `x`.
    fn quantize_input(&self, k: &Kernels, x: &[f32], acts: &mut QActs) -> bool {
        let DType::Quant(ty) = self.weight.dtype() else {
            return false;
        };
        let kd = self.in_features();
        let rows = x.len() / kd;
        acts.refill(ty, kd, rows, |bytes| {
            if rows > 1 {
                let ab = bytes.len() / rows;
                par::for_each_chunk_mut(bytes, ab, |t, a| (k.quantize_act)(ty, &x[t * kd..(t + 1) * kd], a));
            } else {
                (k.quantize_act)(ty, x, bytes);
            }
        });
        true
    }

    /// The resident panels of rows `r0..r1` (whole panels) and the kernel that
    /// reads them, when this layer has both under `k`.
    fn resident_rows(&self, k: &Kernels, r0: usize, r1: usize) -> Option<(&[u8], quant::resident::GemmResidentFn)> {
        let (panels, gemm) = (self.resident.as_ref()?.bytes(), k.resident_gemm(self.weight.dtype().ggml())?);
        debug_assert!(r0 % resident::ROWS == 0 && r1 % resident::ROWS == 0);
        let pb = panels.len() / (self.out_features() / resident::ROWS);
        Some((&panels[r0 / resident::ROWS * pb..r1 / resident::ROWS * pb], gemm))
    }

    /// Whether this layer runs on resident panels under `k`.
    fn is_resident_for(&self, k: &Kernels) -> bool {
        self.resident.is_some() && k.resident_gemm(self.weight.dtype().ggml()).is_some()
    }

    /// `out = x Wᵀ` (no bias) on the resident panels, for any number of rows of
    /// `x`: the activations quantized once, then blocks of panels claimed in
    /// order (one front through the weights); each output is the scalar
    /// `vec_dot` bit for bit, whatever the block size or thread count.
    fn gemm_resident(&self, k: &Kernels, x: &[f32], n: usize, out: &mut [f32]) {
        let m = self.out_features();
        with_acts(|bufs| {
            assert!(self.quantize_input(k, x, &mut bufs[0]), "resident weights are quantized");
            let qa = &bufs[0];
            // Decode: guided ranges straight into `out`; prompts: a few panels
            // per item (they stay in L1/L2 while every token passes), through a tile.
            for_each_column_block(m, QGEMM_BLOCK, n, out, |r0, r1, tile| {
                let (w, gemm) = self.resident_rows(k, r0, r1).expect("called for resident layers");
                gemm(self.weight.dtype().ggml(), w, qa, tile, r1 - r0)
            });
        })
    }

    /// Rows `r0..r0 + out.len()` of the GEMV `x Wᵀ` (no bias): `act` is row `t`
    /// of [`Self::quantize_input`]'s rows, `x` among them; for resident weights
    /// (one-row activations), `r0` starts a panel and the rows end at a panel's
    /// end or at the last row.
    fn gemv_rows(&self, k: &Kernels, x: &[f32], act: Option<(&QActs, usize)>, r0: usize, out: &mut [f32]) {
        let n = x.len();
        if let Some(p) = self.float_panels(k) {
            debug_assert!(r0 % panels::WIDTH == 0, "rows from a whole panel");
            let (rows, p0) = (out.len(), r0 / panels::WIDTH);
            let run = k.gemm_panels.expect("float panels need gemm_panels");
            return run(p.slice(n, p0, (r0 + rows).div_ceil(panels::WIDTH)), rows, x, 1, out, rows);
        }
        match (self.float_rows(), act) {
            (Some(rows), _) => {
                let range = r0 * n..(r0 + out.len()) * n;
                match rows {
                    BRows::F32(w) => (k.gemv_f32)(&w[range], x, out),
                    BRows::F16(w) => (k.gemv_f16)(&w[range], x, out),
                    BRows::Bf16(w) => (k.gemv_bf16)(&w[range], x, out),
                    BRows::F32Cols { .. } => unreachable!("layer weights are row-major"),
                }
            }
            (None, Some((qa, _))) if self.is_resident_for(k) => {
                debug_assert_eq!(qa.rows(), 1, "resident GEMVs take one activation row");
                let (w, gemm) = self.resident_rows(k, r0, r0 + out.len()).unwrap();
                gemm(self.weight.dtype().ggml(), w, qa, out, out.len());
            }
            (None, Some((qa, t))) => {
                let ab = qa.bytes().len() / qa.rows();
                let act = &qa.bytes()[t * ab..(t + 1) * ab];
                let (w, rb) = (self.weight.as_bytes(), self.weight.row_bytes());
                (k.gemv_q)(
                    self.weight.dtype().ggml(),
                    &w[r0 * rb..(r0 + out.len()) * rb],
                    act,
                    n,
                    out,
                );
            }
            (None, None) => unreachable!("quantized weights need their quantized input"),
        }
    }

    /// `outs[i] = x · Wᵢᵀ (+ bᵢ)` for layers that read the same input (q, k, v;
    /// gate, up). One row (decoding) runs as a single parallel pass over the rows
    /// of every layer, the input quantized once per activation format: one
    /// dispatch to the pool instead of one per layer, with the small layers
    /// balanced against the large ones. Each output row is computed exactly as
    /// [`Self::forward`] computes it. Several rows take each layer's `forward`.
    pub fn forward_group(k: &Kernels, x: &[f32], group: &mut [(&Linear, &mut [f32])]) {
        if !Self::is_one_row_group(x.len(), group) {
            for (l, o) in group.iter_mut() {
                l.forward(k, x, o);
            }
            return;
        }
        with_acts(|bufs| {
            // One quantized input per activation format (q4_K and q6_K share
            // q8_K); q4_0 and q8_0 keep their own, whose per-block tables differ.
            // `act_of[i]`: layer i's buffer in `bufs` (none for float weights).
            let (mut formats, mut act_of) = ([None; MAX_GROUP], [None; MAX_GROUP]);
            for (i, (l, _)) in group.iter().enumerate() {
                let Some(at) = l.act_format() else { continue };
                let j = formats.iter().position(|f| *f == Some(at)).unwrap_or_else(|| {
                    let j = formats.iter().position(Option::is_none).expect("a buffer per layer");
                    formats[j] = Some(at);
                    l.quantize_input(k, x, &mut bufs[j]);
                    j
                });
                act_of[i] = Some(j);
            }
            Self::group_pass(k, x, group, bufs, act_of);
        });
    }

    /// [`Self::forward_group`] of `norm(x)` (one row or several): `xn` receives
    /// the normalised rows, except for one row into quantized layers of one
    /// activation format; there the norm writes the quantized input directly
    /// ([`Norm::apply_quantized`], no normalised row in memory) and `xn` is
    /// left as it was. The outputs are those of `norm.apply_into(x, xn)` then
    /// `forward_group(xn)`, bit for bit.
    pub fn forward_group_normed(k: &Kernels, norm: &Norm, x: &[f32], xn: &mut [f32], group: &mut [(&Linear, &mut [f32])]) {
        let first = group.first().and_then(|(l, _)| l.act_format());
        let fused = norm.dim() == x.len()
            && Self::is_one_row_group(x.len(), group)
            && first.is_some()
            && group.iter().all(|(l, _)| l.act_format() == first);
        if !fused {
            norm.apply_into(x, xn);
            return Self::forward_group(k, xn, group);
        }
        let DType::Quant(ty) = group[0].0.weight.dtype() else { unreachable!("quantized layers") };
        with_acts(|bufs| {
            bufs[0].refill(ty, x.len(), 1, |bytes| norm.apply_quantized(k, ty, x, bytes));
            // `x` stands in for the normalised row: quantized layers read only
            // its length.
            Self::group_pass(k, x, group, bufs, [Some(0); MAX_GROUP]);
        });
    }

    /// Whether `group` runs as one fused pass over a row of `n` inputs.
    fn is_one_row_group(n: usize, group: &[(&Linear, &mut [f32])]) -> bool {
        (2..=MAX_GROUP).contains(&group.len())
            && group.iter().all(|(l, o)| l.in_features() == n && o.len() == l.out_features())
    }

    /// The quantized input this layer's GEMV reads (`None`: float weights);
    /// layers of one format share it.
    fn act_format(&self) -> Option<ActFormat> {
        match self.weight.dtype() {
            DType::Quant(q @ (quant::GgmlType::Q4_0 | quant::GgmlType::Q8_0)) => Some(ActFormat::Tables(q)),
            DType::Quant(q) => Some(ActFormat::Plain(quant::vec_dot_type(q))),
            _ => None,
        }
    }

    /// The fused GEMV pass of [`Self::forward_group`] over one row `x`, layer `i`
    /// reading the quantized input `bufs[act_of[i]]`; then the biases.
    fn group_pass(
        k: &Kernels,
        x: &[f32],
        group: &mut [(&Linear, &mut [f32])],
        bufs: &[QActs; MAX_GROUP],
        act_of: [Option<usize>; MAX_GROUP],
    ) {
        // Units of GEMV_UNIT rows, layer after layer (each layer's last unit may
        // be short); `ends[i]`: the units of layers 0..=i. Guided ranges of
        // units, split where they cross from one layer into the next.
        let mut ends = [0usize; MAX_GROUP];
        let mut units = 0;
        for (e, (l, _)) in ends.iter_mut().zip(group.iter()) {
            units += l.out_features().div_ceil(GEMV_UNIT);
            *e = units;
        }
        let mut outs = [SharedMut::new(&mut []); MAX_GROUP];
        for (s, (_, o)) in outs.iter_mut().zip(group.iter_mut()) {
            *s = SharedMut::new(o);
        }
        let layers = &*group;
        par::for_each_guided(units, gemv_most_units(units * GEMV_UNIT), |a, b| {
            for (i, (l, _)) in layers.iter().enumerate() {
                let start = if i == 0 { 0 } else { ends[i - 1] };
                let (u0, u1) = (a.max(start), b.min(ends[i]));
                if u0 >= u1 {
                    continue;
                }
                let (r0, r1) = ((u0 - start) * GEMV_UNIT, ((u1 - start) * GEMV_UNIT).min(l.out_features()));
                // SAFETY: the ranges cover disjoint row ranges of each output.
                let o = unsafe { outs[i].slice(r0, r1 - r0) };
                l.gemv_rows(k, x, act_of[i].map(|j| (&bufs[j], 0)), r0, o);
            }
        });
        for (l, o) in group.iter_mut() {
            if let Some(b) = &l.bias {
                for (o, b) in o.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
    }

    /// Whether prompts (≥ `QGEMM_MIN_ROWS` rows) of these quantized weights take
    /// the integer GEMM: where the table has an interleaved kernel for the type,
    /// and always on the scalar path (the reference, where prefill then computes
    /// exactly what decode does). Other types on SIMD paths dequantize into the
    /// f32 GEMM (faster than looping their `vec_dot`).
    fn uses_gemm_q(&self, k: &Kernels) -> bool {
        let ty = self.weight.dtype().ggml();
        k.isa == edgellm_kernels::Isa::Scalar || quant::qgemm::has_fast_path(k.isa, ty)
    }

    /// `out = x Wᵀ (+ b)` with quantized weights dequantized to f32 and the packed
    /// f32 GEMM (f32 activations): the prefill path before `gemm_q`, kept as a
    /// reference for tests and benchmarks. Float weights take `forward`'s path.
    pub fn forward_dequantized(&self, k: &Kernels, x: &[f32], out: &mut [f32]) {
        let (m, kd) = (self.out_features(), self.in_features());
        let n = x.len() / kd;
        assert!(
            x.len() == n * kd && out.len() == n * m,
            "forward_dequantized: shape mismatch"
        );
        if self.float_rows().is_some() {
            return self.forward(k, x, out);
        }
        self.gemm_packed(k, x, n, out);
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(m) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
    }

    /// Prefill with quantized weights: every activation row quantized once to the
    /// weight type's int8 format (as decode does), then blocks of weight rows in
    /// parallel through the integer multi-row GEMM; each output is the same
    /// `vec_dot` decode computes (bit-identical to the scalar one on the paths with
    /// interleaved kernels), whatever the thread count.
    fn gemm_q(&self, k: &Kernels, x: &[f32], n: usize, out: &mut [f32]) {
        let m = self.out_features();
        let (w, rb) = (self.weight.as_bytes(), self.weight.row_bytes());
        with_acts(|bufs| {
            assert!(self.quantize_input(k, x, &mut bufs[0]), "quantized weights");
            let acts = &bufs[0];
            let shared = SharedMut::new(out);
            par::for_each_claimed_with(
                m.div_ceil(QGEMM_BLOCK),
                || (QGemmScratch::default(), Vec::<f32>::new()),
                |(scratch, tile), b| {
                    let (j0, j1) = (b * QGEMM_BLOCK, ((b + 1) * QGEMM_BLOCK).min(m));
                    let width = j1 - j0;
                    tile.resize(n * width, 0.0);
                    (k.gemm_q)(&w[j0 * rb..j1 * rb], acts, tile, width, scratch);
                    for t in 0..n {
                        // SAFETY: block b alone writes columns j0..j1 of each row.
                        let dst = unsafe { shared.slice(t * m + j0, width) };
                        dst.copy_from_slice(&tile[t * width..(t + 1) * width]);
                    }
                },
            );
        })
    }

    /// Prefill: activations packed once, then blocks of output features in
    /// parallel through the packed, cache-blocked GEMM of edgellm-kernels
    /// (quantized rows widened to f32 a block at a time).
    fn gemm_packed(&self, k: &Kernels, x: &[f32], n: usize, out: &mut [f32]) {
        let (wb, rb) = (self.weight.as_bytes(), self.weight.row_bytes());
        let ty = self.weight.dtype().ggml();
        // The table's dequantizer (SIMD for NF4/FP8): widening is part of the work.
        let widen =
            |r: usize, row: &mut [f32]| (k.dequantize_row)(ty, &wb[r * rb..(r + 1) * rb], row);
        let src = match self.float_rows() {
            Some(rows) => BSource::Rows(rows),
            None => BSource::Dequant(&widen),
        };
        par_matmul(k, x, n, self.in_features(), src, self.out_features(), out);
    }

    /// A few rows (2..PACKED_MIN_ROWS) of float weights: `Kernels::gemm_few` on
    /// blocks of weight rows claimed in order (one front through the weights, as
    /// the decode GEMV), each block's outputs through a small tile.
    fn gemm_few(&self, k: &Kernels, rows: BRows<'_>, x: &[f32], n: usize, out: &mut [f32]) {
        let (m, kd) = (self.out_features(), self.in_features());
        for_each_column_block(m, gemv_chunk(m), n, out, |r0, r1, tile| {
            let range = r0 * kd..r1 * kd;
            let w = match rows {
                BRows::F32(w) => BRows::F32(&w[range]),
                BRows::F16(w) => BRows::F16(&w[range]),
                BRows::Bf16(w) => BRows::Bf16(&w[range]),
                BRows::F32Cols { .. } => unreachable!("layer weights are row-major"),
            };
            (k.gemm_few)(w, x, n, tile, r1 - r0)
        });
    }
}

/// Quantizes a 2-D tensor row by row (in parallel) with the GGML reference quantizer.
pub fn quantize_tensor(
    t: &crate::tensor::Tensor,
    ty: quant::GgmlType,
) -> crate::Result<crate::tensor::Tensor> {
    use crate::tensor::Tensor;
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let rb = ty.row_bytes(cols).ok_or_else(|| {
        crate::Error::arg(format!(
            "rows of {cols} values are not whole {} blocks of {}",
            ty.name(),
            ty.block_elems()
        ))
    })?;
    let mut bytes = vec![0u8; rows * rb];
    let mut rows_out: Vec<&mut [u8]> = bytes.chunks_mut(rb.max(1)).collect();
    par::try_for_each_mut_with(
        &mut rows_out,
        1,
        || vec![0f32; cols],
        |row, r, dst| {
            t.row_to_f32(r, row);
            quant::quantize_row(ty, row, dst).map_err(|e| crate::Error::arg(e.to_string()))
        },
    )?;
    Tensor::from_bytes(&bytes, DType::from_ggml(ty), vec![rows, cols])
}
