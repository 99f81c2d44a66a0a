//! What a KV cache keeps (the eviction rule) and how it stores it (the
//! quantizer): two independent choices, parsed from the JSON object the Python
//! API passes as `kv_cache=`.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// Which cached tokens survive a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Eviction {
    /// Everything, up to the context length.
    Full,
    /// The `size` most recent tokens (sliding-window attention); positions keep
    /// growing, so relative distances stay those of the full sequence.
    Window { size: usize },
    /// StreamingLLM: the first `sinks` tokens plus the `window` most recent,
    /// positions counted inside the cache so generation runs past the context.
    Streaming { sinks: usize, window: usize },
    /// H2O: the `recent` newest tokens plus the tokens that received the most
    /// attention so far, `budget` tokens in all.
    H2o { budget: Budget, recent: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// A fraction of the tokens seen so far.
    Fraction(f64),
    Tokens(usize),
}

impl Budget {
    /// Tokens kept after `seen` tokens (at least one).
    pub fn tokens(self, seen: usize) -> usize {
        match self {
            Budget::Fraction(f) => ((f * seen as f64).ceil() as usize).max(1),
            Budget::Tokens(n) => n,
        }
    }
}

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvQuant {
    F32,
    F16,
    /// Symmetric int8 per token and head (one f32 scale per row).
    Int8,
    /// KIVI: keys per channel over groups of `group_size` tokens, values per
    /// token over groups of `group_size` channels, `bits` ∈ {2, 4}; the newest
    /// tokens stay f16 until more than `residual` are waiting.
    Kivi { bits: u8, group_size: usize, residual: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct KvConfig {
    pub eviction: Eviction,
    pub quant: KvQuant,
    /// Query-aware block selection (Quest, Tang et al. 2024): while decoding,
    /// each KV head attends only to the `n` key blocks (of 64 tokens) whose upper
    /// bound on the attention score, from per-block channel minima and maxima,
    /// is highest, plus the blocks of the new tokens. Nothing is evicted. Full
    /// eviction only (blocks must keep their tokens).
    pub select_blocks: Option<usize>,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig { eviction: Eviction::Full, quant: KvQuant::F32, select_blocks: None }
    }
}

impl KvConfig {
    /// Parses `{"type": ..., ...}` (see the Python `load(kv_cache=...)` docs).
    pub fn from_json(text: &str) -> Result<KvConfig> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::arg(format!("kv_cache: {e}")))?;
        Self::from_value(&v)
    }

    pub fn from_value(v: &Value) -> Result<KvConfig> {
        let (ty, obj) = type_and_fields(v, "kv_cache")?;
        let mut f = Fields::new(obj, &format!("kv_cache type {ty:?}"));
        let cfg = match ty.as_str() {
            "full" => {
                let select_blocks = match f.count_or_zero("select_blocks", 0)? {
                    0 if f.obj.and_then(|o| o.get("select_blocks")).is_some_and(|v| !v.is_null()) => {
                        return Err(Error::arg("kv_cache: select_blocks must be at least 1"))
                    }
                    0 => None,
                    n => Some(n),
                };
                KvConfig { eviction: Eviction::Full, quant: f.quant()?, select_blocks }
            }
            "window" => KvConfig { eviction: Eviction::Window { size: f.count("size", None)? }, quant: f.quant()?, select_blocks: None },
            "streaming" | "sink" | "sinks" => KvConfig {
                eviction: Eviction::Streaming { sinks: f.count_or_zero("sinks", 4)?, window: f.count("window", None)? },
                quant: f.quant()?,
                select_blocks: None,
            },
            "h2o" => {
                let budget = match f.take("budget") {
                    None => return Err(Error::arg("kv_cache type \"h2o\" needs a \"budget\" (fraction or token count)")),
                    Some(Value::Number(n)) if n.is_u64() && n.as_u64() != Some(0) && n.as_u64() != Some(1) => {
                        Budget::Tokens(n.as_u64().unwrap() as usize)
                    }
                    Some(Value::Number(n)) => match n.as_f64() {
                        Some(x) if x > 0.0 && x <= 1.0 => Budget::Fraction(x),
                        _ => {
                            return Err(Error::arg(format!(
                                "kv_cache h2o budget must be a fraction in (0, 1] or a token count > 1, got {n}"
                            )))
                        }
                    },
                    Some(other) => return Err(Error::arg(format!("kv_cache h2o budget must be a number, got {other}"))),
                };
                let recent = f.count_or_zero("recent", 0)?;
                if let Budget::Tokens(b) = budget {
                    if recent > b {
                        return Err(Error::arg(format!("kv_cache h2o: recent ({recent}) exceeds the budget ({b} tokens)")));
                    }
                }
                KvConfig { eviction: Eviction::H2o { budget, recent }, quant: f.quant()?, select_blocks: None }
            }
            "f32" | "f16" | "int8" | "kivi" => KvConfig { eviction: Eviction::Full, quant: parse_quant(v)?, select_blocks: None },
            other => {
                return Err(Error::arg(format!(
                    "unknown kv_cache type {other:?}; expected full, window, streaming, h2o, kivi, int8, f16 or f32"
                )))
            }
        };
        if !matches!(ty.as_str(), "f32" | "f16" | "int8" | "kivi") {
            if f.obj.is_some_and(|o| o.contains_key("select_blocks")) && ty != "full" {
                return Err(Error::arg(
                    "kv_cache: select_blocks (query-aware block selection) needs type \"full\": evicting rules move tokens between blocks",
                ));
            }
            f.finish()?;
        }
        if matches!(cfg.eviction, Eviction::H2o { .. }) && matches!(cfg.quant, KvQuant::Kivi { .. }) {
            return Err(Error::arg(
                "kv_cache: H2O cannot be combined with KIVI: KIVI quantizes keys per channel over groups of tokens, \
                 so single tokens cannot be evicted (use int8 or f16 with H2O)",
            ));
        }
        Ok(cfg)
    }

    /// Whether the policy bounds the cache, so positions may pass the context.
    pub fn unbounded(&self) -> bool {
        matches!(self.eviction, Eviction::Window { .. } | Eviction::Streaming { .. })
    }

    /// Tokens a layer keeps after `seen` tokens.
    pub fn kept(&self, seen: usize) -> usize {
        match self.eviction {
            Eviction::Full => seen,
            Eviction::Window { size } => seen.min(size),
            Eviction::Streaming { sinks, window } => seen.min(sinks + window),
            Eviction::H2o { budget, .. } => seen.min(budget.tokens(seen)),
        }
    }

    /// Bytes of keys and values for `tokens` cached tokens of one KV head of
    /// one layer (`head_dim` wide), excluding growth slack.
    pub fn head_bytes(&self, tokens: usize, head_dim: usize) -> usize {
        match self.quant {
            KvQuant::F32 => tokens * 2 * head_dim * 4,
            KvQuant::F16 => tokens * 2 * head_dim * 2,
            KvQuant::Int8 => tokens * 2 * (head_dim + 4),
            KvQuant::Kivi { bits, group_size, residual } => {
                // The f16 tail holds between residual − group + 1 and residual tokens
                // once quantization starts: count the worst case.
                let quantized = if tokens > residual && tokens >= group_size {
                    (tokens - residual.max(group_size - 1)).div_ceil(group_size) * group_size
                } else {
                    0
                };
                let tail = tokens - quantized.min(tokens);
                let row = (head_dim * bits as usize).div_ceil(8);
                let vgroups = head_dim.div_ceil(group_size.min(head_dim));
                let per_group = group_size * 2 * row + head_dim * 4 + group_size * vgroups * 4;
                quantized / group_size * per_group + tail * 2 * head_dim * 2
            }
        }
    }

    /// A short description, e.g. `streaming(sinks=4, window=1024) + kivi2(g32, r128)`.
    pub fn describe(&self) -> String {
        let e = match &self.eviction {
            Eviction::Full => "full".to_string(),
            Eviction::Window { size } => format!("window({size})"),
            Eviction::Streaming { sinks, window } => format!("streaming(sinks={sinks}, window={window})"),
            Eviction::H2o { budget: Budget::Fraction(f), recent } => format!("h2o(budget={f}, recent={recent})"),
            Eviction::H2o { budget: Budget::Tokens(n), recent } => format!("h2o(budget={n} tokens, recent={recent})"),
        };
        let q = match self.quant {
            KvQuant::F32 => "f32".to_string(),
            KvQuant::F16 => "f16".to_string(),
            KvQuant::Int8 => "int8".to_string(),
            KvQuant::Kivi { bits, group_size, residual } => format!("kivi{bits}(group={group_size}, residual={residual})"),
        };
        match self.select_blocks {
            Some(n) => format!("{e} + {q} + select {n} blocks"),
            None => format!("{e} + {q}"),
        }
    }
}

fn type_and_fields<'a>(v: &'a Value, what: &str) -> Result<(String, Option<&'a Map<String, Value>>)> {
    match v {
        Value::String(s) => Ok((s.to_ascii_lowercase(), None)),
        Value::Object(o) => match o.get("type") {
            Some(Value::String(s)) => Ok((s.to_ascii_lowercase(), Some(o))),
            _ => Err(Error::arg(format!("{what} needs a string \"type\""))),
        },
        Value::Null => Ok(("full".into(), None)),
        other => Err(Error::arg(format!("{what} must be a dict with a \"type\" or a type name, got {other}"))),
    }
}

fn parse_quant(v: &Value) -> Result<KvQuant> {
    let (ty, obj) = type_and_fields(v, "kv_cache quant")?;
    let mut f = Fields::new(obj, &format!("kv_cache quant {ty:?}"));
    let q = match ty.as_str() {
        "f32" | "none" | "full" => KvQuant::F32,
        "f16" => KvQuant::F16,
        "int8" | "q8" => KvQuant::Int8,
        "kivi" | "kivi2" | "kivi4" => {
            let default_bits = if ty == "kivi4" { 4 } else { 2 };
            let bits = f.count("bits", Some(default_bits))?;
            if bits != 2 && bits != 4 {
                return Err(Error::arg(format!("kv_cache kivi bits must be 2 or 4, got {bits}")));
            }
            let group_size = f.count("group_size", Some(32))?;
            if group_size % 8 != 0 || group_size > 4096 {
                return Err(Error::arg(format!(
                    "kv_cache kivi group_size must be a multiple of 8 up to 4096, got {group_size}"
                )));
            }
            let residual = f.count_or_zero("residual", 128)?;
            KvQuant::Kivi { bits: bits as u8, group_size, residual }
        }
        other => return Err(Error::arg(format!("unknown kv_cache quant {other:?}; expected f32, f16, int8 or kivi"))),
    };
    // The flat forms {"type": "kivi", ...} also carry no eviction fields.
    f.finish()?;
    Ok(q)
}

/// The fields of one JSON object, consumed one by one so leftovers are reported.
struct Fields<'a> {
    obj: Option<&'a Map<String, Value>>,
    used: Vec<&'static str>,
    what: String,
}

impl<'a> Fields<'a> {
    fn new(obj: Option<&'a Map<String, Value>>, what: &str) -> Self {
        Fields { obj, used: vec!["type"], what: what.to_string() }
    }
    fn take(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.obj.and_then(|o| o.get(key)).filter(|v| !v.is_null())
    }
    fn count(&mut self, key: &'static str, default: Option<usize>) -> Result<usize> {
        let n = self.count_or_zero(key, default.unwrap_or(0))?;
        if n == 0 {
            return Err(Error::arg(match default {
                None if self.obj.and_then(|o| o.get(key)).is_none() => format!("{} needs {key:?}", self.what),
                _ => format!("{}: {key} must be at least 1", self.what),
            }));
        }
        Ok(n)
    }
    fn count_or_zero(&mut self, key: &'static str, default: usize) -> Result<usize> {
        match self.take(key) {
            None => Ok(default),
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|&x| x <= u32::MAX as u64)
                .map(|x| x as usize)
                .ok_or_else(|| Error::arg(format!("{}: {key} must be a non-negative integer, got {n}", self.what))),
            Some(other) => Err(Error::arg(format!("{}: {key} must be an integer, got {other}", self.what))),
        }
    }
    fn quant(&mut self) -> Result<KvQuant> {
        match self.take("quant") {
            None => Ok(KvQuant::F32),
            Some(v) => parse_quant(v),
        }
    }
    fn finish(&self) -> Result<()> {
        if let Some(o) = self.obj {
            if let Some(k) = o.keys().find(|k| !self.used.contains(&k.as_str())) {
                return Err(Error::arg(format!("{}: unknown field {k:?}", self.what)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KvConfig> {
        KvConfig::from_json(s)
    }

    #[test]
    fn every_documented_form_parses() {
        assert_eq!(parse("null").unwrap(), KvConfig::default());
        assert_eq!(parse(r#"{"type": "window", "size": 64}"#).unwrap().eviction, Eviction::Window { size: 64 });
        let s = parse(r#"{"type": "streaming", "sinks": 4, "window": 128, "quant": {"type": "kivi", "bits": 2}}"#).unwrap();
        assert_eq!(s.eviction, Eviction::Streaming { sinks: 4, window: 128 });
        assert_eq!(s.quant, KvQuant::Kivi { bits: 2, group_size: 32, residual: 128 });
        let h = parse(r#"{"type": "h2o", "budget": 0.2, "recent": 16}"#).unwrap();
        assert_eq!(h.eviction, Eviction::H2o { budget: Budget::Fraction(0.2), recent: 16 });
        let h = parse(r#"{"type": "h2o", "budget": 100, "quant": "int8"}"#).unwrap();
        assert_eq!((h.eviction, h.quant), (Eviction::H2o { budget: Budget::Tokens(100), recent: 0 }, KvQuant::Int8));
        let k = parse(r#"{"type": "kivi", "bits": 4, "group_size": 16, "residual": 0}"#).unwrap();
        assert_eq!(k, KvConfig { eviction: Eviction::Full, quant: KvQuant::Kivi { bits: 4, group_size: 16, residual: 0 }, select_blocks: None });
        assert_eq!(parse(r#""int8""#).unwrap().quant, KvQuant::Int8);
        let q = parse(r#"{"type": "full", "select_blocks": 8, "quant": "kivi"}"#).unwrap();
        assert_eq!((q.select_blocks, q.eviction), (Some(8), Eviction::Full));
    }

    #[test]
    fn mistakes_name_the_problem() {
        for (s, needle) in [
            (r#"{"type": "window"}"#, "needs \"size\""),
            (r#"{"type": "window", "size": 0}"#, "at least 1"),
            (r#"{"type": "window", "size": -3}"#, "non-negative"),
            (r#"{"type": "window", "size": 8, "sise": 3}"#, "unknown field \"sise\""),
            (r#"{"type": "lru"}"#, "unknown kv_cache type"),
            (r#"{"type": "h2o"}"#, "budget"),
            (r#"{"type": "h2o", "budget": 1.5}"#, "fraction"),
            (r#"{"type": "h2o", "budget": 10, "recent": 20}"#, "exceeds"),
            (r#"{"type": "h2o", "budget": 0.2, "quant": "kivi"}"#, "cannot be combined"),
            (r#"{"type": "kivi", "bits": 3}"#, "2 or 4"),
            (r#"{"type": "kivi", "group_size": 12}"#, "multiple of 8"),
            (r#"{"size": 3}"#, "\"type\""),
            (r#"{"type": "window", "size": 8, "select_blocks": 2}"#, "needs type"),
            (r#"{"type": "full", "select_blocks": 0}"#, "at least 1"),
            ("[1]", "must be a dict"),
            ("{", "kv_cache"),
        ] {
            let e = parse(s).unwrap_err().to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[test]
    fn size_estimates() {
        let kivi = KvConfig::from_json(r#"{"type": "kivi", "bits": 2, "group_size": 32, "residual": 128}"#).unwrap();
        // 4096 tokens of a 64-wide head: ~3 bits per value plus an f16 tail.
        let f16 = KvConfig::from_json(r#""f16""#).unwrap().head_bytes(4096, 64);
        let r = kivi.head_bytes(4096, 64) as f64 / f16 as f64;
        assert!(r > 0.18 && r < 0.22, "{r}");
        assert_eq!(kivi.head_bytes(100, 64), f16 / 4096 * 100);
        let s = KvConfig::from_json(r#"{"type": "streaming", "sinks": 4, "window": 100}"#).unwrap();
        assert_eq!((s.kept(50), s.kept(5000)), (50, 104));
        let h = KvConfig::from_json(r#"{"type": "h2o", "budget": 0.2}"#).unwrap();
        assert_eq!(h.kept(1000), 200);
    }

    #[test]
    fn fraction_budgets_round_up() {
        assert_eq!(Budget::Fraction(0.2).tokens(10), 2);
        assert_eq!(Budget::Fraction(0.2).tokens(11), 3);
        assert_eq!(Budget::Fraction(0.2).tokens(0), 1);
        assert_eq!(Budget::Tokens(7).tokens(100), 7);
    }
}
