//! Helpers shared by the attention tests (`tests/attention_*.rs`).
#![allow(dead_code)]

use edgellm_core::attention::AttentionParams;
use edgellm_core::kv_cache::KvCache;
use edgellm_kernels::{Isa, Kernels};
use edgellm_core::pool::Pool;
use std::sync::OnceLock;

/// SplitMix64: reproducible data from a proptest seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn vec(&mut self, len: usize, amp: f32) -> Vec<f32> {
        (0..len).map(|_| self.f32(-amp, amp)).collect()
    }
}

/// Pools of 1 and 2 threads.
pub fn pools() -> &'static [Pool; 2] {
    static POOLS: OnceLock<[Pool; 2]> = OnceLock::new();
    POOLS.get_or_init(|| [1, 2].map(|n| Pool::new(n).unwrap()))
}

/// The kernel table of every instruction set this machine runs.
pub fn all_kernels() -> Vec<&'static Kernels> {
    Isa::supported().into_iter().map(|i| Kernels::for_isa(i).unwrap()).collect()
}

pub fn params(
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
) -> AttentionParams {
    AttentionParams { num_heads: nh, num_kv_heads: nkv, head_dim: hd, scale, window, softcap }
}

/// A one-layer cache holding `k`, `v` (`[len × kv_heads × head_dim]`).
pub fn cache_with(kv_heads: usize, hd: usize, k: &[f32], v: &[f32]) -> KvCache {
    let len = k.len() / (kv_heads * hd);
    let mut c = KvCache::new(1, kv_heads, hd, len.max(1));
    c.reserve(len).unwrap();
    c.write(0, k, v);
    c.advance(len);
    c
}

/// Largest `|got − want| / max(1, |want|)`.
pub fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f32::max)
}

pub fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// The divisors of `n`, for picking a KV-head count.
pub fn divisors(n: usize) -> Vec<usize> {
    (1..=n).filter(|d| n / d * d == n).collect()
}
