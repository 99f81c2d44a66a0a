//! Normalisation layers: RMSNorm, Gemma's RMSNorm with a `1 + w` gain, and
//! LayerNorm, all accumulated in f32 as transformers computes them.

use super::par::rows_in_parallel;
use crate::model::config::NormKind;
use edgellm_kernels::quant::{self, GgmlType};
use edgellm_kernels::Kernels;

/// Elements normalised at a time by [`Norm::apply_quantized`]: whole blocks of
/// every activation format (32 for q8_0, 256 for q8_K), and 1 KiB of stack.
const NORM_PIECE: usize = 256;

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

    /// `(center, scale)` of one row: `y = ((x − center) · scale) · gain + bias`.
    fn stats(&self, row: &[f32]) -> (f32, f32) {
        let d = row.len() as f32;
        match self.kind {
            NormKind::Rms | NormKind::RmsOffset => {
                let ms = row.iter().map(|v| v * v).sum::<f32>() / d;
                (0.0, 1.0 / (ms + self.eps).sqrt())
            }
            NormKind::Layer => {
                let mean = row.iter().sum::<f32>() / d;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
                (mean, 1.0 / (var + self.eps).sqrt())
            }
        }
    }

    /// Elements `i0..i0 + v.len()` of a row with `(center, scale)`, normalised
    /// in place: `((v − center) · scale) · gain (+ bias)`, Gemma's RMSNorm
    /// scaling by `1 + w`.
    fn normalise(&self, (center, scale): (f32, f32), i0: usize, v: &mut [f32]) {
        let offset = if self.kind == NormKind::RmsOffset { 1.0 } else { 0.0 };
        for (x, w) in v.iter_mut().zip(&self.weight[i0..]) {
            *x = ((*x - center) * scale) * (w + offset);
        }
        if let Some(b) = &self.bias {
            for (x, b) in v.iter_mut().zip(&b[i0..]) {
                *x += b;
            }
        }
    }

    /// Normalises one row in place.
    pub fn apply_row(&self, row: &mut [f32]) {
        self.normalise(self.stats(row), 0, row);
    }

    /// The normalised `row` quantized to the int8 activation format of weights of
    /// type `ty` (`Kernels::quantize_act`), into `dst`, without writing the
    /// normalised row out: pieces of a few blocks are normalised on the stack,
    /// then quantized. The bytes are those of [`Self::apply_row`], then
    /// quantizing the whole row: the same f32 values, and every format
    /// quantizes each block on its own.
    pub fn apply_quantized(&self, k: &Kernels, ty: GgmlType, row: &[f32], dst: &mut [u8]) {
        let stats = self.stats(row);
        let mut piece = [0f32; NORM_PIECE];
        let mut out = 0;
        for (i, src) in row.chunks(NORM_PIECE).enumerate() {
            let p = &mut piece[..src.len()];
            p.copy_from_slice(src);
            self.normalise(stats, i * NORM_PIECE, p);
            let ab = quant::act_row_bytes(ty, src.len()).expect("rows are whole activation blocks");
            (k.quantize_act)(ty, p, &mut dst[out..out + ab]);
            out += ab;
        }
        debug_assert_eq!(out, dst.len());
    }

    /// Normalises every `dim()`-wide row of `x` in place (a prompt's rows in
    /// parallel, see `ops::par::rows_in_parallel`).
    pub fn apply(&self, x: &mut [f32]) {
        let dim = self.dim();
        rows_in_parallel(x, dim, |_, rows| rows.chunks_exact_mut(dim).for_each(|row| self.apply_row(row)));
    }

    /// Normalises `src` into `dst` (same shape).
    pub fn apply_into(&self, src: &[f32], dst: &mut [f32]) {
        assert_eq!(src.len(), dst.len(), "apply_into: shapes differ");
        let dim = self.dim();
        rows_in_parallel(dst, dim, |r0, rows| {
            rows.copy_from_slice(&src[r0 * dim..r0 * dim + rows.len()]);
            rows.chunks_exact_mut(dim).for_each(|row| self.apply_row(row));
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| (r.next_f64() * 6.0 - 3.0) as f32).collect()
    }

    /// A prompt's rows normalised in pieces on the pool equal each row
    /// normalised alone, on any thread count, for row counts around the
    /// threshold and a ragged last piece.
    #[test]
    fn rows_in_parallel_equal_rows_alone() {
        let dim = 40;
        for kind in [NormKind::Rms, NormKind::RmsOffset, NormKind::Layer] {
            let norm = Norm { kind, weight: values(dim, 7), bias: (kind == NormKind::Layer).then(|| values(dim, 9)), eps: 1e-5 };
            use crate::ops::par::PAR_MIN_ROWS;
            for rows in [1, PAR_MIN_ROWS - 1, PAR_MIN_ROWS, 3 * PAR_MIN_ROWS + 5] {
                let x = values(rows * dim, rows as u64);
                let mut want = x.clone();
                want.chunks_exact_mut(dim).for_each(|r| norm.apply_row(r));
                for threads in [1, 2, 3] {
                    let pool = Pool::new(threads).unwrap();
                    let (mut a, mut b) = (x.clone(), vec![f32::NAN; x.len()]);
                    pool.install(|| {
                        norm.apply(&mut a);
                        norm.apply_into(&x, &mut b);
                    });
                    for got in [&a, &b] {
                        assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()), "{kind:?} rows {rows} threads {threads}");
                    }
                }
            }
        }
    }
}
