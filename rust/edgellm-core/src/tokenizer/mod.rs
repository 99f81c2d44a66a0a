//! Tokenizer glue over HF `tokenizers`: `tokenizer.json` plus the special-token
//! settings of `tokenizer_config.json`, so ids match transformers' tokenizer call.

mod chat_template;
pub(crate) mod gguf_vocab;
mod stream;

pub use chat_template::ChatTemplate;
pub use stream::TextStream;

use crate::error::{Error, Result};
use crate::formats::hf_config::read_json;
use serde_json::{Map, Value};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    clean_up_spaces: bool,
    chat_template: Option<ChatTemplate>,
    /// Special-token strings handed to chat templates (bos_token, eos_token, ...).
    special_strings: Vec<(String, String)>,
    vocab_size: usize,
    /// The decoder has a `ByteFallback` step (`<0xNN>` tokens decode as raw bytes).
    byte_fallback: bool,
}

/// Whether `d` is, or (as a `Sequence`) contains, a `ByteFallback` decoder.
fn has_byte_fallback(d: &tokenizers::DecoderWrapper) -> bool {
    use tokenizers::DecoderWrapper as D;
    match d {
        D::ByteFallback(_) => true,
        D::Sequence(s) => s.get_decoders().iter().any(has_byte_fallback),
        _ => false,
    }
}

/// A `<0xNN>` byte-fallback token, exactly as the `ByteFallback` decoder recognises it.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') && u8::from_str_radix(&token[3..5], 16).is_ok()
}

/// A token given in tokenizer_config.json as `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {e}", path.display()))
}

impl Tokenizer {
    /// Loads `tokenizer.json` (+ optional `tokenizer_config.json`) from a model
    /// directory; `Ok(None)` if the directory has no tokenizer.json.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&tj).map_err(|e| Error::io(&tj, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(&tj, e))?;
        let tc = dir.join("tokenizer_config.json");
        let config = if tc.is_file() {
            read_json(&tc).map_err(|e| Error::Tokenizer(e.to_string()))?
        } else {
            Map::new()
        };
        Self::from_parts(inner, &config).map(Some)
    }

    pub fn from_parts(inner: tokenizers::Tokenizer, config: &Map<String, Value>) -> Result<Self> {
        let lookup = |key: &str| -> Result<Option<(String, u32)>> {
            match token_string(config.get(key)) {
                None => Ok(None),
                Some(s) => match inner.token_to_id(&s) {
                    Some(id) => Ok(Some((s, id))),
                    None => Err(Error::Tokenizer(format!("tokenizer_config.json: {key} {s:?} is not in the vocabulary"))),
                },
            }
        };
        let bos = lookup("bos_token")?;
        let eos = lookup("eos_token")?;
        let flag = |key: &str| config.get(key).and_then(Value::as_bool);
        let mut special_strings = Vec::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
            if let Some(s) = token_string(config.get(key)) {
                special_strings.push((key.to_string(), s));
            }
        }
        let chat_template = ChatTemplate::from_config(config)?;
        Ok(Tokenizer {
            vocab_size: inner.get_vocab_size(true),
            byte_fallback: inner.get_decoder().is_some_and(has_byte_fallback),
            inner,
            bos,
            eos,
            clean_up_spaces: flag("clean_up_tokenization_spaces").unwrap_or(false),
            chat_template,
            special_strings,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|b| b.1)
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|e| e.1)
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
    pub fn special_strings(&self) -> &[(String, String)] {
        &self.special_strings
    }

    /// Token ids of `text`; with `add_special_tokens`, BOS/EOS as tokenizer.json's
    /// post-processor adds them. This is what transformers 5 does: it ignores the
    /// `add_bos_token`/`add_eos_token` flags when a tokenizer.json is present.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, as transformers' `decode` gives it. Ids outside the
    /// vocabulary are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(Error::InvalidToken { id: bad as i64, vocab_size: self.vocab_size });
        }
        self.decode_lenient(ids, skip_special_tokens)
    }

    /// Whether `id` can leave a run of byte-fallback tokens open when decoding with
    /// `skip_special_tokens`: a `<0xNN>` token (the `ByteFallback` decoder turns a
    /// whole run into text at once, or into one U+FFFD per byte if the run is not
    /// valid UTF-8, so a later byte can change the text of earlier ones), or an id
    /// that decodes to no token at all (special or outside the vocabulary), which
    /// joins the bytes around it into one run.
    pub(crate) fn may_extend_byte_run(&self, id: u32) -> bool {
        if !self.byte_fallback {
            return false;
        }
        match self.inner.id_to_token(id) {
            None => true,
            Some(t) => is_byte_token(&t) || self.inner.get_added_vocabulary().is_special_token(&t),
        }
    }

    /// Like [`decode`](Self::decode) but ids without a token decode to nothing
    /// (models may pad their vocabulary beyond the tokenizer's).
    pub(crate) fn decode_lenient(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.inner.decode(ids, skip_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(if self.clean_up_spaces { clean_up_tokenization(&text) } else { text })
    }
}

/// transformers' `clean_up_tokenization`: drops the space before punctuation and
/// English contractions.
fn clean_up_tokenization(s: &str) -> String {
    [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
        .iter()
        .fold(s.to_string(), |acc, (from, to)| acc.replace(from, to))
}
