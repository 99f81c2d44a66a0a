//! The generation loop: prefill, then one token per step with sampling, EOS and
//! stop-string handling, incremental text and per-call statistics. A `Generator`
//! is driven step by step, so callers can stream, check for Ctrl-C between tokens,
//! or run it to completion.

use crate::error::{Error, Result};
use crate::formats::hf_config::GenerationDefaults;
use crate::kv_cache::KvCache;
use crate::model::{LogitsRows, Model};
use crate::sampling::{Sampler, SamplerConfig};
use crate::tokenizer::TextStream;
use std::sync::Arc;
use std::time::Instant;

/// Prompt tokens per forward pass during prefill: bounds the time between
/// cancellation checks and the activation memory of one pass.
pub const PREFILL_CHUNK: usize = 512;

/// Used when neither the caller nor generation_config.json sets a length.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 256;

/// A generation request. `None` fields fall back to generation_config.json, then
/// to transformers' GenerationConfig defaults.
#[derive(Clone, Debug, Default)]
pub struct GenerationOptions {
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Extra token ids that end generation (besides the model's EOS ids).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

impl GenerationOptions {
    /// Sampling settings as transformers would resolve them: sampling only when
    /// asked for (an explicit temperature > 0, or `do_sample` in the model's
    /// generation config), with GenerationConfig's defaults (top_k 50) otherwise.
    pub fn sampler_config(&self, d: &GenerationDefaults) -> SamplerConfig {
        let temperature = match self.temperature {
            Some(t) => t,
            None if d.do_sample == Some(true) => d.temperature.unwrap_or(1.0) as f32,
            None => 0.0,
        };
        SamplerConfig {
            temperature,
            top_k: self.top_k.or(d.top_k).unwrap_or(50),
            top_p: self.top_p.or(d.top_p.map(|x| x as f32)).unwrap_or(1.0),
            min_p: self.min_p.or(d.min_p.map(|x| x as f32)).unwrap_or(0.0),
            repetition_penalty: self
                .repetition_penalty
                .or(d.repetition_penalty.map(|x| x as f32))
                .unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
        }
    }

    fn max_new_tokens(&self, d: &GenerationDefaults, prompt_len: usize) -> usize {
        self.max_new_tokens
            .or(d.max_new_tokens)
            .or(d.max_length.map(|l| l.saturating_sub(prompt_len)))
            .unwrap_or(DEFAULT_MAX_NEW_TOKENS)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// A stop string appeared in the text, or a stop token id was sampled.
    Stop,
    /// The sequence filled the model's context.
    ContextLength,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
            FinishReason::ContextLength => "context_length",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    /// From the start of generation to the first sampled token.
    pub time_to_first_token: f64,
    /// From the first token to the last.
    pub decode_seconds: f64,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        if self.prefill_seconds > 0.0 {
            self.prompt_tokens as f64 / self.prefill_seconds
        } else {
            0.0
        }
    }
    pub fn decode_tokens_per_second(&self) -> f64 {
        let n = self.generated_tokens.saturating_sub(1);
        if self.decode_seconds > 0.0 && n > 0 {
            n as f64 / self.decode_seconds
        } else {
            0.0
        }
    }
}

/// One unit of output: a generated token and the text it completed. The last
/// step of a text generation may carry held-back text and no token.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub token: Option<u32>,
    pub text: String,
}

pub struct Generator {
    model: Arc<Model>,
    cache: KvCache,
    tokens: Vec<u32>,
    prompt_len: usize,
    sampler: Sampler,
    max_new: usize,
    eos_ids: Vec<u32>,
    /// Caller-given ids that end generation (finish reason `Stop`).
    stop_ids: Vec<u32>,
    stop: Vec<String>,
    text: Option<TextStream>,
    /// Text decoded but not yet released (it may start a stop string).
    held: String,
    /// A sampled token not yet fed through the model.
    unfed: Option<u32>,
    /// The logits of the latest step, its buffer reused by the next.
    logits: Vec<f32>,
    finished: Option<FinishReason>,
    /// Text after a matched stop string is dropped, not flushed.
    stop_string_hit: bool,
    flushed: bool,
    stats: GenerationStats,
    started: Option<Instant>,
    first_token_at: Option<Instant>,
}

impl Generator {
    /// Prepares a generation continuing `prompt`. With `track_text`, steps carry
    /// text (needed for text output and for stop strings).
    pub fn new(
        model: Arc<Model>,
        prompt: Vec<u32>,
        opts: &GenerationOptions,
        track_text: bool,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::arg(
                "the prompt is empty (no tokens to condition on)",
            ));
        }
        model.check_tokens(&prompt)?;
        if let Some(max) = model.context_bound().filter(|&m| prompt.len() > m) {
            return Err(Error::ContextLength {
                what: "prompt",
                len: prompt.len(),
                max,
            });
        }
        let d = &model.generation_defaults;
        let sampler = Sampler::new(opts.sampler_config(d))?;
        if opts.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::arg("stop strings must not be empty"));
        }
        let track_text = track_text || !opts.stop.is_empty();
        if track_text {
            model.tokenizer()?;
        }
        // End-of-sequence ids: generation_config.json's, else config.json's, else the tokenizer's.
        let mut eos_ids = Vec::new();
        if !opts.ignore_eos {
            let d_eos = if !d.eos_token_ids.is_empty() {
                &d.eos_token_ids
            } else {
                &model.config.eos_token_ids
            };
            eos_ids.extend(d_eos);
            if eos_ids.is_empty() {
                eos_ids.extend(model.tokenizer.as_ref().and_then(|t| t.eos_id()));
            }
        }
        model.check_tokens(&eos_ids)?;
        model.check_tokens(&opts.stop_token_ids)?;
        let max_new = opts.max_new_tokens(d, prompt.len());
        Ok(Generator {
            cache: model.new_cache(),
            text: track_text.then(|| TextStream::new(&prompt)),
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
            prompt_len: prompt.len(),
            tokens: prompt,
            sampler,
            max_new,
            eos_ids,
            stop_ids: opts.stop_token_ids.clone(),
            stop: opts.stop.clone(),
            held: String::new(),
            unfed: None,
            logits: Vec::new(),
            finished: None,
            stop_string_hit: false,
            flushed: false,
            started: None,
            first_token_at: None,
            model,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }
    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }
    pub fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }
    /// Bytes held by this generation's KV cache.
    pub fn kv_cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
    pub fn sampler_config(&self) -> &SamplerConfig {
        self.sampler.config()
    }

    fn finish(&mut self, reason: FinishReason) {
        self.finished = Some(reason);
        if let Some(t) = self.first_token_at {
            self.stats.decode_seconds = t.elapsed().as_secs_f64();
        }
    }

    /// The final held-back text once generation has finished, if any.
    fn flush(&mut self) -> Result<Option<Step>> {
        if self.flushed {
            return Ok(None);
        }
        self.flushed = true;
        let mut text = std::mem::take(&mut self.held);
        if !self.stop_string_hit {
            if let (Some(s), Some(tok)) = (self.text.as_mut(), self.model.tokenizer.as_ref()) {
                text.push_str(&s.flush(tok)?);
            }
        }
        Ok((!text.is_empty()).then_some(Step { token: None, text }))
    }

    /// Generates one token. `Ok(None)` once generation has finished (after a last
    /// text-only step if text was held back). While a long prompt is prefilled,
    /// steps without a token or text mark progress between chunks.
    pub fn step(&mut self) -> Result<Option<Step>> {
        if self.finished.is_some() {
            return self.flush();
        }
        let generated = self.tokens.len() - self.prompt_len;
        if generated >= self.max_new {
            self.finish(FinishReason::Length);
            return self.flush();
        }
        // max_context bounds the whole sequence (prompt + generated), as in
        // transformers' max_length: no token is sampled past it.
        if self
            .model
            .context_bound()
            .is_some_and(|m| self.tokens.len() >= m)
        {
            self.finish(FinishReason::ContextLength);
            return self.flush();
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        match self.unfed.take() {
            None => {
                // Prefill in chunks; between chunks the step returns (no token) so
                // the caller can honour Ctrl-C during long prompts too.
                let t = Instant::now();
                let done = self.cache.seen();
                let end = (done + PREFILL_CHUNK).min(self.prompt_len);
                let last = end == self.prompt_len;
                let rows = if last {
                    LogitsRows::Last
                } else {
                    LogitsRows::None
                };
                self.model
                    .forward_part_into(&self.tokens[done..end], &mut self.cache, rows, self.prompt_len, &mut self.logits)?;
                self.stats.prefill_seconds += t.elapsed().as_secs_f64();
                if !last {
                    return Ok(Some(Step {
                        token: None,
                        text: String::new(),
                    }));
                }
            }
            Some(tok) => {
                if self.cache.max_len().is_some_and(|m| self.cache.seen() >= m) {
                    self.finish(FinishReason::ContextLength);
                    return self.flush();
                }
                let rope_from = self.cache.rope_len(0, self.cache.seen());
                if self.model.crosses_rope_switch(rope_from, rope_from + 1) {
                    // Recompute every position with the long rotary factors.
                    self.cache.clear();
                    let all = self.tokens.clone();
                    self.model
                        .forward_into(&all, &mut self.cache, LogitsRows::Last, &mut self.logits)?
                } else {
                    self.model
                        .forward_into(&[tok], &mut self.cache, LogitsRows::Last, &mut self.logits)?
                }
            }
        }
        let tok = self.sampler.sample(&mut self.logits, &self.tokens);
        if self.first_token_at.is_none() {
            let now = Instant::now();
            self.stats.time_to_first_token = (now - started).as_secs_f64();
            self.first_token_at = Some(now);
        }
        if self.eos_ids.contains(&tok) || self.stop_ids.contains(&tok) {
            self.finish(if self.eos_ids.contains(&tok) {
                FinishReason::Eos
            } else {
                FinishReason::Stop
            });
            return self.flush();
        }
        self.tokens.push(tok);
        self.unfed = Some(tok);
        self.stats.generated_tokens += 1;
        let mut text = String::new();
        if let (Some(s), Some(tk)) = (self.text.as_mut(), self.model.tokenizer.as_ref()) {
            self.held.push_str(&s.push(tk, tok)?);
            text = self.release_text();
        }
        if self.finished.is_none() && self.tokens.len() - self.prompt_len >= self.max_new {
            self.finish(FinishReason::Length);
        }
        Ok(Some(Step {
            token: Some(tok),
            text,
        }))
    }

    /// Releases held text up to a stop string (finishing generation) or up to the
    /// longest tail that could still begin one.
    fn release_text(&mut self) -> String {
        if let Some(idx) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.held.truncate(idx);
            self.stop_string_hit = true;
            self.finish(FinishReason::Stop);
            return std::mem::take(&mut self.held);
        }
        let keep = self
            .stop
            .iter()
            .map(|s| {
                (1..s.len().min(self.held.len() + 1))
                    .rev()
                    .find(|&k| s.is_char_boundary(k) && self.held.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let rest = self.held.split_off(split);
        std::mem::replace(&mut self.held, rest)
    }

    /// Runs to completion, calling `cancelled` between tokens.
    pub fn run(&mut self, cancelled: &mut dyn FnMut() -> bool) -> Result<Vec<Step>> {
        let mut out = Vec::new();
        while let Some(s) = self.step()? {
            out.push(s);
            if cancelled() {
                return Err(Error::Cancelled);
            }
        }
        Ok(out)
    }
}
