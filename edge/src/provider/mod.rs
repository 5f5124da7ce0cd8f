//! What differs between the providers' APIs, one module each: how a
//! request states its output limit, how the gateway's credential is sent,
//! where usage is in a JSON response and in a stream, the shape of an
//! error, of a stream's error event and of the model list. The request path
//! (`edge::proxy`, `edge::settle`) asks [`Api`] and never matches on the
//! provider itself; adding a provider means adding a module and a variant.

mod anthropic;
mod openai;
mod responses;

use bytes::Bytes;
use serde_json::Value;
use tollgate_types::domain::Usage;

use crate::config::{EdgeSettings, Upstream};
use crate::edge::request::Head;
use crate::errors::EdgeError;
use crate::meter::{Reported, StreamMeter};
use crate::pricing::{Price, Provider};

/// Which provider's wire format a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    /// OpenAI's Chat Completions.
    OpenAi,
    /// OpenAI's Responses API (Codex CLI).
    OpenAiResponses,
}

/// How admission sizes a request's output.
pub struct OutputLimit {
    /// Tokens per choice the request may produce.
    pub per_choice: u64,
    /// The body field that states it (for messages and for lowering it).
    pub field: &'static str,
}

impl Api {
    /// The price book's provider.
    pub fn provider(self) -> Provider {
        match self {
            Api::Anthropic => Provider::Anthropic,
            Api::OpenAi | Api::OpenAiResponses => Provider::OpenAi,
        }
    }

    /// Where this API's requests go, with the gateway's credential.
    pub fn upstream(self, s: &EdgeSettings) -> &Upstream {
        match self {
            Api::Anthropic => &s.anthropic,
            Api::OpenAi | Api::OpenAiResponses => &s.openai,
        }
    }

    /// The environment variable that holds the gateway's credential.
    pub fn credential_var(self) -> &'static str {
        match self {
            Api::Anthropic => "ANTHROPIC_API_KEY",
            Api::OpenAi | Api::OpenAiResponses => "OPENAI_API_KEY",
        }
    }

    /// The request header that carries the gateway's credential.
    pub fn credential_header(self, key: &str) -> (&'static str, String) {
        match self {
            Api::Anthropic => ("x-api-key", key.to_string()),
            Api::OpenAi | Api::OpenAiResponses => ("authorization", format!("Bearer {key}")),
        }
    }

    /// The output limit a request states (or, where the API allows none,
    /// the default `estimate` mode reserves; `strict` then refuses it, or
    /// reserves the model's maximum `model_max` where the API's clients
    /// never state one).
    pub fn output_limit(
        self,
        head: &Head,
        strict: bool,
        default: u64,
        model_max: Option<u64>,
    ) -> Result<OutputLimit, EdgeError> {
        match self {
            Api::Anthropic => anthropic::output_limit(head),
            Api::OpenAi => openai::output_limit(head, strict, default),
            Api::OpenAiResponses => responses::output_limit(head, strict, default, model_max),
        }
    }

    /// What this API refuses before admission because its cost could not be
    /// bounded or metered: a background response (answered `queued`, its
    /// usage never in this exchange) and, in strict mode, input the
    /// provider holds (`previous_response_id`, `conversation`, a stored
    /// `prompt`), which the body's size does not bound.
    pub fn refuse(self, head: &Head, strict: bool) -> Result<(), EdgeError> {
        match self {
            Api::OpenAiResponses => responses::refuse(head, strict),
            Api::Anthropic | Api::OpenAi => Ok(()),
        }
    }

    /// Whether the stream must be asked to report usage (and the extra
    /// chunk then hidden from the client).
    pub fn must_ask_for_usage(self, head: &Head) -> bool {
        self == Api::OpenAi && head.stream && !head.includes_usage()
    }

    /// Usage and price modifiers from a whole JSON response; `None` when it
    /// reports none.
    pub fn json_usage(self, body: &[u8]) -> Option<(Usage, Reported)> {
        match self {
            Api::Anthropic => anthropic::json_usage(body),
            Api::OpenAi => openai::json_usage(body),
            Api::OpenAiResponses => responses::json_usage(body),
        }
    }

    /// Feeds one server-sent event to the stream's meter.
    pub fn meter_event(self, meter: &mut StreamMeter, name: &str, data: &str) {
        match self {
            Api::Anthropic => meter.anthropic_event(name, data),
            Api::OpenAi => meter.openai_event(data),
            Api::OpenAiResponses => meter.responses_event(name, data),
        }
    }

    /// An error event in this API's stream format, for a stream the edge ends.
    pub fn stream_error_event(self, message: &str) -> Bytes {
        match self {
            Api::Anthropic => anthropic::stream_error_event(message),
            Api::OpenAi => openai::stream_error_event(message),
            Api::OpenAiResponses => responses::stream_error_event(message),
        }
    }

    /// An error body of `status` in this API's shape (`code`: OpenAI's).
    pub fn error_body(self, status: u16, message: &str, code: Option<&str>) -> Value {
        match self {
            Api::Anthropic => anthropic::error_body(status, message),
            Api::OpenAi | Api::OpenAiResponses => openai::error_body(status, message, code),
        }
    }

    /// `GET /v1/models` in this API's shape.
    pub fn models_list(self, models: &[&Price]) -> Value {
        match self {
            Api::Anthropic => anthropic::models_list(models),
            Api::OpenAi | Api::OpenAiResponses => openai::models_list(models),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(body: &str) -> Head<'_> {
        Head::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn each_api_states_its_output_limit_its_own_way() {
        let limit = |api: Api, body: &str, strict: bool| {
            api.output_limit(&head(body), strict, 4096, Some(128_000))
                .map(|l| (l.per_choice, l.field))
                .map_err(|e| e.status())
        };
        assert_eq!(limit(Api::Anthropic, r#"{"max_tokens":10}"#, false), Ok((10, "max_tokens")));
        assert_eq!(limit(Api::Anthropic, r#"{"max_completion_tokens":10}"#, false), Err(400));
        assert_eq!(
            limit(Api::OpenAi, r#"{"max_tokens":10,"max_completion_tokens":7}"#, false),
            Ok((7, "max_completion_tokens"))
        );
        assert_eq!(limit(Api::OpenAi, r#"{"max_tokens":10}"#, true), Ok((10, "max_tokens")));
        assert_eq!(limit(Api::OpenAi, r#"{}"#, false), Ok((4096, "max_tokens")));
        assert_eq!(limit(Api::OpenAi, r#"{}"#, true), Err(400));
        // Codex states no limit: strict reserves the model's maximum.
        assert_eq!(limit(Api::OpenAiResponses, r#"{"max_output_tokens":900}"#, true), Ok((900, "max_output_tokens")));
        assert_eq!(limit(Api::OpenAiResponses, r#"{}"#, true), Ok((128_000, "max_output_tokens")));
        assert_eq!(limit(Api::OpenAiResponses, r#"{}"#, false), Ok((128_000, "max_output_tokens")));
    }

    #[test]
    fn responses_refuses_what_it_cannot_bound_or_meter() {
        let r = |body: &str, strict: bool| Api::OpenAiResponses.refuse(&head(body), strict).map_err(|e| e.status());
        assert_eq!(r(r#"{"background":true}"#, false), Err(400));
        assert_eq!(r(r#"{"background":false}"#, true), Ok(()));
        for state in
            [r#"{"previous_response_id":"resp_1"}"#, r#"{"conversation":"conv_1"}"#, r#"{"prompt":{"id":"p"}}"#]
        {
            assert_eq!(r(state, true), Err(400), "{state}");
            assert_eq!(r(state, false), Ok(()), "{state}");
        }
        assert_eq!(r(r#"{"previous_response_id":null}"#, true), Ok(()));
        assert_eq!(Api::OpenAi.refuse(&head(r#"{"background":true}"#), true), Ok(()));
        // A tier the book does not price is refused, not charged as standard.
        assert!(Head::parse(br#"{"service_tier":"ultrafast"}"#).is_err());
        assert!(Head::parse(br#"{"service_tier":"priority"}"#).is_ok());
    }

    #[test]
    fn usage_is_read_from_each_apis_json() {
        let (u, _) = Api::Anthropic
            .json_usage(br#"{"usage":{"input_tokens":3,"output_tokens":4,"cache_read_input_tokens":5}}"#)
            .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_tokens), (3, 4, 5));
        let (u, r) = Api::OpenAi
            .json_usage(br#"{"service_tier":"flex","usage":{"prompt_tokens":10,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}"#)
            .unwrap();
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_tokens), (6, 2, 4));
        assert!(r.over(crate::pricing::Modifiers::default()).flex);
        // Responses: input includes cached and written tokens, output the reasoning.
        let (u, r) = Api::OpenAiResponses
            .json_usage(br#"{"service_tier":"priority","usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":600,"cache_write_tokens":300},"output_tokens":80,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":1080}}"#)
            .unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens, u.output_tokens),
            (100, 600, 300, 80)
        );
        assert!(r.over(crate::pricing::Modifiers::default()).fast);
        assert!(Api::Anthropic.json_usage(br#"{"id":"x"}"#).is_none());
        assert!(Api::OpenAi.json_usage(b"not json").is_none());
    }

    #[test]
    fn stream_errors_and_error_bodies_take_each_apis_shape() {
        let a = Api::Anthropic.stream_error_event("m");
        assert!(a.starts_with(b"event: error\ndata: {") && a.ends_with(b"\n\n"));
        let o = Api::OpenAi.stream_error_event("m");
        assert!(o.starts_with(b"data: {\"error\"") && o.ends_with(b"\n\n"));
        let r = Api::OpenAiResponses.stream_error_event("m");
        assert!(r.starts_with(b"event: error\ndata: {") && r.ends_with(b"\n\n"));
        let v: Value = serde_json::from_slice(&r[b"event: error\ndata: ".len()..]).unwrap();
        assert_eq!((v["type"].as_str(), v["message"].as_str()), (Some("error"), Some("m")));
        assert_eq!(Api::Anthropic.error_body(402, "m", None)["error"]["type"], "billing_error");
        assert_eq!(Api::OpenAi.error_body(402, "m", Some("budget_exceeded"))["error"]["code"], "budget_exceeded");
    }
}
