//! Binding checkpoint tensors to the layers of the transformer, with every shape
//! checked against config.json. Families differ only in tensor names and in
//! which optional pieces exist; the layer structure is shared.

use super::config::{Architecture, BlockKind, MlpKind, ModelConfig, NormKind, QkNorm};
use crate::error::Result;
use crate::formats::TensorStore;
use crate::ops::norm::{HeadNorm, Norm};
use crate::ops::Linear;
use crate::tensor::Tensor;

pub struct LayerWeights {
    pub attn_norm: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<HeadNorm>,
    pub k_norm: Option<HeadNorm>,
    /// Sandwich blocks: normalises the attention output before the residual add.
    pub post_attn_norm: Option<Norm>,
    /// Input norm of the MLP (absent in parallel blocks, which reuse `attn_norm`).
    pub mlp_norm: Option<Norm>,
    /// Gate projection of gated MLPs.
    pub gate: Option<Linear>,
    pub up: Linear,
    pub down: Linear,
    /// Sandwich blocks: normalises the MLP output before the residual add.
    pub post_mlp_norm: Option<Norm>,
}

pub struct Weights {
    /// `[vocab × hidden]`.
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Norm,
    /// The output head; shares `embed`'s bytes when embeddings are tied.
    pub lm_head: Linear,
}

struct Loader<'a> {
    store: &'a TensorStore,
    c: &'a ModelConfig,
}

impl Loader<'_> {
    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        Ok(Linear::new(
            self.store.require(&format!("{prefix}.weight"), &[out, inp])?,
            if bias { Some(self.vector(&format!("{prefix}.bias"), out)?) } else { None },
        ))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.store.require(name, &[len])?.to_f32_vec())
    }

    /// A norm of the model's kind; LayerNorms carry a bias when `bias`.
    fn norm(&self, prefix: &str, dim: usize, bias: bool) -> Result<Norm> {
        let kind = self.c.norm_kind;
        Ok(Norm {
            kind,
            weight: self.vector(&format!("{prefix}.weight"), dim)?,
            bias: if kind == NormKind::Layer && bias { Some(self.vector(&format!("{prefix}.bias"), dim)?) } else { None },
            eps: self.c.norm_eps,
        })
    }

    /// Splits a fused projection's rows into views of the given heights.
    fn split(&self, name: &str, heights: &[usize], inp: usize) -> Result<Vec<Linear>> {
        let total: usize = heights.iter().sum();
        let w = self.store.require(&format!("{name}.weight"), &[total, inp])?;
        let mut at = 0;
        heights
            .iter()
            .map(|&h| {
                let part = w.rows(at, at + h)?;
                at += h;
                Ok(Linear::new(part, None))
            })
            .collect()
    }

    fn qk_norm(&self, p: &str, which: char, heads: usize) -> Result<Option<HeadNorm>> {
        let c = self.c;
        let hd = c.head_dim;
        let norms = match (c.qk_norm, c.architecture) {
            (QkNorm::None, _) => return Ok(None),
            // Phi's q_layernorm/k_layernorm: one LayerNorm (with bias) over head_dim.
            (QkNorm::Shared, Architecture::Phi) => vec![self.norm(&format!("{p}.self_attn.{which}_layernorm"), hd, true)?],
            (QkNorm::Shared, _) => vec![self.norm(&format!("{p}.self_attn.{which}_norm"), hd, false)?],
            // StableLM: a bias-free LayerNorm per head.
            (QkNorm::PerHead, _) => (0..heads)
                .map(|h| self.norm(&format!("{p}.self_attn.{which}_layernorm.norms.{h}"), hd, false))
                .collect::<Result<_>>()?,
        };
        Ok(Some(HeadNorm { norms }))
    }

    fn layer(&self, i: usize) -> Result<LayerWeights> {
        let c = self.c;
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let p = format!("model.layers.{i}");
        let layer_norm_bias = c.norm_kind == NormKind::Layer;
        let (q, k, v) = if c.architecture == Architecture::Phi3 {
            let mut parts = self.split(&format!("{p}.self_attn.qkv_proj"), &[c.q_dim(), c.kv_dim(), c.kv_dim()], h)?;
            let v = parts.pop().unwrap();
            let k = parts.pop().unwrap();
            (parts.pop().unwrap(), k, v)
        } else {
            (
                self.linear(&format!("{p}.self_attn.q_proj"), c.q_dim(), h, c.qkv_bias)?,
                self.linear(&format!("{p}.self_attn.k_proj"), c.kv_dim(), h, c.qkv_bias)?,
                self.linear(&format!("{p}.self_attn.v_proj"), c.kv_dim(), h, c.qkv_bias)?,
            )
        };
        let o_name = if c.architecture == Architecture::Phi { "dense" } else { "o_proj" };
        let o = self.linear(&format!("{p}.self_attn.{o_name}"), h, c.q_dim(), c.o_bias)?;
        let (gate, up, down) = match (c.mlp_kind, c.architecture) {
            (MlpKind::Plain, _) => (
                None,
                self.linear(&format!("{p}.mlp.fc1"), f, h, c.mlp_bias)?,
                self.linear(&format!("{p}.mlp.fc2"), h, f, c.mlp_bias)?,
            ),
            (MlpKind::Gated, Architecture::Phi3) => {
                // gate_up_proj holds the gate rows first, then the up rows.
                let mut parts = self.split(&format!("{p}.mlp.gate_up_proj"), &[f, f], h)?;
                let up = parts.pop().unwrap();
                (parts.pop(), up, self.linear(&format!("{p}.mlp.down_proj"), h, f, false)?)
            }
            (MlpKind::Gated, _) => (
                Some(self.linear(&format!("{p}.mlp.gate_proj"), f, h, c.mlp_bias)?),
                self.linear(&format!("{p}.mlp.up_proj"), f, h, c.mlp_bias)?,
                self.linear(&format!("{p}.mlp.down_proj"), h, f, c.mlp_bias)?,
            ),
        };
        let norm = |name: &str| self.norm(&format!("{p}.{name}"), h, layer_norm_bias);
        let (post_attn_norm, mlp_norm, post_mlp_norm) = match c.block {
            BlockKind::Sequential => (None, Some(norm("post_attention_layernorm")?), None),
            BlockKind::Parallel => (None, None, None),
            BlockKind::Sandwich => (
                Some(norm("post_attention_layernorm")?),
                Some(norm("pre_feedforward_layernorm")?),
                Some(norm("post_feedforward_layernorm")?),
            ),
        };
        Ok(LayerWeights {
            attn_norm: norm("input_layernorm")?,
            q,
            k,
            v,
            o,
            q_norm: self.qk_norm(&p, 'q', c.num_heads)?,
            k_norm: self.qk_norm(&p, 'k', c.num_kv_heads)?,
            post_attn_norm,
            mlp_norm,
            gate,
            up,
            down,
            post_mlp_norm,
        })
    }
}

impl Weights {
    /// HF tensor names (`model.layers.N.self_attn.q_proj.weight`, ...) of every
    /// supported family.
    pub fn from_hf(store: &TensorStore, c: &ModelConfig) -> Result<Self> {
        let l = Loader { store, c };
        let h = c.hidden_size;
        let embed = store.require("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let layers = (0..c.num_layers).map(|i| l.layer(i)).collect::<Result<Vec<_>>>()?;
        let final_name = if c.architecture == Architecture::Phi { "model.final_layernorm" } else { "model.norm" };
        let final_norm = l.norm(final_name, h, c.norm_kind == NormKind::Layer)?;
        // Tied models use the embedding as the head, as transformers' tie_weights does,
        // even when a checkpoint also stores a (redundant) lm_head.weight.
        let lm_head = if c.tie_word_embeddings {
            Linear::new(embed.clone(), None)
        } else {
            l.linear("lm_head", c.vocab_size, h, c.lm_head_bias)?
        };
        Ok(Weights { embed, layers, final_norm, lm_head })
    }
}

impl Weights {
    /// Quantizes every weight matrix (projections, embedding, head) to `ty`;
    /// matrices whose rows are not whole `ty` blocks use the widest 32-element
    /// format that fits (q8_0), as llama.cpp's quantizer falls back. Returns the
    /// number of matrices that fell back.
    pub fn quantize(
        &mut self,
        ty: edgellm_kernels::quant::GgmlType,
        tied: bool,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
    ) -> Result<usize> {
        use edgellm_kernels::quant::GgmlType;
        let mut fallbacks = 0;
        let mut pick = |cols: usize| -> Option<GgmlType> {
            if ty.row_bytes(cols).is_some() {
                Some(ty)
            } else if GgmlType::Q8_0.row_bytes(cols).is_some() {
                fallbacks += 1;
                Some(GgmlType::Q8_0)
            } else {
                fallbacks += 1;
                None
            }
        };
        // Every matrix, and the embedding when it is not the head.
        let total = self.matrices().len() + usize::from(!tied);
        let mut done = 0;
        let mut quant = |l: &mut Linear| -> Result<()> {
            if let Some(t) = pick(l.in_features()) {
                *l = l.quantized(t)?;
            }
            done += 1;
            if let Some(p) = progress {
                p(done, total);
            }
            Ok(())
        };
        for l in self.matrices_mut() {
            quant(l)?;
        }
        if tied {
            self.embed = self.lm_head.weight.clone();
        } else {
            let mut e = Linear::new(self.embed.clone(), None);
            quant(&mut e)?;
            self.embed = e.weight;
        }
        Ok(fallbacks)
    }

    /// Repacks every weight matrix `which` accepts that the kernels have a
    /// resident layout for (see [`Linear::make_resident`]).
    pub fn make_resident(&mut self, k: &edgellm_kernels::Kernels, which: impl Fn(&crate::tensor::Tensor) -> bool) {
        for l in self.matrices_mut() {
            if which(&l.weight) {
                l.make_resident(k);
            }
        }
    }

    /// Every weight matrix: each layer's projections (q, k, v, o, up, down,
    /// gate), then the head.
    pub fn matrices(&self) -> Vec<&Linear> {
        let mut all = Vec::new();
        for l in &self.layers {
            all.extend([&l.q, &l.k, &l.v, &l.o, &l.up, &l.down]);
            all.extend(l.gate.as_ref());
        }
        all.push(&self.lm_head);
        all
    }

    /// [`Self::matrices`], mutable.
    pub fn matrices_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = Vec::new();
        for l in &mut self.layers {
            all.extend([&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.up, &mut l.down]);
            all.extend(l.gate.as_mut());
        }
        all.push(&mut self.lm_head);
        all
    }
}
