//! Helpers shared by the kernel property tests: every kernel path this CPU has,
//! and a small deterministic generator of test data.
#![allow(dead_code)] // each test binary uses its own subset

use edgellm_kernels::{Isa, Kernels};

pub fn paths() -> Vec<&'static Kernels> {
    Isa::supported().into_iter().map(|i| Kernels::for_isa(i).unwrap()).collect()
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
}
