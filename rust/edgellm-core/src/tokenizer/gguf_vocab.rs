//! Tokenizers built from a GGUF file's vocabulary (`tokenizer.ggml.*`), as HF
//! `tokenizers` pipelines so that encoding, decoding, streaming and chat
//! templates work exactly as for `tokenizer.json`.
//!
//! - `tokenizer.ggml.model = "llama"` (SentencePiece vocabularies: Llama 1/2,
//!   Mistral, Gemma, Phi-3, ...): a BPE model whose merges are derived from the
//!   token scores the way transformers' `LlamaConverter` derives them from a
//!   SentencePiece model (every split of a token into two vocabulary tokens is a
//!   merge, ranked by the merged token's score, ties by id), with byte fallback
//!   (`<0xNN>` tokens), `▁` for spaces and, with `add_space_prefix`, a `▁`
//!   prepended to each run of text (as llama.cpp does after every special token).
//!   This reproduces the `tokenizer.json` transformers ships for these models.
//!   Vocabularies whose scores are all equal (llama.cpp's converter writes -1000
//!   for every token when it reads an HF `tokenizer.json` BPE instead of a
//!   SentencePiece model) rank merges by the merged token's id, i.e. in training
//!   order; llama.cpp itself would merge the leftmost pair first there.
//! - `tokenizer.ggml.model = "gpt2"` (byte-level BPE: Llama 3, Qwen, SmolLM,
//!   Phi-2, StableLM 2, ...): the vocabulary and `tokenizer.ggml.merges`, split by
//!   the pre-tokenizer regexes llama.cpp uses for `tokenizer.ggml.pre`. Qwen2's
//!   NFC normalisation is applied (as transformers does; llama.cpp does not).
//!
//! Token types: control (3) and unknown (2) tokens are special added tokens
//! (matched in text, skipped when decoding with `skip_special_tokens`);
//! user-defined tokens (4) are matched in raw text as llama.cpp does.

use super::Tokenizer;
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

pub const TYPE_NORMAL: i32 = 1;
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
// 5 (unused) and 6 (byte, `<0xNN>`) tokens are plain vocabulary entries.

const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.*` metadata of a GGUF file, decoded and type-checked.
pub struct GgufVocab<'a> {
    /// `tokenizer.ggml.model`.
    pub model: &'a str,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<&'a str>,
    pub tokens: Vec<&'a str>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<&'a str>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<&'a str>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("GGUF vocabulary: {e}"))
}

/// How a byte-level vocabulary splits text before BPE, per `tokenizer.ggml.pre`.
struct PreTokenization {
    pre: PreTokenizerWrapper,
    nfc: bool,
    ignore_merges: bool,
    add_bos_default: bool,
    clean_spaces: bool,
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    Ok(PreTokenizerWrapper::Split(
        Split::new(SplitPattern::Regex(regex.to_string()), SplitDelimiterBehavior::Isolated, false).map_err(tok_err)?,
    ))
}

fn pre_tokenization(pre: &str) -> Result<PreTokenization> {
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, use_regex));
    let seq = |v: Vec<PreTokenizerWrapper>| PreTokenizerWrapper::Sequence(PreSequence::new(v));
    let p = |pre, nfc, ignore_merges, add_bos_default, clean_spaces| PreTokenization {
        pre,
        nfc,
        ignore_merges,
        add_bos_default,
        clean_spaces,
    };
    Ok(match pre {
        // llama.cpp's "default" BPE pre-tokenizer is a legacy regex set; files
        // written by current converters name their pre-tokenizer. GPT-2's is used.
        "default" | "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" => p(byte_level(true), false, false, false, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
            p(seq(vec![split(LLAMA3_REGEX)?, byte_level(false)]), false, true, true, true)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => {
            p(seq(vec![split(QWEN2_REGEX)?, byte_level(false)]), pre != "stablelm2", false, false, pre == "stablelm2")
        }
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            let clean = pre != "smollm";
            p(seq(vec![split(r"\p{N}")?, byte_level(true)]), false, false, false, clean)
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer.ggml.pre {other:?} is not supported (supported: default, gpt-2, llama-bpe, qwen2, stablelm2, smollm, starcoder, refact)"
            )))
        }
    })
}

/// `tokens[i]` unless it repeats an earlier token, which keeps the name; the
/// later id gets a placeholder that text can never produce. Also returns which
/// ids were renamed.
fn unique_names(tokens: &[&str]) -> (Vec<String>, Vec<bool>) {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut names = Vec::with_capacity(tokens.len());
    let mut renamed = Vec::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        let dup = seen.insert(t, ()).is_some();
        names.push(if dup { format!("<gguf-duplicate-token-{i}\u{0}>") } else { t.to_string() });
        renamed.push(dup);
    }
    (names, renamed)
}

/// Merges of a SentencePiece vocabulary from its scores (transformers'
/// `generate_merges`): every split of a normal or user-defined token into two
/// such tokens, best merged-token score first, ties by merged id, then by the
/// parts' ids.
fn spm_merges(names: &[String], types: &[i32], scores: &[f32]) -> Vec<(String, String)> {
    let mergeable = |i: usize| matches!(types[i], TYPE_NORMAL | TYPE_USER_DEFINED);
    let mut lookup: HashMap<&str, u32> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        if mergeable(i) {
            lookup.entry(n.as_str()).or_insert(i as u32);
        }
    }
    let mut found: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        if !mergeable(i) || lookup.get(n.as_str()) != Some(&(i as u32)) {
            continue;
        }
        for (k, _) in n.char_indices().skip(1) {
            let (l, r) = n.split_at(k);
            if let (Some(&li), Some(&ri)) = (lookup.get(l), lookup.get(r)) {
                found.push((scores[i], i as u32, li, ri));
            }
        }
    }
    found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    found.into_iter().map(|(_, _, l, r)| (names[l as usize].clone(), names[r as usize].clone())).collect()
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

impl GgufVocab<'_> {
    fn check_id(&self, key: &str, id: Option<u32>) -> Result<Option<u32>> {
        match id {
            Some(i) if i as usize >= self.tokens.len() => Err(Error::format(format!(
                "tokenizer.ggml.{key} is {i}, out of range for a vocabulary of {} tokens",
                self.tokens.len()
            ))),
            other => Ok(other),
        }
    }

    /// The tokenizer, with a `tokenizer_config.json`-like map of its special
    /// tokens and chat template.
    pub fn build(&self) -> Result<Tokenizer> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(Error::format("tokenizer.ggml.tokens is empty"));
        }
        if n > u32::MAX as usize {
            return Err(Error::format(format!("tokenizer.ggml.tokens lists {n} tokens (too many)")));
        }
        let types = match &self.token_types {
            Some(t) if t.len() != n => {
                return Err(Error::format(format!(
                    "tokenizer.ggml.token_type lists {} types for {n} tokens",
                    t.len()
                )))
            }
            Some(t) => t.clone(),
            None => vec![TYPE_NORMAL; n],
        };
        if let Some(s) = &self.scores {
            if s.len() != n {
                return Err(Error::format(format!("tokenizer.ggml.scores lists {} scores for {n} tokens", s.len())));
            }
        }
        let spm = match self.model {
            "llama" => true,
            "gpt2" => false,
            other => {
                return Err(Error::Tokenizer(format!(
                    "GGUF tokenizer.ggml.model {other:?} is not supported (supported: llama, gpt2)"
                )))
            }
        };
        // llama.cpp's defaults for old files without these keys.
        let (bos_default, eos_default, unk_default) = if spm { (Some(1), Some(2), Some(0)) } else { (None, None, None) };
        let in_range = |d: Option<u32>| d.filter(|&i| (i as usize) < n);
        let bos = self.check_id("bos_token_id", self.bos)?.or(in_range(bos_default));
        let eos = self.check_id("eos_token_id", self.eos)?.or(in_range(eos_default));
        let pad = self.check_id("padding_token_id", self.pad)?;
        let unk = self.check_id("unknown_token_id", self.unk)?.or_else(|| {
            types.iter().position(|&t| t == TYPE_UNKNOWN).map(|i| i as u32).or(if spm { in_range(unk_default) } else { None })
        });

        let (names, renamed) = unique_names(&self.tokens);
        let vocab: Vocab = names.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();

        let (mut inner, add_bos, clean_spaces) = if spm {
            let scores = self.scores.clone().unwrap_or_else(|| vec![0.0; n]);
            let merges = spm_merges(&names, &types, &scores);
            let byte_fallback = names.iter().any(|t| is_byte_token(t));
            let mut b = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(byte_fallback);
            if let Some(u) = unk {
                b = b.unk_token(names[u as usize].clone());
            }
            let model = b.build().map_err(tok_err)?;
            let mut t = tokenizers::Tokenizer::new(model);
            let prefix = self.add_space_prefix.unwrap_or(true);
            let mut norms: Vec<NormalizerWrapper> = Vec::new();
            if prefix {
                norms.push(Prepend::new("▁".into()).into());
            }
            norms.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
            t.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(norms)))).map_err(tok_err)?;
            let mut decs: Vec<DecoderWrapper> = vec![
                DecoderWrapper::Replace(Replace::new("▁", " ").map_err(tok_err)?),
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
            ];
            if prefix {
                decs.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
            }
            t.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decs))));
            (t, self.add_bos.unwrap_or(true), false)
        } else {
            let pre = pre_tokenization(self.pre.unwrap_or("default"))?;
            let merges_src = self
                .merges
                .as_ref()
                .ok_or_else(|| Error::format("tokenizer.ggml.model is \"gpt2\" but tokenizer.ggml.merges is missing"))?;
            let mut merges = Vec::new();
            for (i, m) in merges_src.iter().enumerate() {
                // As llama.cpp: split at the first space after the first character.
                let cut = m.char_indices().nth(1).and_then(|(k, _)| m[k..].find(' ').map(|p| p + k));
                match cut {
                    Some(p) => merges.push((m[..p].to_string(), m[p + 1..].to_string())),
                    None => return Err(Error::format(format!("tokenizer.ggml.merges[{i}] {m:?} is not two tokens separated by a space"))),
                }
            }
            let model = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .ignore_merges(pre.ignore_merges)
                .build()
                .map_err(|e| Error::format(format!("tokenizer.ggml.merges: {e}")))?;
            let mut t = tokenizers::Tokenizer::new(model);
            if pre.nfc {
                t.with_normalizer(Some(NormalizerWrapper::NFC(NFC))).map_err(tok_err)?;
            }
            t.with_pre_tokenizer(Some(pre.pre));
            t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(false, false, false))));
            (t, self.add_bos.unwrap_or(pre.add_bos_default), pre.clean_spaces)
        };

        // Special and user-defined tokens, matched in raw text before the model.
        let added = |kind: &[i32], special: bool| -> Vec<AddedToken> {
            types
                .iter()
                .enumerate()
                .filter(|(i, t)| kind.contains(t) && !renamed[*i] && !names[*i].is_empty())
                .map(|(i, _)| AddedToken::from(names[i].clone(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(added(&[TYPE_CONTROL, TYPE_UNKNOWN], true)).map_err(tok_err)?;
        inner.add_tokens(added(&[TYPE_USER_DEFINED], false)).map_err(tok_err)?;

        // BOS/EOS as the post-processor adds them (encode with add_special_tokens).
        let add_eos = self.add_eos.unwrap_or(false);
        let mut single: Vec<String> = Vec::new();
        let mut specials: Vec<SpecialToken> = Vec::new();
        if let (true, Some(b)) = (add_bos, bos) {
            single.push("bos".into());
            specials.push(SpecialToken::new("bos".into(), vec![b], vec![names[b as usize].clone()]).map_err(tok_err)?);
        }
        single.push("$A".into());
        if let (true, Some(e)) = (add_eos, eos) {
            single.push("eos".into());
            specials.push(SpecialToken::new("eos".into(), vec![e], vec![names[e as usize].clone()]).map_err(tok_err)?);
        }
        if !specials.is_empty() {
            let mut pair = single.clone();
            pair.extend(single.iter().map(|p| if p == "$A" { "$B".to_string() } else { p.clone() }));
            let tp = TemplateProcessing::builder()
                .try_single(single)
                .map_err(tok_err)?
                .try_pair(pair)
                .map_err(tok_err)?
                .special_tokens(specials)
                .build()
                .map_err(tok_err)?;
            inner.with_post_processor(Some(PostProcessorWrapper::Template(tp)));
        }

        let mut config = Map::new();
        let mut set = |key: &str, id: Option<u32>| {
            if let Some(i) = id {
                config.insert(key.into(), Value::String(names[i as usize].clone()));
            }
        };
        set("bos_token", bos);
        set("eos_token", eos);
        set("unk_token", unk);
        set("pad_token", pad);
        config.insert("clean_up_tokenization_spaces".into(), Value::Bool(clean_spaces));
        if let Some(t) = self.chat_template {
            config.insert("chat_template".into(), Value::String(t.to_string()));
        }
        Tokenizer::from_parts(inner, &config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab<'a>(tokens: Vec<&'a str>, scores: Vec<f32>, types: Vec<i32>) -> GgufVocab<'a> {
        GgufVocab {
            model: "llama",
            pre: None,
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            merges: None,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            pad: None,
            add_bos: Some(true),
            add_eos: None,
            add_space_prefix: None,
            chat_template: None,
        }
    }

    #[test]
    fn spm_merges_follow_scores() {
        // "ab" (score -4) merges before "▁a" (-5): "▁ab" becomes ▁ + ab.
        let toks = vec!["<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁a"];
        let scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0];
        let types = vec![2, 3, 3, 1, 1, 1, 1, 1];
        let t = vocab(toks, scores, types).build().unwrap();
        assert_eq!(t.encode("ab", true).unwrap(), vec![1, 3, 6]); // ▁ + ab (ab merges before ▁a)
        assert_eq!(t.encode("<s>ab", false).unwrap(), vec![1, 3, 6]);
        assert_eq!(t.decode(&[1, 3, 6], true).unwrap(), "ab");
    }

    #[test]
    fn duplicate_tokens_keep_their_ids() {
        let toks = vec!["<unk>", "<s>", "</s>", "▁", "a", "a"];
        let t = vocab(toks, vec![0.0; 6], vec![2, 3, 3, 1, 1, 1]).build().unwrap();
        assert_eq!(t.vocab_size(), 6);
        assert_eq!(t.encode("a", false).unwrap(), vec![3, 4]);
    }

    #[test]
    fn bad_ids_and_lengths_are_errors() {
        let mut v = vocab(vec!["<unk>", "<s>", "</s>"], vec![0.0; 3], vec![2, 3, 3]);
        v.bos = Some(7);
        assert!(matches!(v.build(), Err(Error::ModelFormat(m)) if m.contains("bos_token_id")));
        let v = vocab(vec!["<unk>", "<s>", "</s>"], vec![0.0; 2], vec![2, 3, 3]);
        assert!(matches!(v.build(), Err(Error::ModelFormat(m)) if m.contains("scores")));
        let mut v = vocab(vec!["a", "b"], vec![0.0; 2], vec![1, 1]);
        (v.model, v.eos) = ("gpt2", None);
        assert!(matches!(v.build(), Err(Error::ModelFormat(m)) if m.contains("merges")));
        v.model = "bert";
        assert!(matches!(v.build(), Err(Error::Tokenizer(m)) if m.contains("bert")));
    }
}
