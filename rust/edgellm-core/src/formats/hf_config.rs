//! Parsing of HF `config.json` (transformers 4.x `rope_theta`/`rope_scaling` and
//! 5.x `rope_parameters` styles) and `generation_config.json`.

use crate::error::{Error, Result};
use crate::model::config::{
    Activation, Architecture, BlockKind, MlpKind, ModelConfig, NormKind, QkNorm, RopeConfig, RopeScaling,
};
use serde_json::{Map, Value};
use std::path::Path;

pub fn read_json(path: &Path) -> Result<Map<String, Value>> {
    // Read bytes, not a String: a file that is not UTF-8 is malformed JSON (a
    // ConfigError), not an I/O failure.
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::config(format!("{}: expected a JSON object", path.display()))),
        Err(e) => Err(Error::config(format!("{}: invalid JSON: {e}", path.display()))),
    }
}

/// Typed access to a JSON object with errors that name the file and key.
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    file: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>, file: &'static str) -> Self {
        Fields { obj, file }
    }
    fn present(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn bad(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::config(format!("{}: {key} must be {want}, got {v}", self.file))
    }
    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.present(key)
            .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| self.bad(key, "a non-negative integer", v)))
            .transpose()
    }
    pub(crate) fn req_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?.ok_or_else(|| Error::config(format!("{}: missing required field {key:?}", self.file)))
    }
    pub(crate) fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.present(key).map(|v| v.as_f64().ok_or_else(|| self.bad(key, "a number", v))).transpose()
    }
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.present(key).map(|v| v.as_bool().ok_or_else(|| self.bad(key, "true or false", v))).transpose()
    }
    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.present(key).map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v))).transpose()
    }
    /// An id or a list of ids (HF allows both for eos_token_id).
    pub(crate) fn ids(&self, key: &str) -> Result<Vec<u32>> {
        let to_id = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| self.bad(key, "a token id or a list of token ids", v));
        match self.present(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a.iter().map(to_id).collect(),
            Some(v) => Ok(vec![to_id(v)?]),
        }
    }
}

/// Parses the architecture description of an HF `config.json`, applying each
/// family's defaults as transformers' configuration classes do.
pub fn parse_model_config(obj: &Map<String, Value>) -> Result<ModelConfig> {
    use Architecture::*;
    let f = Fields::new(obj, "config.json");
    let arch_name = match obj.get("architectures") {
        Some(Value::Array(a)) if !a.is_empty() => a[0]
            .as_str()
            .ok_or_else(|| Error::config("config.json: architectures[0] must be a string"))?
            .to_string(),
        _ => {
            return Err(Error::config(format!(
                "config.json: missing \"architectures\" list (supported: {})",
                Architecture::supported_list()
            )))
        }
    };
    let arch = Architecture::from_hf(&arch_name)?;

    let hidden_size = f.req_usize("hidden_size")?;
    let num_heads = f.req_usize("num_attention_heads")?;
    let num_layers = f.req_usize("num_hidden_layers")?;
    if num_heads == 0 {
        return Err(Error::config("config.json: num_attention_heads must be positive, got 0"));
    }
    let num_kv_heads = f.usize("num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match f.usize("head_dim")? {
        Some(d) => d,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(Error::config(format!(
                    "config.json: hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} and no head_dim is given"
                )));
            }
            hidden_size / num_heads
        }
    };
    let max_position_embeddings = f.usize("max_position_embeddings")?.unwrap_or(2048);

    let norm_kind = match arch {
        Gemma | Gemma2 | Gemma3 => NormKind::RmsOffset,
        Phi | StableLm => NormKind::Layer,
        _ => NormKind::Rms,
    };
    let norm_eps = match norm_kind {
        NormKind::Layer => f.f64("layer_norm_eps")?.unwrap_or(1e-5),
        _ => f.f64("rms_norm_eps")?.unwrap_or(1e-6),
    } as f32;
    let parallel_residual = f.bool("use_parallel_residual")?.unwrap_or(false);
    let block = match arch {
        Gemma2 | Gemma3 => BlockKind::Sandwich,
        Phi => BlockKind::Parallel,
        StableLm if parallel_residual => BlockKind::Parallel,
        _ => BlockKind::Sequential,
    };
    let act_default = match arch {
        Gemma | Gemma2 | Gemma3 => "gelu_pytorch_tanh",
        Phi => "gelu_new",
        _ => "silu",
    };
    // Gemma 2/3 read `hidden_activation`; Gemma (1) reads `hidden_act` and, like
    // transformers' GemmaConfig, treats a plain "gelu" as the tanh approximation.
    let act_name = match arch {
        Gemma2 | Gemma3 => f.str("hidden_activation")?.or(f.str("hidden_act")?),
        Gemma => f.str("hidden_act")?.map(|a| if a == "gelu" { "gelu_pytorch_tanh" } else { a }),
        _ => f.str("hidden_act")?,
    }
    .unwrap_or(act_default);

    let attention_bias = f.bool("attention_bias")?.unwrap_or(false);
    let (qkv_bias, o_bias) = match arch {
        Qwen2 => (true, false),
        Phi => (true, true),
        StableLm => (f.bool("use_qkv_bias")?.unwrap_or(false), false),
        _ => (attention_bias, attention_bias),
    };
    let qk_layernorm = f.bool("qk_layernorm")?.unwrap_or(false);
    let qk_norm = match arch {
        Qwen3 | Gemma3 => QkNorm::Shared,
        StableLm if qk_layernorm => QkNorm::PerHead,
        Phi if qk_layernorm => QkNorm::Shared,
        _ => QkNorm::None,
    };

    // Scales of the Gemma and MiniCPM families.
    let (mut embed_scale, mut residual_scale, mut logits_scale) = (1.0f64, 1.0f64, 1.0f64);
    match arch {
        Gemma | Gemma2 | Gemma3 => embed_scale = (hidden_size as f64).sqrt(),
        MiniCpm => {
            let need = |k: &str| match f.f64(k)? {
                Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                Some(v) => Err(Error::config(format!("config.json: {k} must be a positive number, got {v}"))),
                None => Err(Error::config(format!("config.json: MiniCPM needs {k:?}"))),
            };
            embed_scale = need("scale_emb")?;
            residual_scale = need("scale_depth")? / (num_layers.max(1) as f64).sqrt();
            logits_scale = need("dim_model_base")? / hidden_size as f64;
        }
        _ => {}
    }
    let attn_scale = match arch {
        Gemma2 | Gemma3 => match f.f64("query_pre_attn_scalar")? {
            Some(s) if s.is_finite() && s > 0.0 => s.powf(-0.5),
            Some(s) => return Err(Error::config(format!("config.json: query_pre_attn_scalar must be positive, got {s}"))),
            None => (head_dim as f64).powf(-0.5),
        },
        _ => (head_dim as f64).powf(-0.5),
    };
    // Gemma 3's attention ignores attn_logit_softcapping (transformers never passes it).
    let (attn_softcap, final_softcap) = match arch {
        Gemma2 => (f.f64("attn_logit_softcapping")?, f.f64("final_logit_softcapping")?),
        Gemma3 => (None, f.f64("final_logit_softcapping")?),
        _ => (None, None),
    };

    let sliding_window = f.usize("sliding_window")?;
    let (ropes, layer_rope, layer_types) = parse_ropes(obj, arch, head_dim, max_position_embeddings, sliding_window.is_some())?;
    let layer_windows = layer_types.iter().map(|&sliding| if sliding { sliding_window } else { None }).collect();

    let tie_default = matches!(arch, Gemma | Gemma2 | Gemma3 | SmolLm3);
    let cfg = ModelConfig {
        architecture: arch,
        vocab_size: f.req_usize("vocab_size")?,
        hidden_size,
        intermediate_size: f.req_usize("intermediate_size")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        max_position_embeddings,
        norm_kind,
        norm_eps,
        ropes,
        layer_rope,
        rope_interleaved: false,
        block,
        mlp_kind: if arch == Phi { MlpKind::Plain } else { MlpKind::Gated },
        embed_scale: embed_scale as f32,
        residual_scale: residual_scale as f32,
        logits_scale: logits_scale as f32,
        attn_scale: attn_scale as f32,
        attn_softcap: attn_softcap.map(|x| x as f32),
        final_softcap: final_softcap.map(|x| x as f32),
        lm_head_bias: arch == Phi,
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(tie_default),
        qkv_bias,
        o_bias,
        mlp_bias: arch == Phi || f.bool("mlp_bias")?.unwrap_or(false),
        qk_norm,
        layer_windows,
        activation: Activation::from_hf(act_name)?,
        bos_token_id: f.ids("bos_token_id")?.first().copied(),
        eos_token_ids: f.ids("eos_token_id")?,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Which layers use sliding-window attention: explicit `layer_types`
/// (transformers 5), else each family's rule.
fn layer_types(
    obj: &Map<String, Value>,
    arch: Architecture,
    num_layers: usize,
    has_window: bool,
    uses_rope: &[bool],
) -> Result<Vec<bool>> {
    use Architecture::*;
    let f = Fields::new(obj, "config.json");
    if let Some(Value::Array(types)) = obj.get("layer_types") {
        if types.len() != num_layers {
            return Err(Error::config(format!(
                "config.json: layer_types lists {} layers but num_hidden_layers is {num_layers}",
                types.len()
            )));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") if has_window => Ok(true),
                Some("sliding_attention") => {
                    Err(Error::config("config.json: layer_types uses sliding_attention but sliding_window is null"))
                }
                _ => Err(Error::config(format!("config.json: unsupported layer type {t}"))),
            })
            .collect();
    }
    if !has_window {
        return Ok(vec![false; num_layers]);
    }
    Ok(match arch {
        Mistral | Phi3 => vec![true; num_layers],
        Qwen2 | Qwen3 => {
            let on = f.bool("use_sliding_window")?.unwrap_or(false);
            let from = f.usize("max_window_layers")?.unwrap_or(num_layers);
            (0..num_layers).map(|i| on && i >= from).collect()
        }
        // SmolLM3 slides only on its NoPE layers.
        SmolLm3 => {
            let on = f.bool("use_sliding_window")?.unwrap_or(false);
            uses_rope.iter().map(|&r| on && !r).collect()
        }
        Gemma2 => (0..num_layers).map(|i| (i + 1) % 2 != 0).collect(),
        Gemma3 => {
            let pattern = f.usize("sliding_window_pattern")?.unwrap_or(6);
            if pattern == 0 {
                return Err(Error::config("config.json: sliding_window_pattern must be positive, got 0"));
            }
            (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
        _ => vec![false; num_layers],
    })
}

/// Rotary settings and which one each layer uses. Gemma3 has one per layer type
/// (local and global bases); SmolLM3 leaves some layers without position encoding.
/// Returns the rotary settings, each layer's choice among them, and which layers
/// slide (the two depend on each other: Gemma3 picks rotary by layer type, SmolLM3
/// slides on its NoPE layers).
#[allow(clippy::type_complexity)]
fn parse_ropes(
    obj: &Map<String, Value>,
    arch: Architecture,
    head_dim: usize,
    max_pos: usize,
    has_window: bool,
) -> Result<(Vec<RopeConfig>, Vec<Option<usize>>, Vec<bool>)> {
    let top = Fields::new(obj, "config.json");
    let default_partial = match arch {
        Architecture::Phi => 0.5,
        Architecture::StableLm => 0.25,
        _ => 1.0,
    };
    let params = match obj.get("rope_parameters").or_else(|| obj.get("rope_scaling")) {
        Some(Value::Object(p)) => Some(p),
        Some(Value::Null) | None => None,
        Some(v) => return Err(Error::config(format!("config.json: rope parameters must be an object, got {v}"))),
    };
    let by_type = |key: &str| match params.and_then(|p| p.get(key)) {
        Some(Value::Object(inner)) => Some(inner),
        _ => None,
    };
    let n = top.req_usize("num_hidden_layers")?;
    if arch == Architecture::Gemma3 {
        let sliding = layer_types(obj, arch, n, has_window, &[])?;
        let global = parse_rope(by_type("full_attention").or(params), &top, head_dim, max_pos, default_partial)?;
        let local_theta = top.f64("rope_local_base_freq")?.unwrap_or(10000.0);
        let local = match by_type("sliding_attention") {
            Some(p) => parse_rope(Some(p), &top, head_dim, max_pos, default_partial)?,
            None => RopeConfig { theta: local_theta, dim: head_dim, scaling: RopeScaling::None },
        };
        let layer_rope = sliding.iter().map(|&s| Some(if s { 1 } else { 0 })).collect();
        return Ok((vec![global, local], layer_rope, sliding));
    }
    let rope = parse_rope(by_type("full_attention").or(params), &top, head_dim, max_pos, default_partial)?;
    let layer_rope = if arch == Architecture::SmolLm3 {
        // no_rope_layers[i] == 1 means layer i *uses* rotary (transformers' naming).
        match obj.get("no_rope_layers") {
            Some(Value::Array(flags)) => {
                if flags.len() != n {
                    return Err(Error::config(format!(
                        "config.json: no_rope_layers lists {} layers but num_hidden_layers is {n}",
                        flags.len()
                    )));
                }
                flags
                    .iter()
                    .map(|v| match v.as_u64() {
                        Some(1) => Ok(Some(0)),
                        Some(0) => Ok(None),
                        _ => Err(Error::config(format!("config.json: no_rope_layers entries must be 0 or 1, got {v}"))),
                    })
                    .collect::<Result<_>>()?
            }
            _ => {
                let interval = top.usize("no_rope_layer_interval")?.unwrap_or(4).max(1);
                (0..n).map(|i| ((i + 1) % interval != 0).then_some(0)).collect()
            }
        }
    } else {
        vec![Some(0); n]
    };
    let uses_rope: Vec<bool> = layer_rope.iter().map(Option::is_some).collect();
    let sliding = layer_types(obj, arch, n, has_window, &uses_rope)?;
    Ok((vec![rope], layer_rope, sliding))
}

fn parse_rope(
    params: Option<&Map<String, Value>>,
    top: &Fields<'_>,
    head_dim: usize,
    max_pos: usize,
    default_partial: f64,
) -> Result<RopeConfig> {
    let empty = Map::new();
    let p = Fields::new(params.unwrap_or(&empty), "config.json rope parameters");
    let theta = p.f64("rope_theta")?.or(top.f64("rope_theta")?).unwrap_or(10000.0);
    let partial = p.f64("partial_rotary_factor")?.or(top.f64("partial_rotary_factor")?).unwrap_or(default_partial);
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(Error::config(format!("config.json: partial_rotary_factor must be in (0, 1], got {partial}")));
    }
    let dim = (head_dim as f64 * partial) as usize;
    let kind = p.str("rope_type")?.or(p.str("type")?).unwrap_or("default");
    let factor = || -> Result<f64> {
        let v = p.f64("factor")?.ok_or_else(|| Error::config(format!("config.json: rope_type {kind:?} needs a \"factor\"")))?;
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::config(format!("config.json: rope factor must be positive, got {v}")));
        }
        Ok(v)
    };
    // Phi-3 keeps original_max_position_embeddings at the top level.
    let original_max = p.usize("original_max_position_embeddings")?.or(top.usize("original_max_position_embeddings")?);
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic { factor: factor()?, original_max: max_pos },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: p.f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: p.f64("high_freq_factor")?.unwrap_or(4.0),
            original_max: original_max
                .ok_or_else(|| Error::config("config.json: llama3 rope scaling needs original_max_position_embeddings"))?,
        },
        "yarn" => {
            // transformers: a missing factor is the ratio of the context lengths.
            let factor = match (p.f64("factor")?, original_max) {
                (Some(_), _) => factor()?,
                (None, Some(orig)) if orig > 0 => max_pos as f64 / orig as f64,
                (None, _) => factor()?,
            };
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
            let attention_factor = match p.f64("attention_factor")? {
                Some(a) => a,
                None => match (p.f64("mscale")?, p.f64("mscale_all_dim")?) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => get_mscale(factor, m) / get_mscale(factor, ma),
                    _ => get_mscale(factor, 1.0),
                },
            };
            RopeScaling::Yarn {
                factor,
                original_max: original_max.unwrap_or(max_pos),
                beta_fast: p.f64("beta_fast")?.unwrap_or(32.0),
                beta_slow: p.f64("beta_slow")?.unwrap_or(1.0),
                attention_factor,
                truncate: p.bool("truncate")?.unwrap_or(true),
            }
        }
        "longrope" | "su" => {
            let orig = original_max.filter(|&o| o > 1).ok_or_else(|| {
                Error::config("config.json: longrope scaling needs original_max_position_embeddings > 1")
            })?;
            let list = |key: &str| -> Result<Vec<f64>> {
                match params.and_then(|m| m.get(key)) {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| v.as_f64().ok_or_else(|| Error::config(format!("config.json: longrope {key} must hold numbers"))))
                        .collect(),
                    _ => Err(Error::config(format!("config.json: longrope scaling needs a {key} list"))),
                }
            };
            let factor = p.f64("factor")?.unwrap_or(max_pos as f64 / orig as f64);
            let attention_factor = match p.f64("attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max: orig,
                attention_factor,
            }
        }
        other => {
            return Err(Error::config(format!(
                "config.json: unsupported rope_type {other:?} (supported: default, linear, dynamic, llama3, yarn, longrope)"
            )))
        }
    };
    Ok(RopeConfig { theta, dim, scaling })
}

/// `generation_config.json` values, as transformers' GenerationConfig reads them.
#[derive(Clone, Debug, Default)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<usize>,
    pub max_length: Option<usize>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

pub fn parse_generation_config(obj: &Map<String, Value>) -> Result<GenerationDefaults> {
    let f = Fields::new(obj, "generation_config.json");
    Ok(GenerationDefaults {
        do_sample: f.bool("do_sample")?,
        temperature: f.f64("temperature")?,
        top_k: f.usize("top_k")?,
        top_p: f.f64("top_p")?,
        min_p: f.f64("min_p")?,
        repetition_penalty: f.f64("repetition_penalty")?,
        max_new_tokens: f.usize("max_new_tokens")?,
        max_length: f.usize("max_length")?,
        eos_token_ids: f.ids("eos_token_id")?,
        bos_token_id: f.ids("bos_token_id")?.first().copied(),
    })
}
