//! Metering through the official SDKs, to the nano-dollar against the
//! mock's ground truth, and bad input refused in each provider's shape
//! without a charge.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_chaos::mock::TruthRecord;
use tollgate_proto::v1 as pb;

use crate::sdk::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_calls_are_metered_to_the_nano_dollar() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "ann@corp.io").await;
    s.budget("team:eng", "1000").await;
    let edge = s.edge_with("edge1", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let cache = json!({"x-mock-cache-read": "4000", "x-mock-cache-write-5m": "100", "x-mock-cache-write-1h": "200"});
    let steps = json!([
        {"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 40, "content": "plain request"},
        {"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 40, "headers": cache, "content": "cached"},
        {"kind": "anthropic", "stream": true, "model": "claude-sonnet-4-5", "max_tokens": 30, "content": "stream me"},
        {"kind": "anthropic", "stream": true, "model": "claude-haiku-4-5", "max_tokens": 30, "headers": cache},
        {"kind": "openai", "model": "gpt-4o", "max_tokens": 20, "headers": {"x-mock-cache-read": "64"}},
        {"kind": "openai", "stream": true, "model": "gpt-4o", "max_tokens": 20, "content": "no usage asked"},
        {"kind": "openai", "stream": true, "include_usage": true, "model": "gpt-4o", "max_tokens": 20},
        {"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 40, "headers": {"x-mock-error": "429"}},
        {"kind": "openai", "model": "gpt-4o", "max_tokens": 20, "headers": {"x-mock-error": "500"}},
        {"kind": "anthropic", "stream": true, "model": "claude-sonnet-4-5", "max_tokens": 30,
         "headers": {"x-mock-error": "midstream"}},
        {"kind": "count_tokens", "model": "claude-sonnet-4-5", "content": "count these"},
        {"kind": "models"},
    ]);
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    for (i, want_ok) in [true, true, true, true, true, true, true, false, false, false, true, true].iter().enumerate() {
        assert_eq!(r[i]["ok"] == true, *want_ok, "step {i}: {}", r[i]);
    }
    // What the clients saw is the provider's own answer.
    assert_eq!(r[1]["usage"]["cache_read_input_tokens"], 4000);
    assert_eq!(r[1]["usage"]["cache_creation_input_tokens"], 300);
    assert_eq!(r[1]["usage"]["ephemeral_1h"], 200);
    assert_eq!(r[3]["usage"]["cache_read_input_tokens"], 4000, "streamed usage: {}", r[3]);
    assert_eq!(r[4]["usage"]["cached_tokens"], 64);
    // The edge asked for the usage chunk on the client's behalf and hid it…
    assert_eq!(r[5]["usage_chunks"], 0, "{}", r[5]);
    assert!(r[5]["text_len"].as_u64().unwrap() > 0);
    // …and passed it through when the client asked itself.
    assert_eq!(r[6]["usage_chunks"], 1, "{}", r[6]);
    // Upstream errors reach the client with their status and type.
    assert_eq!((r[7]["status"].as_u64(), r[7]["error_type"].as_str()), (Some(429), Some("rate_limit_error")));
    assert_eq!(r[8]["status"], 500);
    assert_eq!(r[9]["error_type"], "overloaded_error", "mid-stream error event: {}", r[9]);
    assert!(r[10]["input_tokens"].as_u64().unwrap() > 0);
    assert!(r[11]["ids"].as_array().unwrap().len() > 1);

    // The ledger charged exactly what the provider billed.
    let row = s.settled("key", &format!("key:{key_id}"), 10).await;
    let truth = s.mock.truth();
    let billed: Vec<&TruthRecord> = truth.iter().filter(|t| t.status == 200).collect();
    assert_eq!(billed.len(), 8, "7 successes and the mid-stream failure: {truth:?}");
    assert!(truth.iter().all(|t| t.credential == UPSTREAM_KEY), "the client's key reached the upstream");
    let want: u64 = billed.iter().map(|t| truth_cost(t)).sum();
    assert_eq!(row.requests, 10, "ten admissions (two upstream errors were released, not charged)");
    assert_eq!(row.spent_nano_usd, want, "ledger spent vs ground truth");
    assert_eq!(row.unsettled_nano_usd, 0);
    let team = s.row("team", "team:eng").await;
    assert_eq!((team.spent_nano_usd, team.held_nano_usd), (want, 0));
    // Per model, too.
    for model in ["claude-sonnet-4-5", "claude-haiku-4-5", "gpt-4o"] {
        let m: u64 = billed.iter().filter(|t| t.model == model).map(|t| truth_cost(t)).sum();
        assert_eq!(s.row("model", &format!("model:{model}")).await.spent_nano_usd, m, "{model}");
    }
    let tokens: u64 = billed.iter().map(|t| t.usage.cache_read_tokens).sum();
    assert_eq!(row.cache_read_tokens, tokens);

    // The edge's metrics saw the same spend.
    let metrics = http_get(&edge.addr, "/metrics").await;
    let spend: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_spend_nano_usd_total{team=\"eng\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(spend, want, "{metrics}");
    // Ten admissions, by a hold or (once the edge holds a lease) locally.
    let admitted: u64 = ["granted", "leased"]
        .iter()
        .filter_map(|r| crate::harness::metric(&metrics, &format!("tollgate_admissions_total{{result=\"{r}\"}}")))
        .sum();
    assert_eq!(admitted, 10, "{metrics}");
    assert!(metrics
        .contains("tollgate_requests_total{route=\"/v1/messages\",model=\"claude-sonnet-4-5\",status=\"429\"} 1"));
    assert!(metrics.contains("tollgate_gateway_overhead_seconds_count"));
    assert!(metrics.contains("tollgate_outbox_depth 0"));
}

/// Claude Code's default model, `claude-opus-5-5`, through the official SDK
/// (JSON and streamed, with cache reads and both cache writes): charged its
/// list price to the nano-dollar ($4 / $20, writes $5 / $8, reads $0.20 per
/// MTok, at the checker's independent rates), not a fallback's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_codes_default_model_is_metered_at_its_list_price() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "ann@corp.io").await;
    s.budget("team:eng", "5").await;
    let edge = s.edge_with("edge1", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let cache = json!({"x-mock-cache-read": "40000", "x-mock-cache-write-5m": "1000", "x-mock-cache-write-1h": "2000"});
    let steps = json!([
        {"kind": "anthropic", "model": "claude-opus-5-5", "max_tokens": 64, "headers": cache, "content": "say hi"},
        {"kind": "anthropic", "stream": true, "model": "claude-opus-5-5", "max_tokens": 64, "headers": cache},
    ]);
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    assert!(r.iter().all(|x| x["ok"] == true), "{r:?}");
    let row = s.settled("key", &format!("key:{key_id}"), 2).await;
    let truth = s.mock.truth();
    assert_eq!(truth.len(), 2);
    let want: u64 = truth.iter().map(truth_cost).sum();
    assert_eq!(row.spent_nano_usd, want);
    // The same by hand, for the first (JSON) response.
    let u = &truth[0].usage;
    let by_hand = u.input_tokens * 4_000
        + u.output_tokens * 20_000
        + u.cache_write_5m_tokens * 5_000
        + u.cache_write_1h_tokens * 8_000
        + u.cache_read_tokens * 200;
    assert_eq!(truth_cost(&truth[0]), by_hand);
    assert_eq!(u.cache_read_tokens, 40_000);
}

/// A raw HTTP/1.1 GET, for /metrics and /readyz.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_in_each_providers_shape_and_charges_nothing() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "bob@corp.io").await;
    let (_, other) = s.principal("eng", "eve@corp.io").await;
    s.budget("team:eng", "1000").await;
    let req = pb::SetPolicyRequest {
        scope: "team:eng".into(),
        allowed_models: vec!["claude-sonnet-4-5".into(), "gpt-4o".into()],
    };
    s.admin.call(req, |mut c, r| async move { c.set_policy(r).await }).await.unwrap();
    let cfg = s.dir.join("edge.toml");
    std::fs::write(&cfg, "version = 1\n[edge]\nmax_body_bytes = 4096\n").unwrap();
    let edge = s.edge_with("edge1", &["--config", cfg.to_str().unwrap()]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let msg = |extra: &str| format!("{{\"model\":\"claude-sonnet-4-5\",\"messages\":[]{extra}}}");
    let a = json!({"x-api-key": secret, "anthropic-version": "2023-06-01", "content-type": "application/json"});
    let o = json!({"authorization": format!("Bearer {secret}"), "content-type": "application/json"});
    let raw = |path: &str, headers: &Value, body: String| json!({"kind": "raw", "path": path, "headers": headers, "body": body});
    let steps = json!([
        raw("/v1/messages", &json!({}), msg(",\"max_tokens\":5")),
        raw("/v1/messages", &json!({"x-api-key": "tg_wrong"}), msg(",\"max_tokens\":5")),
        raw("/v1/chat/completions", &json!({"authorization": "Bearer tg_wrong"}), "{}".into()),
        raw("/v1/messages", &a, "{\"model\": \"claude-sonnet-4-5\", \"max_tok".into()),
        raw("/v1/messages", &a, msg("")),
        raw("/v1/messages", &a, msg(&format!(",\"max_tokens\":5,\"pad\":\"{}\"", "x".repeat(5000)))),
        raw("/v1/messages", &a, "{\"model\":\"claude-opus-4-1\",\"max_tokens\":5,\"messages\":[]}".into()),
        raw("/v1/chat/completions", &o, "{\"model\":\"gpt-5\",\"max_tokens\":5,\"messages\":[]}".into()),
        raw("/v2/other", &a, "{}".into()),
        raw("/v1/chat/completions", &o, "[1,2]".into()),
    ]);
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    let expect = [
        (401, "authentication_error", "no API key"),
        (401, "authentication_error", "invalid or revoked"),
        (401, "authentication_error", "invalid or revoked"),
        (400, "invalid_request_error", "not valid JSON"),
        (400, "invalid_request_error", "max_tokens"),
        (413, "request_too_large", "4096-byte limit"),
        (403, "permission_error", "claude-opus-4-1 is not allowed by the policy of team:eng"),
        (403, "permission_error", "gpt-5 is not allowed"),
        (404, "not_found_error", "no route"),
        (400, "invalid_request_error", "JSON object"),
    ];
    for (i, (status, kind, words)) in expect.iter().enumerate() {
        let got = &r[i];
        assert_eq!(got["status"], *status, "step {i}: {got}");
        assert_eq!(got["json"]["error"]["type"], *kind, "step {i}: {got}");
        let m = got["json"]["error"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(words), "step {i}: {m:?} lacks {words:?}");
    }
    // Anthropic errors carry "type":"error"; OpenAI errors have param and code.
    assert_eq!(r[0]["json"]["type"], "error");
    assert!(r[2]["json"]["error"].as_object().unwrap().contains_key("code"));

    // Nothing was charged or held, and nothing reached the upstream.
    let row = s.row("key", &format!("key:{key_id}")).await;
    assert_eq!((row.spent_nano_usd, row.held_nano_usd, row.requests), (0, 0, 0));
    assert!(s.mock.truth().is_empty());

    // A revoked key stops working within a second.
    let steps = json!([raw(
        "/v1/messages",
        &json!({"x-api-key": other, "anthropic-version": "2023-06-01"}),
        msg(",\"max_tokens\":5")
    )]);
    let before = sdk(json!({"base_url": base(&edge), "key": other, "steps": steps.clone()})).await;
    assert_eq!(before[0]["status"], 200, "{}", before[0]);
    let keys = s.admin.call(pb::GetConfigRequest {}, |mut c, r| async move { c.get_config(r).await }).await.unwrap();
    let other_id = keys.keys.iter().find(|k| k.user == "eve@corp.io").unwrap().id.clone();
    s.admin.call(pb::RevokeKeyRequest { id: other_id }, |mut c, r| async move { c.revoke_key(r).await }).await.unwrap();
    let revoked_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(revoked_at.elapsed())).await;
    let after = sdk(json!({"base_url": base(&edge), "key": other, "steps": steps})).await;
    assert_eq!(after[0]["status"], 401, "revoked key still accepted after 1 s: {}", after[0]);
}
