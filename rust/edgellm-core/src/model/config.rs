//! The engine's normalised model description. Every supported checkpoint format
//! is parsed into this; the forward pass reads nothing else.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi,
    Phi3,
    StableLm,
    SmolLm3,
    MiniCpm,
}

impl Architecture {
    /// HF `architectures[0]` names, in the order they are listed to users.
    pub const SUPPORTED: [(&'static str, Architecture); 12] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("MistralForCausalLM", Architecture::Mistral),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
        ("Qwen3ForCausalLM", Architecture::Qwen3),
        ("GemmaForCausalLM", Architecture::Gemma),
        ("Gemma2ForCausalLM", Architecture::Gemma2),
        ("Gemma3ForCausalLM", Architecture::Gemma3),
        ("PhiForCausalLM", Architecture::Phi),
        ("Phi3ForCausalLM", Architecture::Phi3),
        ("StableLmForCausalLM", Architecture::StableLm),
        ("SmolLM3ForCausalLM", Architecture::SmolLm3),
        ("MiniCPMForCausalLM", Architecture::MiniCpm),
    ];

    pub fn from_hf(name: &str) -> Result<Self> {
        Self::SUPPORTED.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).ok_or_else(|| {
            Error::UnsupportedArchitecture { found: name.to_string(), supported: Self::supported_list() }
        })
    }

    pub fn supported_list() -> String {
        Self::SUPPORTED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    pub fn hf_name(self) -> &'static str {
        Self::SUPPORTED.iter().find(|(_, a)| *a == self).map(|(n, _)| *n).unwrap_or("?")
    }
}

/// Rotary-embedding frequency scaling, as named by HF's `rope_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear { factor: f64 },
    /// NTK-aware base change once the sequence outgrows `original_max`.
    Dynamic { factor: f64, original_max: usize },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max: usize },
    Yarn { factor: f64, original_max: usize, beta_fast: f64, beta_slow: f64, attention_factor: f64, truncate: bool },
    /// Phi-3 "longrope"/"su": per-frequency divisors, the long set once the
    /// sequence outgrows `original_max`.
    LongRope { short_factor: Vec<f64>, long_factor: Vec<f64>, original_max: usize, attention_factor: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Number of rotated dimensions per head (even, ≤ head_dim).
    pub dim: usize,
    pub scaling: RopeScaling,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
    Gelu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Result<Self> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::config(format!("unsupported hidden_act {other:?} (supported: silu, gelu, gelu_pytorch_tanh)"))),
        }
    }
}

/// How a normalisation layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `x / rms(x) * w`.
    Rms,
    /// `x / rms(x) * (1 + w)` (Gemma).
    RmsOffset,
    /// `(x - mean) / std * w + b` (Phi, StableLM).
    Layer,
}

/// How attention and the MLP are wired into the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// `x += attn(n1(x)); x += mlp(n2(x))`.
    Sequential,
    /// `x += attn(n1(x)) + mlp(n1(x))` (Phi, StableLM parallel residual).
    Parallel,
    /// Gemma 2/3: `x += n2(attn(n1(x))); x += n4(mlp(n3(x)))`.
    Sandwich,
}

/// Normalisation of queries and keys per head, before rotary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// One norm of `head_dim` shared by every head (Qwen3, Gemma3, Phi).
    Shared,
    /// A separate norm per head (StableLM `qk_layernorm`).
    PerHead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(gate(x)) * up(x))`.
    Gated,
    /// `fc2(act(fc1(x)))` (Phi).
    Plain,
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub norm_kind: NormKind,
    pub norm_eps: f32,
    /// Rotary settings; layers pick one by index in `layer_rope`.
    pub ropes: Vec<RopeConfig>,
    /// Per layer: index into `ropes`, or `None` for a layer without position
    /// encoding (SmolLM3's NoPE layers).
    pub layer_rope: Vec<Option<usize>>,
    /// Q/K rows hold rotary pairs interleaved, `(2i, 2i+1)`, rather than HF's
    /// halves `(i, i + d/2)`: llama.cpp's converter permutes llama-style files
    /// that way, and running them as stored keeps their weights memory-mapped.
    pub rope_interleaved: bool,
    pub block: BlockKind,
    pub mlp_kind: MlpKind,
    /// Multiplies the token embeddings (Gemma: sqrt(hidden); MiniCPM: scale_emb).
    pub embed_scale: f32,
    /// Multiplies each residual branch (MiniCPM: scale_depth / sqrt(layers)).
    pub residual_scale: f32,
    /// Multiplies the final hidden state before the head (MiniCPM: dim_model_base / hidden).
    pub logits_scale: f32,
    /// Multiplies q·k (default 1/sqrt(head_dim); Gemma 2/3: query_pre_attn_scalar^-1/2).
    pub attn_scale: f32,
    /// `cap * tanh(s / cap)` on attention scores (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// `cap * tanh(l / cap)` on output logits (Gemma 2).
    pub final_softcap: Option<f32>,
    pub lm_head_bias: bool,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2, Llama `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head normalisation of queries and keys before rotary (Qwen3, Gemma3, StableLM).
    pub qk_norm: QkNorm,
    /// Sliding-window size of each layer (`None`: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
    pub activation: Activation,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(format!("config.json: {name} must be positive, got 0")));
            }
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(Error::config(format!(
                "config.json: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            )));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(Error::config(format!("config.json: vocab_size {} is too large", self.vocab_size)));
        }
        for rope in &self.ropes {
            if rope.dim % 2 != 0 || rope.dim > self.head_dim || rope.dim == 0 {
                return Err(Error::config(format!(
                    "config.json: rotary dimension {} must be even, positive and at most head_dim {}",
                    rope.dim, self.head_dim
                )));
            }
            if !(rope.theta.is_finite() && rope.theta > 1.0) {
                return Err(Error::config(format!("config.json: rope_theta must be a finite number > 1, got {}", rope.theta)));
            }
            if let RopeScaling::LongRope { short_factor, long_factor, .. } = &rope.scaling {
                for (name, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                    if f.len() != rope.dim / 2 {
                        return Err(Error::config(format!(
                            "config.json: longrope {name} has {} values, expected rotary_dim/2 = {}",
                            f.len(),
                            rope.dim / 2
                        )));
                    }
                    if f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                        return Err(Error::config(format!("config.json: longrope {name} values must be positive")));
                    }
                }
            }
        }
        if self.layer_rope.len() != self.num_layers || self.layer_rope.iter().flatten().any(|&i| i >= self.ropes.len()) {
            return Err(Error::config("config.json: per-layer rotary settings do not match the layer count"));
        }
        for (name, v) in [
            ("embedding scale", self.embed_scale),
            ("residual scale", self.residual_scale),
            ("logits scale", self.logits_scale),
            ("attention scale", self.attn_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(format!("config.json: {name} must be a finite positive number, got {v}")));
            }
        }
        for cap in self.attn_softcap.iter().chain(&self.final_softcap) {
            if !(cap.is_finite() && *cap > 0.0) {
                return Err(Error::config(format!("config.json: soft-capping values must be positive, got {cap}")));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::config("config.json: norm epsilon must be a finite non-negative number"));
        }
        if self.layer_windows.len() != self.num_layers {
            return Err(Error::config(format!(
                "config.json: {} layer types given for {} layers",
                self.layer_windows.len(),
                self.num_layers
            )));
        }
        for &id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if id as usize >= self.vocab_size {
                return Err(Error::config(format!(
                    "config.json: special token id {id} is outside the vocabulary of {} tokens",
                    self.vocab_size
                )));
            }
        }
        // Guard against configs whose sizes would overflow buffer arithmetic.
        let per_layer = [self.hidden_size, self.intermediate_size, self.q_dim(), self.kv_dim()]
            .iter()
            .try_fold(0usize, |a, &d| d.checked_mul(self.hidden_size).and_then(|x| x.checked_add(a)));
        if per_layer.and_then(|p| p.checked_mul(self.num_layers)).is_none()
            || self.vocab_size.checked_mul(self.hidden_size).is_none()
        {
            return Err(Error::config("config.json: model dimensions overflow"));
        }
        Ok(())
    }
}
