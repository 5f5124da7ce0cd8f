//! The OpenAI Chat Completions API.

use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_types::domain::Usage;

use super::OutputLimit;
use crate::edge::request::Head;
use crate::errors::EdgeError;
use crate::meter::{read_openai_usage, Reported};
use crate::pricing::Price;

/// `max_completion_tokens`, else `max_tokens`; a request with neither gets
/// `default` (`estimate` mode) or a 400 (`strict`: its cost is unbounded).
pub(super) fn output_limit(head: &Head, strict: bool, default: u64) -> Result<OutputLimit, EdgeError> {
    let field = if head.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let per_choice = match head.max_completion_tokens.or(head.max_tokens) {
        Some(n) => n,
        None if strict => {
            return Err(EdgeError::BadRequest(
                "Tollgate (strict admission): set max_completion_tokens or max_tokens so the request's cost is \
                 bounded"
                    .into(),
            ))
        }
        None => default,
    };
    Ok(OutputLimit { per_choice, field })
}

pub(super) fn json_usage(body: &[u8]) -> Option<(Usage, Reported)> {
    usage_and_tier(body, read_openai_usage)
}

/// An OpenAI response's `usage` (read by `read`) and the service tier that
/// served it; `None` when it reports no usage.
pub(super) fn usage_and_tier(body: &[u8], read: fn(&Value) -> Usage) -> Option<(Usage, Reported)> {
    /// Only `usage` and the tier are kept; the rest is skipped.
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Value>,
        service_tier: Option<String>,
    }
    let v: WithUsage = serde_json::from_slice(body).ok()?;
    let u = v.usage.filter(Value::is_object)?;
    let mut reported = Reported::default();
    if let Some(tier) = v.service_tier.as_deref() {
        reported.read_openai_tier(tier);
    }
    Some((read(&u), reported))
}

pub(super) fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
    Bytes::from(format!("data: {v}\n\n"))
}

/// The error `type` OpenAI uses for a status.
fn kind(status: u16) -> &'static str {
    match status {
        400 | 404 | 405 | 413 => "invalid_request_error",
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

pub(super) fn error_body(status: u16, message: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind(status), "param": null, "code": code}})
}

pub(super) fn models_list(models: &[&Price]) -> Value {
    let data: Vec<Value> =
        models.iter().map(|m| json!({"object": "model", "id": m.id, "owned_by": "openai"})).collect();
    json!({"object": "list", "data": data})
}
