//! What admission needs from a request body (model, output limits, stream
//! flags), read without building a tree of the whole body: the fields are
//! borrowed as raw JSON slices and everything else is skipped, so a 32 MiB
//! prompt costs its own bytes, not a `serde_json::Value` many times larger.
//! A duplicated field is an error (the provider might read the other copy).

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::pricing::Modifiers;

/// The longest model id accepted.
pub const MAX_MODEL_BYTES: usize = 128;

/// A plausible model id: 1-128 bytes, no whitespace or control characters.
pub fn valid_model_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_MODEL_BYTES && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Keeps `null` visible (`Some("null")`); only an absent field is `None`.
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow, deserialize_with = "raw")]
    model: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    max_tokens: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    n: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    stream_options: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    speed: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    inference_geo: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    service_tier: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    thinking: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    background: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    previous_response_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    conversation: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    prompt: Option<&'a RawValue>,
}

/// Why a body cannot be admitted; each names the field, as the providers do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is not valid JSON: {0}")]
    Json(String),
    #[error("the request body must be a JSON object")]
    NotObject,
    #[error("{field}: {want}")]
    Field { field: &'static str, want: &'static str },
}

/// The fields of a request body that admission reads.
#[derive(Debug)]
pub struct Head<'a> {
    text: &'a str,
    /// `None` when absent.
    pub model: Option<Cow<'a, str>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// The Responses API's limit (visible and reasoning tokens).
    pub max_output_tokens: Option<u64>,
    /// Where each output limit sits in the body (to lower it).
    max_tokens_raw: Option<&'a RawValue>,
    max_completion_tokens_raw: Option<&'a RawValue>,
    max_output_tokens_raw: Option<&'a RawValue>,
    /// Anthropic's extended thinking budget (`thinking.budget_tokens`).
    pub thinking_budget: Option<u64>,
    /// OpenAI's number of choices (1 when absent).
    pub n: u64,
    /// Responses API: run in the background (answered `queued`, no usage).
    pub background: bool,
    /// Responses API: input held by the provider, not in the body
    /// (`previous_response_id`, `conversation`, a stored `prompt`).
    pub server_side_input: bool,
    pub stream: bool,
    stream_options: Option<&'a RawValue>,
    /// What the request asks for that changes its price: `speed: "fast"`,
    /// `inference_geo: "us"`, OpenAI's `service_tier`.
    pub modifiers: Modifiers,
}

fn field<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &'static str,
    want: &'static str,
) -> Result<Option<T>, BodyError> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str(r.get()).map(Some).map_err(|_| BodyError::Field { field: name, want }),
    }
}

/// OpenAI's `service_tier`: only the tiers the price book prices (a
/// request for another, such as `ultrafast`, would be charged too little).
fn tier(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, BodyError> {
    let t: Option<Cow<str>> = field(raw, "service_tier", "must be a string")?;
    match t.as_deref() {
        None | Some("auto" | "default" | "flex" | "priority" | "fast") => Ok(t),
        Some(_) => Err(BodyError::Field {
            field: "service_tier",
            want: "must be auto, default, flex, priority or fast (the tiers this gateway prices)",
        }),
    }
}

impl<'a> Head<'a> {
    /// Reads the head of a JSON object body.
    pub fn parse(body: &'a [u8]) -> Result<Head<'a>, BodyError> {
        let text = std::str::from_utf8(body).map_err(|e| BodyError::Json(e.to_string()))?;
        if !text.trim_start().starts_with('{') {
            // Also keeps serde from reading a struct out of a JSON array.
            return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                Ok(_) => Err(BodyError::NotObject),
                Err(e) => Err(BodyError::Json(e.to_string())),
            };
        }
        let f: Fields<'a> = serde_json::from_str(text).map_err(|e| BodyError::Json(e.to_string()))?;
        let positive = "must be a positive integer";
        #[derive(Deserialize)]
        struct Thinking {
            budget_tokens: Option<u64>,
        }
        let thinking: Option<Thinking> = field(f.thinking, "thinking", "must be an object")?;
        Ok(Head {
            max_tokens_raw: f.max_tokens,
            max_completion_tokens_raw: f.max_completion_tokens,
            max_output_tokens_raw: f.max_output_tokens,
            thinking_budget: thinking.and_then(|t| t.budget_tokens),
            text,
            model: field(f.model, "model", "must be a string")?,
            max_tokens: field(f.max_tokens, "max_tokens", positive)?,
            max_completion_tokens: field(f.max_completion_tokens, "max_completion_tokens", positive)?,
            max_output_tokens: field(f.max_output_tokens, "max_output_tokens", positive)?,
            n: field(f.n, "n", positive)?.unwrap_or(1u64).max(1),
            background: field(f.background, "background", "must be a boolean")?.unwrap_or(false),
            server_side_input: [f.previous_response_id, f.conversation, f.prompt]
                .iter()
                .any(|r| r.is_some_and(|r| r.get() != "null")),
            stream: field(f.stream, "stream", "must be a boolean")?.unwrap_or(false),
            stream_options: f.stream_options,
            modifiers: Modifiers {
                fast: field::<Cow<str>>(f.speed, "speed", "must be a string")?.is_some_and(|s| s == "fast")
                    || tier(f.service_tier)?.is_some_and(|t| t == "fast" || t == "priority"),
                flex: tier(f.service_tier)?.is_some_and(|t| t == "flex"),
                geo_us: field::<Cow<str>>(f.inference_geo, "inference_geo", "must be a string")?
                    .is_some_and(|g| g == "us"),
            },
        })
    }

    /// The body with its output limit `field` (`max_tokens` or
    /// `max_completion_tokens`: the one admission sized the request from)
    /// lowered to `n`, every other byte as the client sent it; `None` when
    /// the request did not set that field.
    pub fn with_output_limit(&self, n: u64, field: &str) -> Option<Bytes> {
        let raw = match field {
            "max_completion_tokens" => self.max_completion_tokens_raw,
            "max_output_tokens" => self.max_output_tokens_raw,
            _ => self.max_tokens_raw,
        };
        let raw = match raw {
            // Codex never states it: the lowered limit is added (as the
            // object's first member), which the provider then enforces.
            None if field == "max_output_tokens" => {
                return Some(self.with_first_member("max_output_tokens", &n.to_string()))
            }
            Some(r) if r.get() != "null" || field == "max_output_tokens" => r,
            _ => return None,
        };
        let start = (raw.get().as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        let end = start + raw.get().len();
        Some(Bytes::from(format!("{}{n}{}", self.text.get(..start)?, self.text.get(end..)?)))
    }

    /// The body with `"name":value` added as the object's first member
    /// (for a field it does not have), every other byte as sent.
    fn with_first_member(&self, name: &str, value: &str) -> Bytes {
        let text = self.text;
        let open = text.len() - text.trim_start().len();
        let (head, rest) = text.split_at(open + 1);
        let sep = if rest.trim_start().starts_with('}') { "" } else { "," };
        Bytes::from(format!("{head}\"{name}\":{value}{sep}{rest}"))
    }

    /// Whether `stream_options.include_usage` is `true`.
    pub fn includes_usage(&self) -> bool {
        #[derive(Deserialize)]
        struct Opts {
            include_usage: Option<bool>,
        }
        self.stream_options
            .and_then(|r| serde_json::from_str::<Opts>(r.get()).ok())
            .is_some_and(|o| o.include_usage == Some(true))
    }

    /// The body with `stream_options.include_usage` set to true (OpenAI
    /// reports a stream's usage only when asked), every other byte as the
    /// client sent it; `None` if `stream_options` is there but not an object.
    pub fn with_include_usage(&self) -> Option<Bytes> {
        let text = self.text;
        let Some(opts) = self.stream_options else {
            return Some(self.with_first_member("stream_options", r#"{"include_usage":true}"#));
        };
        let mut map: serde_json::Map<String, serde_json::Value> = match opts.get() {
            "null" => serde_json::Map::new(),
            other => serde_json::from_str(other).ok()?,
        };
        map.insert("include_usage".into(), serde_json::Value::Bool(true));
        // Replace the member's value where the borrowed slice sits in the body.
        let start = (opts.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        let end = start + opts.get().len();
        let replaced = serde_json::to_string(&map).ok()?;
        Some(Bytes::from(format!("{}{replaced}{}", text.get(..start)?, text.get(end..)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_fields_admission_needs() {
        let body = br#"{"messages":[{"role":"user","content":"hi \u00e9"}],"model":"claude-x","max_tokens":100,"stream":true,"extra":{"deep":[1,2,3]}}"#;
        let h = Head::parse(body).unwrap();
        assert_eq!(h.model.as_deref(), Some("claude-x"));
        assert_eq!((h.max_tokens, h.max_completion_tokens, h.n, h.stream), (Some(100), None, 1, true));
        // Escapes in the model are decoded.
        let h = Head::parse(br#"{"model":"gpt\u002d4o","n":null,"max_tokens":null}"#).unwrap();
        assert_eq!((h.model.as_deref(), h.max_tokens, h.n), (Some("gpt-4o"), None, 1));
    }

    #[test]
    fn price_modifiers_are_read_from_the_request() {
        let m = |b: &str| Head::parse(b.as_bytes()).unwrap().modifiers;
        assert_eq!(m(r#"{"model":"m"}"#), Modifiers::default());
        assert_eq!(
            m(r#"{"model":"m","speed":"fast","inference_geo":"us"}"#),
            Modifiers { fast: true, flex: false, geo_us: true }
        );
        assert_eq!(m(r#"{"model":"m","speed":"standard","inference_geo":"global"}"#), Modifiers::default());
        assert!(m(r#"{"model":"m","service_tier":"priority"}"#).fast);
        assert!(m(r#"{"model":"m","service_tier":"flex"}"#).flex);
        assert!(Head::parse(br#"{"model":"m","speed":1}"#).is_err());
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let err = |b: &[u8]| Head::parse(b).unwrap_err();
        assert_eq!(err(b"[1,2]"), BodyError::NotObject);
        assert!(matches!(err(b"{\"model\":"), BodyError::Json(_)));
        assert!(matches!(err(b"\xff\xfe"), BodyError::Json(_)));
        assert_eq!(err(br#"{"model":5}"#), BodyError::Field { field: "model", want: "must be a string" });
        assert_eq!(
            err(br#"{"model":"m","max_tokens":-1}"#),
            BodyError::Field { field: "max_tokens", want: "must be a positive integer" }
        );
        assert_eq!(
            err(br#"{"model":"m","max_tokens":1.5}"#),
            BodyError::Field { field: "max_tokens", want: "must be a positive integer" }
        );
        // A second `model` could be the one the provider reads: refused.
        assert!(matches!(err(br#"{"model":"cheap","model":"dear"}"#), BodyError::Json(m) if m.contains("duplicate")));
    }

    #[test]
    fn include_usage_is_set_and_nothing_else_changes() {
        let check = |body: &str, want: &str| {
            let h = Head::parse(body.as_bytes()).unwrap();
            let out = h.with_include_usage().unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), want);
            assert!(Head::parse(&out).unwrap().includes_usage());
        };
        check(
            r#"{"model":"m","stream":true}"#,
            r#"{"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
        );
        check(
            r#"  { "model":"m","stream_options":{"include_usage":false,"x":1}, "z" : 2 }"#,
            r#"  { "model":"m","stream_options":{"include_usage":true,"x":1}, "z" : 2 }"#,
        );
        check(
            r#"{"model":"m","stream_options":null,"stream":true}"#,
            r#"{"model":"m","stream_options":{"include_usage":true},"stream":true}"#,
        );
        let h = Head::parse(br#"{"model":"m","stream_options":"x"}"#).unwrap();
        assert!(h.with_include_usage().is_none());
    }

    #[test]
    fn the_output_limit_is_lowered_in_place_and_the_thinking_budget_read() {
        let h =
            Head::parse(br#"{"model":"m","max_tokens" : 32000,"thinking":{"type":"enabled","budget_tokens":4000}}"#)
                .unwrap();
        assert_eq!(h.thinking_budget, Some(4000));
        let out = h.with_output_limit(5000, "max_tokens").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m","max_tokens" : 5000,"thinking":{"type":"enabled","budget_tokens":4000}}"#
        );
        let h = Head::parse(br#"{"max_tokens":10,"max_completion_tokens":99,"model":"m"}"#).unwrap();
        assert_eq!(
            &h.with_output_limit(7, "max_completion_tokens").unwrap()[..],
            br#"{"max_tokens":10,"max_completion_tokens":7,"model":"m"}"#
        );
        // Anthropic sizes from max_tokens: that is the field lowered.
        assert_eq!(
            &h.with_output_limit(7, "max_tokens").unwrap()[..],
            br#"{"max_tokens":7,"max_completion_tokens":99,"model":"m"}"#
        );
        assert!(Head::parse(br#"{"model":"m"}"#).unwrap().with_output_limit(7, "max_tokens").is_none());
        assert!(Head::parse(br#"{"model":"m","max_tokens":null}"#)
            .unwrap()
            .with_output_limit(7, "max_tokens")
            .is_none());
        // The Responses API's limit is added where absent, replaced where null.
        let lowered = |body: &[u8]| Head::parse(body).unwrap().with_output_limit(7, "max_output_tokens").unwrap();
        assert_eq!(
            &lowered(br#"{"model":"m","input":"x"}"#)[..],
            br#"{"max_output_tokens":7,"model":"m","input":"x"}"#
        );
        assert_eq!(&lowered(br#" {}"#)[..], br#" {"max_output_tokens":7}"#);
        assert_eq!(
            &lowered(br#"{"max_output_tokens":null,"model":"m"}"#)[..],
            br#"{"max_output_tokens":7,"model":"m"}"#
        );
        assert_eq!(&lowered(br#"{"max_output_tokens":900}"#)[..], br#"{"max_output_tokens":7}"#);
        assert!(Head::parse(br#"{"model":"m","thinking":3}"#).is_err());
    }

    #[test]
    fn model_ids_must_be_plausible() {
        assert!(valid_model_id("claude-sonnet-4-5@20250929"));
        assert!(valid_model_id("anthropic.claude-opus-4-6-v1:0"));
        for bad in ["", "a b", "m\u{1b}[31m", "m\n", &"m".repeat(129)] {
            assert!(!valid_model_id(bad), "{bad:?}");
        }
    }
}
