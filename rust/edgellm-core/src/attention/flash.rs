//! Flash attention on the CPU: the same result as [`super::naive::naive_attend`] (and as the
//! f64 reference in [`super::naive`]) without materialising the score matrix.
//!
//! - Keys are visited in blocks of [`KEY_BLOCK`]; each query row keeps a running
//!   maximum `m`, a running sum `l` and an f32 accumulator, rescaled by
//!   `exp(m_old − m_new)` when the maximum grows (online softmax).
//! - The query heads of one GQA/MQA group, for a block of query tokens, form the
//!   rows of one task, so each key block is read once per group. Short tasks
//!   (decoding) take the scores as one `rows × block` dot-product matmul
//!   (`Kernels::matmul_f32`, queries pre-scaled) and accumulate values with
//!   `Kernels::axpy`; tasks of at least 16 rows (prompts) multiply the queries
//!   by key blocks transposed once per call, then the probabilities by the value
//!   blocks in place, both through `Kernels::matmul_nn_f32` (broadcast-FMA tiles:
//!   a 512-token TinyLlama prompt spent a fifth of its time in the dot-product
//!   form's horizontal sums). Tokens of a task that see nothing of a key block
//!   (above the causal diagonal, outside the window) are left out of its products.
//! - Causal mask, sliding window (query at `p` sees keys `p − window < j ≤ p`) and
//!   soft-capping (`cap · tanh(s / cap)`, applied to the scaled score before the
//!   mask) as in [`super::AttentionParams`].
//! - Tasks are `(kv head, query block, key chunk)`, run on the current pool. A few query
//!   tokens over a long context (decoding: at most [`SPLIT_MAX_TOKENS`] queries,
//!   more than [`SPLIT_MIN_KEYS`] keys) split the keys into chunks of
//!   [`CHUNK_BLOCKS`] blocks whose partial `(m, l, acc)` are merged in chunk
//!   order afterwards (flash-decoding). The task split depends only on the shapes,
//!   never on the thread count, so results are bit-identical for any pool size.
//! - Optionally, the attention weight each key receives, summed over queries and
//!   heads, is added into a caller buffer (H2O-style heavy-hitter statistics); it
//!   costs a second pass over the scores with the final `(m, l)` of every row.

use super::AttentionParams;
use crate::kv_cache::KvCache;
use crate::ops::par::{self, SharedMut};
use crate::ops::reuse::{reserve_for, Reused, Slot};
use std::cell::RefCell;
use edgellm_kernels::Kernels;

/// Keys per block of the online softmax.
pub const KEY_BLOCK: usize = 64;
/// Query rows (query tokens × heads of one KV group) per task, at most.
const ROWS_PER_TASK: usize = 48;
/// Flash-decoding: split the keys across tasks when there are at most this many
/// query tokens...
pub const SPLIT_MAX_TOKENS: usize = 16;
/// ...and more than this many keys.
pub const SPLIT_MIN_KEYS: usize = 512;
/// Key blocks per chunk when the keys are split.
pub const CHUNK_BLOCKS: usize = 4;
/// Tasks of at least this many rows take their products through
/// `matmul_nn_f32` (scores against keys transposed once per call,
/// probabilities against the values) instead of a dot-product matmul and one
/// `axpy` per row and key.
const TALL_MIN_ROWS: usize = 16;

/// Causal attention of `q` (`[n × num_heads × head_dim]`, positions
/// `pos0..pos0+n`) over layer `layer` of `cache`, whose keys and values for
/// positions `0..pos0+n` must already be written. Writes
/// `out` (`[n × num_heads × head_dim]`). Same contract as [`super::naive::naive_attend`].
///
/// If `mass` is given (`pos0 + n` floats), the softmax weight of every key,
/// summed over all queries and heads, is *added* to it.
#[allow(clippy::too_many_arguments)]
pub fn flash_attend(
    k: &Kernels,
    p: &AttentionParams,
    cache: &KvCache,
    layer: usize,
    pos0: usize,
    q: &[f32],
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) {
    check_params(p);
    let n = q.len() / (p.num_heads * p.head_dim);
    let (keys, values): (Vec<&[f32]>, Vec<&[f32]>) =
        (0..p.num_kv_heads).map(|h| cache.head(layer, h, pos0 + n)).unzip();
    flash_attend_slices(k, p, &keys, &values, pos0, q, out, mass)
}

/// [`flash_attend`] over keys and values given per KV head: `keys[h]` and
/// `values[h]` hold at least `pos0 + n` rows of `head_dim` floats
/// (`[position][head_dim]`, the layout of [`KvCache::head`]).
#[allow(clippy::too_many_arguments)]
pub fn flash_attend_slices(
    k: &Kernels,
    p: &AttentionParams,
    keys: &[&[f32]],
    values: &[&[f32]],
    pos0: usize,
    q: &[f32],
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) {
    check_params(p);
    let hd = p.head_dim;
    assert_eq!(q.len() % (p.num_heads * hd), 0, "q is not [n × heads × head_dim]");
    let kv_len = pos0 + q.len() / (p.num_heads * hd);
    assert!(keys.len() == p.num_kv_heads && values.len() == p.num_kv_heads, "one key and value slice per KV head");
    for (kh, vh) in keys.iter().zip(values) {
        assert!(kh.len() >= kv_len * hd && vh.len() >= kv_len * hd, "fewer cached positions than pos0 + n");
    }
    let kv = KvParts::new(
        [KvPart::slices(
            0,
            kv_len,
            keys.iter().map(|s| &s[..kv_len * hd]).collect(),
            values.iter().map(|s| &s[..kv_len * hd]).collect(),
        )],
        kv_len,
        None,
    );
    run(k, p, &kv, &Causal { pos0, window: p.window }, q, out, mass);
}

pub(crate) fn check_params(p: &AttentionParams) {
    assert!(p.num_heads > 0 && p.num_kv_heads > 0, "attention needs heads");
    assert_eq!(p.num_heads % p.num_kv_heads, 0, "num_heads must be a multiple of num_kv_heads");
    assert!(p.head_dim > 0, "head_dim must be positive");
}

/// Parts one attention call reads at most: sinks and window; a prefix and a
/// tree's nodes.
const MAX_PARTS: usize = 2;

/// The keys and values attended to, as consecutive parts (global key indices
/// `start..start+len`), each contiguous per KV head (`[position][head_dim]`).
pub(crate) struct KvParts<'a> {
    parts: [Option<KvPart<'a>>; MAX_PARTS],
    /// Total number of keys (the parts cover `0..len` in order).
    pub len: usize,
    /// Query-aware selection: `select[kv_head · blocks + j0 / KEY_BLOCK]` (with
    /// `blocks = len.div_ceil(KEY_BLOCK)`) says whether the key block starting
    /// at `j0` is attended by that head (one part from 0).
    pub select: Option<&'a [bool]>,
}

impl<'a> KvParts<'a> {
    /// Panics past [`MAX_PARTS`] parts.
    pub fn new(parts: impl IntoIterator<Item = KvPart<'a>>, len: usize, select: Option<&'a [bool]>) -> Self {
        let mut slots = [None, None];
        for (i, part) in parts.into_iter().enumerate() {
            assert!(i < MAX_PARTS, "attention reads at most {MAX_PARTS} KV parts");
            slots[i] = Some(part);
        }
        KvParts { parts: slots, len, select }
    }

    fn part(&self, i: usize) -> &KvPart<'a> {
        self.parts[i].as_ref().expect("blocks name existing parts")
    }

    fn skips(&self, kvh: usize, b: Block) -> bool {
        self.select.is_some_and(|s| !s[kvh * self.len.div_ceil(KEY_BLOCK) + b.j0 / KEY_BLOCK])
    }
}

pub(crate) struct KvPart<'a> {
    pub start: usize,
    pub len: usize,
    pub data: KvData<'a>,
}

/// Where a part's keys and values come from.
pub(crate) enum KvData<'a> {
    /// f32 rows per KV head (`[position][head_dim]`), read in place.
    Slices { keys: Vec<&'a [f32]>, values: Vec<&'a [f32]> },
    /// f32 rows of every KV head in one buffer, head `h` from `h · stride`
    /// (`[position][head_dim]`), read in place: a cache's own storage, with no
    /// list of per-head slices to build on every call.
    Strided { keys: &'a [f32], values: &'a [f32], stride: usize },
    /// A packed (f16, int8, KIVI...) cache, decoded one key block at a time into a
    /// task's scratch, so the whole cache is never expanded.
    Tiles(&'a dyn KvTiles),
}

/// A packed store that decodes rows `r0..r1` (relative to its part) of one KV head
/// into `out` (`(r1 − r0) × head_dim` floats, `[position][head_dim]`).
pub(crate) trait KvTiles: Sync {
    fn keys(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]);
    fn values(&self, head: usize, r0: usize, r1: usize, out: &mut [f32]);
    /// Sizes the calling thread's own decode buffers, if the store keeps any:
    /// called by every thread that joins a parallel loop over the store (see
    /// [`Scratch::reserve`]).
    fn reserve_thread(&self) {}
}

impl<'a> KvPart<'a> {
    pub fn slices(start: usize, len: usize, keys: Vec<&'a [f32]>, values: Vec<&'a [f32]>) -> Self {
        KvPart { start, len, data: KvData::Slices { keys, values } }
    }

    /// Keys (`values == false`) or values of block `j0..j1` (global indices) of
    /// KV head `h`: borrowed in place, or decoded into `buf`.
    fn block<'b>(&'b self, h: usize, j0: usize, j1: usize, hd: usize, values: bool, buf: &'b mut Vec<f32>) -> &'b [f32] {
        let (r0, r1) = (j0 - self.start, j1 - self.start);
        match &self.data {
            KvData::Slices { keys, values: vals } => &(if values { vals } else { keys })[h][r0 * hd..r1 * hd],
            KvData::Strided { keys, values: vals, stride } => {
                &(if values { vals } else { keys })[h * stride + r0 * hd..h * stride + r1 * hd]
            }
            KvData::Tiles(t) => {
                block_room(buf, r1 - r0, hd);
                let out = &mut buf[..(r1 - r0) * hd];
                if values {
                    t.values(h, r0, r1, out);
                } else {
                    t.keys(h, r0, r1, out);
                }
                out
            }
        }
    }
}

/// Grows `buf` to hold `keys` decoded rows of `hd`, and never to less than a
/// whole block: the last block grows by a key per decode step, and a reused
/// buffer then never has to grow.
fn block_room(buf: &mut Vec<f32>, keys: usize, hd: usize) {
    let len = KEY_BLOCK.max(keys) * hd;
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// Which keys (global indices) each query token sees.
pub(crate) trait Mask: Sync {
    /// `[lo, hi)` containing every key query `t` sees.
    fn bounds(&self, t: usize) -> (usize, usize);
    /// Whether query `t` sees every key of `[j0, j1)` (by default: it lies
    /// within the bounds, for masks that are one interval per query).
    fn full(&self, t: usize, j0: usize, j1: usize) -> bool {
        let (lo, hi) = self.bounds(t);
        j0 >= lo && j1 <= hi
    }
    /// Whether query `t` sees key `j` (by default: within the bounds).
    fn sees(&self, t: usize, j: usize) -> bool {
        let (lo, hi) = self.bounds(t);
        (lo..hi).contains(&j)
    }
}

/// Causal (+ sliding window) mask of queries at positions `pos0..`; key `j` sits at
/// position `j`.
pub(crate) struct Causal {
    pub pos0: usize,
    pub window: Option<usize>,
}

impl Mask for Causal {
    fn bounds(&self, t: usize) -> (usize, usize) {
        let pos = self.pos0 + t;
        (self.window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos + 1)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vis {
    None,
    Full,
    Partial,
}

fn classify(mask: &impl Mask, t: usize, j0: usize, j1: usize) -> Vis {
    let (lo, hi) = mask.bounds(t);
    if j1 <= lo || j0 >= hi {
        Vis::None
    } else if mask.full(t, j0, j1) {
        Vis::Full
    } else {
        Vis::Partial
    }
}

/// One key block: part index and global key range.
#[derive(Clone, Copy)]
struct Block {
    part: usize,
    j0: usize,
    j1: usize,
}

#[derive(Default)]
struct Scratch {
    s: Vec<f32>,
    vis: Vec<Vis>,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    /// `P · V` of one block (`rows × head_dim`), in the transposed-values mode.
    pv: Vec<f32>,
    live: Vec<bool>,
    /// Decoded key and value blocks of packed parts.
    kt: Vec<f32>,
    vtile: Vec<f32>,
}

/// Shapes shared by the passes.
struct Plan<'a, M: Mask> {
    k: &'a Kernels,
    p: &'a AttentionParams,
    kv: &'a KvParts<'a>,
    mask: &'a M,
    /// Queries, times the scale, packed per KV head:
    /// `[kv_head][token][head in group][head_dim]`, so the rows of a task are contiguous.
    qp: Vec<f32>,
    n: usize,
    group: usize,
    qb_tokens: usize,
    blocks: Vec<Block>,
    /// Keys transposed per block, `[kv head][block: head_dim × block keys]`
    /// (block `b` of head `h` at `(h · kv.len + b.j0) · head_dim`), if tasks are
    /// tall enough to use them.
    kt: Option<Vec<f32>>,
}

impl<M: Mask> Plan<'_, M> {
    fn nqb(&self) -> usize {
        self.n.div_ceil(self.qb_tokens)
    }
    fn tokens(&self, qb: usize) -> (usize, usize) {
        let t0 = qb * self.qb_tokens;
        (t0, (t0 + self.qb_tokens).min(self.n))
    }
    fn qrows(&self, kvh: usize, t0: usize, t1: usize) -> &[f32] {
        let w = self.group * self.p.head_dim;
        &self.qp[(kvh * self.n + t0) * w..(kvh * self.n + t1) * w]
    }

    /// Scores of the rows of tokens `t0..t1` (KV head `kvh`) against block `b`,
    /// soft-capped and masked (−∞). Only the tokens `ta..tb` from the first to the
    /// last that sees some key of the block are computed, into `sc.s`
    /// (`(tb − ta) · group × block`); returns `(ta, tb)`, or None if no token sees
    /// the block.
    fn scores(&self, kvh: usize, t0: usize, t1: usize, b: Block, sc: &mut Scratch) -> Option<(usize, usize)> {
        let (g, hd) = (self.group, self.p.head_dim);
        sc.vis.clear();
        sc.vis.extend((t0..t1).map(|t| classify(self.mask, t, b.j0, b.j1)));
        let ta = t0 + sc.vis.iter().position(|v| *v != Vis::None)?;
        let tb = t0 + sc.vis.iter().rposition(|v| *v != Vis::None)? + 1;
        let bk = b.j1 - b.j0;
        let rows = (tb - ta) * g;
        if sc.s.len() < rows * bk {
            // A whole block's worth (see `KvPart::block`).
            sc.s.resize(rows * KEY_BLOCK.max(bk), 0.0);
        }
        let s = &mut sc.s[..rows * bk];
        match &self.kt {
            Some(kt) => {
                let ktb = &kt[(kvh * self.kv.len + b.j0) * hd..][..bk * hd];
                (self.k.matmul_nn_f32)(self.qrows(kvh, ta, tb), ktb, hd, bk, s, bk)
            }
            None => {
                let kb = self.kv.part(b.part).block(kvh, b.j0, b.j1, hd, false, &mut sc.kt);
                (self.k.matmul_f32)(self.qrows(kvh, ta, tb), kb, hd, s, bk)
            }
        }
        for (ti, (v, srow)) in sc.vis[ta - t0..tb - t0].iter().zip(s.chunks_exact_mut(g * bk)).enumerate() {
            if *v == Vis::None {
                srow.fill(f32::NEG_INFINITY);
                continue;
            }
            if let Some(cap) = self.p.softcap {
                srow.iter_mut().for_each(|x| *x = (*x / cap).tanh() * cap);
            }
            if *v == Vis::Partial {
                for jj in 0..bk {
                    if !self.mask.sees(ta + ti, b.j0 + jj) {
                        for hh in 0..g {
                            srow[hh * bk + jj] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        Some((ta, tb))
    }

    /// Online softmax of one task (rows of tokens `t0..t1`, KV head `kvh`) over
    /// `blocks`, leaving `(m, l, acc)` in the scratch.
    fn task(&self, kvh: usize, t0: usize, t1: usize, blocks: &[Block], sc: &mut Scratch) {
        let hd = self.p.head_dim;
        let rows = (t1 - t0) * self.group;
        sc.m.clear();
        sc.m.resize(rows, f32::NEG_INFINITY);
        sc.l.clear();
        sc.l.resize(rows, 0.0);
        sc.acc.clear();
        sc.acc.resize(rows * hd, 0.0);
        for &b in blocks {
            if self.kv.skips(kvh, b) {
                continue;
            }
            let Some((ta, tb)) = self.scores(kvh, t0, t1, b, sc) else { continue };
            let bk = b.j1 - b.j0;
            let Scratch { s, m, l, acc, pv, live, vtile, .. } = sc;
            let vb = self.kv.part(b.part).block(kvh, b.j0, b.j1, hd, true, vtile);
            // Rows ta..tb of the task.
            let (r0, rows) = ((ta - t0) * self.group, (tb - ta) * self.group);
            let (m, l, acc) = (&mut m[r0..r0 + rows], &mut l[r0..r0 + rows], &mut acc[r0 * hd..(r0 + rows) * hd]);
            live.clear();
            for (r, srow) in s[..rows * bk].chunks_exact_mut(bk).enumerate() {
                let mb = max(srow);
                live.push(mb != f32::NEG_INFINITY);
                if mb == f32::NEG_INFINITY {
                    continue;
                }
                let accr = &mut acc[r * hd..(r + 1) * hd];
                let m_new = m[r].max(mb);
                let alpha = exp_neg(m[r] - m_new);
                if alpha != 1.0 {
                    l[r] *= alpha;
                    accr.iter_mut().for_each(|a| *a *= alpha);
                }
                m[r] = m_new;
                l[r] += (self.k.exp_sum)(srow, m_new);
                if self.kt.is_none() {
                    for (jj, &w) in srow.iter().enumerate() {
                        if w != 0.0 {
                            (self.k.axpy)(w, &vb[jj * hd..(jj + 1) * hd], accr);
                        }
                    }
                }
            }
            if self.kt.is_some() {
                // Rows that saw nothing of this block hold −∞ and are ignored.
                pv.resize(rows * hd, 0.0);
                (self.k.matmul_nn_f32)(&s[..rows * bk], vb, bk, hd, pv, hd);
                for (r, _) in live.iter().enumerate().filter(|(_, l)| **l) {
                    for (a, x) in acc[r * hd..(r + 1) * hd].iter_mut().zip(&pv[r * hd..(r + 1) * hd]) {
                        *a += x;
                    }
                }
            }
        }
    }
}

/// Maximum (−∞ for an empty slice), in 8 lanes so it vectorises; no NaNs here.
#[inline]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, b) in lanes.iter_mut().zip(c) {
            *a = if *b > *a { *b } else { *a };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |a, b| if *b > a { *b } else { a })
}

/// `exp(x)` for `x ≤ 0`, the kernels' reference one (whose bits the
/// `Kernels::exp_sum` paths give).
pub(crate) use edgellm_kernels::scalar::exp_neg;

/// Attention of `q` over `kv` under `mask`; see the module documentation.
pub(crate) fn run<M: Mask>(
    k: &Kernels,
    p: &AttentionParams,
    kv: &KvParts,
    mask: &M,
    q: &[f32],
    out: &mut [f32],
    mass: Option<&mut [f32]>,
) {
    check_params(p);
    let (nh, nkv, hd) = (p.num_heads, p.num_kv_heads, p.head_dim);
    assert_eq!(q.len() % (nh * hd), 0, "q is not [n × heads × head_dim]");
    assert_eq!(out.len(), q.len(), "out must have the shape of q");
    if let Some(m) = &mass {
        assert_eq!(m.len(), kv.len, "mass must have one entry per key");
    }
    let n = q.len() / (nh * hd);
    if n == 0 {
        return;
    }
    let group = nh / nkv;

    // [token][kv head][head in group][hd] → [kv head][token][head in group][hd]
    let gw = group * hd;
    let mut bufs = Reused::take(&RUN_BUFFERS);
    let mut qp = std::mem::take(&mut bufs.qp);
    qp.clear();
    qp.resize(q.len(), 0.0);
    for t in 0..n {
        for kvh in 0..nkv {
            for (d, s) in qp[(kvh * n + t) * gw..][..gw].iter_mut().zip(&q[(t * nkv + kvh) * gw..][..gw]) {
                *d = s * p.scale;
            }
        }
    }
    let mut blocks = std::mem::take(&mut bufs.blocks);
    blocks.clear();
    for (pi, part) in kv.parts.iter().flatten().enumerate() {
        let mut j0 = part.start;
        while j0 < part.start + part.len {
            let j1 = (j0 + KEY_BLOCK).min(part.start + part.len);
            blocks.push(Block { part: pi, j0, j1 });
            j0 = j1;
        }
    }
    let qb_tokens = (ROWS_PER_TASK / group).max(1);
    let kt = (qb_tokens.min(n) * group >= TALL_MIN_ROWS).then(|| {
        let mut kt = vec![0f32; nkv * kv.len * hd];
        par::for_each_chunk_mut(&mut kt, (kv.len * hd).max(1), |h, dst| {
            let mut buf = Vec::new();
            for b in &blocks {
                let src = kv.part(b.part).block(h, b.j0, b.j1, hd, false, &mut buf);
                let bk = b.j1 - b.j0;
                let d = &mut dst[b.j0 * hd..b.j1 * hd];
                for (jj, row) in src.chunks_exact(hd).enumerate() {
                    for (c, x) in row.iter().enumerate() {
                        d[c * bk + jj] = *x;
                    }
                }
            }
        });
        kt
    });
    let plan = Plan { k, p, kv, mask, qp, n, group, qb_tokens, blocks, kt };
    let tiles = || kv.parts.iter().flatten().filter_map(|part| match part.data {
        KvData::Tiles(t) => Some(t),
        _ => None,
    });
    let packed = tiles().next().is_some();
    // Every joining thread's task scratch, sized for this call's tasks.
    let scratch = || {
        let mut sc = task_scratch();
        sc.reserve(qb_tokens.min(n), qb_tokens.min(n) * group, hd, packed);
        tiles().for_each(|t| t.reserve_thread());
        sc
    };
    let nqb = plan.nqb();
    let nb = plan.blocks.len();
    let nchunks = if n <= SPLIT_MAX_TOKENS && kv.len > SPLIT_MIN_KEYS { nb.div_ceil(CHUNK_BLOCKS) } else { 1 };

    // Final (m, l) of every (token, head) row, for the key-mass pass.
    let want_stats = mass.is_some();
    let mut stats = std::mem::take(&mut bufs.stats);
    let (stat_m, stat_l) = &mut stats;
    for s in [&mut *stat_m, &mut *stat_l] {
        s.clear();
        s.resize(if want_stats { n * nh } else { 0 }, 0.0);
    }
    let (sm, sl, so) = (SharedMut::new(stat_m), SharedMut::new(stat_l), SharedMut::new(out));

    // Writes the normalised rows of (kvh, tokens t0..t1) and their stats.
    let finish = |kvh: usize, t0: usize, t1: usize, m: &[f32], l: &[f32], acc: &[f32]| {
        for t in t0..t1 {
            let r0 = (t - t0) * group;
            let h0 = t * nh + kvh * group;
            // SAFETY: the (kvh, token range) of a task is written by that task alone.
            let o = unsafe { so.slice(h0 * hd, gw) };
            for hh in 0..group {
                let r = r0 + hh;
                let inv = if l[r] > 0.0 { 1.0 / l[r] } else { 0.0 };
                for (o, a) in o[hh * hd..(hh + 1) * hd].iter_mut().zip(&acc[r * hd..(r + 1) * hd]) {
                    *o = a * inv;
                }
            }
            if want_stats {
                // SAFETY: as above.
                unsafe {
                    sm.slice(h0, group).copy_from_slice(&m[r0..r0 + group]);
                    sl.slice(h0, group).copy_from_slice(&l[r0..r0 + group]);
                }
            }
        }
    };

    if nchunks == 1 {
        par::for_each_claimed_with(nkv * nqb, &scratch, |sc, ti| {
            let (kvh, qb) = (ti / nqb, ti % nqb);
            let (t0, t1) = plan.tokens(qb);
            plan.task(kvh, t0, t1, &plan.blocks, sc);
            finish(kvh, t0, t1, &sc.m, &sc.l, &sc.acc);
        });
    } else {
        // Flash-decoding: partial states per key chunk (one flat buffer, `rmax`
        // rows per task), merged in chunk order.
        let rmax = plan.qb_tokens.min(n) * group;
        let ntasks = nkv * nqb * nchunks;
        let (pm, pl, pacc) = &mut bufs.partial;
        for (v, len) in [(&mut *pm, ntasks * rmax), (&mut *pl, ntasks * rmax), (&mut *pacc, ntasks * rmax * hd)] {
            v.clear();
            v.resize(len, 0.0);
        }
        let (spm, spl, spacc) = (SharedMut::new(pm), SharedMut::new(pl), SharedMut::new(pacc));
        par::for_each_claimed_with(ntasks, &scratch, |sc, ti| {
            // SAFETY: task ti alone writes its rows of the partial states.
            let (pm, pl, pacc) =
                unsafe { (spm.slice(ti * rmax, rmax), spl.slice(ti * rmax, rmax), spacc.slice(ti * rmax * hd, rmax * hd)) };
            let (g, c) = (ti / nchunks, ti % nchunks);
            let (kvh, qb) = (g / nqb, g % nqb);
            let (t0, t1) = plan.tokens(qb);
            let blocks = &plan.blocks[c * CHUNK_BLOCKS..((c + 1) * CHUNK_BLOCKS).min(nb)];
            plan.task(kvh, t0, t1, blocks, sc);
            let rows = sc.m.len();
            pm[..rows].copy_from_slice(&sc.m);
            pl[..rows].copy_from_slice(&sc.l);
            pacc[..rows * hd].copy_from_slice(&sc.acc);
        });
        let (pm, pl, pacc) = (&*pm, &*pl, &*pacc);
        par::for_each_claimed_with(nkv * nqb, &scratch, |sc, g| {
            let (kvh, qb) = (g / nqb, g % nqb);
            let (t0, t1) = plan.tokens(qb);
            let rows = (t1 - t0) * group;
            let tasks = g * nchunks..(g + 1) * nchunks;
            let Scratch { m, l, acc, .. } = &mut **sc;
            m.clear();
            m.extend((0..rows).map(|r| tasks.clone().map(|ti| pm[ti * rmax + r]).fold(f32::NEG_INFINITY, f32::max)));
            l.clear();
            l.resize(rows, 0.0);
            acc.clear();
            acc.resize(rows * hd, 0.0);
            for ti in tasks {
                for r in 0..rows {
                    let mc = pm[ti * rmax + r];
                    if mc == f32::NEG_INFINITY {
                        continue;
                    }
                    let f = exp_neg(mc - m[r]);
                    l[r] += pl[ti * rmax + r] * f;
                    (k.axpy)(f, &pacc[(ti * rmax + r) * hd..][..hd], &mut acc[r * hd..(r + 1) * hd]);
                }
            }
            finish(kvh, t0, t1, m, l, acc);
        });
    }

    if let Some(mass) = mass {
        // Second pass over the same blocks (hence bit-identical scores), now with
        // every row's final maximum and sum: weight = exp(s − m) / l. Chunks of
        // blocks cover disjoint key ranges, each added into `mass` in place.
        let (stat_m, stat_l) = (&*stat_m, &*stat_l);
        let mass = SharedMut::new(mass);
        par::for_each_claimed_with(nb.div_ceil(CHUNK_BLOCKS), &scratch, |sc, c| {
            let blocks = &plan.blocks[c * CHUNK_BLOCKS..((c + 1) * CHUNK_BLOCKS).min(nb)];
            let c0 = blocks[0].j0;
            // SAFETY: the blocks are in key order and do not overlap, so chunk c
            // alone touches keys c0..(its last block's end).
            let acc = unsafe { mass.slice(c0, blocks[blocks.len() - 1].j1 - c0) };
            for kvh in 0..nkv {
                for qb in 0..nqb {
                    let (t0, t1) = plan.tokens(qb);
                    for &b in blocks {
                        if kv.skips(kvh, b) {
                            continue;
                        }
                        let Some((ta, tb)) = plan.scores(kvh, t0, t1, b, sc) else { continue };
                        let bk = b.j1 - b.j0;
                        let dst = &mut acc[b.j0 - c0..b.j1 - c0];
                        for (r, srow) in sc.s[..(tb - ta) * group * bk].chunks_exact(bk).enumerate() {
                            let (t, hh) = (ta + r / group, r % group);
                            let i = t * nh + kvh * group + hh;
                            if stat_l[i] <= 0.0 {
                                continue;
                            }
                            let (mr, inv) = (stat_m[i], 1.0 / stat_l[i]);
                            for (d, s) in dst.iter_mut().zip(srow) {
                                *d += exp_neg(s - mr) * inv;
                            }
                        }
                    }
                }
            }
        });
    }
    // Decode-sized buffers serve the next call (a prompt's are dropped).
    let Plan { qp, blocks, .. } = plan;
    (bufs.qp, bufs.blocks, bufs.stats) = (qp, blocks, stats);
    bufs.keep_if(n <= KEEP_TOKENS);
}

/// Calls of up to this many query tokens keep their buffers for the next call.
const KEEP_TOKENS: usize = 16;

/// The calling thread's buffers of [`run`], reused from call to call.
#[derive(Default)]
struct RunBuffers {
    qp: Vec<f32>,
    blocks: Vec<Block>,
    /// Flash-decoding's partial (m, l, acc) per (task, row).
    partial: (Vec<f32>, Vec<f32>, Vec<f32>),
    /// Every row's final (m, l), for the key-mass pass.
    stats: (Vec<f32>, Vec<f32>),
}

thread_local! {
    static RUN_BUFFERS: Slot<RunBuffers> = const { RefCell::new(None) };
    /// Every pool thread's task scratch, reused from call to call (its size is
    /// bounded by the task shape, not the prompt).
    static TASK_SCRATCH: Slot<Scratch> = const { RefCell::new(None) };
}

fn task_scratch() -> Reused<Scratch> {
    Reused::take(&TASK_SCRATCH)
}

impl Scratch {
    /// Room for tasks of up to `tokens` query tokens (`rows` score rows) of
    /// `hd`, and for decoded key and value blocks where `packed`. Called by
    /// every thread that joins a parallel loop, whether or not it then claims
    /// a task: which thread first runs a task of a new shape (the first
    /// decoded block after a KIVI flush, say) depends on timing, and its
    /// buffers would otherwise grow in that later step.
    fn reserve(&mut self, tokens: usize, rows: usize, hd: usize, packed: bool) {
        reserve_for(&mut self.s, rows * KEY_BLOCK);
        reserve_for(&mut self.vis, tokens);
        reserve_for(&mut self.m, rows);
        reserve_for(&mut self.l, rows);
        reserve_for(&mut self.acc, rows * hd);
        reserve_for(&mut self.pv, rows * hd);
        reserve_for(&mut self.live, rows);
        if packed {
            block_room(&mut self.kt, KEY_BLOCK, hd);
            block_room(&mut self.vtile, KEY_BLOCK, hd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_neg_matches_std() {
        let mut x = 0f32;
        while x > -90.0 {
            let (a, b) = (exp_neg(x), x.exp());
            assert!((a - b).abs() <= 2.5e-7 * b + 1e-37, "exp({x}) = {b}, got {a}");
            x -= 0.0123;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-1000.0), 0.0);
    }
}
