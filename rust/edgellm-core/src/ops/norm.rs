//! Normalisation layers: RMSNorm, Gemma's RMSNorm with a `1 + w` gain, and
//! LayerNorm, all accumulated in f32 as transformers computes them.

use crate::model::config::NormKind;

#[derive(Clone, Debug)]
pub struct Norm {
    pub kind: NormKind,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub eps: f32,
}

impl Norm {
    pub fn dim(&self) -> usize {
        self.weight.len()
    }

    /// Parameters (weight and bias) for accounting.
    pub fn params(&self) -> usize {
        self.weight.len() + self.bias.as_ref().map_or(0, |b| b.len())
    }

    /// Normalises one row in place.
    pub fn apply_row(&self, row: &mut [f32]) {
        let d = row.len() as f32;
        let (center, scale) = match self.kind {
            NormKind::Rms | NormKind::RmsOffset => {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d;
                (0.0, 1.0 / (ms + self.eps).sqrt())
            }
            NormKind::Layer => {
                let mean = row.iter().sum::<f32>() / d;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
                (mean, 1.0 / (var + self.eps).sqrt())
            }
        };
        let offset = if self.kind == NormKind::RmsOffset { 1.0 } else { 0.0 };
        for (i, v) in row.iter_mut().enumerate() {
            *v = ((*v - center) * scale) * (self.weight[i] + offset);
        }
        if let Some(b) = &self.bias {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }

    /// Normalises every `dim()`-wide row of `x` in place.
    pub fn apply(&self, x: &mut [f32]) {
        for row in x.chunks_exact_mut(self.dim()) {
            self.apply_row(row);
        }
    }

    /// Normalises `src` into `dst` (same shape).
    pub fn apply_into(&self, src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
        self.apply(dst);
    }
}

/// Query/key normalisation over each head of `[n × heads × head_dim]`: one norm
/// shared by all heads, or one per head.
#[derive(Clone, Debug)]
pub struct HeadNorm {
    pub norms: Vec<Norm>,
}

impl HeadNorm {
    pub fn apply(&self, x: &mut [f32], heads: usize) {
        let hd = self.norms[0].dim();
        for (i, head) in x.chunks_exact_mut(hd).enumerate() {
            let n = if self.norms.len() == 1 { &self.norms[0] } else { &self.norms[i % heads] };
            n.apply_row(head);
        }
    }

    pub fn params(&self) -> usize {
        self.norms.iter().map(Norm::params).sum()
    }
}
