//! The Anthropic Messages API.

use bytes::Bytes;
use serde_json::{json, Value};
use tollgate_types::domain::Usage;

use super::OutputLimit;
use crate::edge::request::Head;
use crate::errors::EdgeError;
use crate::meter::{read_anthropic_usage, Reported};
use crate::pricing::Price;

/// `max_tokens` is required.
pub(super) fn output_limit(head: &Head) -> Result<OutputLimit, EdgeError> {
    let per_choice = head.max_tokens.ok_or_else(|| EdgeError::BadRequest("max_tokens: Field required".into()))?;
    Ok(OutputLimit { per_choice, field: "max_tokens" })
}

pub(super) fn json_usage(body: &[u8]) -> Option<(Usage, Reported)> {
    /// Only `usage` is kept; the rest is skipped.
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Value>,
    }
    let v: WithUsage = serde_json::from_slice(body).ok()?;
    let u = v.usage.filter(Value::is_object)?;
    let mut usage = Usage::default();
    read_anthropic_usage(&u, &mut usage);
    let mut reported = Reported::default();
    reported.read_anthropic(&u);
    Some((usage, reported))
}

pub(super) fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}

/// The error `type` Anthropic uses for a status.
fn kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

pub(super) fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind(status), "message": message}})
}

pub(super) fn models_list(models: &[&Price]) -> Value {
    let data: Vec<Value> =
        models.iter().map(|m| json!({"type": "model", "id": m.id, "display_name": m.display_name})).collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": models.first().map(|m| m.id.as_str()),
        "last_id": models.last().map(|m| m.id.as_str()),
    })
}
