//! Logit processing and token selection, in transformers' order: repetition
//! penalty, presence/frequency penalties (OpenAI-style), temperature, top-k,
//! top-p, min-p, then a draw (or argmax when greedy).

use crate::error::{Error, Result};
use crate::rng::Rng;
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 selects greedy decoding.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1 disables top-p.
    pub top_p: f32,
    /// 0 disables min-p.
    pub min_p: f32,
    /// 1 disables the repetition penalty (applied over prompt and output, as in transformers).
    pub repetition_penalty: f32,
    /// Subtracted once from every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a generated token.
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::arg(m));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence_penalty and frequency_penalty must be finite".into());
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// −log softmax(logits)\[target\], computed in f64.
pub fn neg_log_softmax(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    lse - logits[target] as f64
}

/// Index of the largest value (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Applies the penalties in place. `context` holds every token of the sequence so
/// far (prompt + output); `generated` counts output tokens.
pub fn apply_penalties(cfg: &SamplerConfig, logits: &mut [f32], context: &[u32], generated: &HashMap<u32, u32>) {
    if cfg.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in context {
            let t = t as usize;
            if t < logits.len() && !seen[t] {
                seen[t] = true;
                let l = &mut logits[t];
                *l = if *l < 0.0 { *l * cfg.repetition_penalty } else { *l / cfg.repetition_penalty };
            }
        }
    }
    if cfg.presence_penalty != 0.0 || cfg.frequency_penalty != 0.0 {
        for (&t, &n) in generated {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= cfg.presence_penalty + cfg.frequency_penalty * n as f32;
            }
        }
    }
}

/// The tokens that survive temperature, top-k, top-p and min-p, with their
/// renormalised probabilities, most likely first. Never empty for finite logits.
pub fn candidates(cfg: &SamplerConfig, logits: &[f32]) -> Vec<(u32, f64)> {
    let t = cfg.temperature.max(f32::MIN_POSITIVE) as f64;
    let mut c: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, &l)| l > f32::NEG_INFINITY && !l.is_nan())
        .map(|(i, &l)| (i as u32, l as f64 / t))
        .collect();
    if c.is_empty() {
        return c;
    }
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if cfg.top_k > 0 && cfg.top_k < c.len() {
        // Ties with the k-th value stay in, as in transformers.
        let kth = c[cfg.top_k - 1].1;
        let end = c.iter().position(|x| x.1 < kth).unwrap_or(c.len());
        c.truncate(end);
    }
    let softmax = |c: &mut Vec<(u32, f64)>| {
        let max = c[0].1;
        let mut sum = 0.0;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            sum += x.1;
        }
        for x in c.iter_mut() {
            x.1 /= sum;
        }
    };
    // From here on the second field is a probability.
    softmax(&mut c);
    if cfg.top_p < 1.0 {
        // Keep a token while the mass ranked strictly above it is below top_p.
        let mut above = 0.0;
        let mut keep = 0;
        for x in c.iter() {
            if above < cfg.top_p as f64 || keep == 0 {
                keep += 1;
                above += x.1;
            } else {
                break;
            }
        }
        c.truncate(keep);
    }
    if cfg.min_p > 0.0 {
        let floor = cfg.min_p as f64 * c[0].1;
        c.retain(|x| x.1 >= floor);
    }
    let sum: f64 = c.iter().map(|x| x.1).sum();
    for x in c.iter_mut() {
        x.1 /= sum;
    }
    c
}

/// Stateful token selection for one generation.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        cfg.validate()?;
        let rng = cfg.seed.map_or_else(Rng::from_entropy, Rng::new);
        Ok(Sampler { cfg, rng, generated: HashMap::new() })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Picks the next token from `logits` (modified in place by the penalties).
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        apply_penalties(&self.cfg, logits, context, &self.generated);
        let tok = if self.cfg.is_greedy() {
            argmax(logits)
        } else {
            let c = candidates(&self.cfg, logits);
            let u = self.rng.next_f64();
            let mut acc = 0.0;
            let mut pick = c.last().map_or(0, |x| x.0);
            for &(id, p) in &c {
                acc += p;
                if u < acc {
                    pick = id;
                    break;
                }
            }
            pick
        };
        *self.generated.entry(tok).or_insert(0) += 1;
        tok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplerConfig {
        SamplerConfig { temperature, top_k, top_p, min_p, ..Default::default() }
    }

    proptest! {
        #[test]
        fn filters_never_admit_excluded_tokens(
            logits in proptest::collection::vec(-20.0f32..20.0, 1..200),
            top_k in 0usize..20, top_p in 0.05f32..1.0, min_p in 0.0f32..0.5, temp in 0.1f32..2.0, seed in any::<u64>()
        ) {
            let c = cfg(temp, top_k, top_p, min_p);
            let cand = candidates(&c, &logits);
            prop_assert!(!cand.is_empty());
            let total: f64 = cand.iter().map(|x| x.1).sum();
            prop_assert!((total - 1.0).abs() < 1e-9);
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let max = sorted[0];
            for &(id, _) in &cand {
                let l = logits[id as usize];
                if top_k > 0 && top_k < logits.len() {
                    prop_assert!(l >= sorted[top_k - 1], "top-k admitted a token below the k-th logit");
                }
                // min-p relative to the best surviving token (always the global max).
                let p_rel = (((l - max) / temp) as f64).exp();
                prop_assert!(p_rel >= min_p as f64 * 0.999_999, "min-p admitted a token below the floor");
            }
            let mut s = Sampler::new(SamplerConfig { seed: Some(seed), ..c }).unwrap();
            let tok = s.sample(&mut logits.clone(), &[]);
            prop_assert!(cand.iter().any(|x| x.0 == tok));
        }

        #[test]
        fn same_seed_same_tokens(logits in proptest::collection::vec(-5.0f32..5.0, 2..100), seed in any::<u64>()) {
            let c = SamplerConfig { temperature: 1.0, seed: Some(seed), ..Default::default() };
            let (mut a, mut b) = (Sampler::new(c.clone()).unwrap(), Sampler::new(c).unwrap());
            for _ in 0..20 {
                prop_assert_eq!(a.sample(&mut logits.clone(), &[]), b.sample(&mut logits.clone(), &[]));
            }
        }
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        // probs ≈ [0.5, 0.3, 0.2]: top_p 0.6 keeps two tokens, 0.5 keeps one.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        assert_eq!(candidates(&cfg(1.0, 0, 0.6, 0.0), &logits).len(), 2);
        assert_eq!(candidates(&cfg(1.0, 0, 0.5, 0.0), &logits).len(), 1);
        assert_eq!(candidates(&cfg(1.0, 0, 0.81, 0.0), &logits).len(), 3);
    }

    #[test]
    fn penalties_follow_transformers() {
        let c = SamplerConfig { repetition_penalty: 2.0, presence_penalty: 0.5, frequency_penalty: 0.25, ..Default::default() };
        let mut l = vec![4.0, -4.0, 1.0];
        let gen: HashMap<u32, u32> = [(2, 2)].into_iter().collect();
        apply_penalties(&c, &mut l, &[0, 1, 0], &gen);
        assert_eq!(l, vec![2.0, -8.0, 1.0 - 0.5 - 0.5]);
    }

    #[test]
    fn greedy_breaks_ties_to_lowest_id() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(Sampler::new(cfg(-1.0, 0, 1.0, 0.0)).is_err());
        assert!(Sampler::new(cfg(1.0, 0, 0.0, 0.0)).is_err());
        assert!(Sampler::new(cfg(1.0, 0, 1.0, 1.5)).is_err());
        assert!(Sampler::new(SamplerConfig { repetition_penalty: 0.0, ..Default::default() }).is_err());
    }
}
