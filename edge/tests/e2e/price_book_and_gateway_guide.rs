//! The price book as operator data, reservations sized so caps mean
//! something, and Claude Code's LLM gateway guide point by point, through
//! real processes: a one-node ledger over mutual TLS, `tollgate edge`
//! processes, the `tollgate admin` CLI as an operator runs it, and the
//! `mock-upstream` binary as the provider. Every charge is checked against
//! the mock's ground truth at prices written out here by hand.

use crate::harness::*;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_proto::v1 as pb;

/// Nano-USD per token of `usd_per_mtok` dollars per million tokens.
fn nano(usd_per_mtok: f64) -> u64 {
    (usd_per_mtok * 1000.0).round() as u64
}

/// What the edge's `estimate` mode takes the input of `body` to be.
fn input_estimate(body: &str) -> u64 {
    (body.chars().count() as u64 * 2).div_ceil(7)
}

fn claude_code_turn(model: &str, max_tokens: u64) -> String {
    json!({
        "model": model,
        "max_tokens": max_tokens,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{"role": "user", "content": "say hi"}],
    })
    .to_string()
}

/// The truth record whose response id the reply carries.
fn truth_of(s: &Setup, reply: &Reply) -> tollgate_chaos::mock::TruthRecord {
    let id = reply.json()["id"].as_str().unwrap().to_string();
    s.mock.truth().into_iter().find(|t| t.id == id).unwrap()
}

// ------------------------------------------------------------- price book

/// `tollgate admin price set` and `price discount` are ledger entries:
/// both edges price the next request at the new figures (checked by hand
/// against the mock's usage), `price list` shows them, and the audit names
/// the operator's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_overrides_and_the_discount_reach_every_edge_and_are_audited() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "ann@corp.io").await;
    s.budget("team:eng", "100").await;
    let edges = [s.edge("e1", "", &[]), s.edge("e2", "", &[])];
    for e in &edges {
        e.wait_ready(Duration::from_secs(30)).await.unwrap();
    }
    let out =
        s.admin_ok(&["price", "set", "claude-opus-5-5", "--input-usd-per-mtok", "2", "--output-usd-per-mtok", "10"]);
    let index = printed_index(&out);
    let h = anthropic(&secret);
    let body = claude_code_turn("claude-opus-5-5", 2000);
    let mut spent = 0;
    for e in &edges {
        config_at_least(&e.addr, index).await;
        let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "300")]), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let u = truth_of(&s, &r).usage;
        // $2 / $10 per MTok: 2,000 and 10,000 nano-USD a token.
        spent += u.input_tokens * 2_000 + u.output_tokens * 10_000;
    }
    let row = s.settled("user", "user:ann@corp.io", 2).await;
    assert_eq!(row.spent_nano_usd, spent);

    // 10% off every cost, on both edges.
    let index = printed_index(&s.admin_ok(&["price", "discount", "10"]));
    for e in &edges {
        config_at_least(&e.addr, index).await;
        let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "300")]), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let u = truth_of(&s, &r).usage;
        spent += (u.input_tokens * 2_000 + u.output_tokens * 10_000) * 9 / 10;
    }
    assert_eq!(s.settled("user", "user:ann@corp.io", 4).await.spent_nano_usd, spent);

    let list: Value = serde_json::from_str(&s.admin_ok(&["price", "list", "--json"])).unwrap();
    assert_eq!(list["discount_bp"], 1000);
    let opus = list["models"].as_array().unwrap().iter().find(|m| m["id"] == "claude-opus-5-5").unwrap();
    assert_eq!(
        (&opus["input_usd_per_mtok"], &opus["output_usd_per_mtok"], &opus["cache_read_usd_per_mtok"]),
        (&json!("2"), &json!("10"), &json!("0.1")),
        "cache rates keep the list ratios"
    );
    assert_eq!(opus["overridden"], true);
    let audit: Value = serde_json::from_str(&s.admin_ok(&["audit", "--json"])).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let set = entries.iter().find(|e| e["what"] == "set prices: claude-opus-5-5 in $2 out $10").unwrap();
    assert_eq!(set["actor"], "admin:ops");
    assert!(entries.iter().any(|e| e["what"] == "set discount 10.00%" && e["actor"] == "admin:ops"));

    // Removed, the list price is back.
    let index = printed_index(&s.admin_ok(&["price", "remove", "claude-opus-5-5"]));
    let list: Value = serde_json::from_str(&s.admin_ok(&["price", "list", "--json"])).unwrap();
    let opus = list["models"].as_array().unwrap().iter().find(|m| m["id"] == "claude-opus-5-5").unwrap();
    assert_eq!((&opus["input_usd_per_mtok"], &opus["overridden"]), (&json!("4"), &json!(false)));
    assert!(list["index"].as_u64().unwrap() >= index);
}

/// An unlisted model is a 400 that names the command which prices it and
/// says a retry will not help; once `price import` loads it from a LiteLLM
/// price file (its other providers' entries skipped), it is admitted and
/// charged the imported price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_model_is_refused_naming_the_command_until_an_import_prices_it() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "bob@corp.io").await;
    s.budget("team:eng", "100").await;
    let e = s.edge("e1", "", &[]);
    e.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = anthropic(&secret);
    let body = claude_code_turn("acme-coder-1", 1000);
    let r = post(&e.addr, "/v1/messages", &h, body.clone()).await;
    let (status, kind, message) = r.error();
    assert_eq!((status, kind.as_str()), (400, "invalid_request_error"));
    assert!(message.contains("tollgate admin price set acme-coder-1"), "{message}");
    assert_eq!(r.header("x-should-retry"), Some("false"));

    let file = s.dir.join("model_prices_and_context_window.json");
    std::fs::write(
        &file,
        json!({
            "sample_spec": {"input_cost_per_token": 0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
            "acme-coder-1": {"input_cost_per_token": 1.5e-06, "output_cost_per_token": 7.5e-06,
                              "litellm_provider": "anthropic", "mode": "chat"},
            "vertex_ai/claude-x": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                                    "litellm_provider": "vertex_ai-anthropic_models", "mode": "chat"},
            "text-embedding-3-large": {"input_cost_per_token": 1.3e-07, "output_cost_per_token": 0,
                                        "litellm_provider": "openai", "mode": "embedding"},
        })
        .to_string(),
    )
    .unwrap();
    let dry = s.admin_ok(&["price", "import", file.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("would set acme-coder-1 in $1.5 out $7.5"), "{dry}");
    let out = s.admin_ok(&["price", "import", file.to_str().unwrap(), "--only-unlisted"]);
    assert!(out.contains("imported 1 prices"), "{out}");
    assert!(out.contains("2 entries skipped"), "{out}");
    config_at_least(&e.addr, printed_index(&out)).await;
    let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "40")]), body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = truth_of(&s, &r).usage;
    let row = s.settled("user", "user:bob@corp.io", 1).await;
    assert_eq!(row.spent_nano_usd, u.input_tokens * 1_500 + u.output_tokens * 7_500);
}

// ------------------------------------------------------ reservation sizing

/// `estimate` mode reserves the seed (8,192 output tokens) until it has
/// seen 8 outputs of this user and model, then their 95th percentile (at
/// least the 1,024-token floor), not Claude Code's 32K `max_tokens`. A
/// request that writes more than was reserved is charged in full and the
/// difference shows as excess in `usage`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimate_reservations_follow_recent_output_and_excess_shows_in_usage() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "cat@corp.io").await;
    s.budget("user:cat@corp.io", "5").await;
    let e = s.edge("e1", "", &[]);
    e.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = anthropic(&secret);
    let body = claude_code_turn("claude-opus-5-5", 32_000);
    let input = input_estimate(&body) * nano(4.0);
    let reserved = |r: &Reply| r.header("x-tollgate-reserved-nano-usd").unwrap().parse::<u64>().unwrap();
    let mut excess = 0;
    let mut charge = |r: &Reply, reserved: u64| {
        let u = truth_of(&s, r).usage;
        let cost = u.input_tokens * nano(4.0) + u.output_tokens * nano(20.0);
        excess += cost.saturating_sub(reserved);
    };
    for n in 0..8 {
        let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "200")]), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(reserved(&r), input + 8_192 * nano(20.0), "request {n}: the seed");
        charge(&r, reserved(&r));
    }
    let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "5000")]), body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(reserved(&r), input + 1_024 * nano(20.0), "outputs of 200 tokens: the floor");
    assert_eq!(r.json()["usage"]["output_tokens"], 5000);
    charge(&r, reserved(&r));
    assert!(excess > 0);
    let row = s.settled("user", "user:cat@corp.io", 9).await;
    assert_eq!(row.excess_nano_usd, excess);
    let budget = s.settled("", "user:cat@corp.io", 9).await;
    assert_eq!(budget.spent_nano_usd, row.spent_nano_usd);
    // The 5,000-token answer joined the window: 1 of 9 is above the 95th
    // percentile's rank (9), so the next reservation is 5,000 tokens.
    let r = post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-output-tokens", "10")]), body.clone()).await;
    assert_eq!(reserved(&r), input + 5_000 * nano(20.0));
}

/// With `clamp_max_tokens`, a request whose reservation does not fit a
/// hard budget's room is forwarded with `max_tokens` lowered to what the
/// room pays for (the provider then stops with `stop_reason:
/// "max_tokens"`), never below a thinking budget; without it, a 402.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clamp_max_tokens_lowers_the_limit_to_what_a_hard_budget_has_room_for() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "dan@corp.io").await;
    s.budget("user:dan@corp.io", "0.3").await;
    let plain = s.edge("plain", "", &["--estimate", "strict"]);
    let clamp = s.edge("clamp", "clamp_max_tokens = true", &["--estimate", "strict"]);
    for e in [&plain, &clamp] {
        e.wait_ready(Duration::from_secs(30)).await.unwrap();
    }
    let h = with(&anthropic(&secret), &[("x-mock-output-tokens", "100000")]);
    let body = claude_code_turn("claude-opus-5-5", 32_000);
    let r = post(&plain.addr, "/v1/messages", &h, body.clone()).await;
    assert_eq!(r.status, 402, "{}", r.body);

    // Strict: every body byte at the dearest input rate ($8, a 1-hour
    // write), the output at $20, all at the US-only 1.1x: the largest
    // max_tokens whose worst case fits $0.30 (in pico-USD, rounded half up).
    let fits = |n: u64| ((body.len() as u64 * 8_000_000 + n * 20_000_000) * 110 + 50_000) / 100_000 <= 300_000_000;
    let want = (1..32_000).rev().find(|n| fits(*n)).unwrap();
    let r = post(&clamp.addr, "/v1/messages", &h, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-tollgate-max-tokens-clamped"), Some(want.to_string().as_str()));
    let v = r.json();
    assert_eq!((v["stop_reason"].as_str(), v["usage"]["output_tokens"].as_u64()), (Some("max_tokens"), Some(want)));
    // Only max_tokens changed on the way up.
    let sent = body.replace("32000", &want.to_string());
    assert_eq!(r.header("x-mock-body-bytes"), Some(sent.len().to_string().as_str()));
    let row = s.settled("", "user:dan@corp.io", 1).await;
    assert!(row.spent_nano_usd <= 300_000_000, "{row:?}");

    // A thinking budget above what the room pays for: a 402, not a request
    // the provider would refuse.
    let thinking = json!({
        "model": "claude-opus-5-5", "max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 20000},
        "messages": [{"role": "user", "content": "think"}],
    })
    .to_string();
    let r = post(&clamp.addr, "/v1/messages", &h, thinking).await;
    assert_eq!(r.status, 402, "{}", r.body);
}

// ------------------------------------------- Claude Code's gateway guide

/// Attribution: `x-claude-code-session-id`, `-agent-id`,
/// `-parent-agent-id`, `-request-class` and `-prompt-id` are recorded on
/// each settle, and `tollgate admin usage --by session|agent|request-class`
/// splits spend by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_headers_are_attributed_per_session_agent_and_request_class() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "eve@corp.io").await;
    s.budget("team:eng", "100").await;
    let e = s.edge("e1", "", &[]);
    e.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = anthropic(&secret);
    let body = claude_code_turn("claude-sonnet-4-5", 1000);
    let main = [
        ("x-claude-code-session-id", "sess-9"),
        ("x-claude-code-agent-id", "agent-main"),
        ("x-claude-code-request-class", "main"),
        ("x-claude-code-prompt-id", "prompt-1"),
    ];
    let sub = [
        ("x-claude-code-session-id", "sess-9"),
        ("x-claude-code-agent-id", "agent-sub"),
        ("x-claude-code-parent-agent-id", "agent-main"),
        ("x-claude-code-request-class", "subagent"),
        ("x-claude-code-prompt-id", "prompt-1"),
    ];
    let cost = |r: &Reply| {
        let u = truth_of(&s, r).usage;
        u.input_tokens * nano(3.0) + u.output_tokens * nano(15.0)
    };
    let a = post(&e.addr, "/v1/messages", &with(&h, &main), body.clone()).await;
    let b = post(&e.addr, "/v1/messages", &with(&h, &sub), body.clone()).await;
    let c = post(&e.addr, "/v1/messages", &with(&h, &sub), body.clone()).await;
    for r in [&a, &b, &c] {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    s.settled("user", "user:eve@corp.io", 3).await;
    let rows = |by: &str| -> Vec<Value> {
        let v: Value = serde_json::from_str(&s.admin_ok(&["usage", "--by", by, "--json"])).unwrap();
        v["rows"].as_array().unwrap().clone()
    };
    let session = rows("session");
    assert_eq!(session.len(), 1);
    assert_eq!(
        (&session[0]["scope"], &session[0]["spent_nano_usd"], &session[0]["requests"], &session[0]["user"]),
        (&json!("session:sess-9"), &json!(cost(&a) + cost(&b) + cost(&c)), &json!(3), &json!("eve@corp.io"))
    );
    let agents = rows("agent");
    let agent = |id: &str| agents.iter().find(|r| r["scope"] == format!("agent:{id}")).unwrap().clone();
    assert_eq!(agent("agent-main")["spent_nano_usd"], json!(cost(&a)));
    assert_eq!(agent("agent-main")["parent_agent"], Value::Null);
    assert_eq!(agent("agent-sub")["spent_nano_usd"], json!(cost(&b) + cost(&c)));
    assert_eq!(agent("agent-sub")["parent_agent"], "agent-main");
    let classes = rows("request-class");
    let class = |id: &str| classes.iter().find(|r| r["scope"] == format!("request-class:{id}")).unwrap().clone();
    assert_eq!((class("main")["requests"].as_u64(), class("subagent")["requests"].as_u64()), (Some(1), Some(2)));
    assert_eq!(rows("prompt")[0]["requests"], 3);
    let table = s.admin_ok(&["usage", "--by", "agent"]);
    assert!(table.lines().any(|l| l.starts_with("agent:agent-sub") && l.trim_end().ends_with("agent-main")), "{table}");
}

/// Anthropic requests go upstream byte for byte: the body (odd spacing,
/// key order, escapes) and every `anthropic-*` header as an open list,
/// values unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_requests_go_upstream_byte_for_byte() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "fay@corp.io").await;
    s.budget("team:eng", "100").await;
    let e = s.edge("e1", "", &[]);
    e.wait_ready(Duration::from_secs(30)).await.unwrap();
    let body = "{ \"messages\" : [ {\"role\":\"user\",\"content\":\"caf\\u00e9 \\ud83d\\ude00\"} ],\n\t\"max_tokens\":64 ,\"model\":\"claude-sonnet-4-5\",\"metadata\":{\"user_id\":\"u-1\"} }";
    let h = with(
        &anthropic(&secret),
        &[
            ("anthropic-beta", "interleaved-thinking-2025-05-14,context-1m-2025-08-07"),
            ("anthropic-future-feature", "on"),
        ],
    );
    let r = post(&e.addr, "/v1/messages", &h, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(r.header("x-mock-body-sha256"), Some(sha.as_str()));
    assert_eq!(r.header("x-mock-echo-anthropic-beta"), Some("interleaved-thinking-2025-05-14,context-1m-2025-08-07"));
    assert_eq!(r.header("x-mock-echo-anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("x-mock-echo-anthropic-future-feature"), Some("on"));
}

/// Retries: the provider's `retry-after`, `x-should-retry` and
/// `anthropic-ratelimit-unified-*` reach the client unchanged; the
/// gateway's own 429 and 503 carry `retry-after` in whole seconds; errors a
/// retry cannot fix (budget, policy, no credential) say `x-should-retry:
/// false`; `HEAD /api/hello` answers; `GET /v1/models?limit=1000` is
/// answered by the gateway within Claude Code's 3 s, never a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hello_and_model_discovery_follow_the_guide() {
    let s = setup(&[]).await;
    let secret = s.key("eng", "gus@corp.io").await;
    let policy = pb::SetPolicyRequest { scope: "team:eng".into(), allowed_models: vec!["claude-sonnet-4-5".into()] };
    s.admin.call(policy, |mut c, r| async move { c.set_policy(r).await }).await.unwrap();
    s.budget("team:eng", "0.001").await;
    let e = s.edge("e1", "max_concurrent_per_key = 1", &[]);
    e.wait_ready(Duration::from_secs(30)).await.unwrap();
    let h = anthropic(&secret);

    // The provider's 429, passed through.
    let r =
        post(&e.addr, "/v1/messages", &with(&h, &[("x-mock-error", "429")]), claude_code_turn("claude-sonnet-4-5", 1))
            .await;
    assert_eq!(r.status, 429);
    for (name, value) in [
        ("retry-after", "7"),
        ("x-should-retry", "true"),
        ("anthropic-ratelimit-unified-status", "rejected"),
        ("anthropic-ratelimit-unified-reset", "1798000000"),
    ] {
        assert_eq!(r.header(name), Some(value), "{name}");
    }
    // The budget: 402, not retryable.
    let r = post(&e.addr, "/v1/messages", &h, claude_code_turn("claude-sonnet-4-5", 32_000)).await;
    assert_eq!((r.status, r.header("x-should-retry")), (402, Some("false")), "{}", r.body);
    // The policy: 403, not retryable.
    let r = post(&e.addr, "/v1/messages", &h, claude_code_turn("claude-opus-5-5", 10)).await;
    assert_eq!((r.status, r.header("x-should-retry")), (403, Some("false")), "{}", r.body);
    // The gateway's own 429 (a second request of the key in flight).
    let (addr, key) = (e.addr.clone(), secret.clone());
    let first = tokio::spawn(async move {
        let slow = with(&anthropic(&key), &[("x-mock-latency-ms", "1500")]);
        post(&addr, "/v1/messages", &slow, claude_code_turn("claude-sonnet-4-5", 1)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(&e.addr, "/v1/messages", &h, claude_code_turn("claude-sonnet-4-5", 1)).await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")), "{}", r.body);
    first.await.unwrap();

    let mut conn = Conn::open(&e.addr).await;
    let hello = conn.call("HEAD", "/api/hello", &h, "").await;
    assert_eq!(hello.status, 200);
    let t = Instant::now();
    let models = conn.call("GET", "/v1/models?limit=1000", &h, "").await;
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(models.status, 200, "{}", models.body);
    assert_eq!(models.header("location"), None);
    let data = models.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1, "only what the policy allows: {data:?}");
    assert_eq!((&data[0]["id"], &data[0]["display_name"]), (&json!("claude-sonnet-4-5"), &json!("Claude Sonnet 4.5")));

    // No provider credential: said at start, and a 500 naming the variable.
    let bare = s.edge_to("bare", &s.mock.url(), &[("ANTHROPIC_API_KEY", "")], "", &[]);
    bare.wait_ready(Duration::from_secs(30)).await.unwrap();
    let r = post(&bare.addr, "/v1/messages", &h, claude_code_turn("claude-sonnet-4-5", 1)).await;
    let (status, _, message) = r.error();
    assert_eq!((status, r.header("x-should-retry")), (500, Some("false")));
    assert!(message.contains("ANTHROPIC_API_KEY"), "{message}");
    let log = std::fs::read_to_string(s.dir.join("bare.log")).unwrap_or_default();
    assert!(log.contains("no Anthropic credential"), "{log}");
}
