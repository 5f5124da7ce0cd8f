//! The OpenAI Responses API (`POST /v1/responses`), which Codex CLI speaks.
//! Its usage counts differently from Chat Completions: `input_tokens`
//! includes the cached tokens and those written to the cache, and
//! `output_tokens` includes the reasoning tokens; a stream reports usage
//! once, on its terminal event (`response.completed`, `.incomplete` or
//! `.failed`), with no `[DONE]`.

use bytes::Bytes;
use serde_json::json;
use tollgate_types::domain::Usage;

use super::OutputLimit;
use crate::edge::request::Head;
use crate::errors::EdgeError;
use crate::meter::{read_responses_usage, Reported};

/// `max_output_tokens` (visible and reasoning tokens together). Codex
/// never sets it: the limit is then the model's maximum (`model_max`; in
/// `estimate` mode the reservation is sized from recent outputs within
/// it), else the default.
pub(super) fn output_limit(
    head: &Head,
    strict: bool,
    default: u64,
    model_max: Option<u64>,
) -> Result<OutputLimit, EdgeError> {
    let per_choice = match (head.max_output_tokens, strict, model_max) {
        (Some(n), _, _) => n,
        (None, _, Some(max)) => max,
        (None, false, None) => default,
        (None, true, None) => {
            return Err(EdgeError::BadRequest(
                "Tollgate (strict admission): set max_output_tokens so the request's cost is bounded".into(),
            ))
        }
    };
    Ok(OutputLimit { per_choice, field: "max_output_tokens" })
}

pub(super) fn refuse(head: &Head, strict: bool) -> Result<(), EdgeError> {
    if head.background {
        return Err(EdgeError::BadRequest(
            "Tollgate: background responses are not supported: their usage is not in this exchange, so they \
             could not be charged; send the request without background"
                .into(),
        ));
    }
    if strict && head.server_side_input {
        return Err(EdgeError::BadRequest(
            "Tollgate (strict admission): previous_response_id, conversation and stored prompts bring input the \
             request's size does not bound; send the whole input (as Codex does over HTTP), or ask the operator \
             for estimate mode"
                .into(),
        ));
    }
    Ok(())
}

pub(super) fn json_usage(body: &[u8]) -> Option<(Usage, Reported)> {
    super::openai::usage_and_tier(body, read_responses_usage)
}

/// The Responses stream's `error` event.
pub(super) fn stream_error_event(message: &str) -> Bytes {
    let v = json!({"type": "error", "code": "server_error", "message": message, "param": null, "sequence_number": 0});
    Bytes::from(format!("event: error\ndata: {v}\n\n"))
}
