//! Calibration capture: the inputs of every linear layer for a set of calibration
//! sequences, one transformer layer at a time, so post-training quantizers (GPTQ,
//! AWQ, SmoothQuant) can measure the activations their weights will see.
//!
//! A [`Calibrator`] holds the hidden states of all calibration tokens entering
//! layer `i`. [`Calibrator::capture`] runs layer `i` over them and returns what
//! each projection reads; the caller may then replace that layer's weights
//! ([`Calibrator::set_linear`], [`Calibrator::set_norm`]), e.g. with their
//! quantized values, and [`Calibrator::advance`] runs the layer with the current
//! weights to produce the inputs of layer `i + 1` — later layers then see the
//! quantized model's activations, as GPTQ's sequential recipe wants. Memory stays
//! bounded by one layer's activations.
//!
//! The layer computation is the one of `transformer.rs` (same ops in the same
//! order, so the final hidden states reproduce [`Model::logits`] exactly), run per
//! sequence over plain per-head key/value buffers instead of a KV cache.

use super::config::{BlockKind, NormKind};
use super::weights::LayerWeights;
use super::Model;
use crate::attention::flash::flash_attend_slices;
use crate::attention::AttentionParams;
use crate::error::{Error, Result};
use crate::ops::{activation, Linear, Norm};
use crate::tensor::Tensor;
use std::sync::Arc;

/// The linear layers of a transformer layer, by the names the capture API uses.
pub const LINEAR_NAMES: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];
/// The norms of a transformer layer that a calibrator can read and replace.
pub const NORM_NAMES: [&str; 4] = ["attn_norm", "mlp_norm", "post_attn_norm", "post_mlp_norm"];

/// What the projections of one layer read, rows = calibration tokens.
pub struct LayerInputs {
    /// Input of q, k and v (and of the MLP in parallel blocks): `[tokens × hidden]`.
    pub attn_in: Vec<f32>,
    /// Input of o (the attention output): `[tokens × q_dim]`.
    pub o_in: Vec<f32>,
    /// Input of gate and up: `[tokens × hidden]` (equal to `attn_in` in parallel blocks).
    pub mlp_in: Vec<f32>,
    /// Input of down (the activated MLP hidden state): `[tokens × intermediate]`.
    pub down_in: Vec<f32>,
}

/// A projection's weight (f32, row-major), its `[out, in]` shape and its bias.
pub type LinearParams = (Vec<f32>, [usize; 2], Option<Vec<f32>>);

pub struct Calibrator {
    model: Arc<Model>,
    /// Tokens of each calibration sequence.
    lens: Vec<usize>,
    /// Hidden states entering layer `layer`, all sequences concatenated: `[tokens × hidden]`.
    hidden: Vec<f32>,
    layer: usize,
    /// Layer `layer`'s weights with the caller's replacements (`None` once past the last layer).
    current: Option<LayerWeights>,
}

#[derive(Clone, Copy)]
/// Which projection input a tap reports.
enum Input {
    Attn,
    O,
    Mlp,
    Down,
}

impl Calibrator {
    /// Embeds `seqs` (token ids, each a separate sequence starting at position 0).
    pub fn new(model: Arc<Model>, seqs: &[Vec<u32>]) -> Result<Calibrator> {
        if seqs.is_empty() || seqs.iter().any(|s| s.is_empty()) {
            return Err(Error::arg("calibration needs at least one sequence, and no empty sequences"));
        }
        let h = model.config.hidden_size;
        let mut total = 0usize;
        for s in seqs {
            model.check_tokens(s)?;
            if s.len() > model.max_context() {
                return Err(Error::ContextLength { what: "calibration sequence", len: s.len(), max: model.max_context() });
            }
            total = total.checked_add(s.len()).ok_or_else(|| Error::arg("too many calibration tokens"))?;
        }
        let floats = total.checked_mul(h).ok_or_else(|| Error::arg("too many calibration tokens"))?;
        let mut hidden = vec![0f32; floats];
        let scale = model.config.embed_scale;
        for (row, &id) in hidden.chunks_exact_mut(h).zip(seqs.iter().flatten()) {
            model.weights.embed.row_to_f32(id as usize, row);
            if scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        let current = model.weights.layers.first().map(clone_layer);
        Ok(Calibrator { lens: seqs.iter().map(Vec::len).collect(), hidden, layer: 0, current, model })
    }

    /// Index of the layer whose inputs [`capture`](Self::capture) returns.
    pub fn layer(&self) -> usize {
        self.layer
    }
    pub fn num_layers(&self) -> usize {
        self.model.weights.layers.len()
    }
    /// Calibration tokens (rows of every captured matrix).
    pub fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }
    pub fn model(&self) -> &Model {
        &self.model
    }

    fn current(&self) -> Result<&LayerWeights> {
        self.current.as_ref().ok_or_else(|| Error::arg("calibration is past the last layer"))
    }

    /// Runs the current layer (with its current weights) over every calibration
    /// sequence and returns the inputs of its projections. The hidden states are
    /// not advanced.
    pub fn capture(&self) -> Result<LayerInputs> {
        let lw = self.current()?;
        let c = &self.model.config;
        let t = self.tokens();
        let mut out = LayerInputs {
            attn_in: Vec::with_capacity(t * c.hidden_size),
            o_in: Vec::with_capacity(t * c.q_dim()),
            mlp_in: Vec::with_capacity(t * c.hidden_size),
            down_in: Vec::with_capacity(t * c.intermediate_size),
        };
        let mut at = 0;
        for &n in &self.lens {
            let mut x = self.hidden[at * c.hidden_size..(at + n) * c.hidden_size].to_vec();
            self.model.install(|| {
                self.run_layer(lw, &mut x, n, &mut |site, v| {
                    match site {
                        Input::Attn => &mut out.attn_in,
                        Input::O => &mut out.o_in,
                        Input::Mlp => &mut out.mlp_in,
                        Input::Down => &mut out.down_in,
                    }
                    .extend_from_slice(v)
                })
            });
            at += n;
        }
        Ok(out)
    }

    /// Runs the current layer with its current weights, making its outputs the
    /// hidden states of the next layer, whose weights become current.
    pub fn advance(&mut self) -> Result<()> {
        self.current()?;
        let h = self.model.config.hidden_size;
        let mut hidden = std::mem::take(&mut self.hidden);
        let lw = self.current()?;
        let mut at = 0;
        for &n in &self.lens {
            let x = &mut hidden[at * h..(at + n) * h];
            self.model.install(|| self.run_layer(lw, x, n, &mut |_, _| {}));
            at += n;
        }
        self.hidden = hidden;
        self.layer += 1;
        self.current = self.model.weights.layers.get(self.layer).map(clone_layer);
        Ok(())
    }

    /// Logits of every calibration token (`[tokens × vocab]`) once every layer has
    /// been advanced through: the model's head applied to the final hidden states.
    pub fn logits(&self) -> Result<Vec<f32>> {
        if self.current.is_some() {
            return Err(Error::arg(format!(
                "logits are available after the last layer; calibration is at layer {} of {}",
                self.layer,
                self.num_layers()
            )));
        }
        let (m, c) = (&self.model, &self.model.config);
        let mut hidden = self.hidden.clone();
        m.weights.final_norm.apply(&mut hidden);
        if c.logits_scale != 1.0 {
            hidden.iter_mut().for_each(|v| *v *= c.logits_scale);
        }
        let mut logits = vec![0f32; self.tokens() * c.vocab_size];
        m.install(|| m.weights.lm_head.forward(m.kernels, &hidden, &mut logits));
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|l| *l = (*l / cap).tanh() * cap);
        }
        Ok(logits)
    }

    fn linear_mut(&mut self, name: &str) -> Result<&mut Linear> {
        let lw = self.current.as_mut().ok_or_else(|| Error::arg("calibration is past the last layer"))?;
        let l = match name {
            "q" => Some(&mut lw.q),
            "k" => Some(&mut lw.k),
            "v" => Some(&mut lw.v),
            "o" => Some(&mut lw.o),
            "gate" => lw.gate.as_mut(),
            "up" => Some(&mut lw.up),
            "down" => Some(&mut lw.down),
            _ => return Err(Error::arg(format!("unknown linear layer {name:?}; choose one of {LINEAR_NAMES:?}"))),
        };
        l.ok_or_else(|| Error::arg(format!("this model's layers have no {name:?} projection")))
    }

    /// The current layer's `name` projection as f32 `[out × in]` plus its bias.
    pub fn linear(&mut self, name: &str) -> Result<LinearParams> {
        let l = self.linear_mut(name)?;
        let (rows, cols) = (l.out_features(), l.in_features());
        let mut w = vec![0f32; rows * cols];
        for (r, row) in w.chunks_exact_mut(cols).enumerate() {
            l.weight.row_to_f32(r, row);
        }
        Ok((w, [rows, cols], l.bias.clone()))
    }

    /// Replaces the current layer's `name` weight (same shape, f32, row-major) and,
    /// if given, its bias (only where the layer has one) for the following captures
    /// and the advance.
    pub fn set_linear(&mut self, name: &str, weight: &[f32], bias: Option<&[f32]>) -> Result<()> {
        let l = self.linear_mut(name)?;
        let shape = l.weight.shape().to_vec();
        if shape.iter().product::<usize>() != weight.len() {
            return Err(Error::arg(format!("{name}: {} values given for a weight of shape {shape:?}", weight.len())));
        }
        match (bias, &mut l.bias) {
            (Some(b), Some(lb)) if b.len() == lb.len() => lb.copy_from_slice(b),
            (Some(_), Some(_)) => return Err(Error::arg(format!("{name}: bias length differs from the layer's"))),
            (Some(_), None) => return Err(Error::arg(format!("{name} has no bias"))),
            (None, _) => {}
        }
        l.set_weight(Tensor::from_f32(weight, shape)?);
        Ok(())
    }

    fn norm_mut(&mut self, name: &str) -> Result<&mut Norm> {
        let lw = self.current.as_mut().ok_or_else(|| Error::arg("calibration is past the last layer"))?;
        let n = match name {
            "attn_norm" => Some(&mut lw.attn_norm),
            "mlp_norm" => lw.mlp_norm.as_mut(),
            "post_attn_norm" => lw.post_attn_norm.as_mut(),
            "post_mlp_norm" => lw.post_mlp_norm.as_mut(),
            _ => return Err(Error::arg(format!("unknown norm {name:?}; choose one of {NORM_NAMES:?}"))),
        };
        n.ok_or_else(|| Error::arg(format!("this model's layers have no {name:?}")))
    }

    /// The current layer's norm `name`: (weight, bias) as stored (Gemma's `1 + w`
    /// norms store `w`; see [`Calibrator::norm_kind`]).
    pub fn norm(&mut self, name: &str) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let n = self.norm_mut(name)?;
        Ok((n.weight.clone(), n.bias.clone()))
    }

    /// Replaces the current layer's norm parameters (same lengths; a bias only
    /// where the norm has one).
    pub fn set_norm(&mut self, name: &str, weight: &[f32], bias: Option<&[f32]>) -> Result<()> {
        let n = self.norm_mut(name)?;
        if weight.len() != n.weight.len() {
            return Err(Error::arg(format!("{name}: {} weights given for a norm of {}", weight.len(), n.weight.len())));
        }
        match (bias, &mut n.bias) {
            (Some(b), Some(nb)) if b.len() == nb.len() => nb.copy_from_slice(b),
            (Some(_), Some(_)) => return Err(Error::arg(format!("{name}: bias length differs from the norm's"))),
            (Some(_), None) => return Err(Error::arg(format!("{name} has no bias"))),
            (None, _) => {}
        }
        n.weight.copy_from_slice(weight);
        Ok(())
    }

    /// `rms`, `rms_offset` (a `1 + w` gain) or `layer`.
    pub fn norm_kind(&self) -> &'static str {
        match self.model.config.norm_kind {
            NormKind::Rms => "rms",
            NormKind::RmsOffset => "rms_offset",
            NormKind::Layer => "layer",
        }
    }

    /// `sequential`, `parallel` (attention and MLP read the same norm) or `sandwich`.
    pub fn block_kind(&self) -> &'static str {
        match self.model.config.block {
            BlockKind::Sequential => "sequential",
            BlockKind::Parallel => "parallel",
            BlockKind::Sandwich => "sandwich",
        }
    }

    /// One layer over one sequence of `n` tokens (`x`: `[n × hidden]`, updated in
    /// place), reporting each projection input to `tap`. Mirrors
    /// `Transformer::layer` operation for operation.
    fn run_layer(&self, lw: &LayerWeights, x: &mut [f32], n: usize, tap: &mut dyn FnMut(Input, &[f32])) {
        let m = &*self.model;
        let (c, k) = (&m.config, m.kernels);
        let li = self.layer;
        let (h, hd, kvh) = (c.hidden_size, c.head_dim, c.num_kv_heads);
        let mut xn = vec![0f32; n * h];
        let mut q = vec![0f32; n * c.q_dim()];
        let mut kk = vec![0f32; n * c.kv_dim()];
        let mut v = vec![0f32; n * c.kv_dim()];
        lw.attn_norm.apply_into(x, &mut xn);
        tap(Input::Attn, &xn);
        lw.q.forward(k, &xn, &mut q);
        lw.k.forward(k, &xn, &mut kk);
        lw.v.forward(k, &xn, &mut v);
        if let Some(qn) = &lw.q_norm {
            qn.apply(&mut q, c.num_heads);
        }
        if let Some(kn) = &lw.k_norm {
            kn.apply(&mut kk, kvh);
        }
        if let Some(r) = c.layer_rope[li] {
            let rope = &m.ropes[r];
            let (cos, sin) = rope.tables(0..n, n);
            rope.apply(&mut q, c.num_heads, hd, &cos, &sin);
            rope.apply(&mut kk, kvh, hd, &cos, &sin);
        }
        // Keys and values per KV head, `[position][head_dim]` (the cache's layout).
        let mut keys = vec![vec![0f32; n * hd]; kvh];
        let mut values = vec![vec![0f32; n * hd]; kvh];
        for t in 0..n {
            for j in 0..kvh {
                let src = (t * kvh + j) * hd..(t * kvh + j + 1) * hd;
                keys[j][t * hd..(t + 1) * hd].copy_from_slice(&kk[src.clone()]);
                values[j][t * hd..(t + 1) * hd].copy_from_slice(&v[src]);
            }
        }
        let params = AttentionParams {
            num_heads: c.num_heads,
            num_kv_heads: kvh,
            head_dim: hd,
            scale: c.attn_scale,
            window: c.layer_windows[li],
            softcap: c.attn_softcap,
        };
        let key_refs: Vec<&[f32]> = keys.iter().map(Vec::as_slice).collect();
        let value_refs: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
        let mut att = vec![0f32; n * c.q_dim()];
        flash_attend_slices(k, &params, &key_refs, &value_refs, 0, &q, &mut att, None);
        tap(Input::O, &att);
        let mut proj = vec![0f32; n * h];
        lw.o.forward(k, &att, &mut proj);
        if let Some(pn) = &lw.post_attn_norm {
            pn.apply(&mut proj);
        }
        match c.block {
            BlockKind::Parallel => {
                tap(Input::Mlp, &xn);
                let mlp_out = self.mlp(lw, &xn, n, tap);
                for ((xv, a), mo) in x.iter_mut().zip(&proj).zip(&mlp_out) {
                    *xv += c.residual_scale * (a + mo);
                }
            }
            BlockKind::Sequential | BlockKind::Sandwich => {
                add_scaled(x, &proj, c.residual_scale);
                let mn = lw.mlp_norm.as_ref().expect("sequential blocks have an MLP norm");
                mn.apply_into(x, &mut xn);
                tap(Input::Mlp, &xn);
                let mut mlp_out = self.mlp(lw, &xn, n, tap);
                if let Some(pn) = &lw.post_mlp_norm {
                    pn.apply(&mut mlp_out);
                }
                add_scaled(x, &mlp_out, c.residual_scale);
            }
        }
    }

    fn mlp(&self, lw: &LayerWeights, xn: &[f32], n: usize, tap: &mut dyn FnMut(Input, &[f32])) -> Vec<f32> {
        let m = &*self.model;
        let (c, k) = (&m.config, m.kernels);
        let inter = n * c.intermediate_size;
        let mut up = vec![0f32; inter];
        let mut out = vec![0f32; n * c.hidden_size];
        lw.up.forward(k, xn, &mut up);
        match &lw.gate {
            Some(g) => {
                let mut gate = vec![0f32; inter];
                g.forward(k, xn, &mut gate);
                activation::gated(c.activation, &mut gate, &up);
                tap(Input::Down, &gate);
                lw.down.forward(k, &gate, &mut out);
            }
            None => {
                activation::apply(c.activation, &mut up);
                tap(Input::Down, &up);
                lw.down.forward(k, &up, &mut out);
            }
        }
        out
    }
}

/// A layer's weights for the calibrator to modify: tensors share the model's bytes
/// until replaced; norms are copied.
fn clone_layer(l: &LayerWeights) -> LayerWeights {
    LayerWeights {
        attn_norm: l.attn_norm.clone(),
        q: l.q.clone(),
        k: l.k.clone(),
        v: l.v.clone(),
        o: l.o.clone(),
        q_norm: l.q_norm.clone(),
        k_norm: l.k_norm.clone(),
        post_attn_norm: l.post_attn_norm.clone(),
        mlp_norm: l.mlp_norm.clone(),
        gate: l.gate.clone(),
        up: l.up.clone(),
        down: l.down.clone(),
        post_mlp_norm: l.post_mlp_norm.clone(),
    }
}

fn add_scaled(x: &mut [f32], y: &[f32], scale: f32) {
    if scale == 1.0 {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
    } else {
        x.iter_mut().zip(y).for_each(|(a, b)| *a += scale * b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LoadOptions;
    use std::path::PathBuf;

    fn fixture(name: &str) -> Arc<Model> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models").join(name);
        Arc::new(Model::load(&dir, &LoadOptions { threads: Some(2), ..Default::default() }).unwrap())
    }

    fn seqs(vocab: usize) -> Vec<Vec<u32>> {
        vec![(0..13).map(|i| (i * 7 + 3) as u32 % vocab as u32).collect(), (0..9).map(|i| (i * 11 + 1) as u32 % vocab as u32).collect()]
    }

    /// Advancing through every layer and applying the head reproduces the model's
    /// own forward pass exactly, for sequential, parallel, sandwich and offset-norm families.
    #[test]
    fn final_hidden_states_reproduce_model_logits() {
        for name in ["llama_gqa_tied", "phi", "gemma2", "stablelm_parallel", "qwen3"] {
            let m = fixture(name);
            let s = seqs(m.config.vocab_size);
            let mut cal = Calibrator::new(m.clone(), &s).unwrap();
            assert!(cal.logits().is_err(), "{name}: logits before the last layer");
            while cal.layer() < cal.num_layers() {
                let inputs = cal.capture().unwrap();
                let c = &m.config;
                assert_eq!(inputs.attn_in.len(), 22 * c.hidden_size);
                assert_eq!(inputs.o_in.len(), 22 * c.q_dim());
                assert_eq!(inputs.mlp_in.len(), 22 * c.hidden_size);
                assert_eq!(inputs.down_in.len(), 22 * c.intermediate_size);
                cal.advance().unwrap();
            }
            let got = cal.logits().unwrap();
            let vocab = m.config.vocab_size;
            let mut at = 0;
            for sq in &s {
                let want = m.logits(sq).unwrap();
                assert_eq!(&got[at * vocab..(at + sq.len()) * vocab], &want[..], "{name}");
                at += sq.len();
            }
            assert!(cal.capture().is_err() && cal.advance().is_err());
        }
    }

    /// The captured q input is the attention norm of the embeddings; replacing a
    /// weight changes what the next projection reads.
    #[test]
    fn captures_follow_replaced_weights() {
        let m = fixture("llama");
        let s = seqs(m.config.vocab_size);
        let mut cal = Calibrator::new(m.clone(), &s).unwrap();
        let first = cal.capture().unwrap();
        let h = m.config.hidden_size;
        let mut row = vec![0f32; h];
        m.weights.embed.row_to_f32(s[0][0] as usize, &mut row);
        m.weights.layers[0].attn_norm.apply_row(&mut row);
        assert_eq!(&first.attn_in[..h], &row[..]);

        let (w, shape, _) = cal.linear("v").unwrap();
        assert_eq!(shape, [m.config.kv_dim(), h]);
        let zeros = vec![0f32; w.len()];
        cal.set_linear("v", &zeros, None).unwrap();
        let after = cal.capture().unwrap();
        assert_eq!(after.attn_in, first.attn_in);
        // Zero values: every attention output is zero.
        assert!(after.o_in.iter().all(|&v| v == 0.0));
        assert!(first.o_in.iter().any(|&v| v != 0.0));
        assert!(cal.set_linear("v", &zeros[1..], None).is_err());
        assert!(cal.set_linear("nope", &zeros, None).is_err());
        assert!(cal.set_linear("v", &zeros, Some(&[1.0])).is_err()); // llama has no biases

        let (nw, nb) = cal.norm("attn_norm").unwrap();
        assert!(nb.is_none());
        let doubled: Vec<f32> = nw.iter().map(|v| 2.0 * v).collect();
        cal.set_norm("attn_norm", &doubled, None).unwrap();
        let scaled = cal.capture().unwrap();
        for (a, b) in scaled.attn_in.iter().zip(&first.attn_in) {
            assert!((a - 2.0 * b).abs() <= 1e-6 * b.abs().max(1.0));
        }
        assert!(cal.set_norm("attn_norm", &doubled[1..], None).is_err());
        cal.advance().unwrap();
        // The next layer starts from the model's own weights again.
        assert_eq!(cal.norm("attn_norm").unwrap().0, m.weights.layers[1].attn_norm.weight);
    }

    #[test]
    fn rejects_bad_sequences() {
        let m = fixture("llama");
        assert!(Calibrator::new(m.clone(), &[]).is_err());
        assert!(Calibrator::new(m.clone(), &[vec![]]).is_err());
        assert!(matches!(
            Calibrator::new(m.clone(), &[vec![m.config.vocab_size as u32]]),
            Err(Error::InvalidToken { .. })
        ));
        let long = vec![1u32; m.max_context() + 1];
        assert!(matches!(Calibrator::new(m, &[long]), Err(Error::ContextLength { .. })));
    }
}
