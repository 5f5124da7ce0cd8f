//! The mock's OpenAI Responses API: the JSON response and the event
//! stream (sequence numbers, content parts, the terminal event that alone
//! carries usage; `response.incomplete` when cut at `max_output_tokens`,
//! `response.failed` halfway on `x-mock-error: midstream`).

use super::*;

/// A Responses API `usage`: `input_tokens` includes the cached and the
/// written tokens, `output_tokens` the reasoning ones.
fn responses_usage(u: &TruthUsage, reasoning: u64) -> Value {
    let input = u.input_tokens + u.cache_read_tokens + u.cache_write_5m_tokens;
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_5m_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + u.output_tokens,
    })
}

/// The response object: `completed`, or `incomplete` when the output was
/// cut at `max_output_tokens`.
fn responses_object(id: &str, plan: &Plan, usage: Value) -> Value {
    let cut = plan.stop_reason == "max_tokens";
    let text = text_for(plan.usage.output_tokens - plan.reasoning_tokens);
    json!({
        "id": id, "object": "response", "created_at": 1_764_374_400u64, "model": plan.model,
        "status": if cut { "incomplete" } else { "completed" },
        "incomplete_details": if cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null, "service_tier": "default",
        "output": [{"id": format!("msg_{id}"), "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": usage,
    })
}

pub(super) fn json(state: &State, plan: Plan) -> Response<Body> {
    let id = format!("resp_mock{:08}", plan.seq);
    let body = responses_object(&id, &plan, responses_usage(&plan.usage, plan.reasoning_tokens));
    state.record(&plan.truth(id, "responses", 200, true, plan.usage.clone()));
    json_response(StatusCode::OK, &body)
}

/// A Responses stream: `response.created`, text deltas, then the terminal
/// `response.completed` (or `.incomplete`) that alone carries usage.
pub(super) fn sse(state: Arc<State>, plan: Plan) -> Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    let delay = Duration::from_millis(state.cfg.event_delay_ms);
    tokio::spawn(async move {
        let id = format!("resp_mock{:08}", plan.seq);
        let mut seq = 0u64;
        let mut event = |kind: &str, mut data: Value| {
            data["type"] = json!(kind);
            data["sequence_number"] = json!(seq);
            seq += 1;
            sse_event(kind, &data)
        };
        let mut created = responses_object(&id, &plan, Value::Null);
        created["status"] = json!("in_progress");
        created["output"] = json!([]);
        let item = format!("msg_{id}");
        let mut frames = vec![
            event("response.created", json!({"response": created})),
            event(
                "response.output_item.added",
                json!({"output_index": 0,
                "item": {"id": item, "type": "message", "role": "assistant", "status": "in_progress", "content": []}}),
            ),
        ];
        let at = json!({"item_id": item, "output_index": 0, "content_index": 0});
        let with = |more: Value| {
            let mut v = at.clone();
            v.as_object_mut().unwrap().extend(more.as_object().unwrap().clone());
            v
        };
        frames.push(event(
            "response.content_part.added",
            with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
        ));
        let deltas = plan.usage.output_tokens.clamp(1, 8);
        if plan.error.as_deref() == Some("midstream") {
            // The model fails halfway: `response.failed`, billed for what it used.
            for _ in 0..deltas / 2 {
                frames.push(event("response.output_text.delta", with(json!({"delta": "lorem ", "logprobs": []}))));
            }
            let used = TruthUsage { output_tokens: plan.usage.output_tokens / 2, ..plan.usage.clone() };
            let mut failed = responses_object(&id, &plan, responses_usage(&used, 0));
            failed["status"] = json!("failed");
            failed["error"] = json!({"code": "server_error", "message": "The model failed mid-response"});
            frames.push(event("response.failed", json!({"response": failed})));
            let completed = send_paced(&tx, frames, delay).await;
            state.record(&plan.truth(id.clone(), "responses", 200, completed, used));
            return;
        }
        for _ in 0..deltas {
            frames.push(event("response.output_text.delta", with(json!({"delta": "lorem ", "logprobs": []}))));
        }
        let text = "lorem ".repeat(deltas as usize);
        frames.push(event("response.output_text.done", with(json!({"text": text, "logprobs": []}))));
        let part = json!({"type": "output_text", "text": text, "annotations": []});
        frames.push(event("response.content_part.done", with(json!({"part": part}))));
        frames.push(event(
            "response.output_item.done",
            json!({"output_index": 0,
                "item": {"id": item, "type": "message", "role": "assistant", "status": "completed", "content": [part]}}),
        ));
        let done = responses_object(&id, &plan, responses_usage(&plan.usage, plan.reasoning_tokens));
        let terminal = if plan.stop_reason == "max_tokens" { "response.incomplete" } else { "response.completed" };
        frames.push(event(terminal, json!({"response": done})));
        let completed = send_paced(&tx, frames, delay).await;
        state.record(&plan.truth(id.clone(), "responses", 200, completed, plan.usage.clone()));
    });
    sse_response(rx)
}
