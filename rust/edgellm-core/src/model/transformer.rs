//! The decoder-only transformer forward pass shared by every supported family;
//! families differ only through `ModelConfig` (norm kind, block wiring, scales,
//! soft-capping, per-layer rotary and window) and which weights exist.

use super::config::{BlockKind, ModelConfig};
use super::rope::Rope;
use super::weights::{LayerWeights, Weights};
use crate::attention::AttentionParams;
use crate::kv_cache::KvCache;
use crate::ops::{activation, Linear, Norm};
use edgellm_kernels::Kernels;

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsRows {
    All,
    Last,
    None,
}

pub(crate) struct Transformer<'a> {
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
    pub ropes: &'a [Rope],
    pub k: &'static Kernels,
}

/// Activation buffers of one forward pass.
#[derive(Default)]
struct Scratch {
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    mlp_out: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

/// The buffers of forward passes, kept by the model between passes so that a
/// decode step reuses the ones of the step before (no allocation once warm).
#[derive(Default)]
pub(crate) struct Workspace {
    x: Vec<f32>,
    /// cos/sin tables of every rotary embedding, for the pass's positions.
    tables: Vec<(Vec<f32>, Vec<f32>)>,
    s: Scratch,
    hidden: Vec<f32>,
}

/// Sets `v` to `len` zeros, reusing its storage.
fn zeroed(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.clear();
    v.resize(len, 0.0);
    v
}

impl Transformer<'_> {
    /// Embeds `tokens` at positions `cache.seen()..`, runs every layer (appending to
    /// the cache, which then evicts what its policy drops) and writes the
    /// requested logits rows, `[rows × vocab]`, into `logits` (replacing its
    /// contents). `rope_len` is the sequence length length-dependent rotary
    /// scaling assumes. Token ids must have been checked and the step reserved
    /// (`cache.reserve(tokens.len())`) by the caller.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rows: LogitsRows,
        rope_len: usize,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
    ) {
        let c = self.cfg;
        let (n, h) = (tokens.len(), c.hidden_size);
        let pos0 = cache.seen();
        let x = zeroed(&mut ws.x, n * h);
        for (t, &id) in tokens.iter().enumerate() {
            let row = &mut x[t * h..(t + 1) * h];
            self.w.embed.row_to_f32(id as usize, row);
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        ws.tables.resize_with(self.ropes.len(), Default::default);
        for (r, t) in self.ropes.iter().zip(&mut ws.tables) {
            r.tables_into(pos0..pos0 + n, rope_len, t);
        }
        let (inter, s) = (n * c.intermediate_size, &mut ws.s);
        zeroed(&mut s.xn, n * h);
        zeroed(&mut s.q, n * c.q_dim());
        zeroed(&mut s.k, n * c.kv_dim());
        zeroed(&mut s.v, n * c.kv_dim());
        zeroed(&mut s.att, n * c.q_dim());
        zeroed(&mut s.proj, n * h);
        zeroed(&mut s.mlp_out, n * h);
        zeroed(&mut s.gate, if c.mlp_kind == super::config::MlpKind::Gated { inter } else { 0 });
        zeroed(&mut s.up, inter);
        for (li, lw) in self.w.layers.iter().enumerate() {
            let rope = c.layer_rope[li].map(|r| (&self.ropes[r], &ws.tables[r]));
            self.layer(li, lw, rope, cache, rope_len, x, s);
        }
        cache.advance(n);

        let first = match rows {
            LogitsRows::None => return logits.clear(),
            LogitsRows::All => 0,
            LogitsRows::Last => n - 1,
        };
        let hidden = &mut ws.hidden;
        hidden.clear();
        hidden.extend_from_slice(&x[first * h..]);
        self.w.final_norm.apply(hidden);
        if c.logits_scale != 1.0 {
            hidden.iter_mut().for_each(|v| *v *= c.logits_scale);
        }
        let logits = zeroed(logits, (n - first) * c.vocab_size);
        self.w.lm_head.forward(self.k, hidden, logits);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        li: usize,
        lw: &LayerWeights,
        rope: Option<(&Rope, &(Vec<f32>, Vec<f32>))>,
        cache: &mut KvCache,
        rope_len: usize,
        x: &mut [f32],
        s: &mut Scratch,
    ) {
        let (c, k) = (self.cfg, self.k);
        let qkv = &mut [(&lw.q, &mut s.q[..]), (&lw.k, &mut s.k[..]), (&lw.v, &mut s.v[..])];
        if c.block == BlockKind::Parallel {
            // The MLP reads the same normalised row.
            lw.attn_norm.apply_into(x, &mut s.xn);
            Linear::forward_group(k, &s.xn, qkv);
        } else {
            Linear::forward_group_normed(k, &lw.attn_norm, x, &mut s.xn, qkv);
        }
        if let Some(qn) = &lw.q_norm {
            qn.apply(&mut s.q, c.num_heads);
        }
        if let Some(kn) = &lw.k_norm {
            kn.apply(&mut s.k, c.num_kv_heads);
        }
        if let Some((r, (cos, sin))) = rope {
            r.apply(&mut s.q, c.num_heads, c.head_dim, cos, sin);
            r.apply(&mut s.k, c.num_kv_heads, c.head_dim, cos, sin);
        }
        cache.write(li, &s.k, &s.v);
        let params = AttentionParams {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
            window: c.layer_windows[li],
            softcap: c.attn_softcap,
        };
        let (hd, shift) = (c.head_dim, cache.sink_shift());
        let shift_sinks = |keys: &mut [f32], _sinks: usize| {
            if let (Some((r, _)), Some(d)) = (rope, shift) {
                r.shift(keys, hd, d, rope_len);
            }
        };
        cache.attend(k, li, &params, &s.q, &mut s.att, Some(&shift_sinks));
        lw.o.forward(k, &s.att, &mut s.proj);
        if let Some(pn) = &lw.post_attn_norm {
            pn.apply(&mut s.proj);
        }
        match c.block {
            BlockKind::Parallel => {
                // Both branches read the same normalised input.
                self.mlp(lw, None, s);
                for ((xv, a), m) in x.iter_mut().zip(&s.proj).zip(&s.mlp_out) {
                    *xv += c.residual_scale * (a + m);
                }
            }
            BlockKind::Sequential | BlockKind::Sandwich => {
                add_scaled(x, &s.proj, c.residual_scale);
                let mn = lw.mlp_norm.as_ref().expect("sequential blocks have an MLP norm");
                self.mlp(lw, Some((mn, x)), s);
                if let Some(pn) = &lw.post_mlp_norm {
                    pn.apply(&mut s.mlp_out);
                }
                add_scaled(x, &s.mlp_out, c.residual_scale);
            }
        }
    }

    /// `s.mlp_out = mlp(norm(x))` for `normed = Some((norm, x))` (the norm fused
    /// into the input quantization where the layers allow), else `mlp(s.xn)`.
    fn mlp(&self, lw: &LayerWeights, normed: Option<(&Norm, &[f32])>, s: &mut Scratch) {
        let (c, k) = (self.cfg, self.k);
        match &lw.gate {
            Some(g) => {
                let up_gate = &mut [(&lw.up, &mut s.up[..]), (g, &mut s.gate[..])];
                match normed {
                    Some((norm, x)) => Linear::forward_group_normed(k, norm, x, &mut s.xn, up_gate),
                    None => Linear::forward_group(k, &s.xn, up_gate),
                }
                activation::gated(c.activation, &mut s.gate, &s.up);
                lw.down.forward(k, &s.gate, &mut s.mlp_out);
            }
            None => {
                if let Some((norm, x)) = normed {
                    norm.apply_into(x, &mut s.xn);
                }
                lw.up.forward(k, &s.xn, &mut s.up);
                activation::apply(c.activation, &mut s.up);
                lw.down.forward(k, &s.up, &mut s.mlp_out);
            }
        }
    }
}

/// `x += scale · y` (the residual adds), in pieces on the pool from a
/// prompt's size on (four pieces: a decode step's rows stay serial).
fn add_scaled(x: &mut [f32], y: &[f32], scale: f32) {
    crate::ops::par::zip_pieces(x, y, 4, |xs, ys| {
        if scale == 1.0 {
            xs.iter_mut().zip(ys).for_each(|(a, b)| *a += b);
        } else {
            xs.iter_mut().zip(ys).for_each(|(a, b)| *a += scale * b);
        }
    });
}
