//! Model accounting: parameter counts by part, bytes, KV-cache cost per token.

use crate::model::Model;
use crate::ops::Linear;

#[derive(Clone, Debug, Default)]
pub struct ParamCounts {
    pub embedding: usize,
    pub attention: usize,
    pub ffn: usize,
    pub norms: usize,
    /// 0 when the head is tied to the embedding.
    pub head: usize,
}

impl ParamCounts {
    pub fn total(&self) -> usize {
        self.embedding + self.attention + self.ffn + self.norms + self.head
    }
}

fn linear_params(l: &Linear) -> usize {
    l.weight.numel() + l.bias.as_ref().map_or(0, |b| b.len())
}

pub fn param_counts(m: &Model) -> ParamCounts {
    let w = &m.weights;
    let mut p = ParamCounts { embedding: w.embed.numel(), norms: w.final_norm.params(), ..Default::default() };
    for l in &w.layers {
        p.attention += [&l.q, &l.k, &l.v, &l.o].iter().map(|x| linear_params(x)).sum::<usize>();
        p.attention += [&l.q_norm, &l.k_norm].iter().filter_map(|n| n.as_ref()).map(|n| n.params()).sum::<usize>();
        p.ffn += l.gate.iter().chain([&l.up, &l.down]).map(linear_params).sum::<usize>();
        p.norms += [Some(&l.attn_norm), l.post_attn_norm.as_ref(), l.mlp_norm.as_ref(), l.post_mlp_norm.as_ref()]
            .iter()
            .flatten()
            .map(|n| n.params())
            .sum::<usize>();
    }
    if !m.config.tie_word_embeddings {
        p.head = linear_params(&w.lm_head);
    }
    p
}

/// Bytes of weight matrices repacked at load into resident panels.
pub fn repacked_bytes(m: &Model) -> usize {
    m.weights.matrices().iter().filter_map(|l| l.resident.as_ref()).map(|r| r.bytes().len()).sum()
}

/// Bytes of KV cache per token of context (keys + values, every layer).
pub fn kv_bytes_per_token(m: &Model) -> usize {
    let c = &m.config;
    2 * c.num_layers * c.kv_dim() * KV_ELEMENT_BYTES
}

/// KV-cache bytes after `context` tokens under the model's KV policy (what it
/// keeps, how it stores it), without growth slack.
pub fn kv_cache_bytes_at(m: &Model, context: usize) -> usize {
    let (c, kv) = (&m.config, m.kv_config());
    c.num_layers * c.num_kv_heads * kv.head_bytes(kv.kept(context), c.head_dim)
}

/// The full cache stores f32 keys and values.
pub const KV_ELEMENT_BYTES: usize = 4;

/// Resident bytes of the weights, by storage format. Norms and biases are held
/// widened to f32; matrices keep their file dtype (memory-mapped).
pub fn weight_bytes_by_dtype(m: &Model) -> std::collections::BTreeMap<&'static str, usize> {
    let w = &m.weights;
    let mut out = std::collections::BTreeMap::new();
    let mut add = |t: &crate::tensor::Tensor| *out.entry(t.dtype().name()).or_insert(0) += t.nbytes();
    add(&w.embed);
    let mut linears = w.matrices();
    if m.config.tie_word_embeddings {
        linears.pop(); // the head is the embedding, counted above
    }
    for l in &linears {
        add(&l.weight);
    }
    let small: usize = linears.iter().map(|l| l.bias.as_ref().map_or(0, |b| b.len())).sum::<usize>()
        + param_counts(m).norms
        + w.layers.iter().map(|l| [&l.q_norm, &l.k_norm].iter().flat_map(|n| n.as_ref()).map(|n| n.params()).sum::<usize>()).sum::<usize>();
    *out.entry("f32").or_insert(0) += small * 4;
    out
}

/// Memory needed to run `batch` sequences of `context` tokens.
#[derive(Clone, Debug)]
pub struct MemoryEstimate {
    pub weights: usize,
    pub kv_cache: usize,
    pub activations: usize,
}

impl MemoryEstimate {
    pub fn total(&self) -> usize {
        self.weights + self.kv_cache + self.activations
    }
}

/// Weights + KV cache + the largest activation working set (a prefill chunk:
/// hidden states, q/k/v, attention output, MLP intermediates, one attention score
/// row per thread, and one row of logits), per sequence times `batch`.
pub fn memory_estimate(m: &Model, context: usize, batch: usize) -> MemoryEstimate {
    let c = &m.config;
    let n = context.min(crate::generate::PREFILL_CHUNK);
    let per_token = 4 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.intermediate_size;
    let activations = 4 * (n * per_token + m.threads() * context + c.vocab_size);
    MemoryEstimate {
        weights: weight_bytes_by_dtype(m).values().sum(),
        kv_cache: batch * kv_cache_bytes_at(m, context),
        activations: batch * activations,
    }
}
