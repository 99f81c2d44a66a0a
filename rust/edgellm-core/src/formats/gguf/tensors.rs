//! GGUF tensor names → HF tensor names, with the converter's changes undone.

use super::reader::{GgufFile, TensorInfo};
use super::{Arch, Hparams};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use edgellm_kernels::quant::{dequantize_row, QuantError};
use std::collections::BTreeMap;

/// What becomes of one GGUF tensor.
enum Target {
    /// Renamed, bytes unchanged (memory-mapped).
    Plain(String),
    /// A Q/K bias the converter left in HF order while permuting its weight
    /// (MiniCPM): permuted the same way for `heads` heads.
    Permute(String, usize),
    /// A Gemma norm stored as `1 + w`.
    MinusOne(String),
    /// A fused `[q | k | v]` projection of a non-fused architecture (old Phi-2
    /// files): split into `{prefix}.{q,k,v}_proj.{suffix}`.
    SplitQkv { prefix: String, suffix: &'static str },
    /// StableLM's per-head q/k LayerNorms stacked as `[heads × head_dim]`.
    PerHead { prefix: String, heads: usize },
}

/// The HF name (and treatment) of a GGUF tensor, or `None` for tensors the
/// model does not bind (rope factor tables, which became config, and unknowns).
fn target(hp: &Hparams, name: &str) -> Option<Target> {
    use Arch::*;
    let arch = hp.arch;
    let (base, suffix) = match name.rsplit_once('.') {
        Some((b, s @ ("weight" | "bias"))) => (b, if s == "weight" { "weight" } else { "bias" }),
        _ => return None,
    };
    let minus_one = arch.gemma_family() && suffix == "weight" && base.ends_with("norm");
    let plain = |hf: String| Some(if minus_one { Target::MinusOne(hf) } else { Target::Plain(hf) });
    match base {
        "token_embd" => return plain(format!("model.embed_tokens.{suffix}")),
        "output_norm" if arch == Phi2 => return plain(format!("model.final_layernorm.{suffix}")),
        "output_norm" => return plain(format!("model.norm.{suffix}")),
        "output" => return plain(format!("lm_head.{suffix}")),
        _ => {}
    }
    let rest = base.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < hp.n_layer && !layer.starts_with('+'))?;
    let p = format!("model.layers.{layer}");
    let hf = |s: &str| format!("{p}.{s}.{suffix}");
    // Q/K weights run in the converter's interleaved order (the rotary embedding
    // follows); biases are permuted with them, except by the MiniCPM converter.
    let permute_bias = arch == MiniCpm && suffix == "bias";
    match part {
        "attn_norm" => plain(hf("input_layernorm")),
        "attn_q" if permute_bias => Some(Target::Permute(hf("self_attn.q_proj"), hp.n_head)),
        "attn_k" if permute_bias => Some(Target::Permute(hf("self_attn.k_proj"), hp.n_head_kv)),
        "attn_q" => plain(hf("self_attn.q_proj")),
        "attn_k" => plain(hf("self_attn.k_proj")),
        "attn_v" => plain(hf("self_attn.v_proj")),
        "attn_output" if arch == Phi2 => plain(hf("self_attn.dense")),
        "attn_output" => plain(hf("self_attn.o_proj")),
        "attn_qkv" if arch == Phi3 => plain(hf("self_attn.qkv_proj")),
        "attn_qkv" => Some(Target::SplitQkv { prefix: format!("{p}.self_attn"), suffix }),
        "attn_q_norm" | "attn_k_norm" => {
            let which = &part[5..6];
            match arch {
                StableLm => Some(Target::PerHead {
                    prefix: format!("{p}.self_attn.{which}_layernorm.norms"),
                    heads: if which == "q" { hp.n_head } else { hp.n_head_kv },
                }),
                Phi2 => plain(hf(&format!("self_attn.{which}_layernorm"))),
                _ => plain(hf(&format!("self_attn.{which}_norm"))),
            }
        }
        "ffn_norm" if matches!(arch, Gemma2 | Gemma3) => plain(hf("pre_feedforward_layernorm")),
        "ffn_norm" => plain(hf("post_attention_layernorm")),
        "post_attention_norm" => plain(hf("post_attention_layernorm")),
        "post_ffw_norm" => plain(hf("post_feedforward_layernorm")),
        "ffn_gate" => plain(hf("mlp.gate_proj")),
        "ffn_up" if arch == Phi3 => plain(hf("mlp.gate_up_proj")),
        "ffn_up" if arch == Phi2 => plain(hf("mlp.fc1")),
        "ffn_up" => plain(hf("mlp.up_proj")),
        "ffn_down" if arch == Phi2 => plain(hf("mlp.fc2")),
        "ffn_down" => plain(hf("mlp.down_proj")),
        _ => None,
    }
}

/// Whether this build can compute with tensors of type `ty`.
fn check_type(t: &TensorInfo) -> Result<()> {
    if !t.ty.is_quantized() {
        return Ok(());
    }
    let src = vec![0u8; t.ty.block_bytes()];
    let mut dst = vec![0f32; t.ty.block_elems()];
    match dequantize_row(t.ty, &src, &mut dst) {
        Err(QuantError::Unsupported(_)) => Err(Error::format(format!(
            "tensor {:?} has type {}, which this build cannot compute with yet",
            t.name,
            t.ty.name()
        ))),
        _ => Ok(()),
    }
}

fn mapped(file: &GgufFile, t: &TensorInfo) -> Result<Tensor> {
    Tensor::from_mapped(file.map.clone(), t.start, t.size, DType::from_ggml(t.ty), t.shape())
        .map_err(|e| Error::format(format!("tensor {:?}: {e}", t.name)))
}

/// llama.cpp's `permute` of a bias: per head of `d`, HF's halves `[2][d/2]`
/// become interleaved pairs `[d/2][2]`.
fn permute(t: &Tensor, heads: usize, name: &str) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let rows = shape[0];
    if shape.len() != 1 || heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        return Err(Error::format(format!(
            "tensor {name:?} of shape {shape:?} is not a bias of {heads} heads of an even size"
        )));
    }
    let (d, v) = (rows / heads, t.to_f32_vec());
    let half = d / 2;
    // Stored index h·d + 2i + j holds HF index h·d + j·half + i.
    let out: Vec<f32> = (0..rows).map(|s| (s / d) * d + (s % 2) * half + (s % d) / 2).map(|r| v[r]).collect();
    Tensor::from_f32(&out, shape)
}

/// Every bound tensor under its HF name, plus the HF → GGUF name pairs.
/// Tensors by HF name, and (HF name, GGUF name) pairs.
pub(super) type HfTensors = (BTreeMap<String, Tensor>, Vec<(String, String)>);

pub(super) fn hf_tensors(file: &GgufFile, hp: &Hparams) -> Result<HfTensors> {
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut names = Vec::new();
    let mut put = |hf: String, t: Tensor, gguf: &str| -> Result<()> {
        if out.insert(hf.clone(), t).is_some() {
            return Err(Error::format(format!("two GGUF tensors map to {hf:?} (the second is {gguf:?})")));
        }
        names.push((hf, gguf.to_string()));
        Ok(())
    };
    for t in &file.tensors {
        let Some(target) = target(hp, &t.name) else { continue };
        check_type(t)?;
        let tensor = mapped(file, t)?;
        match target {
            Target::Plain(hf) => put(hf, tensor, &t.name)?,
            Target::Permute(hf, heads) => put(hf, permute(&tensor, heads, &t.name)?, &t.name)?,
            Target::MinusOne(hf) => {
                if tensor.shape().len() != 1 {
                    return Err(Error::format(format!("norm tensor {:?} is not 1-dimensional", t.name)));
                }
                let w: Vec<f32> = tensor.to_f32_vec().iter().map(|x| x - 1.0).collect();
                put(hf, Tensor::from_f32(&w, tensor.shape().to_vec())?, &t.name)?
            }
            Target::SplitQkv { prefix, suffix } => {
                let q = hp.n_head * hp.head_dim;
                let kv = hp.n_head_kv * hp.head_dim;
                let rows = tensor.shape()[0];
                if rows != q + 2 * kv {
                    return Err(Error::format(format!(
                        "fused tensor {:?} has {rows} rows, expected {} (q {q} + k {kv} + v {kv})",
                        t.name,
                        q + 2 * kv
                    )));
                }
                let bounds = [("q", 0, q), ("k", q, q + kv), ("v", q + kv, rows)];
                for (which, a, b) in bounds {
                    let part = match tensor.shape().len() {
                        1 => Tensor::from_f32(&tensor.to_f32_vec()[a..b], vec![b - a])?,
                        _ => tensor.rows(a, b)?,
                    };
                    put(format!("{prefix}.{which}_proj.{suffix}"), part, &t.name)?;
                }
            }
            Target::PerHead { prefix, heads } => {
                let v = tensor.to_f32_vec();
                let hd = hp.head_dim;
                let shared = tensor.shape() == [hd];
                if !shared && tensor.shape() != [heads, hd] {
                    return Err(Error::format(format!(
                        "tensor {:?} has shape {:?}, expected [{heads}, {hd}]",
                        t.name,
                        tensor.shape()
                    )));
                }
                for h in 0..heads {
                    let row = if shared { &v[..] } else { &v[h * hd..(h + 1) * hd] };
                    put(format!("{prefix}.{h}.weight"), Tensor::from_f32(row, vec![hd])?, &t.name)?;
                }
            }
        }
    }
    Ok((out, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (reshape(h, 2, d/2) → swapaxes(1, 2)) of row indices.
    fn permute(rows: &[f32], heads: usize) -> Vec<f32> {
        let d = rows.len() / heads;
        let mut out = vec![0.0; rows.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..d / 2 {
                    out[h * d + i * 2 + j] = rows[h * d + j * (d / 2) + i];
                }
            }
        }
        out
    }

    #[test]
    fn bias_permutation_is_the_converters() {
        let v: Vec<f32> = (0..24).map(|x| x as f32).collect();
        for heads in [1, 2, 3, 6] {
            let t = Tensor::from_f32(&v, vec![24]).unwrap();
            assert_eq!(super::permute(&t, heads, "t").unwrap().to_f32_vec(), permute(&v, heads));
        }
        assert!(super::permute(&Tensor::from_f32(&v, vec![24]).unwrap(), 5, "t").is_err());
        assert!(super::permute(&Tensor::from_f32(&v, vec![12, 2]).unwrap(), 2, "t").is_err());
    }

    #[test]
    fn names_follow_the_converter() {
        let hp = |arch| Hparams { arch, n_layer: 2, n_head: 2, n_head_kv: 1, head_dim: 4 };
        let name = |arch, n: &str| match target(&hp(arch), n) {
            Some(Target::Plain(s)) | Some(Target::MinusOne(s)) | Some(Target::Permute(s, _)) => s,
            Some(_) => "<special>".into(),
            None => "<none>".into(),
        };
        assert_eq!(name(Arch::Llama, "blk.1.attn_q.weight"), "model.layers.1.self_attn.q_proj.weight");
        assert_eq!(name(Arch::Llama, "blk.2.attn_q.weight"), "<none>");
        assert_eq!(name(Arch::Gemma2, "blk.0.ffn_norm.weight"), "model.layers.0.pre_feedforward_layernorm.weight");
        assert_eq!(name(Arch::Qwen2, "blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(name(Arch::Phi3, "blk.0.ffn_up.weight"), "model.layers.0.mlp.gate_up_proj.weight");
        assert_eq!(name(Arch::Phi2, "output_norm.bias"), "model.final_layernorm.bias");
        assert_eq!(name(Arch::Qwen3, "blk.0.attn_k_norm.weight"), "model.layers.0.self_attn.k_norm.weight");
        assert_eq!(name(Arch::Llama, "rope_freqs.weight"), "<none>");
        assert!(matches!(target(&hp(Arch::Gemma), "output_norm.weight"), Some(Target::MinusOne(_))));
        // Permuted Q/K weights stay mapped; only MiniCPM's unpermuted biases change.
        assert!(matches!(target(&hp(Arch::Llama), "blk.0.attn_k.weight"), Some(Target::Plain(_))));
        assert!(matches!(target(&hp(Arch::Llama), "blk.0.attn_k.bias"), Some(Target::Plain(_))));
        assert!(matches!(target(&hp(Arch::MiniCpm), "blk.0.attn_q.bias"), Some(Target::Permute(_, 2))));
        assert!(matches!(target(&hp(Arch::Qwen2), "blk.0.attn_q.weight"), Some(Target::Plain(_))));
    }
}
