//! Packed, cache-blocked GEMM for prefill: `C[n × m] = A[n × k] · Bᵀ`, with A the
//! activations (row-major, k contiguous) and B the weights (row-major `[m × k]`).
//!
//! BLIS-style: A is packed once into panels of `MR` rows, k-major; each block of
//! B rows is packed (and widened from f16/bf16) into panels of `NR` columns,
//! k-major; a register-tile micro-kernel computes `MR × NR` outputs per panel pair
//! over `KC` steps of k and adds them to C in place. The micro-kernel and the B
//! packer are per-ISA ([`Kernels::gemm_micro`], [`Kernels::gemm_pack_b`]).
//! k-major f32 B (numpy's right operand) is packed by the micro-kernel itself
//! where the table has a streaming one ([`Kernels::gemm_micro_stream`]): a pass
//! of its own stalled on B's rows, 3% of a 2-thread 1024³ product.

use crate::panels::Panels;
use crate::Kernels;
use half::{bf16, f16};

/// Rows of A per micro-tile.
pub const MR: usize = 6;
/// Columns (B rows) per micro-tile.
pub const NR: usize = 16;
/// k elements per cache block. The B panel (KC×NR f32, 32 KiB) fills a 32 KiB
/// L1 while A panels stream past it from L2; yet 512 beat 256 by 1-2% on Zen 3
/// (half the passes adding partial sums into C, half the B repacking rounds),
/// and any k of 512 to 4096 is whole blocks.
pub const KC: usize = 512;

/// The register-tile micro-kernel: `c[r * ldc + j] = Σ_kk ap[kk * MR + r] ·
/// bp[kk * NR + j]` for `r < MR`, `j < NR` over `kc` steps, added to what `c`
/// holds when `add` (later k-blocks), stored otherwise. Writing the output in
/// place (rather than through a tile buffer) saves a copy of every partial sum.
///
/// # Safety
/// `ap` holds `kc · MR` values, `bp` `kc · NR`, `c` points at `MR` rows of `NR`
/// writable values `ldc` apart, and the CPU runs the kernel's instructions (the
/// tables guarantee the last).
pub type MicroKernel = MicroKernelOf<f32>;

/// [`MicroKernel`] with B panels of element type `E`, widened as they are loaded:
/// the f16/bf16 kernels read resident panels ([`crate::panels`]) in place.
pub type MicroKernelOf<E> =
    unsafe fn(kc: usize, ap: *const f32, bp: *const E, c: *mut f32, ldc: usize, add: bool);

/// [`MicroKernel`] reading A in place rather than packed: the tile's row `r`
/// is the `kc` contiguous values at `ap + r · lda` (row-major activations of one
/// k-block, see [`AOperand::rows`]). The same FMAs in the same order as the
/// table's [`MicroKernel`] on the packed rows, so bit-identical to it.
///
/// # Safety
/// As [`MicroKernel`], with `ap + r · lda` holding `kc` values for `r < MR`.
pub type MicroKernelRows = MicroKernelRowsOf<f32>;

/// [`MicroKernelRows`] with B panels of element type `E`.
pub type MicroKernelRowsOf<E> =
    unsafe fn(kc: usize, ap: *const f32, lda: usize, bp: *const E, c: *mut f32, ldc: usize, add: bool);

/// The B side of a [`MicroKernelStream`] tile: the `kc × NR` panel at `panel`,
/// read from there, first copied there from k-major source rows (row `kk`'s
/// `NR` values at `src + kk · ld`) when `src` is not null; and `ahead_rows`
/// source rows (`ahead + i · ld`, `NR` values each) to fetch into L2 for a
/// later tile, spread over the k loop.
#[derive(Clone, Copy)]
pub struct BStream {
    pub panel: *mut f32,
    pub src: *const f32,
    pub ld: usize,
    pub ahead: *const f32,
    pub ahead_rows: usize,
}

/// [`MicroKernel`] for the first chunk of A's panels on k-major f32 B
/// ([`BRows::F32Cols`], numpy's right operand), which packs B as it goes rather
/// than in a pass of its own: the chunk's first tile of each B panel reads the
/// panel's source rows and writes the panel that the chunk's other tiles (and
/// later chunks) read, and every tile of the chunk fetches a share of the next
/// panel's source rows (see [`BStream`]). A is packed (`ap[kk · MR + r]`) when
/// `lda` is 0, else read in place (`ap[r · lda + kk]`). The same FMAs in the
/// same order as [`MicroKernel`] on the packed panel, so bit-identical to
/// packing first.
///
/// # Safety
/// As [`MicroKernel`] (or [`MicroKernelRows`]) for `ap`, `c` and `ldc`;
/// `b.panel` holds `kc · NR` values (writable when `b.src` is set, which then
/// holds the `kc` source rows, `b.ld ≥ NR` apart). `b.ahead` need not be valid (a prefetch never
/// faults).
pub type MicroKernelStream =
    unsafe fn(kc: usize, ap: *const f32, lda: usize, b: &BStream, c: *mut f32, ldc: usize, add: bool);

/// The wide tile of 512-bit tables: two A panels (`2 · MR` rows) by two B
/// panels (`2 · NR` columns), the B panels `kc × NR` values each at `bp` and
/// `bp + bs` (whole panels of a packed block, or of resident weights, whose
/// panels span all of k). A is packed when `lda` is 0 (the second panel
/// `kc · MR` values after the first, as [`PackedA`] lays out neighbours),
/// else read in place (`ap[r · lda + kk]`, `r < 2 · MR`). Each output sums
/// the same FMAs in the same order as the table's [`MicroKernelOf`] tile, so
/// the tiling does not change a bit.
///
/// # Safety
/// As [`MicroKernel`] for two panels of A and of B and `2 · MR` rows of
/// `2 · NR` outputs.
pub type WideKernelOf<E> =
    unsafe fn(kc: usize, ap: *const f32, lda: usize, bp: *const E, bs: usize, c: *mut f32, ldc: usize, add: bool);

/// A table's [`WideKernelOf`] tiles, one per B element type.
#[derive(Clone, Copy)]
pub struct WideKernels {
    pub f32: WideKernelOf<f32>,
    pub f16: WideKernelOf<f16>,
    pub bf16: WideKernelOf<bf16>,
}

/// Packs rows `j0..j1` of B, k-range `k0..k0 + kc`, into `NR`-wide panels:
/// `out[p · kc · NR + kk · NR + c] = B[j0 + p · NR + c][k0 + kk]` (zero past
/// `j1`). `out` must hold `(j1 - j0).div_ceil(NR) · kc · NR` values.
pub type PackBFn =
    fn(b: BRows<'_>, k: usize, j0: usize, j1: usize, k0: usize, kc: usize, out: &mut [f32]);

/// Weight rows in their storage type.
#[derive(Clone, Copy)]
pub enum BRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// f32 stored k-major (`Bᵀ` row-major, as the right operand of `A @ B`):
    /// element `(j, kk)` at `data[kk * ld + j]`.
    F32Cols {
        data: &'a [f32],
        ld: usize,
    },
}

/// Activations packed for [`gemm_packed`]: k-block by k-block, and within a
/// k-block panel by panel of `MR` rows, `kc × MR` values per (k-block, panel)
/// (rows past `n` are zero). The blocks are disjoint, so they can be packed in
/// parallel ([`PackedA::blocks_mut`], [`pack_a_block`]); the panels of one k-block
/// are contiguous, so the GEMM walks each k-block's A front to back.
pub struct PackedA {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl PackedA {
    /// An all-zero packing of `n × k` activations, to fill block by block.
    pub fn zeroed(n: usize, k: usize) -> PackedA {
        PackedA {
            data: vec![0f32; n.div_ceil(MR) * MR * k],
            n,
            k,
        }
    }
    /// A packing of `n × k` activations in `buf`'s memory (a buffer kept from
    /// an earlier packing, see [`Self::into_vec`]; grown if need be), its
    /// values not yet written: no pass zeroes memory that the packers
    /// overwrite anyway (zeroing A and the output cost ~3% of a 2-thread 512³
    /// product).
    ///
    /// # Safety
    /// Every block ([`Self::blocks_mut`] / [`Self::block_range`]) must be filled
    /// by [`pack_a_block`] before the packing is read.
    pub unsafe fn uninit_in(mut buf: Vec<f32>, n: usize, k: usize) -> PackedA {
        let len = n.div_ceil(MR) * MR * k;
        buf.clear();
        buf.reserve_exact(len);
        // SAFETY: `len` values of capacity; the caller writes each before
        // any is read.
        buf.set_len(len);
        PackedA { data: buf, n, k }
    }

    /// The packing's memory, for [`Self::uninit_in`] to reuse.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn k(&self) -> usize {
        self.k
    }
    fn panels(&self) -> usize {
        self.n.div_ceil(MR)
    }
    /// Every (k-block start `k0`, panel `p`, its `kc × MR` values), in memory
    /// order, to fill with [`pack_a_block`].
    pub fn blocks_mut(&mut self) -> Vec<(usize, usize, &mut [f32])> {
        let (panels, k) = (self.panels(), self.k);
        let mut out = Vec::with_capacity(panels * k.div_ceil(KC));
        let mut rest = self.data.as_mut_slice();
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for p in 0..panels {
                let (blk, tail) = std::mem::take(&mut rest).split_at_mut(kc * MR);
                out.push((k0, p, blk));
                rest = tail;
            }
        }
        out
    }
    fn block(&self, kb: usize, panel: usize) -> &[f32] {
        &self.data[self.block_range(kb * KC, panel)]
    }
    /// Where the block (k-block from `k0`, panel `p`) lies in the packing: a
    /// block of `blocks_mut`'s, for packers that write through [`Self::as_mut_slice`].
    pub fn block_range(&self, k0: usize, panel: usize) -> core::ops::Range<usize> {
        let kc = KC.min(self.k - k0);
        let start = k0 * MR * self.panels() + panel * kc * MR;
        start..start + kc * MR
    }
    /// The packing's values, to fill disjoint blocks from several threads.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// Blocks in the packing: `k.div_ceil(KC)` k-blocks of `n.div_ceil(MR)` panels,
    /// block `i` being (k-block `i / panels`, panel `i % panels`).
    pub fn block_count(&self) -> usize {
        self.k.div_ceil(KC) * self.panels()
    }
}

/// Packs the block (k-block from `k0`, panel `p`) of row-major `a` (`n × k`) into
/// `dst` (`kc × MR` values, every one written: rows past `n` are zero). Value
/// by value: an AVX2 version (8 × 8 register transposes) was no faster, the
/// packing being bound by memory.
pub fn pack_a_block(a: &[f32], n: usize, k: usize, k0: usize, p: usize, dst: &mut [f32]) {
    let kc = KC.min(k.saturating_sub(k0));
    assert!(
        a.len() == n * k && dst.len() == kc * MR && p * MR < n.max(1),
        "pack_a_block: shape mismatch"
    );
    let rows = MR.min(n - p * MR);
    if rows < MR {
        for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
            for (r, d) in d.iter_mut().enumerate() {
                *d = if r < rows { a[(p * MR + r) * k + k0 + kk] } else { 0.0 };
            }
        }
        return;
    }
    // A full panel: the six rows in lock-step, so the writes are sequential.
    let row: [&[f32]; MR] = core::array::from_fn(|r| &a[(p * MR + r) * k + k0..][..kc]);
    for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
        for r in 0..MR {
            d[r] = row[r][kk];
        }
    }
}

/// Packs row-major `a` (`n × k`) on the calling thread.
pub fn pack_a(a: &[f32], n: usize, k: usize) -> PackedA {
    assert_eq!(a.len(), n * k, "pack_a: shape mismatch");
    let mut pa = PackedA::zeroed(n, k);
    for (k0, p, dst) in pa.blocks_mut() {
        pack_a_block(a, n, k, k0, p, dst);
    }
    pa
}

/// The reference [`PackBFn`]: row by row (widened into a row buffer), each value
/// stored at its place in the panel. The SIMD tables transpose 8 × 8 tiles instead.
pub fn pack_b(b: BRows<'_>, k: usize, j0: usize, j1: usize, k0: usize, kc: usize, out: &mut [f32]) {
    check_pack_b(b, k, j0, j1, k0, kc, out);
    let panels = (j1 - j0).div_ceil(NR);
    if (j1 - j0) % NR != 0 {
        // The padding columns of the last panel.
        out[(panels - 1) * kc * NR..panels * kc * NR].fill(0.0);
    }
    if let BRows::F32Cols { data, ld } = b {
        // Already k-major: each panel row is a contiguous run of B's columns.
        for (p, panel) in out.chunks_exact_mut(kc * NR).take(panels).enumerate() {
            let (c0, cols) = (j0 + p * NR, NR.min(j1 - j0 - p * NR));
            for kk in 0..kc {
                panel[kk * NR..kk * NR + cols]
                    .copy_from_slice(&data[(k0 + kk) * ld + c0..][..cols]);
            }
        }
        return;
    }
    // Widened 64 values at a time into a stack buffer, then scattered.
    let mut buf = [0f32; 64];
    for j in j0..j1 {
        let (p, c) = ((j - j0) / NR, (j - j0) % NR);
        let panel = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for s0 in (0..kc).step_by(64) {
            let len = 64.min(kc - s0);
            let (row, src) = (&mut buf[..len], j * k + k0 + s0..j * k + k0 + s0 + len);
            match b {
                BRows::F32(w) => row.copy_from_slice(&w[src]),
                BRows::F16(w) => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[src], row),
                BRows::Bf16(w) => {
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[src], row)
                }
                BRows::F32Cols { .. } => unreachable!("packed above"),
            }
            for (kk, &v) in row.iter().enumerate() {
                panel[(s0 + kk) * NR + c] = v;
            }
        }
    }
}

/// Checks the operands of a [`PackBFn`]. Panics on a shape mismatch.
pub fn check_pack_b(
    b: BRows<'_>,
    k: usize,
    j0: usize,
    j1: usize,
    k0: usize,
    kc: usize,
    out: &[f32],
) {
    assert!(j0 <= j1 && k0 + kc <= k, "pack_b: bad ranges");
    let fits = match b {
        BRows::F32(w) => j1 * k <= w.len(),
        BRows::F16(w) => j1 * k <= w.len(),
        BRows::Bf16(w) => j1 * k <= w.len(),
        BRows::F32Cols { data, ld } => j1 <= ld && (k == 0 || (k - 1) * ld + j1 <= data.len()),
    };
    assert!(fits, "pack_b: B too small");
    assert!(
        out.len() >= (j1 - j0).div_ceil(NR) * kc * NR,
        "pack_b: output too small"
    );
}

/// Rows of B per column block of resident panels, and per packing round
/// where L2 is small ([`block_columns`]).
const JB: usize = 256;

/// Rows of B per packing round of [`gemm_packed`], and so the widest column
/// block worth giving one thread: `JB` (a packed block of `JB × KC` f32,
/// 512 KiB, a Zen 3 L2; 128 rows was no faster), twice that where a core's L2
/// holds 2 MiB or more (recent Intel cores), which halves how often A is read
/// again from memory: 2-thread 4096³ products +2-3% on an Emerald Rapids core
/// (AVX-512 tiles; the AVX2 tiles unchanged there). Resident panels keep to
/// `JB` ([`gemm_panels_raw`]): they are read from memory block by block.
pub fn block_columns() -> usize {
    static JB_HERE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *JB_HERE.get_or_init(|| if l2_kib().is_some_and(|kib| kib >= 2048) { 2 * JB } else { JB })
}

/// A panels per chunk (`MC_PANELS · MR` rows × `KC`, 192 KiB): the chunk stays in
/// L2 while each B panel (in L1) meets all of its panels. Without this
/// level every A panel met every B panel of the block from L2, and A was
/// re-read from memory per block: square products of n ≥ 2048 ran 20% slower.
const MC_PANELS: usize = 16;

/// `c[i * ldc + (j - j0)] = Σ_k a[i][k] · b[j][k]` for rows `j0..j1` of B, every
/// row of A, with `kern`'s B packer and micro-kernel. Buffers are reused across
/// calls through `scratch`.
pub fn gemm_packed<'a>(
    kern: &Kernels,
    a: impl Into<AOperand<'a>>,
    b: BRows<'_>,
    j0: usize,
    j1: usize,
    c: &mut [f32],
    ldc: usize,
    scratch: &mut GemmScratch,
) {
    let a = a.into();
    let n = a.n();
    assert!(
        j1 >= j0 && ldc >= j1 - j0 && (n == 0 || c.len() >= (n - 1) * ldc + (j1 - j0)),
        "gemm_packed: output too small"
    );
    // SAFETY: the assert above: every (row < n, column < j1 - j0) is inside `c`.
    unsafe { gemm_packed_raw(kern, a, b, j0, j1, c.as_mut_ptr(), ldc, scratch) }
}

/// [`gemm_packed`] into a raw output, so that threads can fill disjoint column
/// ranges of one matrix in place. `a` is packed ([`PackedA`]) or, for a k of
/// one block, read in place ([`AOperand::rows`]).
///
/// # Safety
/// `c + i · ldc + j` is valid for writes for every `i < a.n()`, `j < j1 - j0`, and
/// nothing else accesses those elements during the call. They may be
/// uninitialized: each is written before it is read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed_raw<'a>(
    kern: &Kernels,
    a: impl Into<AOperand<'a>>,
    b: BRows<'_>,
    j0: usize,
    j1: usize,
    c: *mut f32,
    ldc: usize,
    scratch: &mut GemmScratch,
) {
    let a = a.into();
    let (n, k) = (a.n(), a.k());
    assert!(j1 >= j0, "gemm_packed: j1 < j0");
    if k == 0 {
        return zero_columns(c, n, ldc, j1 - j0);
    }
    let GemmScratch { b: bbuf, last } = scratch;
    let (source, rows) = match a {
        AOperand::Packed(pa) => (ASource::Packed(pa), None),
        AOperand::Rows(a) => {
            let rows = kern.gemm_micro_rows.expect("gemm_packed: AOperand::rows checks the kernel");
            if a.n % MR != 0 {
                // Reading MR rows in place would pass A's end: the partial last
                // panel is packed (zero-padded) here, k-block by k-block as
                // PackedA lays out one panel.
                last.resize(MR * k, 0.0);
                for k0 in (0..k).step_by(KC) {
                    let kc = KC.min(k - k0);
                    pack_a_block(a.a, a.n, a.k, k0, a.n / MR, &mut last[k0 * MR..(k0 + kc) * MR]);
                }
            }
            (ASource::Rows { a, last: last.as_slice() }, Some(rows))
        }
    };
    let tiles = Tiles { a: source, packed: kern.gemm_micro, rows, wide: kern.gemm_wide.map(|w| w.f32) };
    let jb = block_columns();
    for jb0 in (j0..j1).step_by(jb) {
        let jb1 = (jb0 + jb).min(j1);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            // Grown, never shrunk: the packers write every value of the block
            // (padding columns too), so a narrower block after a wider one
            // needs no fresh zeroing (0.4% of a 2-thread 512³ product).
            let len = (jb1 - jb0).div_ceil(NR) * kc * NR;
            if bbuf.len() < len {
                bbuf.resize(len, 0.0);
            }
            let packed = &mut bbuf[..len];
            let stream = match (b, kern.gemm_micro_stream) {
                (BRows::F32Cols { data, ld }, Some(kernel)) => {
                    // Full panels are packed by the first chunk's tiles; a
                    // partial last one here.
                    let full = (jb1 - jb0) / NR;
                    if full * NR < jb1 - jb0 {
                        (kern.gemm_pack_b)(b, k, jb0 + full * NR, jb1, k0, kc, &mut packed[full * kc * NR..]);
                    }
                    Some(Stream { src: data.as_ptr().add(k0 * ld + jb0), ld, full, kernel })
                }
                _ => {
                    (kern.gemm_pack_b)(b, k, jb0, jb1, k0, kc, packed);
                    None
                }
            };
            let b = BlockB { at: packed.as_mut_ptr().cast_const(), stride: kc * NR, cols: jb1 - jb0 };
            block_times_a(tiles, k0, b, c.add(jb0 - j0), ldc, stream);
        }
    }
}

/// A k-block of a column block's k-major f32 B for [`MicroKernelStream`]: its
/// `full` whole panels, from column `src` (rows `ld` apart).
#[derive(Clone, Copy)]
struct Stream {
    src: *const f32,
    ld: usize,
    full: usize,
    kernel: MicroKernelStream,
}

/// A as the micro-kernel reads it.
#[derive(Clone, Copy)]
pub enum AOperand<'a> {
    /// Packed panels.
    Packed(&'a PackedA),
    /// Activations read in place by [`Kernels::gemm_micro_rows`]; made by
    /// [`AOperand::rows`].
    Rows(RowMajorA<'a>),
}

/// Row-major `n × k` activations (`a`): `k ≤ KC`, or any `k` on a table with wide tiles.
#[derive(Clone, Copy)]
pub struct RowMajorA<'a> {
    a: &'a [f32],
    n: usize,
    k: usize,
}

impl<'a> AOperand<'a> {
    /// Row-major `a` (`n × k`) read in place, where that needs no packing:
    /// `kern` has a row-reading micro-kernel, and `k` is one k-block (so a
    /// chunk of `MC_PANELS` panels is one contiguous stretch of A, as packed)
    /// or the table has wide tiles (whose pair of A panels, read across a
    /// block's B panels from L1, is fetched once per column block: in place,
    /// twelve rows of one k-block, where the 6 × 16 tiles' chunks read past
    /// the k-block's end ran 8% slower than packed). `None` otherwise: pack A.
    /// Packing 512 × 512 activations was ~4% of a 2-thread 512³ product;
    /// at 4096³ the packing is 64 MiB written and read back.
    pub fn rows(kern: &Kernels, a: &'a [f32], n: usize, k: usize) -> Option<AOperand<'a>> {
        let blocks = (1..=KC).contains(&k) || (kern.gemm_wide.is_some() && k > 0);
        (kern.gemm_micro_rows.is_some() && blocks && Some(a.len()) == n.checked_mul(k))
            .then_some(AOperand::Rows(RowMajorA { a, n, k }))
    }
    pub fn n(&self) -> usize {
        match self {
            AOperand::Packed(pa) => pa.n,
            AOperand::Rows(a) => a.n,
        }
    }
    pub fn k(&self) -> usize {
        match self {
            AOperand::Packed(pa) => pa.k,
            AOperand::Rows(a) => a.k,
        }
    }
}

impl<'a> From<&'a PackedA> for AOperand<'a> {
    fn from(pa: &'a PackedA) -> Self {
        AOperand::Packed(pa)
    }
}

/// Where A's tiles come from.
#[derive(Clone, Copy)]
enum ASource<'a> {
    Packed(&'a PackedA),
    /// Full panels read in place; the partial last one (rows past `n`) from
    /// `last`, its packing (k-block after k-block).
    Rows { a: RowMajorA<'a>, last: &'a [f32] },
}

/// A's tiles with the micro-kernels that read them: `packed` on packed
/// panels, `rows` (set for [`ASource::Rows`]) on rows in place, and the
/// table's `wide` tile where it has one.
struct Tiles<'a, E> {
    a: ASource<'a>,
    packed: MicroKernelOf<E>,
    rows: Option<MicroKernelRowsOf<E>>,
    wide: Option<WideKernelOf<E>>,
}

impl<E> Clone for Tiles<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Tiles<'_, E> {}

impl<E> Tiles<'_, E> {
    fn n(&self) -> usize {
        match self.a {
            ASource::Packed(pa) => pa.n,
            ASource::Rows { a, .. } => a.n,
        }
    }
    fn k(&self) -> usize {
        match self.a {
            ASource::Packed(pa) => pa.k,
            ASource::Rows { a, .. } => a.k,
        }
    }

    /// Panel `p` of k-block `kb`: a pointer and A's row stride, 0 for packed
    /// (as [`MicroKernelStream`] and [`WideKernelOf`] take it). A full panel
    /// in place or packed is followed by panel `p + 1` as the wide tile
    /// reads it.
    fn a_tile(&self, kb: usize, p: usize) -> (*const f32, usize) {
        match self.a {
            ASource::Packed(pa) => (pa.block(kb, p).as_ptr(), 0),
            ASource::Rows { a, .. } if (p + 1) * MR <= a.n => (a.a[p * MR * a.k + kb * KC..].as_ptr(), a.k),
            ASource::Rows { last, .. } => (last[kb * KC * MR..].as_ptr(), 0),
        }
    }

    /// The micro-kernel on panel `p` of k-block `kb` (`kc` steps).
    ///
    /// # Safety
    /// As [`MicroKernel`] for `bq`, `c` and `ldc`.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(&self, kb: usize, kc: usize, p: usize, bq: *const E, c: *mut f32, ldc: usize, add: bool) {
        let (ap, lda) = self.a_tile(kb, p);
        match self.rows {
            Some(rows) if lda > 0 => rows(kc, ap, lda, bq, c, ldc, add),
            _ => (self.packed)(kc, ap, bq, c, ldc, add),
        }
    }

    /// The chunk of `MC_PANELS` panels (k-block `kb`, `kc` steps) after the
    /// one from panel `pc`, to prefetch over `calls` micro-kernel calls.
    fn next_chunk(&self, kb: usize, kc: usize, pc: usize, calls: usize) -> NextChunk {
        if !prefetch_next_chunk() {
            return NextChunk { at: core::ptr::null(), lines: 0, per_call: 0 };
        }
        let (data, at) = match self.a {
            ASource::Packed(pa) => (pa.data.as_slice(), pa.block_range(kb * KC, pc).start),
            ASource::Rows { a, .. } => (a.a, pc * MR * a.k),
        };
        NextChunk::after(data, at + MC_PANELS * MR * kc, MC_PANELS * MR * kc, calls)
    }
}

/// [`gemm_packed_raw`] with B already in panels over the whole of k
/// ([`crate::panels`]): rows `0..m` of `b`, read in place by the micro-kernel
/// of their element type. Panics where the table has no such kernel.
///
/// # Safety
/// As [`gemm_packed_raw`], for columns `0..m`.
pub unsafe fn gemm_panels_raw(kern: &Kernels, a: &PackedA, b: Panels<'_>, m: usize, c: *mut f32, ldc: usize) {
    let (n, k) = (a.n, a.k);
    assert!(Some(b.len()) == crate::panels::panels_len(m, k), "gemm_panels: B is not {m} rows of {k}");
    if k == 0 {
        return zero_columns(c, n, ldc, m);
    }
    let a = ASource::Packed(a);
    let wide = kern.gemm_wide;
    match b {
        Panels::F32(w) => {
            let tiles = Tiles { a, packed: kern.gemm_micro, rows: None, wide: wide.map(|w| w.f32) };
            panels_times_a(tiles, w, m, c, ldc)
        }
        Panels::F16(w) => {
            let packed = kern.gemm_micro_f16.expect("gemm_panels: no f16 micro-kernel");
            panels_times_a(Tiles { a, packed, rows: None, wide: wide.map(|w| w.f16) }, w, m, c, ldc)
        }
        Panels::Bf16(w) => {
            let packed = kern.gemm_micro_bf16.expect("gemm_panels: no bf16 micro-kernel");
            panels_times_a(Tiles { a, packed, rows: None, wide: wide.map(|w| w.bf16) }, w, m, c, ldc)
        }
    }
}

/// The product of an empty k: the first `cols` outputs of each of `n` rows zero.
///
/// # Safety
/// As [`gemm_packed_raw`]'s output.
unsafe fn zero_columns(c: *mut f32, n: usize, ldc: usize, cols: usize) {
    for i in 0..n {
        core::ptr::write_bytes(c.add(i * ldc), 0, cols);
    }
}

/// [`gemm_panels_raw`] for panels of `E`.
unsafe fn panels_times_a<E>(a: Tiles<'_, E>, w: &[E], m: usize, c: *mut f32, ldc: usize) {
    let k = a.k();
    let panel = k * NR;
    if a.n().div_ceil(MR) <= MC_PANELS {
        // A short prompt, whose packed A stays in cache: each weight panel is read
        // once, front to back, as one stream (block by block, the 16 panels of a
        // column block would be 16 interleaved streams from memory).
        // (Two at a time, as two streams, for the wide tile.)
        let step = if a.wide.is_some() { 2 } else { 1 };
        for q in (0..m.div_ceil(NR)).step_by(step) {
            for k0 in (0..k).step_by(KC) {
                let bp = w[q * panel + k0 * NR..].as_ptr();
                let b = BlockB { at: bp, stride: panel, cols: (step * NR).min(m - q * NR) };
                block_times_a(a, k0, b, c.add(q * NR), ldc, None);
            }
        }
        return;
    }
    // Column blocks of JB rows, as the packing path: the block's panels (L2) meet
    // each chunk of A across the k loop.
    for jb0 in (0..m).step_by(JB) {
        for k0 in (0..k).step_by(KC) {
            let bp = w[jb0 / NR * panel + k0 * NR..].as_ptr();
            block_times_a(a, k0, BlockB { at: bp, stride: panel, cols: JB.min(m - jb0) }, c.add(jb0), ldc, None);
        }
    }
}

/// A k-block of a column block's B panels: `cols` columns, the first panel
/// at `at`, the next `stride` elements on, each `kc × NR` from there.
struct BlockB<E> {
    at: *const E,
    stride: usize,
    cols: usize,
}

/// One k-block (from `k0`) of a column block: every A panel times the B
/// panels `b`, added to `c` (stored for the first k-block). With a `stream`,
/// the first chunk of A panels packs the whole B panels as it goes.
///
/// # Safety
/// `b.at` holds the panels (writable f32 for the whole ones when `stream` is
/// given, which then holds their source rows); `c` as in [`gemm_packed_raw`]
/// for `b.cols` columns.
unsafe fn block_times_a<E>(a: Tiles<'_, E>, k0: usize, b: BlockB<E>, c: *mut f32, ldc: usize, stream: Option<Stream>) {
    debug_assert!(stream.is_none() || core::mem::size_of::<E>() == 4, "a stream packs f32 panels");
    if let Some(wide) = a.wide {
        debug_assert!(stream.is_none(), "tables with wide tiles have no streaming tile");
        return block_times_a_wide(a, wide, k0, b, c, ldc);
    }
    let BlockB { at: bp, stride, cols } = b;
    let (n, kb) = (a.n(), k0 / KC);
    let kc = KC.min(a.k() - k0);
    let panels_b = cols.div_ceil(NR);
    let panels = n.div_ceil(MR);
    for pc in (0..panels).step_by(MC_PANELS) {
        let chunk = MC_PANELS.min(panels - pc);
        let mut ahead = a.next_chunk(kb, kc, pc, panels_b * chunk);
        for q in 0..panels_b {
            let bq = bp.add(q * stride);
            let w = NR.min(cols - q * NR);
            // The first chunk packs B's whole panels as it goes.
            let stream = stream.filter(|s| pc == 0 && q < s.full);
            // Each of its tiles fetches a share of the next panel's source rows:
            // spread over the chunk, they arrive in time at a rate memory keeps
            // up with (the packing tile fetching its own rows ahead stalled on
            // them). Fetching the next k-block's first panel during the last
            // panel measured 1-3% slower.
            let (ahead_at, ahead_rows) = match stream {
                Some(s) if q + 1 < s.full => (s.src.wrapping_add((q + 1) * NR), kc),
                _ => (core::ptr::null(), 0),
            };
            let per_tile = ahead_rows.div_ceil(chunk);
            for p in pc..pc + chunk {
                ahead.step();
                edge_tile(n, w, kb, c.add(p * MR * ldc + q * NR), ldc, p, |dst, ld, add| match stream {
                    Some(s) => {
                        let (ap, lda) = a.a_tile(kb, p);
                        let first = (p - pc) * per_tile;
                        let b = BStream {
                            panel: bq.cast::<f32>().cast_mut(),
                            src: if p == pc { s.src.add(q * NR) } else { core::ptr::null() },
                            ld: s.ld,
                            ahead: ahead_at.wrapping_add(first * s.ld),
                            ahead_rows: per_tile.min(ahead_rows.saturating_sub(first)),
                        };
                        (s.kernel)(kc, ap, lda, &b, dst, ld, add)
                    }
                    None => a.tile(kb, kc, p, bq, dst, ld, add),
                });
            }
        }
    }
}

/// [`block_times_a`] on a table with a wide tile (and B packed or resident):
/// each pair of A panels meets every pair of the block's B panels in turn.
/// The pair (24 KiB at `KC`) is read across the block from L1 while the B
/// panels stream from L2, where the 6 × 16 tiles keep a B panel in L1 and
/// stream A (a pair of B panels is 64 KiB). The panels left over (an odd
/// one, partial ones) go through the table's 6 × 16 tile.
///
/// # Safety
/// As [`block_times_a`].
unsafe fn block_times_a_wide<E>(a: Tiles<'_, E>, wide: WideKernelOf<E>, k0: usize, b: BlockB<E>, c: *mut f32, ldc: usize) {
    let BlockB { at: bp, stride, cols } = b;
    let (n, kb) = (a.n(), k0 / KC);
    let kc = KC.min(a.k() - k0);
    let (panels, panels_b) = (n.div_ceil(MR), cols.div_ceil(NR));
    // Pairs of whole panels only: a partial one needs the edge buffer.
    let (pairs, pairs_b) = (n / MR / 2, cols / NR / 2);
    let narrow = |p: usize, q: usize| {
        let w = NR.min(cols - q * NR);
        let bq = bp.add(q * stride);
        edge_tile(n, w, kb, c.add(p * MR * ldc + q * NR), ldc, p, |dst, ld, add| a.tile(kb, kc, p, bq, dst, ld, add));
    };
    for p in (0..2 * pairs).step_by(2) {
        let (ap, lda) = a.a_tile(kb, p);
        let out = c.add(p * MR * ldc);
        for q in (0..2 * pairs_b).step_by(2) {
            wide(kc, ap, lda, bp.add(q * stride), stride, out.add(q * NR), ldc, kb > 0);
        }
        for q in 2 * pairs_b..panels_b {
            narrow(p, q);
            narrow(p + 1, q);
        }
    }
    for p in 2 * pairs..panels {
        for q in 0..panels_b {
            narrow(p, q);
        }
    }
}

/// The tile of A panel `p` at `out` (`w ≤ NR` columns of k-block `kb`), by
/// `run(dst, ld, add)`, the micro-kernel writing `MR` rows of `NR` at `dst`:
/// in place when the tile is whole, else into a full-size buffer whose valid
/// part is then stored into (first k-block) or added to `out`.
///
/// # Safety
/// `out` as [`gemm_packed_raw`]'s output for the tile's valid rows and columns.
#[inline(always)]
unsafe fn edge_tile(n: usize, w: usize, kb: usize, out: *mut f32, ldc: usize, p: usize, run: impl FnOnce(*mut f32, usize, bool)) {
    let rows = MR.min(n - p * MR);
    if rows == MR && w == NR {
        return run(out, ldc, kb > 0);
    }
    let mut edge = [0f32; MR * NR];
    run(edge.as_mut_ptr(), NR, false);
    for r in 0..rows {
        let (d, s) = (out.add(r * ldc), &edge[r * NR..r * NR + w]);
        if kb == 0 {
            // Written, not read: the output may be uninitialized.
            core::ptr::copy_nonoverlapping(s.as_ptr(), d, w);
        } else {
            std::slice::from_raw_parts_mut(d, w).iter_mut().zip(s).for_each(|(d, s)| *d += s);
        }
    }
}

/// Prefetches the next chunk of packed A into L2 while the current one is in use,
/// a few lines per micro-kernel call. Otherwise the first B panel to meet a chunk
/// reads it from memory or L3 (every column block re-reads all of A): +2-4%
/// single-thread on square products of n ≥ 1024 (Zen 4). Only where L2 holds
/// two chunks beside the B traffic ([`prefetch_next_chunk`]).
struct NextChunk {
    at: *const u8,
    lines: usize,
    per_call: usize,
}

impl NextChunk {
    /// The `chunk` values that follow offset `end` in `data` (the start of
    /// `data` after its last chunk), spread over `calls` micro-kernel calls.
    fn after(data: &[f32], end: usize, chunk: usize, calls: usize) -> NextChunk {
        let bytes = core::mem::size_of_val(data);
        let base = data.as_ptr() as *const u8;
        let off = (end * 4) % bytes.max(1);
        let lines = (bytes - off).min(chunk * 4) / 64;
        NextChunk {
            at: base.wrapping_add(off),
            lines,
            per_call: lines.div_ceil(calls.max(1)),
        }
    }

    #[inline(always)]
    fn step(&mut self) {
        let n = self.per_call.min(self.lines);
        for i in 0..n {
            prefetch_l2(self.at.wrapping_add(64 * i));
        }
        self.at = self.at.wrapping_add(64 * n);
        self.lines -= n;
    }
}

/// Whether [`NextChunk`] prefetches: where a core's L2 is 1 MiB or more (Zen 4,
/// recent Intel cores), or unknown. On Zen 3's 512 KiB the next chunk evicted
/// the one in use and the B panels: without the prefetch, 2-thread f32
/// products of n = 512-4096 ran 0-3% faster there.
fn prefetch_next_chunk() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| l2_kib().is_none_or(|kib| kib >= 1024))
}

/// The L2 cache of a core in KiB, where the CPU says (CPUID leaf 0x8000_0006,
/// which AMD and Intel both fill).
fn l2_kib() -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86-64 CPU; the leaf is asked for only
        // where the highest extended leaf reaches it.
        #[allow(unused_unsafe)]
        let kib = unsafe { (__cpuid(0x8000_0000).eax >= 0x8000_0006).then(|| __cpuid(0x8000_0006).ecx >> 16) };
        kib.filter(|&k| k > 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// A hint to fetch the line at `p` into L2 (never faults).
#[inline(always)]
fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch does not access memory architecturally.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T1 }>(p as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above (PRFM never faults).
    unsafe {
        core::arch::asm!("prfm pldl2keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// Reusable packing buffers of one thread.
#[derive(Default)]
pub struct GemmScratch {
    b: Vec<f32>,
    /// The partial last panel of A read in place, packed.
    last: Vec<f32>,
}

/// Portable [`MicroKernelRows`]: [`micro_kernel_scalar`] with A's rows read in place.
///
/// # Safety
/// As [`MicroKernelRows`].
pub unsafe fn micro_kernel_rows_scalar(
    kc: usize,
    ap: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    scalar_tile(kc, ap, lda, 1, bp, c, ldc, add)
}

/// Portable [`MicroKernelStream`]: the panel packed from its source rows (if
/// asked) by [`pack_b`], then [`micro_kernel_scalar`] or
/// [`micro_kernel_rows_scalar`] on it; prefetches nothing.
///
/// # Safety
/// As [`MicroKernelStream`].
pub unsafe fn micro_kernel_stream_scalar(kc: usize, ap: *const f32, lda: usize, b: &BStream, c: *mut f32, ldc: usize, add: bool) {
    if !b.src.is_null() && kc > 0 {
        let rows = BRows::F32Cols { data: std::slice::from_raw_parts(b.src, (kc - 1) * b.ld + NR), ld: b.ld };
        pack_b(rows, kc, 0, NR, 0, kc, std::slice::from_raw_parts_mut(b.panel, kc * NR));
    }
    if lda == 0 {
        scalar_tile(kc, ap, 1, MR, b.panel, c, ldc, add)
    } else {
        scalar_tile(kc, ap, lda, 1, b.panel, c, ldc, add)
    }
}

/// Portable micro-kernel (the reference for the SIMD ones); see [`MicroKernel`].
///
/// # Safety
/// As [`MicroKernel`].
pub unsafe fn micro_kernel_scalar(
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    scalar_tile(kc, ap, 1, MR, bp, c, ldc, add)
}

/// The scalar tile with A's value `(r, kk)` at `ap[r · rs + kk · cs]`.
///
/// # Safety
/// As [`MicroKernel`], for that layout of A.
#[allow(clippy::too_many_arguments)]
unsafe fn scalar_tile(kc: usize, ap: *const f32, rs: usize, cs: usize, bp: *const f32, c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [0f32; MR * NR];
    for kk in 0..kc {
        for r in 0..MR {
            let a = *ap.add(r * rs + kk * cs);
            for j in 0..NR {
                acc[r * NR + j] += a * *bp.add(kk * NR + j);
            }
        }
    }
    for r in 0..MR {
        for j in 0..NR {
            let d = c.add(r * ldc + j);
            *d = if add {
                *d + acc[r * NR + j]
            } else {
                acc[r * NR + j]
            };
        }
    }
}
