//! Chat templates from tokenizer_config.json, rendered with minijinja in a sandbox:
//! the template sees only the data passed to it (no filesystem, no imports of
//! other templates), runs on a bounded instruction budget (fuel), bounded
//! recursion, and bounded output size. Whitespace handling matches transformers
//! (`trim_blocks` and `lstrip_blocks` on).

use crate::error::{Error, Result};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};
use serde_json::{Map, Value as Json};
use std::io::Write;

const FUEL: u64 = 5_000_000;
const MAX_OUTPUT: usize = 4 << 20;
const RECURSION_LIMIT: usize = 64;

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
}

/// An `io::Write` that refuses to grow past `MAX_OUTPUT` bytes.
struct BoundedWriter(Vec<u8>);

impl Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("chat template output exceeds 4 MiB"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Python's `json.dumps(value, ensure_ascii=False)` (what transformers' `tojson`
/// filter produces), with optional `indent`.
fn py_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let nl = |out: &mut String, lvl: usize| {
        if let Some(i) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(i * lvl));
        }
    };
    let (item_sep, key_sep) = if indent.is_some() { (",", ": ") } else { (", ", ": ") };
    match v {
        Json::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_json(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        Json::Object(o) if !o.is_empty() => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(key_sep);
                py_json(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime_utc(secs, &fmt)
}

/// A small strftime over a UTC timestamp: the specifiers chat templates use.
pub(crate) fn strftime_utc(secs: u64, fmt: &str) -> String {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[days.rem_euclid(7) as usize]),
            Some('a') => out.push_str(&DAYS[days.rem_euclid(7) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        ChatTemplate { source: source.into() }
    }

    /// The template of tokenizer_config.json: a string, or a list of named
    /// templates of which "default" is used.
    pub fn from_config(config: &Map<String, Json>) -> Result<Option<Self>> {
        match config.get("chat_template") {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(ChatTemplate::new(s.clone()))),
            Some(Json::Array(list)) => Ok(list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(ChatTemplate::new)),
            Some(_) => Err(Error::Tokenizer("tokenizer_config.json: chat_template must be a string or a list".into())),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn environment(&self) -> Result<Environment<'_>> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| Error::ChatTemplate(e.to_string()))?,
        );
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_filter(
            "tojson",
            |v: Value, kwargs: minijinja::value::Kwargs| -> std::result::Result<Value, minijinja::Error> {
                let indent: Option<usize> = kwargs.get("indent")?;
                let json: Json =
                    serde_json::to_value(&v).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
                let mut s = String::new();
                py_json(&json, indent, 0, &mut s);
                Ok(Value::from_safe_string(s))
            },
        );
        env.add_template("chat", &self.source).map_err(|e| Error::ChatTemplate(e.to_string()))?;
        Ok(env)
    }

    /// Renders `messages` (a JSON list of `{"role", "content"}` objects) with the
    /// tokenizer's special-token strings and any `extra` variables (e.g. tools).
    pub fn render(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        special: &[(String, String)],
        extra: &Map<String, Json>,
    ) -> Result<String> {
        if !messages.is_array() {
            return Err(Error::ChatTemplate("messages must be a list of {\"role\": ..., \"content\": ...} objects".into()));
        }
        let env = self.environment()?;
        let mut ctx = Map::new();
        for (k, v) in special {
            ctx.insert(k.clone(), Json::String(v.clone()));
        }
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        let tmpl = env.get_template("chat").map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let mut out = BoundedWriter(Vec::new());
        tmpl.render_captured_to(Value::from(minijinja::value::Serde(&ctx)), &mut out).map_err(|e| Error::ChatTemplate(describe(&e)))?;
        String::from_utf8(out.0).map_err(|_| Error::ChatTemplate("template produced invalid UTF-8".into()))
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.kind() {
        ErrorKind::OutOfFuel => "template ran too long (instruction budget exhausted)".into(),
        _ => {
            let mut s = e.to_string();
            if let Some(detail) = e.detail() {
                if !s.contains(detail) {
                    s = format!("{s}: {detail}");
                }
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(strftime_utc(0, "%d %B %Y %H:%M:%S %a"), "01 January 1970 00:00:00 Thu");
        assert_eq!(strftime_utc(1_709_210_096, "%Y-%m-%d %b %A"), "2024-02-29 Feb Thursday");
    }

    #[test]
    fn python_json_matches_json_dumps() {
        let v: Json = serde_json::from_str(r#"{"a": [1, 2.5, "é<"], "b": {}, "c": null}"#).unwrap();
        let mut s = String::new();
        py_json(&v, None, 0, &mut s);
        assert_eq!(s, r#"{"a": [1, 2.5, "é<"], "b": {}, "c": null}"#);
        let mut s = String::new();
        py_json(&v, Some(2), 0, &mut s);
        assert_eq!(s, "{\n  \"a\": [\n    1,\n    2.5,\n    \"é<\"\n  ],\n  \"b\": {},\n  \"c\": null\n}");
    }

    #[test]
    fn sandbox_limits() {
        let t = ChatTemplate::new("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
        let err = t.render(&Json::Array(vec![]), false, &[], &Map::new()).unwrap_err();
        assert!(matches!(err, Error::ChatTemplate(_)), "{err}");
        let t = ChatTemplate::new("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}");
        assert!(t.render(&Json::Array(vec![]), false, &[], &Map::new()).is_err());
        let t = ChatTemplate::new("{% include 'x' %}");
        assert!(t.render(&Json::Array(vec![]), false, &[], &Map::new()).is_err());
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}");
        let e = t.render(&Json::Array(vec![]), false, &[], &Map::new()).unwrap_err().to_string();
        assert!(e.contains("roles must alternate"), "{e}");
    }
}
