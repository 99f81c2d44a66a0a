//! KV caches: one small interface over two independent choices, what to keep
//! (the eviction rule: full, sliding window, StreamingLLM sinks, H2O heavy
//! hitters) and how to store it (f32, f16, int8 per token, KIVI 2/4-bit), so any
//! rule composes with any store (except H2O with KIVI, see [`KvConfig`]).
//!
//! - Each layer keeps its tokens in time order in a `store::Store`; StreamingLLM's
//!   attention sinks live beside it in f32. Eviction happens after each step
//!   ([`KvCache::advance`]), so between steps a bounded policy holds at most its
//!   budget. Within a multi-token step (prefill) the window and the sinks are
//!   applied by the attention mask, so each token sees what it would see alone;
//!   H2O, which scores tokens by the attention they received, evicts per step.
//! - Keys are rotated at their true positions when written. Rotary attention
//!   depends only on relative positions, so a window keeps the distances of the
//!   full sequence. StreamingLLM assigns positions inside the cache: sinks at
//!   `0..s`, the window right after; the window keys already have those relative
//!   distances, and the few sink keys are re-rotated on use by the gap
//!   ([`KvCache::sink_shift`]), so nothing is rotated twice per step but the sinks.
//!   In a multi-token step the sinks sit right before the step's oldest window
//!   token (one placement per step), exactly the paper's placement when decoding.
//! - H2O accumulates, per layer and token, the attention weight the token
//!   received (summed over heads and queries, collected inside the flash kernel),
//!   and keeps the `recent` newest tokens plus the heaviest others.
//! - Memory follows the kept length: stores grow in blocks and reuse their room.

pub mod config;
mod kivi;
mod store;

pub use config::{Budget, Eviction, KvConfig, KvQuant};

use crate::attention::flash::{self, Causal, KvData, KvPart, KvParts, Mask, KEY_BLOCK, SPLIT_MAX_TOKENS};
use crate::attention::AttentionParams;
use crate::error::{Error, Result};
use edgellm_kernels::Kernels;
use store::{F16Codec, F32Codec, Int8Codec, RowStore, Store};

struct LayerKv {
    /// StreamingLLM sinks: `[kv_head][sink][head_dim]` keys (rotated at their
    /// true positions `0..sinks`) and values.
    sink_k: Vec<f32>,
    sink_v: Vec<f32>,
    nsinks: usize,
    main: Box<dyn Store>,
    /// H2O: true position and accumulated attention of every main token.
    pos: Vec<u32>,
    score: Vec<f32>,
    /// Block selection: per key block of [`KEY_BLOCK`] tokens, per KV head, the
    /// channel minima then maxima of its keys, `[block][kv_head][2][head_dim]`.
    bounds: Vec<f32>,
}

pub struct KvCache {
    cfg: KvConfig,
    layers: Vec<LayerKv>,
    kv_heads: usize,
    head_dim: usize,
    /// Tokens processed so far (the next token's true position).
    seen: usize,
    /// Tokens of the step in progress (written, not yet advanced).
    pending: usize,
    max_len: usize,
    /// StreamingLLM: the sink keys rotated for the current step, a buffer kept
    /// from layer to layer and step to step.
    rotated_sinks: Vec<f32>,
    /// H2O's and block selection's buffers, kept likewise.
    h2o: H2oScratch,
    select: SelectScratch,
}

/// H2O's per-step buffers: the attention weight each key received in the
/// step's pass, and the eviction's keep flags and ranking order.
#[derive(Default)]
struct H2oScratch {
    mass: Vec<f32>,
    keep: Vec<bool>,
    order: Vec<usize>,
}

/// Block selection's per-step buffers: the chosen flags (`[kv_head][block]`)
/// and the ranking of the older blocks by their bound.
#[derive(Default)]
struct SelectScratch {
    chosen: Vec<bool>,
    scored: Vec<(f32, usize)>,
}

impl KvCache {
    /// A full f32 cache of up to `max_len` positions.
    pub fn new(num_layers: usize, kv_heads: usize, head_dim: usize, max_len: usize) -> Self {
        let k = edgellm_kernels::Kernels::for_isa(edgellm_kernels::Isa::Scalar).expect("scalar kernels always exist");
        Self::with_config(&KvConfig::default(), k, num_layers, kv_heads, head_dim, max_len)
    }

    /// A cache following `cfg`; `max_len` bounds the positions of policies that
    /// keep growing (full, H2O).
    pub fn with_config(
        cfg: &KvConfig,
        k: &'static Kernels,
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max_len: usize,
    ) -> Self {
        let limit = if cfg.unbounded() { usize::MAX } else { max_len };
        let layers = (0..num_layers)
            .map(|_| LayerKv {
                sink_k: Vec::new(),
                sink_v: Vec::new(),
                nsinks: 0,
                main: match cfg.quant {
                    KvQuant::F32 => Box::new(RowStore::<F32Codec>::new(k, kv_heads, head_dim, limit)),
                    KvQuant::F16 => Box::new(RowStore::<F16Codec>::new(k, kv_heads, head_dim, limit)),
                    KvQuant::Int8 => Box::new(RowStore::<Int8Codec>::new(k, kv_heads, head_dim, limit)),
                    KvQuant::Kivi { bits, group_size, residual } => {
                        Box::new(kivi::KiviStore::new(kv_heads, head_dim, bits, group_size, residual))
                    }
                },
                pos: Vec::new(),
                score: Vec::new(),
                bounds: Vec::new(),
            })
            .collect();
        KvCache { cfg: cfg.clone(), layers, kv_heads, head_dim, seen: 0, pending: 0, max_len, rotated_sinks: Vec::new(), h2o: H2oScratch::default(), select: SelectScratch::default() }
    }

    pub fn config(&self) -> &KvConfig {
        &self.cfg
    }
    /// Tokens processed so far: the position of the next one.
    pub fn seen(&self) -> usize {
        self.seen
    }
    /// Tokens cached by layer `layer` (sinks included).
    pub fn layer_len(&self, layer: usize) -> usize {
        let l = &self.layers[layer];
        l.nsinks + l.main.len()
    }
    /// Tokens cached by the first layer (H2O may keep different counts per layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(self.seen, |_| self.layer_len(0))
    }
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }
    /// The context bound on positions; `None` for policies that run past it.
    pub fn max_len(&self) -> Option<usize> {
        (!self.cfg.unbounded()).then_some(self.max_len)
    }
    /// Bytes allocated for keys, values and policy state.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.main.bytes()
                    + (l.sink_k.capacity() + l.sink_v.capacity() + l.score.capacity() + l.bounds.capacity()) * 4
                    + l.pos.capacity() * 4
            })
            .sum()
    }

    /// Starts a step of `n` tokens, failing if a growing policy would pass the
    /// context length.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        if !self.cfg.unbounded() {
            self.seen.checked_add(n).filter(|&t| t <= self.max_len).ok_or(Error::ContextLength {
                what: "sequence",
                len: self.seen.saturating_add(n),
                max: self.max_len,
            })?;
        }
        self.pending = n;
        Ok(())
    }

    /// The sequence length that length-dependent rotary scaling (dynamic NTK,
    /// longrope) should assume for a step of `n` tokens of a pass of `logical`
    /// positions: StreamingLLM counts positions inside the cache.
    pub fn rope_len(&self, n: usize, logical: usize) -> usize {
        match self.cfg.eviction {
            Eviction::Streaming { .. } => logical.min(self.len() + n),
            _ => logical,
        }
    }

    /// Stores the keys and values (`[n × kv_heads × head_dim]`, keys rotated at
    /// positions `seen()..`) of the step's tokens for one layer.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let (heads, hd) = (self.kv_heads, self.head_dim);
        let row = heads * hd;
        assert_eq!(k.len(), self.pending * row, "KvCache::write of other than the reserved tokens");
        let seen = self.seen;
        let l = &mut self.layers[layer];
        let mut first = 0;
        if let Eviction::Streaming { sinks, .. } = self.cfg.eviction {
            let take = sinks.saturating_sub(l.nsinks).min(self.pending);
            if take > 0 {
                if l.sink_k.is_empty() {
                    l.sink_k = vec![0f32; heads * sinks * hd];
                    l.sink_v = vec![0f32; heads * sinks * hd];
                }
                for t in 0..take {
                    for h in 0..heads {
                        let (src, dst) = ((t * heads + h) * hd, (h * sinks + l.nsinks + t) * hd);
                        l.sink_k[dst..dst + hd].copy_from_slice(&k[src..src + hd]);
                        l.sink_v[dst..dst + hd].copy_from_slice(&v[src..src + hd]);
                    }
                }
                l.nsinks += take;
                first = take;
            }
        }
        if first < self.pending {
            if self.cfg.select_blocks.is_some() {
                update_bounds(&mut l.bounds, l.main.len(), &k[first * row..], heads, hd);
            }
            l.main.append(&k[first * row..], &v[first * row..]);
        }
        if matches!(self.cfg.eviction, Eviction::H2o { .. }) {
            l.pos.extend((seen..seen + self.pending).map(|p| p as u32));
            l.score.resize(l.main.len(), 0.0);
        }
    }

    /// StreamingLLM: how far the sink keys must be rotated forward so that, seen
    /// from the window, they sit right before it (`None` when nothing was evicted).
    pub fn sink_shift(&self) -> Option<usize> {
        let Eviction::Streaming { sinks, .. } = self.cfg.eviction else { return None };
        let l = self.layers.first()?;
        let first_main = (self.seen + self.pending).checked_sub(l.main.len())?;
        (l.nsinks == sinks && first_main > sinks).then(|| first_main - sinks)
    }

    /// Attention of the step's queries (`[pending × num_heads × head_dim]`) over
    /// layer `layer`, into `out`. `shift_sinks` rotates sink keys
    /// (`[kv_head][sink][head_dim]`) forward by [`sink_shift`](Self::sink_shift).
    pub fn attend(
        &mut self,
        k: &Kernels,
        layer: usize,
        p: &AttentionParams,
        q: &[f32],
        out: &mut [f32],
        shift_sinks: Option<&dyn Fn(&mut [f32], usize)>,
    ) {
        let hd = self.head_dim;
        let n = self.pending;
        let h2o = matches!(self.cfg.eviction, Eviction::H2o { .. });
        let (l, rotated, mass, selection) = (&mut self.layers[layer], &mut self.rotated_sinks, &mut self.h2o.mass, &mut self.select);
        let total = l.nsinks + l.main.len();
        let pos0 = total - n;
        let sinks_rotated: Option<&[f32]> = match (l.nsinks, self.cfg.eviction, shift_sinks) {
            (ns, Eviction::Streaming { sinks, .. }, Some(f)) if ns > 0 => {
                rotated.clear();
                rotated.extend_from_slice(&l.sink_k);
                f(rotated, sinks);
                Some(rotated)
            }
            _ => None,
        };
        let sinks_part = (l.nsinks > 0).then(|| {
            let Eviction::Streaming { sinks, .. } = self.cfg.eviction else { unreachable!("only streaming has sinks") };
            let keys = sinks_rotated.unwrap_or(&l.sink_k);
            let data = KvData::Strided { keys, values: &l.sink_v, stride: sinks * hd };
            KvPart { start: 0, len: l.nsinks, data }
        });
        let main_len = l.main.len();
        let main_part = (main_len > 0).then(|| {
            let data = match l.main.strided() {
                Some((keys, values, stride)) => KvData::Strided { keys, values, stride },
                None => KvData::Tiles(&*l.main as &dyn flash::KvTiles),
            };
            KvPart { start: l.nsinks, len: main_len, data }
        });
        let select = match self.cfg.select_blocks {
            Some(keep) if n <= SPLIT_MAX_TOKENS && total.div_ceil(KEY_BLOCK) > keep => {
                select_blocks(&l.bounds, q, p, pos0, total, keep, selection);
                Some(selection.chosen.as_slice())
            }
            _ => None,
        };
        let kv = KvParts::new(sinks_part.into_iter().chain(main_part), total, select);
        mass.clear();
        mass.resize(if h2o { total } else { 0 }, 0.0);
        let mass_arg = h2o.then_some(mass.as_mut_slice());
        // The tokens of one step see what they would see one at a time: a window
        // policy's `size` previous tokens, StreamingLLM's sinks and window.
        match (self.cfg.eviction, p.window) {
            (Eviction::H2o { .. }, Some(w)) => {
                let mask = PositionMask { pos0, qpos0: self.seen, window: w, key_pos: &l.pos };
                flash::run(k, p, &kv, &mask, q, out, mass_arg);
            }
            (Eviction::Window { size }, w) => {
                let window = Some(w.map_or(size + 1, |w| w.min(size + 1)));
                flash::run(k, p, &kv, &Causal { pos0, window }, q, out, mass_arg)
            }
            (Eviction::Streaming { window, .. }, w) if n > 1 => {
                let mask = StreamingMask { pos0, sinks: l.nsinks, recent: window + 1, model_window: w };
                flash::run(k, p, &kv, &mask, q, out, mass_arg)
            }
            _ => flash::run(k, p, &kv, &Causal { pos0, window: p.window }, q, out, mass_arg),
        }
        drop(kv);
        if h2o {
            for (s, m) in l.score.iter_mut().zip(&mass[l.nsinks..]) {
                *s += m;
            }
        }
    }

    /// Commits the step's `n` tokens and evicts what the policy no longer keeps.
    pub fn advance(&mut self, n: usize) {
        assert_eq!(n, self.pending, "KvCache::advance of other than the reserved tokens");
        self.seen += n;
        self.pending = 0;
        match self.cfg.eviction {
            Eviction::Full => {}
            Eviction::Window { size: keep } | Eviction::Streaming { window: keep, .. } => {
                for l in &mut self.layers {
                    let len = l.main.len();
                    if len > keep {
                        l.main.drop_front(len - keep);
                    }
                }
            }
            Eviction::H2o { budget, recent } => {
                let budget = budget.tokens(self.seen);
                let H2oScratch { keep, order, .. } = &mut self.h2o;
                for l in &mut self.layers {
                    let len = l.main.len();
                    if len <= budget {
                        continue;
                    }
                    h2o_keep(&l.score, budget, recent, keep, order);
                    let keep = keep.as_slice();
                    l.main.retain(keep);
                    let mut i = 0;
                    l.pos.retain(|_| (keep[i], i += 1).0);
                    i = 0;
                    l.score.retain(|_| (keep[i], i += 1).0);
                }
            }
        }
    }

    /// H2O: the true positions of the tokens layer `layer` keeps (in order).
    pub fn positions(&self, layer: usize) -> Option<&[u32]> {
        matches!(self.cfg.eviction, Eviction::H2o { .. }).then(|| self.layers[layer].pos.as_slice())
    }

    /// Forgets everything (e.g. to recompute the sequence with other rotary factors).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.main.clear();
            l.nsinks = 0;
            l.pos.clear();
            l.score.clear();
            l.bounds.clear();
        }
        self.seen = 0;
        self.pending = 0;
    }

    /// Keys and values of one head of a full f32 cache, positions `0..upto`
    /// (used by tree attention and tests).
    ///
    /// # Panics
    /// If the cache stores anything but f32 or has sinks.
    pub fn head(&self, layer: usize, head: usize, upto: usize) -> (&[f32], &[f32]) {
        let l = &self.layers[layer];
        assert_eq!(l.nsinks, 0, "KvCache::head on a cache with sinks");
        let (k, v, stride) = l.main.strided().expect("KvCache::head needs an f32 cache");
        let hd = self.head_dim;
        (&k[head * stride..][..upto * hd], &v[head * stride..][..upto * hd])
    }
}

/// Folds keys (`[n × heads × hd]`, tokens `first..first+n` of the layer) into
/// the per-block channel minima and maxima.
fn update_bounds(bounds: &mut Vec<f32>, first: usize, k: &[f32], heads: usize, hd: usize) {
    let stride = heads * 2 * hd;
    for (t, row) in k.chunks_exact(heads * hd).enumerate() {
        let b = (first + t) / KEY_BLOCK;
        if bounds.len() < (b + 1) * stride {
            bounds.resize(b * stride, 0.0);
            for _ in 0..heads {
                bounds.extend(std::iter::repeat_n(f32::INFINITY, hd));
                bounds.extend(std::iter::repeat_n(f32::NEG_INFINITY, hd));
            }
        }
        for h in 0..heads {
            let mm = &mut bounds[b * stride + h * 2 * hd..][..2 * hd];
            let (lo, hi) = mm.split_at_mut(hd);
            for ((l, u), x) in lo.iter_mut().zip(hi).zip(&row[h * hd..(h + 1) * hd]) {
                *l = l.min(*x);
                *u = u.max(*x);
            }
        }
    }
}

/// Quest's choice per KV head, into `out.chosen` (`[kv_head][block]`, as
/// [`KvParts::select`]): the blocks holding the step's tokens (queries
/// `pos0..total`) plus the `keep` others with the highest bound
/// `Σ_c max(q_c·min_c, q_c·max_c)` over the head group's queries.
fn select_blocks(bounds: &[f32], q: &[f32], p: &AttentionParams, pos0: usize, total: usize, keep: usize, out: &mut SelectScratch) {
    let (nh, nkv, hd) = (p.num_heads, p.num_kv_heads, p.head_dim);
    let group = nh / nkv;
    let nb = total.div_ceil(KEY_BLOCK);
    let first_new = pos0 / KEY_BLOCK;
    let stride = nkv * 2 * hd;
    let SelectScratch { chosen, scored } = out;
    chosen.clear();
    chosen.resize(nkv * nb, false);
    for (kvh, sel) in chosen.chunks_exact_mut(nb).enumerate() {
        sel[first_new..].iter_mut().for_each(|s| *s = true);
        scored.clear();
        scored.extend((0..first_new).map(|b| {
            let mm = &bounds[b * stride + kvh * 2 * hd..][..2 * hd];
            let (lo, hi) = mm.split_at(hd);
            let best = q
                .chunks_exact(nh * hd)
                .flat_map(|t| t[kvh * group * hd..(kvh + 1) * group * hd].chunks_exact(hd))
                .map(|qh| qh.iter().zip(lo).zip(hi).map(|((x, l), u)| (x * l).max(x * u)).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            (best, b)
        }));
        let take = keep.min(scored.len());
        if take > 0 && take < scored.len() {
            scored.select_nth_unstable_by(take - 1, |a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        }
        for &(_, b) in &scored[..take] {
            sel[b] = true;
        }
    }
}

/// H2O: into `keep`, flags for tokens with accumulated attention `score`: the
/// `recent` newest, then the heaviest of the rest (ties: the newer), `budget`
/// in all. `order` is the ranking's buffer (both are reused from step to step).
fn h2o_keep(score: &[f32], budget: usize, recent: usize, keep: &mut Vec<bool>, order: &mut Vec<usize>) {
    let len = score.len();
    let recent = recent.min(budget).min(len);
    keep.clear();
    keep.resize(len, false);
    keep[len - recent..].iter_mut().for_each(|k| *k = true);
    let older = len - recent;
    let heavy = (budget - recent).min(older);
    if heavy > 0 {
        order.clear();
        order.extend(0..older);
        order.select_nth_unstable_by(heavy - 1, |&a, &b| score[b].total_cmp(&score[a]).then(b.cmp(&a)));
        for &i in &order[..heavy] {
            keep[i] = true;
        }
    }
}

/// StreamingLLM within a step: query `t` (slot `pos0 + t`) sees the sink slots
/// and the `recent` slots ending at itself (and only keys within the model's own
/// window, if it has one).
struct StreamingMask {
    pos0: usize,
    sinks: usize,
    recent: usize,
    model_window: Option<usize>,
}

impl Mask for StreamingMask {
    fn bounds(&self, t: usize) -> (usize, usize) {
        let pos = self.pos0 + t;
        (self.model_window.map_or(0, |w| (pos + 1).saturating_sub(w)), pos + 1)
    }
    fn full(&self, t: usize, j0: usize, j1: usize) -> bool {
        let (lo, hi) = self.bounds(t);
        let recent_lo = (hi.saturating_sub(self.recent)).max(lo);
        j0 >= lo && j1 <= hi && (j1 <= self.sinks || j0 >= recent_lo)
    }
    fn sees(&self, t: usize, j: usize) -> bool {
        let (lo, hi) = self.bounds(t);
        (lo..hi).contains(&j) && (j < self.sinks || j + self.recent >= hi)
    }
}

/// Causal mask over cache slots with a sliding window measured in true
/// positions: `key_pos` (one per slot, increasing) for slots whose positions
/// have gaps (H2O evictions).
struct PositionMask<'a> {
    pos0: usize,
    qpos0: usize,
    window: usize,
    key_pos: &'a [u32],
}

impl Mask for PositionMask<'_> {
    fn bounds(&self, t: usize) -> (usize, usize) {
        let hi = self.pos0 + t + 1;
        let qpos = self.qpos0 + t;
        let lo = self.key_pos[..hi].partition_point(|&p| p as usize + self.window <= qpos);
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: usize, pos: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| (layer * 100_000 + pos * 100 + i) as f32).collect()
    }

    #[test]
    fn growth_keeps_every_position() {
        let (layers, heads, hd) = (2, 3, 4);
        let mut c = KvCache::new(layers, heads, hd, 1000);
        let mut pos = 0;
        // Appends of uneven sizes force several re-layouts.
        for n in [1, 5, 300, 1, 250, 7] {
            c.reserve(n).unwrap();
            for l in 0..layers {
                let k: Vec<f32> = (0..n).flat_map(|t| row(l, pos + t, heads * hd)).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                c.write(l, &k, &v);
            }
            c.advance(n);
            pos += n;
        }
        assert_eq!(c.len(), pos);
        for l in 0..layers {
            for h in 0..heads {
                let (k, v) = c.head(l, h, pos);
                for p in 0..pos {
                    let want = &row(l, p, heads * hd)[h * hd..(h + 1) * hd];
                    assert_eq!(&k[p * hd..(p + 1) * hd], want, "layer {l} head {h} pos {p}");
                    assert!(v[p * hd..(p + 1) * hd].iter().zip(want).all(|(a, b)| *a == -b));
                }
            }
        }
    }

    #[test]
    fn reserve_past_max_is_a_context_error() {
        let mut c = KvCache::new(1, 1, 2, 10);
        c.reserve(10).unwrap();
        assert!(matches!(c.reserve(11), Err(Error::ContextLength { len: 11, max: 10, .. })));
        c.advance(10);
        assert!(c.reserve(1).is_err());
        assert!(c.reserve(usize::MAX).is_err());
    }

    #[test]
    fn h2o_keeps_recent_then_heaviest() {
        // One pair of buffers for every call, as the cache uses them.
        let (mut keep, mut order) = (Vec::new(), Vec::new());
        let mut h2o_keep = |score: &[f32], budget, recent| {
            h2o_keep(score, budget, recent, &mut keep, &mut order);
            keep.clone()
        };
        let score = [5.0, 0.1, 9.0, 0.2, 3.0, 0.0, 0.0];
        // budget 4, recent 2: the last two, then 9.0 and 5.0.
        assert_eq!(h2o_keep(&score, 4, 2), [true, false, true, false, false, true, true]);
        // Ties go to the newer token.
        assert_eq!(h2o_keep(&[1.0, 1.0, 1.0], 1, 0), [false, false, true]);
        assert_eq!(h2o_keep(&score, 7, 0), [true; 7]);
        assert_eq!(h2o_keep(&score, 2, 5), [false, false, false, false, false, true, true]);
    }

    #[test]
    fn memory_follows_length() {
        let mut c = KvCache::new(1, 1, 8, 1 << 20);
        c.reserve(10).unwrap();
        assert!(c.bytes() <= 2 * store::GROW_BLOCK * 8 * 4);
    }
}
