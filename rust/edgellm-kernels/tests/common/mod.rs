//! Helpers shared by the kernel tests and benchmarks: every kernel path this CPU
//! has, a small deterministic generator of test data, and a best-of timer.
#![allow(dead_code)] // each test binary uses its own subset

use edgellm_kernels::quant::GgmlType;
use edgellm_kernels::{Isa, Kernels};

pub fn paths() -> Vec<&'static Kernels> {
    Isa::supported().into_iter().map(|i| Kernels::for_isa(i).unwrap()).collect()
}

/// Property-test cases per test: `PROPTEST_CASES` when set, else `native`, or
/// `emulated` on aarch64 (whose runs are emulated under qemu).
pub fn cases(native: u32, emulated: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(target_arch = "aarch64") {
        emulated
    } else {
        native
    })
}

/// Best of `reps` timings of `f` (after one untimed call), in seconds.
pub fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// `n` values uniform in [-1, 1) from `Rng::new(seed)`.
pub fn uniform_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.uniform()).collect()
}

/// xorshift64, seeded so that any seed (0 included) works.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal (sum of uniforms), heavier tails via an occasional outlier.
    pub fn normalish(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        if self.next() % 64 == 0 {
            s * 6.0
        } else {
            s
        }
    }
    /// `n` values (whole blocks of 32): a random scale per block, occasional
    /// outliers and all-zero blocks.
    pub fn row(&mut self, n: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(n);
        for _ in 0..n / 32 {
            let s = 0.05 + 2.0 * self.uniform().abs();
            let zero = self.next() % 16 == 0;
            for _ in 0..32 {
                let o = if self.next() % 50 == 0 { 8.0 } else { 1.0 };
                x.push(if zero { 0.0 } else { self.uniform() * s * o });
            }
        }
        x
    }
    /// `nb` blocks of `ty` of random bytes, with every f16 scale field (d, and
    /// m / dmin where the type has one) a finite, moderate value.
    pub fn blocks(&mut self, ty: GgmlType, nb: usize) -> Vec<u8> {
        use GgmlType::*;
        let bb = ty.block_bytes();
        let mut w: Vec<u8> = (0..nb * bb).map(|_| self.next() as u8).collect();
        let f16_fields: &[usize] = match ty {
            Q4_0 | Q5_0 | Q8_0 | IQ4NL | Q3G128 | Q2G128 | NF4 | F8E4M3 | F8E5M2 => &[0],
            Q4_1 | Q5_1 | Q8_1 | Q4K | Q5K | Q3AG128 | Q2AG128 => &[0, 2],
            Q2K => &[80, 82],
            Q3K => &[108],
            Q6K => &[208],
            _ => &[],
        };
        for blk in w.chunks_exact_mut(bb) {
            for &at in f16_fields {
                let v = edgellm_kernels::f16::from_f32(self.uniform() * 0.05);
                blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
            if ty == Q8K {
                blk[0..4].copy_from_slice(&(self.uniform() * 0.05).to_le_bytes());
            }
            // Finite FP8 codes only (E4M3: S.1111.111 is NaN; E5M2: exponent 11111).
            for q in &mut blk[2..] {
                match ty {
                    F8E4M3 if *q & 0x7F == 0x7F => *q -= 1,
                    F8E5M2 if *q & 0x7C == 0x7C => *q &= !0x04,
                    _ => {}
                }
            }
        }
        w
    }

    /// `rows` weight rows of `ty`, `nb` blocks each: quantized from random
    /// floats, or random bytes with sane scales ([`Rng::blocks`]) when `raw`.
    pub fn weight_rows(&mut self, ty: GgmlType, rows: usize, nb: usize, raw: bool) -> Vec<u8> {
        let k = nb * ty.block_elems();
        let rb = ty.row_bytes(k).unwrap();
        let mut w = vec![0u8; rows * rb];
        for row in w.chunks_exact_mut(rb) {
            if raw {
                row.copy_from_slice(&self.blocks(ty, nb));
            } else {
                edgellm_kernels::quant::quantize_row(ty, &self.row(k), row).unwrap();
            }
        }
        w
    }
}

/// The f64 dot product of a weight row (`w`, `k` elements of `ty`) with an
/// activation row from `quantize_act(ty, ..)`, and the tolerance a kernel's f32
/// result may differ from it (or from another kernel's) by: each dequantized
/// weight is a rounded `d·q − m`, bounded with its block's largest |w|, and the
/// f32 sums run over the block count plus a slack.
pub fn f64_dot_and_tol(ty: GgmlType, w: &[u8], act: &[u8], k: usize) -> (f64, f64) {
    use edgellm_kernels::quant::{dequantize_row, vec_dot_type};
    let deq = |t: GgmlType, b: &[u8]| {
        let mut v = vec![0f32; k];
        dequantize_row(t, b, &mut v).unwrap();
        v
    };
    let (wf, af) = (deq(ty, w), deq(vec_dot_type(ty), act));
    let blk = ty.block_elems();
    let (mut e64, mut mag) = (0f64, 0f64);
    for (wb, ab) in wf.chunks(blk).zip(af.chunks(blk)) {
        let amax = wb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (&a, &b) in wb.iter().zip(ab) {
            e64 += a as f64 * b as f64;
            mag += (a.abs() as f64 + amax) * (b as f64).abs();
        }
    }
    (e64, ((k / blk) + 16) as f64 * f32::EPSILON as f64 * mag + 1e-30)
}
