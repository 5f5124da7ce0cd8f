//! The OpenAI Responses API, which Codex CLI speaks, through the official
//! `openai` SDK (`responses.create`, `responses.stream`): metered to the
//! nano-dollar against the mock's ground truth (cached and written tokens
//! inside `input_tokens`, reasoning inside `output_tokens`, each counted
//! once; an incomplete response billed for what it used), the stored-
//! response routes forwarded uncharged, a hard cap's denial with the
//! gateway's message (a 400 for Codex, which shows it at once), and Codex's
//! sessions, threads and turns attributed.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_chaos::mock::TruthRecord;

use crate::sdk::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_metered_to_the_nano_dollar_and_the_stored_routes_forwarded() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "cody@corp.io").await;
    s.budget("team:eng", "1000").await;
    // This edge serves stored responses (off by default, below).
    let edge = s.edge_to("edge1", &s.mock.url(), &[], "stored_responses = true", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let codex = json!({"x-mock-cache-read": "4000", "x-mock-cache-write-5m": "300",
                       "x-mock-output-tokens": "250", "x-mock-reasoning-tokens": "200"});
    let steps = json!([
        {"kind": "responses", "model": "gpt-6.2-sol", "content": "plain"},
        {"kind": "responses", "model": "gpt-6.2-sol", "headers": codex, "content": "a Codex turn"},
        {"kind": "responses", "stream": true, "model": "gpt-6.2-sol", "headers": codex, "content": "streamed"},
        // Cut at max_output_tokens: the stream ends response.incomplete
        // (the SDK's get_final_response then raises), billed all the same.
        {"kind": "responses", "stream": true, "model": "gpt-6.2-sol", "max_output_tokens": 40,
         "headers": {"x-mock-output-tokens": "300"}},
        // Failed halfway: response.failed carries what it used, and that is billed.
        {"kind": "responses", "stream": true, "model": "gpt-6.2-sol", "headers": {"x-mock-error": "midstream", "x-mock-output-tokens": "400"}},
        // Compaction reports usage too: metered like a response.
        {"kind": "raw", "path": "/v1/responses/compact",
         "headers": {"authorization": format!("Bearer {secret}"), "content-type": "application/json"},
         "body": json!({"model": "gpt-6.2-sol", "input": "a long history", "previous_response_id": "resp_prev"}).to_string()},
    ]);
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    for (i, want_ok) in [true, true, true, false, false, true].iter().enumerate() {
        assert_eq!(r[i]["ok"] == true, *want_ok, "step {i}: {}", r[i]);
    }
    // The client sees the provider's own usage and events, untouched.
    let u = &r[1]["usage"];
    assert_eq!(
        (u["cached_tokens"].as_u64(), u["output_tokens"].as_u64(), u["reasoning_tokens"].as_u64()),
        (Some(4000), Some(250), Some(200))
    );
    assert_eq!(
        (r[2]["usage"]["cached_tokens"].as_u64(), r[2]["usage"]["reasoning_tokens"].as_u64()),
        (Some(4000), Some(200))
    );
    let events: Vec<&str> = r[2]["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    assert_eq!((events.first(), events.last()), (Some(&"response.created"), Some(&"response.completed")), "{events:?}");
    assert!(r[3]["message"].as_str().unwrap().contains("response.completed"), "{}", r[3]);

    // The ledger charged exactly what the provider billed, for all six.
    let row = s.settled("key", &format!("key:{key_id}"), 6).await;
    let truth = s.mock.truth();
    let billed: Vec<&TruthRecord> = truth.iter().filter(|t| t.api == "responses" && t.status == 200).collect();
    assert_eq!(billed.len(), 6, "{truth:?}");
    assert_eq!(billed[3].usage.output_tokens, 40);
    assert_eq!(billed[4].usage.output_tokens, 200, "the failed response used half");
    let want: u64 = billed.iter().map(|t| truth_cost(t)).sum();
    assert_eq!((row.requests, row.spent_nano_usd, row.held_nano_usd), (6, want, 0), "ledger vs ground truth");
    // Codex's turn by hand: input (its bytes / 4) at $2, 4,000 cached at
    // $0.10, 300 written at $2.50, 250 output (200 of them reasoning) at $10.
    let t = billed[1];
    assert_eq!((t.usage.cache_read_tokens, t.usage.cache_write_5m_tokens, t.usage.output_tokens), (4000, 300, 250));
    assert_eq!(truth_cost(t), t.usage.input_tokens * 2_000 + 4000 * 100 + 300 * 2_500 + 250 * 10_000);
    assert_eq!(s.row("model", "model:gpt-6.2-sol").await.spent_nano_usd, want);

    // The stored-response routes are forwarded, uncharged; others are an
    // OpenAI-shaped 404.
    let auth = json!({"authorization": format!("Bearer {secret}")});
    let steps = json!([
        {"kind": "raw", "method": "GET", "path": format!("/v1/responses/{}", billed[0].id), "headers": auth},
        {"kind": "raw", "method": "GET", "path": "/v1/responses/resp_1/nothing", "headers": auth},
        {"kind": "raw", "method": "PUT", "path": "/v1/responses/resp_1", "headers": auth},
    ]);
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    assert_eq!(
        (r[0]["status"].as_u64(), r[0]["json"]["id"].as_str()),
        (Some(200), Some(billed[0].id.as_str())),
        "{}",
        r[0]
    );
    assert_eq!(r[1]["status"], 404);
    assert_eq!(r[1]["json"]["error"]["type"], "invalid_request_error");
    assert!(r[1]["json"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no route for GET /v1/responses/resp_1/nothing"));
    assert_eq!(
        (r[2]["status"].as_u64(), r[2]["json"]["error"]["type"].as_str()),
        (Some(405), Some("invalid_request_error"))
    );
    assert_eq!(s.row("key", &format!("key:{key_id}")).await.requests, 6, "forwarding charged nothing");
    // By default they are refused: any key knowing an id could reach them.
    let closed = s.edge_with("closed", &[]);
    closed.wait_ready(Duration::from_secs(30)).await.unwrap();
    let steps =
        json!([{"kind": "raw", "method": "GET", "path": format!("/v1/responses/{}", billed[0].id), "headers": auth}]);
    let r = sdk(json!({"base_url": base(&closed), "key": secret, "steps": steps})).await;
    assert_eq!(r[0]["status"], 403, "{}", r[0]);
    assert!(r[0]["json"]["error"]["message"].as_str().unwrap().contains("stored_responses = true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_cap_denies_a_responses_request_with_the_gateways_message() {
    let s = setup(&[]).await;
    let (_, secret) = s.principal("eng", "dee@corp.io").await;
    s.budget("team:eng", "0.000001").await;
    let edge = s.edge_with("edge1", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    // The SDK gets OpenAI's 402; Codex (by its originator) a 400, the one
    // refusal it shows at once with the message instead of retrying.
    let steps = json!([
        {"kind": "responses", "stream": true, "model": "gpt-6.2-sol", "content": "over budget"},
        {"kind": "responses", "stream": true, "model": "gpt-6.2-sol", "content": "over budget",
         "headers": {"originator": "codex_exec"}},
    ]);
    let r: Vec<Value> = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    for (i, status) in [402, 400].into_iter().enumerate() {
        assert_eq!(
            (r[i]["status"].as_u64(), r[i]["error_code"].as_str()),
            (Some(status), Some("budget_exceeded")),
            "{}",
            r[i]
        );
        let message = r[i]["message"].as_str().unwrap();
        assert!(message.starts_with("Tollgate: the monthly budget of team:eng is exhausted"), "{message}");
    }
    assert!(s.mock.truth().is_empty(), "nothing reached the provider");
}

/// Codex's headers attribute each settle to its session, thread and turn
/// (`usage --by session|agent|prompt`, beside Claude Code's); its turn
/// metadata (workspace paths, commits) does not reach the provider unless
/// the operator sets `forward_client_metadata`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_sessions_threads_and_turns_are_attributed_and_its_metadata_stays_home() {
    let s = crate::harness::setup(&[]).await;
    let secret = s.key("eng", "cody@corp.io").await;
    s.budget("team:eng", "100").await;
    let edges = [s.edge("quiet", "", &[]), s.edge("open", "forward_client_metadata = true", &[])];
    let metadata = r#"{"session_id":"sess-c1","turn_id":"turn-7","thread_id":"thr-main","workspaces":{"/home/cody/secret-repo":{"latest_git_commit_hash":"abc123"}}}"#;
    // Server-side state (previous_response_id) goes upstream byte for byte.
    let body = r#"{"model":"gpt-6.2-sol", "previous_response_id":"resp_prev","input":"fix the bug","store":false}"#;
    let bearer = format!("Bearer {secret}");
    let mut saw = Vec::new();
    for edge in &edges {
        edge.wait_ready(Duration::from_secs(30)).await.unwrap();
        let headers = crate::harness::with(
            &[("authorization", &bearer), ("content-type", "application/json")],
            &[
                ("session-id", "sess-c1"),
                ("thread-id", "thr-main"),
                ("originator", "codex_exec"),
                ("x-openai-subagent", "review"),
                ("x-codex-turn-metadata", metadata),
            ],
        );
        let r = crate::harness::post(&edge.addr, "/v1/responses", &headers, body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r.header("x-mock-body-sha256"), Some(sha.as_str()));
        saw.push(r.mock_saw());
    }
    assert!(saw[0].iter().any(|h| h == "session-id") && saw[0].iter().any(|h| h == "thread-id"), "{:?}", saw[0]);
    assert!(!saw[0].iter().any(|h| h == "x-codex-turn-metadata"), "forwarded by default: {:?}", saw[0]);
    assert!(saw[1].iter().any(|h| h == "x-codex-turn-metadata"), "not forwarded when allowed: {:?}", saw[1]);

    let want: u64 = s.mock.truth().iter().map(truth_cost).sum();
    let session = s.settled("session", "session:sess-c1", 2).await;
    assert_eq!((session.requests, session.spent_nano_usd, session.user.as_str()), (2, want, "cody@corp.io"));
    assert_eq!(s.row("agent", "agent:thr-main").await.requests, 2);
    assert_eq!(s.row("prompt", "prompt:turn-7").await.requests, 2);
    assert_eq!(s.row("request-class", "request-class:review").await.requests, 2);
    // Nothing else of the metadata was recorded.
    for by in ["session", "agent", "prompt", "request-class"] {
        assert!(s.usage(by).await.iter().all(|r| !r.scope.contains("secret-repo") && !r.scope.contains("abc123")));
    }
}
