//! GGUF model files (llama.cpp's format, versions 2 and 3), translated into what
//! the HF path consumes so the forward pass stays single: the metadata becomes an
//! HF `config.json`-shaped map (parsed by [`parse_model_config`]), the tensors
//! are renamed to HF names in a [`TensorStore`] (bound by `Weights::from_hf`),
//! and the `tokenizer.ggml.*` vocabulary becomes a `tokenizers` pipeline.
//!
//! Tensors stay memory-mapped, except where llama.cpp's converter changed them
//! and the change is undone here (into owned buffers):
//! - Gemma (1, 2, 3) norm weights were stored as `1 + w`; 1 is subtracted.
//! - Q and K rows of `llama`, `minicpm` and `smollm3` files were permuted from
//!   HF's rotate-half layout to interleaved pairs. They are run as stored (the
//!   model's rotary embedding then pairs `(2i, 2i+1)`, [`GgufModel::interleaved_qk`]),
//!   so these large matrices stay mapped; only MiniCPM's Q/K biases, which its
//!   converter left unpermuted, are permuted to match.
//!
//! Architectures (`general.architecture`): llama (also Mistral files; a
//! `sliding_window` makes it Mistral), qwen2, qwen3, gemma, gemma2, gemma3, phi2,
//! phi3 (fused qkv / gate-up, longrope factors), stablelm, minicpm, smollm3.
//!
//! [`parse_model_config`]: crate::formats::hf_config::parse_model_config

mod reader;
mod tensors;

pub use reader::{GgufFile, Meta, TensorInfo, VType, MAGIC};

use crate::error::{Error, Result};
use crate::formats::hf_config::GenerationDefaults;
use crate::formats::TensorStore;
use crate::tokenizer::gguf_vocab::GgufVocab;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::Path;

/// Everything a GGUF file provides, in the HF path's terms.
pub struct GgufModel {
    /// An HF `config.json`-shaped map of the model's hyper-parameters.
    pub config: Map<String, Value>,
    /// The tensors under HF names.
    pub store: TensorStore,
    pub tokenizer: Option<Tokenizer>,
    pub generation: GenerationDefaults,
    /// HF tensor name → GGUF tensor name (for error messages).
    pub names: Vec<(String, String)>,
    /// Q/K rows are in llama.cpp's interleaved-pair order.
    pub interleaved_qk: bool,
}

/// Whether `path` is a file to load as GGUF: a `.gguf` extension or the magic.
pub fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == MAGIC
}

/// The architectures this loader translates, by `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma,
    Gemma2,
    Gemma3,
    Phi2,
    Phi3,
    StableLm,
    MiniCpm,
    SmolLm3,
}

const ARCHS: [(&str, Arch); 11] = [
    ("llama", Arch::Llama),
    ("qwen2", Arch::Qwen2),
    ("qwen3", Arch::Qwen3),
    ("gemma", Arch::Gemma),
    ("gemma2", Arch::Gemma2),
    ("gemma3", Arch::Gemma3),
    ("phi2", Arch::Phi2),
    ("phi3", Arch::Phi3),
    ("stablelm", Arch::StableLm),
    ("minicpm", Arch::MiniCpm),
    ("smollm3", Arch::SmolLm3),
];

impl Arch {
    fn gemma_family(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }
    /// llama.cpp's converter interleaves the Q/K rows of these (norm-style rope).
    fn permuted_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::MiniCpm | Arch::SmolLm3)
    }
}

/// Hyper-parameters read from the metadata (with the arch's key prefix).
pub(crate) struct Hparams {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

fn prefixed(file: &GgufFile, e: Error) -> Error {
    let p = file.path.display();
    match e {
        Error::ModelFormat(m) if !m.starts_with(&p.to_string()) => Error::ModelFormat(format!("{p}: {m}")),
        Error::Config(m) => Error::ModelFormat(format!("{p}: invalid GGUF metadata: {}", m.trim_start_matches("config.json: "))),
        e => e,
    }
}

/// Maps, validates and translates a GGUF model file.
pub fn open(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    translate(&file).map_err(|e| prefixed(&file, e))
}

fn translate(file: &GgufFile) -> Result<GgufModel> {
    if let Some(n) = file.u64("split.count")? {
        if n > 1 {
            return Err(Error::format(format!(
                "this is part of a model split into {n} GGUF files, which is not supported (merge them with llama-gguf-split --merge)"
            )));
        }
    }
    let arch_name = file
        .str("general.architecture")?
        .ok_or_else(|| Error::format("missing metadata \"general.architecture\""))?;
    let arch = ARCHS.iter().find(|(n, _)| *n == arch_name).map(|(_, a)| *a).ok_or_else(|| {
        Error::UnsupportedArchitecture {
            found: format!("{arch_name} (GGUF)"),
            supported: format!("GGUF: {}", ARCHS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")),
        }
    })?;
    let (config, hp) = config(file, arch, arch_name)?;
    let (store_map, names) = tensors::hf_tensors(file, &hp)?;
    let size = file.map.len() as u64;
    let store = TensorStore::from_tensors(store_map, vec![file.path.clone()], size);
    Ok(GgufModel {
        config,
        store,
        tokenizer: tokenizer(file)?,
        generation: generation(file)?,
        names,
        interleaved_qk: arch.permuted_qk(),
    })
}

/// The HF `config.json` equivalent of the metadata.
fn config(file: &GgufFile, arch: Arch, a: &str) -> Result<(Map<String, Value>, Hparams)> {
    let k = |s: &str| format!("{a}.{s}");
    let req = |key: String| -> Result<usize> {
        match file.usize(&key)? {
            Some(v) if v > 0 => Ok(v),
            Some(_) => Err(Error::format(format!("metadata {key:?} must be positive, found 0"))),
            None => Err(Error::format(format!("missing metadata {key:?}"))),
        }
    };
    let n_embd = req(k("embedding_length"))?;
    let n_layer = req(k("block_count"))?;
    let n_ff = req(k("feed_forward_length"))?;
    let n_head = req(k("attention.head_count"))?;
    let n_head_kv = match file.usize(&k("attention.head_count_kv"))? {
        Some(0) => return Err(Error::format(format!("metadata {:?} must be positive, found 0", k("attention.head_count_kv")))),
        Some(v) => v,
        None => n_head,
    };
    if n_head % n_head_kv != 0 {
        return Err(Error::format(format!(
            "metadata {:?} ({n_head}) is not a multiple of {:?} ({n_head_kv})",
            k("attention.head_count"),
            k("attention.head_count_kv")
        )));
    }
    let key_len = file.usize(&k("attention.key_length"))?;
    if let (Some(kl), Some(vl)) = (key_len, file.usize(&k("attention.value_length"))?) {
        if kl != vl {
            return Err(Error::format(format!("attention.key_length {kl} differs from attention.value_length {vl} (not supported)")));
        }
    }
    let head_dim = match key_len {
        Some(0) => return Err(Error::format(format!("metadata {:?} must be positive, found 0", k("attention.key_length")))),
        Some(d) => d,
        None if n_embd % n_head == 0 => n_embd / n_head,
        None => {
            return Err(Error::format(format!(
                "embedding_length {n_embd} is not divisible by attention.head_count {n_head} and no attention.key_length is given"
            )))
        }
    };
    // Sanity bounds (llama.cpp keeps these in 32-bit fields); they also keep every
    // product the model computes from them far from overflow.
    for (key, v, max) in [
        ("embedding_length", n_embd, 1usize << 20),
        ("feed_forward_length", n_ff, 1 << 22),
        ("block_count", n_layer, 1 << 16),
        ("attention.head_count", n_head, 1 << 16),
        ("attention.head_count_kv", n_head_kv, 1 << 16),
        ("attention.key_length", head_dim, 1 << 16),
    ] {
        if v > max {
            return Err(Error::format(format!("metadata {:?} is {v}, more than the {max} this loader accepts", k(key))));
        }
    }
    if n_head * head_dim > 1 << 22 {
        return Err(Error::format(format!("attention.head_count {n_head} x head size {head_dim} is implausibly large")));
    }
    let embd = file.tensor("token_embd.weight").ok_or_else(|| Error::format("missing tensor \"token_embd.weight\""))?;
    if embd.dims.len() != 2 {
        return Err(Error::format(format!("tensor \"token_embd.weight\" has {} dimensions, expected 2", embd.dims.len())));
    }
    let n_vocab = embd.dims[1];
    if let Some(v) = file.usize(&k("vocab_size"))? {
        if v != n_vocab {
            return Err(Error::format(format!("metadata {:?} is {v} but token_embd.weight has {n_vocab} rows", k("vocab_size"))));
        }
    }

    let hf_arch = match arch {
        Arch::Llama if file.usize(&k("attention.sliding_window"))?.unwrap_or(0) > 0 => "MistralForCausalLM",
        Arch::Llama => "LlamaForCausalLM",
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Qwen3 => "Qwen3ForCausalLM",
        Arch::Gemma => "GemmaForCausalLM",
        Arch::Gemma2 => "Gemma2ForCausalLM",
        Arch::Gemma3 => "Gemma3ForCausalLM",
        Arch::Phi2 => "PhiForCausalLM",
        Arch::Phi3 => "Phi3ForCausalLM",
        Arch::StableLm => "StableLmForCausalLM",
        Arch::MiniCpm => "MiniCPMForCausalLM",
        Arch::SmolLm3 => "SmolLM3ForCausalLM",
    };
    let mut c = Map::new();
    let mut set = |key: &str, v: Value| {
        c.insert(key.to_string(), v);
    };
    set("architectures", json!([hf_arch]));
    set("hidden_size", json!(n_embd));
    set("intermediate_size", json!(n_ff));
    set("num_hidden_layers", json!(n_layer));
    set("num_attention_heads", json!(n_head));
    set("num_key_value_heads", json!(n_head_kv));
    set("head_dim", json!(head_dim));
    set("vocab_size", json!(n_vocab));
    if let Some(ctx) = file.usize(&k("context_length"))? {
        if ctx == 0 || ctx > 1 << 31 {
            return Err(Error::format(format!("metadata {:?} is {ctx}; it must be between 1 and 2^31", k("context_length"))));
        }
        set("max_position_embeddings", json!(ctx));
    }
    if let Some(e) = file.f64(&k("attention.layer_norm_rms_epsilon"))? {
        set("rms_norm_eps", json!(e));
    }
    if let Some(e) = file.f64(&k("attention.layer_norm_epsilon"))? {
        set("layer_norm_eps", json!(e));
    }
    let theta = file.f64(&k("rope.freq_base"))?;
    if let Some(t) = theta {
        set("rope_theta", json!(t));
    }
    // Rotary dimensions: partial rotary when fewer than the head's.
    if let Some(r) = file.usize(&k("rope.dimension_count"))? {
        if r == 0 || r > head_dim || r % 2 != 0 {
            return Err(Error::format(format!(
                "metadata {:?} is {r}; it must be even and between 2 and the head size {head_dim}",
                k("rope.dimension_count")
            )));
        }
        if r < head_dim {
            // parse_model_config takes floor(head_dim * factor): make it land on r.
            let mut p = r as f64 / head_dim as f64;
            if (head_dim as f64 * p) as usize != r {
                p = (r as f64 + 0.5) / head_dim as f64;
            }
            set("partial_rotary_factor", json!(p));
        } else {
            set("partial_rotary_factor", json!(1.0));
        }
    } else if matches!(arch, Arch::Phi2 | Arch::StableLm) {
        return Err(Error::format(format!("missing metadata {:?} (needed for partial rotary)", k("rope.dimension_count"))));
    }
    let rope_dim = file.usize(&k("rope.dimension_count"))?.unwrap_or(head_dim);
    if let Some(s) = rope_scaling(file, a, theta.unwrap_or(10000.0), rope_dim)? {
        set("rope_scaling", Value::Object(s));
    }

    let has = |name: &str| file.tensor(name).is_some();
    set("tie_word_embeddings", json!(!has("output.weight")));
    let window = file.usize(&k("attention.sliding_window"))?.filter(|&w| w > 0);
    let bias = has("blk.0.attn_q.bias");
    match arch {
        Arch::Llama | Arch::SmolLm3 | Arch::MiniCpm => {
            if let (Arch::Llama, Some(w)) = (arch, window) {
                set("sliding_window", json!(w));
            }
            set("attention_bias", json!(bias));
            set("mlp_bias", json!(has("blk.0.ffn_up.bias")));
            if arch == Arch::MiniCpm {
                let need = |key: String| -> Result<f64> {
                    match file.f64(&key)? {
                        Some(v) if v > 0.0 => Ok(v),
                        Some(v) => Err(Error::format(format!("metadata {key:?} must be positive, found {v}"))),
                        None => Err(Error::format(format!("missing metadata {key:?}"))),
                    }
                };
                set("scale_emb", json!(need(k("embedding_scale"))?));
                set("scale_depth", json!(need(k("residual_scale"))? * (n_layer as f64).sqrt()));
                set("dim_model_base", json!(n_embd as f64 / need(k("logit_scale"))?));
            }
        }
        Arch::Phi3 => {
            if let Some(w) = window {
                set("sliding_window", json!(w));
            }
        }
        Arch::Gemma2 | Arch::Gemma3 => {
            // llama.cpp's defaults when the keys are absent (Gemma 2: window 4096,
            // soft-caps 50 / 30).
            let w = window.or(if arch == Arch::Gemma2 { Some(4096) } else { None });
            if let Some(w) = w {
                set("sliding_window", json!(w));
            }
            let attn_cap = file.f64(&k("attn_logit_softcapping"))?;
            let final_cap = file.f64(&k("final_logit_softcapping"))?;
            if arch == Arch::Gemma2 {
                set("attn_logit_softcapping", json!(attn_cap.unwrap_or(50.0)));
                set("final_logit_softcapping", json!(final_cap.unwrap_or(30.0)));
            } else if let Some(f) = final_cap {
                set("final_logit_softcapping", json!(f));
            }
            // Query scaling: an explicit attention.scale, else llama.cpp's rule
            // (hidden/heads for the 27B models, head_dim otherwise).
            let big = (arch == Arch::Gemma2 && n_layer == 46) || (arch == Arch::Gemma3 && n_layer == 62);
            let scalar = match file.f64(&k("attention.scale"))? {
                Some(s) if s > 0.0 => 1.0 / (s * s),
                Some(s) => return Err(Error::format(format!("metadata {:?} must be positive, found {s}", k("attention.scale")))),
                None if big => (n_embd / n_head) as f64,
                None => head_dim as f64,
            };
            set("query_pre_attn_scalar", json!(scalar));
            if arch == Arch::Gemma3 {
                set("rope_local_base_freq", json!(file.f64(&k("rope.freq_base_swa"))?.unwrap_or(10000.0)));
                let pattern_key = k("attention.sliding_window_pattern");
                match file.get(&pattern_key) {
                    None => set("sliding_window_pattern", json!(6)),
                    Some(Meta::Array { .. }) => {
                        let flags = file.bool_array(&pattern_key)?.unwrap_or_default();
                        let types: Vec<&str> =
                            flags.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
                        set("layer_types", json!(types));
                    }
                    Some(_) => set("sliding_window_pattern", json!(file.usize(&pattern_key)?)),
                }
            }
        }
        Arch::StableLm => {
            let parallel = match file.bool(&k("use_parallel_residual"))? {
                Some(p) => p,
                None => !has("blk.0.ffn_norm.weight"),
            };
            set("use_parallel_residual", json!(parallel));
            set("use_qkv_bias", json!(bias));
            set("qk_layernorm", json!(has("blk.0.attn_q_norm.weight")));
        }
        Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma | Arch::Phi2 => {}
    }
    if let Some(b) = file.id("tokenizer.ggml.bos_token_id")? {
        set("bos_token_id", json!(b));
    }
    if let Some(e) = file.id("tokenizer.ggml.eos_token_id")? {
        set("eos_token_id", json!(e));
    }
    Ok((c, Hparams { arch, n_layer, n_head, n_head_kv, head_dim }))
}

/// The values of a small 1-D F32/F16 tensor (rope factors).
fn vector(file: &GgufFile, name: &str) -> Result<Option<Vec<f32>>> {
    let Some(t) = file.tensor(name) else { return Ok(None) };
    let tensor = crate::tensor::Tensor::from_mapped(
        file.map.clone(),
        t.start,
        t.size,
        crate::tensor::DType::from_ggml(t.ty),
        vec![t.dims.iter().product()],
    )?;
    if t.ty.is_quantized() {
        return Err(Error::format(format!("tensor {name:?} must be f32 or f16, found {}", t.ty.name())));
    }
    Ok(Some(tensor.to_f32_vec()))
}

/// `rope_scaling` of the config: linear / yarn from `rope.scaling.*`, longrope
/// from the `rope_factors_{long,short}` tensors, llama3 from `rope_freqs`.
fn rope_scaling(file: &GgufFile, a: &str, theta: f64, rope_dim: usize) -> Result<Option<Map<String, Value>>> {
    let k = |s: &str| format!("{a}.{s}");
    let mut m = Map::new();
    let orig = file.usize(&k("rope.scaling.original_context_length"))?;
    let long = vector(file, "rope_factors_long.weight")?;
    let short = vector(file, "rope_factors_short.weight")?;
    match (long, short) {
        (Some(l), Some(s)) => {
            if l.len() != rope_dim / 2 || s.len() != rope_dim / 2 {
                return Err(Error::format(format!(
                    "rope_factors_long/short have {} and {} values; expected {} (half the rotary dimensions)",
                    l.len(),
                    s.len(),
                    rope_dim / 2
                )));
            }
            let orig = orig.ok_or_else(|| {
                Error::format(format!("longrope factors need metadata {:?}", k("rope.scaling.original_context_length")))
            })?;
            m.insert("rope_type".into(), json!("longrope"));
            m.insert("long_factor".into(), json!(l));
            m.insert("short_factor".into(), json!(s));
            m.insert("original_max_position_embeddings".into(), json!(orig));
            if let Some(f) = file.f64(&k("rope.scaling.attn_factor"))? {
                m.insert("attention_factor".into(), json!(f));
            }
            return Ok(Some(m));
        }
        (None, None) => {}
        _ => return Err(Error::format("only one of rope_factors_long.weight and rope_factors_short.weight is present")),
    }
    if let Some(f) = vector(file, "rope_freqs.weight")? {
        return llama3_from_factors(&f, theta, rope_dim).map(|o| o.map(|m| m.into_iter().collect()));
    }
    let factor = |required: bool| -> Result<Option<f64>> {
        match file.f64(&k("rope.scaling.factor"))? {
            Some(f) if f > 0.0 => Ok(Some(f)),
            Some(f) => Err(Error::format(format!("metadata {:?} must be positive, found {f}", k("rope.scaling.factor")))),
            None if required => Err(Error::format(format!("missing metadata {:?}", k("rope.scaling.factor")))),
            None => Ok(None),
        }
    };
    match file.str(&k("rope.scaling.type"))? {
        None | Some("none") => {
            // The deprecated key of older files.
            if let Some(f) = file.f64(&k("rope.scale_linear"))? {
                if f > 0.0 && f != 1.0 {
                    m.insert("rope_type".into(), json!("linear"));
                    m.insert("factor".into(), json!(f));
                }
            }
        }
        Some("linear") => {
            let f = factor(true)?.unwrap_or(1.0);
            if f != 1.0 {
                m.insert("rope_type".into(), json!("linear"));
                m.insert("factor".into(), json!(f));
            }
        }
        Some("yarn") => {
            m.insert("rope_type".into(), json!("yarn"));
            if let Some(f) = factor(false)? {
                m.insert("factor".into(), json!(f));
            }
            if let Some(o) = orig {
                m.insert("original_max_position_embeddings".into(), json!(o));
            }
            for (key, hf) in [("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"), ("yarn_attn_factor", "attention_factor")] {
                if let Some(v) = file.f64(&k(&format!("rope.scaling.{key}")))? {
                    m.insert(hf.into(), json!(v));
                }
            }
        }
        Some("longrope") => {
            return Err(Error::format("rope.scaling.type is longrope but the rope_factors_long/short tensors are missing"))
        }
        Some(other) => {
            return Err(Error::format(format!(
                "metadata {:?} is {other:?}; supported: none, linear, yarn, longrope",
                k("rope.scaling.type")
            )))
        }
    }
    Ok(if m.is_empty() { None } else { Some(m) })
}

/// Llama 3 rope scaling from llama.cpp's per-frequency divisors (`rope_freqs`,
/// which the converter computes from factor / low_freq_factor /
/// high_freq_factor / original_max_position_embeddings): the parameters are
/// recovered from the smoothly scaled band, then checked to reproduce every
/// divisor.
fn llama3_from_factors(f: &[f32], theta: f64, dim: usize) -> Result<Option<Vec<(String, Value)>>> {
    let bad = |why: &str| Error::format(format!("rope_freqs.weight does not follow Llama 3 rope scaling ({why})"));
    if f.len() != dim / 2 || f.is_empty() {
        return Err(bad(&format!("{} values for {dim} rotary dimensions", f.len())));
    }
    if f.iter().all(|&x| (x - 1.0).abs() < 1e-6) {
        return Ok(None);
    }
    let factor = f[f.len() - 1] as f64;
    if factor.is_nan() || factor <= 1.0 || !f.iter().all(|&x| x.is_finite() && x >= 1.0 - 1e-6 && x as f64 <= factor * (1.0 + 1e-6)) {
        return Err(bad("divisors must rise from 1 to the factor"));
    }
    let wavelen = |i: usize| 2.0 * std::f64::consts::PI * theta.powf(2.0 * i as f64 / dim as f64);
    // In the smooth band, 1/f = (1 - s)/factor + s with s = a/wavelen - b.
    let pts: Vec<(f64, f64)> = f
        .iter()
        .enumerate()
        .filter(|(_, &x)| x as f64 > 1.0 + 1e-4 && (x as f64) < factor * (1.0 - 1e-4))
        .map(|(i, &x)| {
            let s = (1.0 / x as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (1.0 / wavelen(i), s)
        })
        .collect();
    if pts.len() < 2 {
        return Err(bad("fewer than two smoothly scaled frequencies; cannot recover the parameters"));
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let a = sxy / sxx;
    let b = a * mx - my;
    if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
        return Err(bad("the smooth band is not decreasing in wavelength"));
    }
    // old/(hff-lff) = a, lff/(hff-lff) = b; pick the integer old context closest
    // to lff = 1.
    let old = (a / b).round().max(1.0);
    let span = old / a;
    let (lff, hff) = (b * span, b * span + span);
    // Check every divisor with transformers' formula.
    for (i, &x) in f.iter().enumerate() {
        let wl = wavelen(i);
        let want = if wl < old / hff {
            1.0
        } else if wl > old / lff {
            factor
        } else {
            let s = (old / wl - lff) / (hff - lff);
            1.0 / ((1.0 - s) / factor + s)
        };
        if ((want - x as f64) / x as f64).abs() > 1e-3 {
            return Err(bad(&format!("divisor {i} is {x}, the recovered parameters give {want}")));
        }
    }
    Ok(Some(vec![
        ("rope_type".into(), json!("llama3")),
        ("factor".into(), json!(factor)),
        ("low_freq_factor".into(), json!(lff)),
        ("high_freq_factor".into(), json!(hff)),
        ("original_max_position_embeddings".into(), json!(old as u64)),
    ]))
}

fn tokenizer(file: &GgufFile) -> Result<Option<Tokenizer>> {
    let model = match file.str("tokenizer.ggml.model")? {
        None | Some("none") | Some("no_vocab") => return Ok(None),
        Some(m) => m,
    };
    let t = "tokenizer.ggml.";
    let key = |s: &str| format!("{t}{s}");
    let tokens = file.str_array(&key("tokens"))?.ok_or_else(|| Error::format("missing metadata \"tokenizer.ggml.tokens\""))?;
    let vocab = GgufVocab {
        model,
        pre: file.str(&key("pre"))?,
        tokens,
        scores: file.f32_array(&key("scores"))?,
        token_types: file.i32_array(&key("token_type"))?,
        merges: file.str_array(&key("merges"))?,
        bos: file.id(&key("bos_token_id"))?,
        eos: file.id(&key("eos_token_id"))?,
        unk: file.id(&key("unknown_token_id"))?,
        pad: file.id(&key("padding_token_id"))?,
        add_bos: file.bool(&key("add_bos_token"))?,
        add_eos: file.bool(&key("add_eos_token"))?,
        add_space_prefix: file.bool(&key("add_space_prefix"))?,
        chat_template: file.str("tokenizer.chat_template")?,
    };
    vocab.build().map(Some)
}

/// Generation defaults: end-of-generation ids (eos, eot, eom) and the
/// `general.sampling.*` values some files carry.
fn generation(file: &GgufFile) -> Result<GenerationDefaults> {
    let mut eos = Vec::new();
    for k in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = file.id(&format!("tokenizer.ggml.{k}"))? {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    let s = |k: &str| format!("general.sampling.{k}");
    Ok(GenerationDefaults {
        do_sample: None,
        temperature: file.f64(&s("temp"))?,
        top_k: file.usize(&s("top_k"))?,
        top_p: file.f64(&s("top_p"))?,
        min_p: file.f64(&s("min_p"))?,
        repetition_penalty: file.f64(&s("penalty_repeat"))?,
        max_new_tokens: None,
        max_length: None,
        eos_token_ids: eos,
        bos_token_id: file.id("tokenizer.ggml.bos_token_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama3 divisors as llama.cpp's converter computes them.
    fn llama3_divisors(theta: f64, dim: usize, factor: f64, lff: f64, hff: f64, old: f64) -> Vec<f32> {
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf(2.0 * i as f64 / dim as f64);
                let wl = 2.0 * std::f64::consts::PI / freq;
                if wl < old / hff {
                    1.0
                } else if wl > old / lff {
                    factor as f32
                } else {
                    let s = (old / wl - lff) / (hff - lff);
                    (1.0 / ((1.0 - s) / factor + s)) as f32
                }
            })
            .collect()
    }

    #[test]
    fn llama3_parameters_are_recovered() {
        for (theta, dim, factor, lff, hff, old) in
            [(500000.0, 64, 32.0, 1.0, 4.0, 8192.0), (500000.0, 128, 8.0, 1.0, 4.0, 8192.0), (10000.0, 32, 8.0, 1.0, 4.0, 32.0)]
        {
            let f = llama3_divisors(theta, dim, factor, lff, hff, old);
            let got: Map<String, Value> = llama3_from_factors(&f, theta, dim).unwrap().unwrap().into_iter().collect();
            assert_eq!(got["original_max_position_embeddings"], json!(old as u64));
            assert!((got["factor"].as_f64().unwrap() - factor).abs() < 1e-4);
            assert!((got["high_freq_factor"].as_f64().unwrap() - hff).abs() < 1e-2, "{got:?}");
            assert!((got["low_freq_factor"].as_f64().unwrap() - lff).abs() < 1e-2, "{got:?}");
        }
        assert!(llama3_from_factors(&[1.0; 16], 10000.0, 32).unwrap().is_none());
        assert!(llama3_from_factors(&[2.0, 1.0], 10000.0, 4).is_err());
    }
}
