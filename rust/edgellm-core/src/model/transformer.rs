//! The decoder-only transformer forward pass shared by every supported family;
//! families differ only through `ModelConfig` (norm kind, block wiring, scales,
//! soft-capping, per-layer rotary and window) and which weights exist.

use super::config::{BlockKind, ModelConfig};
use super::rope::Rope;
use super::weights::{LayerWeights, Weights};
use crate::attention::AttentionParams;
use crate::kv_cache::KvCache;
use crate::ops::{activation, Linear};
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

impl Transformer<'_> {
    /// Embeds `tokens` at positions `cache.seen()..`, runs every layer (appending to
    /// the cache, which then evicts what its policy drops) and returns the
    /// requested logits rows, `[rows × vocab]`. `rope_len` is the sequence length
    /// length-dependent rotary scaling assumes. Token ids must have been checked
    /// and the step reserved (`cache.reserve(tokens.len())`) by the caller.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, rows: LogitsRows, rope_len: usize) -> Vec<f32> {
        let c = self.cfg;
        let (n, h) = (tokens.len(), c.hidden_size);
        let pos0 = cache.seen();
        let mut x = vec![0f32; n * h];
        for (t, &id) in tokens.iter().enumerate() {
            let row = &mut x[t * h..(t + 1) * h];
            self.w.embed.row_to_f32(id as usize, row);
            if c.embed_scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= c.embed_scale);
            }
        }
        let tables: Vec<(Vec<f32>, Vec<f32>)> =
            self.ropes.iter().map(|r| r.tables(pos0..pos0 + n, rope_len)).collect();
        let inter = n * c.intermediate_size;
        let mut s = Scratch {
            xn: vec![0f32; n * h],
            q: vec![0f32; n * c.q_dim()],
            k: vec![0f32; n * c.kv_dim()],
            v: vec![0f32; n * c.kv_dim()],
            att: vec![0f32; n * c.q_dim()],
            proj: vec![0f32; n * h],
            mlp_out: vec![0f32; n * h],
            gate: vec![0f32; if c.mlp_kind == super::config::MlpKind::Gated { inter } else { 0 }],
            up: vec![0f32; inter],
        };
        for (li, lw) in self.w.layers.iter().enumerate() {
            let rope = c.layer_rope[li].map(|r| (&self.ropes[r], &tables[r]));
            self.layer(li, lw, rope, cache, rope_len, &mut x, &mut s);
        }
        cache.advance(n);

        let first = match rows {
            LogitsRows::None => return Vec::new(),
            LogitsRows::All => 0,
            LogitsRows::Last => n - 1,
        };
        let mut hidden = x[first * h..].to_vec();
        self.w.final_norm.apply(&mut hidden);
        if c.logits_scale != 1.0 {
            hidden.iter_mut().for_each(|v| *v *= c.logits_scale);
        }
        let mut logits = vec![0f32; (n - first) * c.vocab_size];
        self.w.lm_head.forward(self.k, &hidden, &mut logits);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
        logits
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
        lw.attn_norm.apply_into(x, &mut s.xn);
        Linear::forward_group(k, &s.xn, &mut [(&lw.q, &mut s.q[..]), (&lw.k, &mut s.k[..]), (&lw.v, &mut s.v[..])]);
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
                self.mlp(lw, s);
                for ((xv, a), m) in x.iter_mut().zip(&s.proj).zip(&s.mlp_out) {
                    *xv += c.residual_scale * (a + m);
                }
            }
            BlockKind::Sequential | BlockKind::Sandwich => {
                add_scaled(x, &s.proj, c.residual_scale);
                let mn = lw.mlp_norm.as_ref().expect("sequential blocks have an MLP norm");
                mn.apply_into(x, &mut s.xn);
                self.mlp(lw, s);
                if let Some(pn) = &lw.post_mlp_norm {
                    pn.apply(&mut s.mlp_out);
                }
                add_scaled(x, &s.mlp_out, c.residual_scale);
            }
        }
    }

    /// `s.mlp_out = mlp(s.xn)`.
    fn mlp(&self, lw: &LayerWeights, s: &mut Scratch) {
        let (c, k) = (self.cfg, self.k);
        match &lw.gate {
            Some(g) => {
                Linear::forward_group(k, &s.xn, &mut [(&lw.up, &mut s.up[..]), (g, &mut s.gate[..])]);
                activation::gated(c.activation, &mut s.gate, &s.up);
                lw.down.forward(k, &s.gate, &mut s.mlp_out);
            }
            None => {
                lw.up.forward(k, &s.xn, &mut s.up);
                activation::apply(c.activation, &mut s.up);
                lw.down.forward(k, &s.up, &mut s.mlp_out);
            }
        }
    }
}

fn add_scaled(x: &mut [f32], y: &[f32], scale: f32) {
    if scale == 1.0 {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    } else {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += scale * b);
    }
}
