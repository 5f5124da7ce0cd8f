//! End-to-end through real processes: 3 `tollgate ledger` nodes, one or two
//! `tollgate edge` processes, the `mock-upstream` binary, and the official
//! `anthropic` and `openai` Python SDKs (installed by ./test.sh into a venv
//! under target/) as the clients. Charges are checked against the mock's
//! ground-truth log to the nano-dollar, with prices written out here
//! independently of the edge's own table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_chaos::cluster::{free_port, sibling_binary, EdgeProc, LedgerCluster, MockProc};
use tollgate_chaos::mock::TruthRecord;
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

mod common;

const UPSTREAM_KEY: &str = "sk-upstream-test";

/// The Python with the SDKs: $TOLLGATE_PYTHON (set by ./test.sh), else the
/// venv ./test.sh makes under target/.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "the Python SDKs are not installed: run ./test.sh (it makes the venv target/pyenv) or set TOLLGATE_PYTHON"
    );
    venv
}

/// Runs the SDK driver with `plan`; returns what each step saw.
async fn sdk(plan: Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/sdk_calls.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting python");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the SDK driver timed out")
        .expect("the SDK driver failed to run");
    assert!(out.status.success(), "sdk_calls.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad driver output ({e}): {:?}", out.stdout))
}

/// The cost of a ground-truth response, at the checker's independent
/// prices; a model without a test price is a mistake in the test.
fn truth_cost(r: &TruthRecord) -> u64 {
    assert!(tollgate_chaos::checker::rates(&r.model).is_some(), "no test price for {}", r.model);
    tollgate_chaos::checker::truth_cost(r)
}

/// The `mock-upstream` binary, accepting only [`UPSTREAM_KEY`].
fn mock(dir: &Path, extra: &[&str]) -> MockProc {
    MockProc::start(Path::new(env!("CARGO_BIN_EXE_mock-upstream")), dir, Some(UPSTREAM_KEY), true, extra).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    cluster: LedgerCluster,
    admin: AdminClient,
    mock: MockProc,
}

async fn setup(mock_flags: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let bin = sibling_binary().unwrap();
    let cluster = LedgerCluster::start(&bin, &path, 3).unwrap();
    let admin = cluster.admin(Duration::from_secs(30)).await.unwrap();
    let mock = mock(&path, mock_flags);
    Setup { _dir: dir, dir: path, cluster, admin, mock }
}

impl Setup {
    /// An edge over mutual TLS to the ledger, with its own certificate.
    fn edge(&self, name: &str, extra: &[&str]) -> EdgeProc {
        let mut flags = self.cluster.tls_flags(&Role::Edge(name.into())).unwrap();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        EdgeProc::start(&sibling_binary().unwrap(), &self.dir, name, &self.cluster.servers(), &self.mock.url(), &flags)
            .unwrap()
    }

    /// Creates team, user and key; returns (key id, secret).
    async fn principal(&self, team: &str, user: &str) -> (String, String) {
        let a = &self.admin;
        let _ =
            a.call(pb::CreateTeamRequest { name: team.into() }, |mut c, r| async move { c.create_team(r).await }).await;
        a.call(pb::CreateUserRequest { email: user.into(), team: team.into() }, |mut c, r| async move {
            c.create_user(r).await
        })
        .await
        .unwrap();
        let k = a
            .call(pb::CreateKeyRequest { user: user.into(), name: "e2e".into() }, |mut c, r| async move {
                c.create_key(r).await
            })
            .await
            .unwrap();
        (k.id, k.secret)
    }

    async fn budget(&self, scope: &str, usd: &str) {
        common::set_budget(&self.admin, scope, usd).await;
    }

    async fn usage(&self, by: &str) -> Vec<pb::UsageRow> {
        let req = pb::UsageRequest { by: by.into() };
        self.admin.call(req, |mut c, r| async move { c.usage(r).await }).await.unwrap().rows
    }

    async fn row(&self, by: &str, scope: &str) -> pb::UsageRow {
        self.usage(by).await.into_iter().find(|r| r.scope == scope).unwrap_or_default()
    }

    /// Waits (bounded) until `scope` counts `requests` admissions and holds
    /// nothing (every hold settled or released).
    async fn settled(&self, by: &str, scope: &str, requests: u64) -> pb::UsageRow {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = self.row(by, scope).await;
            if row.requests >= requests && row.held_nano_usd == 0 {
                return row;
            }
            assert!(Instant::now() < deadline, "{scope}: {row:?} never reached {requests} settled requests");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn base(e: &EdgeProc) -> String {
    format!("http://{}", e.addr)
}

fn ok_steps(results: &[Value]) -> usize {
    results.iter().filter(|r| r["ok"] == true).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_calls_are_metered_to_the_nano_dollar() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "ann@corp.io").await;
    s.budget("team:eng", "1000").await;
    let edge = s.edge("edge1", &[]);
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
    assert!(metrics.contains("tollgate_admissions_total{result=\"granted\"} 10"), "{metrics}");
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
    let edge = s.edge("edge1", &[]);
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
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

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
    let edge = s.edge("edge1", &["--config", cfg.to_str().unwrap()]);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_strict_edges_share_one_cap_and_the_budget_runs_out_with_402() {
    let s = setup(&[]).await;
    let (key_a, secret_a) = s.principal("ops", "cat@corp.io").await;
    let (key_b, secret_b) = s.principal("ops", "dan@corp.io").await;
    // ~$0.05: each request reserves ~0.6 cents worst case, so the cap is hit mid-way.
    s.budget("team:ops", "0.05").await;
    let e1 = s.edge("edge1", &["--estimate", "strict"]);
    let e2 = s.edge("edge2", &["--estimate", "strict"]);
    e1.wait_ready(Duration::from_secs(30)).await.unwrap();
    e2.wait_ready(Duration::from_secs(30)).await.unwrap();

    let steps = |n: usize, openai: bool| -> Value {
        (0..n)
            .map(|i| {
                let stream = i % 3 == 0;
                if openai && i % 2 == 1 {
                    json!({"kind": "openai", "stream": stream, "model": "gpt-4o", "max_tokens": 200})
                } else {
                    json!({"kind": "anthropic", "stream": stream, "model": "claude-sonnet-4-5", "max_tokens": 200})
                }
            })
            .collect()
    };
    let plan_a = json!({"base_url": base(&e1), "key": secret_a, "parallel": 4, "steps": steps(40, false)});
    let plan_b = json!({"base_url": base(&e2), "key": secret_b, "parallel": 4, "steps": steps(40, true)});
    let (ra, rb) = tokio::join!(sdk(plan_a), sdk(plan_b));
    let all: Vec<&Value> = ra.iter().chain(rb.iter()).collect();
    let ok = all.iter().filter(|r| r["ok"] == true).count();
    let denied: Vec<&&Value> = all.iter().filter(|r| r["status"] == 402).collect();
    assert!(ok >= 5, "some requests should fit the budget: {ok}");
    assert!(denied.len() >= 10, "the budget should run out: {} denied of {}", denied.len(), all.len());
    assert_eq!(ok + denied.len(), all.len(), "only successes and denials: {all:?}");
    for d in &denied {
        let m = d["message"].as_str().unwrap();
        assert!(m.contains("team:ops") && m.contains("$0.05 limit") && m.contains("resets at"), "{m}");
        match d["error_type"].as_str() {
            Some("billing_error") => {}
            Some("insufficient_quota") => assert_eq!(d["error_code"], "budget_exceeded"),
            other => panic!("402 of unexpected type {other:?}: {d}"),
        }
    }
    assert_eq!(ok_steps(&ra) + ok_steps(&rb), ok);

    let a = s.settled("key", &format!("key:{key_a}"), ok_steps(&ra) as u64).await;
    let b = s.settled("key", &format!("key:{key_b}"), ok_steps(&rb) as u64).await;
    let truth = s.mock.truth();
    assert_eq!(truth.len(), ok, "every admitted request reached the upstream once");
    let want: u64 = truth.iter().map(truth_cost).sum();
    assert_eq!(a.spent_nano_usd + b.spent_nano_usd, want, "charged vs ground truth");
    let team = s.row("team", "team:ops").await;
    assert_eq!(team.spent_nano_usd, want);
    assert!(team.spent_nano_usd <= 50_000_000, "strict mode overspent: {}", team.spent_nano_usd);
    assert_eq!(team.held_nano_usd, 0);

    // Whichever requests happened to be denied above, a budget with no room
    // left refuses both API shapes, each in its own 402.
    s.budget("team:ops", "0.000001").await;
    let last = json!([
        {"kind": "openai", "model": "gpt-4o", "max_tokens": 20},
        {"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 20},
    ]);
    let r = sdk(json!({"base_url": base(&e2), "key": secret_b, "steps": last})).await;
    assert_eq!(
        (r[0]["status"].as_u64(), r[0]["error_type"].as_str()),
        (Some(402), Some("insufficient_quota")),
        "{}",
        r[0]
    );
    assert_eq!(r[0]["error_code"], "budget_exceeded");
    assert_eq!((r[1]["status"].as_u64(), r[1]["error_type"].as_str()), (Some(402), Some("billing_error")), "{}", r[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_killed_with_settlements_pending_replays_its_outbox_once() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "fay@corp.io").await;
    s.budget("team:eng", "1000").await;
    let mut edge = s.edge("edge1", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    // Warm-up, so the edge holds open connections to the ledger.
    let warm = json!([{"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 10}]);
    assert_eq!(ok_steps(&sdk(json!({"base_url": base(&edge), "key": secret, "steps": warm})).await), 1);

    // Eight requests are admitted, then the ledger freezes (SIGSTOP) while
    // the upstream answers: the settlements land in the outbox and cannot
    // be sent. The edge is then killed with SIGKILL.
    let steps: Value = (0..8)
        .map(|i| {
            json!({"kind": "anthropic", "stream": i % 2 == 0, "model": "claude-sonnet-4-5", "max_tokens": 25,
                   "headers": {"x-mock-latency-ms": "3000"}})
        })
        .collect();
    let plan = json!({"base_url": base(&edge), "key": secret, "parallel": 8, "steps": steps});
    let calls = tokio::spawn(sdk(plan));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&edge.addr, "/metrics").await.contains("tollgate_admissions_total{result=\"granted\"} 9") {
        assert!(Instant::now() < deadline, "the eight requests were not admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pids: Vec<String> = (1..=3).filter_map(|i| s.cluster.pid(i)).map(|p| p.to_string()).collect();
    assert!(Command::new("kill").arg("-STOP").args(&pids).status().unwrap().success());
    let results = calls.await.unwrap();
    assert_eq!(ok_steps(&results), 8, "{results:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.kill9();
    assert!(Command::new("kill").arg("-CONT").args(&pids).status().unwrap().success());

    // Nothing was settled before the kill: the eight holds are still active.
    let before = s.row("key", &format!("key:{key_id}")).await;
    assert_eq!(before.requests, 9, "{before:?}");
    assert!(before.held_nano_usd > 0, "{before:?}");
    let warm_cost = before.spent_nano_usd;

    // The restarted edge replays its outbox: each request charged once.
    edge.spawn().unwrap();
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let row = s.settled("key", &format!("key:{key_id}"), 9).await;
    let truth = s.mock.truth();
    assert_eq!(truth.len(), 9);
    let want: u64 = truth.iter().map(truth_cost).sum();
    assert_eq!(row.requests, 9);
    assert_eq!(row.spent_nano_usd, want, "charged vs ground truth after replay");
    assert!(want > warm_cost);
    assert_eq!((row.held_nano_usd, row.unsettled_nano_usd), (0, 0));
    // Replaying again (another restart) changes nothing.
    edge.kill9();
    edge.spawn().unwrap();
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = s.row("key", &format!("key:{key_id}")).await;
    assert_eq!((again.requests, again.spent_nano_usd), (9, want));

    // Graceful shutdown exits 0 and leaves an empty outbox.
    assert_eq!(edge.terminate(Duration::from_secs(40)), Some(0));
}

/// `/readyz` says whether the edge's config copy is current: when every
/// ledger node freezes (connections stay open, nothing answers), it turns
/// 503 within the staleness bound, and 200 again once the ledger is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cut_off_from_the_ledger_is_not_ready_until_it_is_back() {
    let s = setup(&[]).await;
    let edge = s.edge("edge1", &[]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    // Ready, and it stays ready on an idle but healthy cluster.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = http_get(&edge.addr, "/readyz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    let pids: Vec<String> = (1..=3).filter_map(|i| s.cluster.pid(i)).map(|p| p.to_string()).collect();
    assert!(Command::new("kill").arg("-STOP").args(&pids).status().unwrap().success());
    let frozen = Instant::now();
    let not_ready = loop {
        let r = http_get(&edge.addr, "/readyz").await;
        if r.starts_with("HTTP/1.1 503") || frozen.elapsed() > Duration::from_secs(15) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = frozen.elapsed();
    assert!(Command::new("kill").arg("-CONT").args(&pids).status().unwrap().success());
    assert!(not_ready.starts_with("HTTP/1.1 503"), "still ready 15 s after the ledger froze: {not_ready}");
    eprintln!("not ready {} ms after the ledger froze", took.as_millis());
    // The bound is 3 s of silence; allow for the last heartbeat's age.
    assert!(took < Duration::from_secs(6), "{took:?}");

    let thawed = Instant::now();
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    eprintln!("ready again {} ms after the ledger thawed", thawed.elapsed().as_millis());

    // Two of three nodes gone: the survivor still answers and sends its
    // config, but once it notices the leader is gone (an election timeout
    // or two) it cannot vouch for it. The edge turns not ready and stays so:
    // within 15 s, /readyz says 503 for 5 s in a row.
    let mut s = s;
    s.cluster.kill9(1);
    s.cluster.kill9(2);
    let killed = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        let r = http_get(&edge.addr, "/readyz").await;
        if r.starts_with("HTTP/1.1 503") {
            let t = *since.get_or_insert_with(Instant::now);
            if t.elapsed() >= Duration::from_secs(5) {
                break;
            }
        } else {
            since = None;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "not steadily unready 20 s after losing the quorum (503 since {since:?}): {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("steadily not ready from {} ms after losing the quorum", (since.unwrap() - killed).as_millis());
}

/// `fail_mode = open`: with every ledger node frozen, the edge admits
/// requests up to its allowance ($0.005: three reservations of about
/// $0.0016 fit, a fourth does not) and refuses the rest with a 503 naming
/// the allowance; once those finish, their actual cost (not the
/// reservation) counts, so another is admitted. When the ledger is back,
/// the outbox charges each admitted request exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_admits_up_to_its_allowance_and_charges_once_the_ledger_is_back() {
    let s = setup(&[]).await;
    let (key_id, secret) = s.principal("eng", "olga@corp.io").await;
    s.budget("team:eng", "1000").await;
    let cfg = s.dir.join("edge.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[edge]\nfail_mode = \"open\"\nfail_open_allowance_usd = \"0.005\"\nadmission_timeout_ms = 1000\n",
    )
    .unwrap();
    let edge = s.edge("edge1", &["--config", cfg.to_str().unwrap()]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let call = |headers: Value| json!({"kind": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 100, "headers": headers});
    let warm = sdk(json!({"base_url": base(&edge), "key": secret, "steps": [call(json!({}))]})).await;
    assert_eq!(ok_steps(&warm), 1, "{warm:?}");

    let pids: Vec<String> = (1..=3).filter_map(|i| s.cluster.pid(i)).map(|p| p.to_string()).collect();
    assert!(Command::new("kill").arg("-STOP").args(&pids).status().unwrap().success());
    let steps: Vec<Value> = (0..6).map(|_| call(json!({"x-mock-latency-ms": "1500"}))).collect();
    let results = sdk(json!({"base_url": base(&edge), "key": secret, "parallel": 6, "steps": steps})).await;
    let refused: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert_eq!(ok_steps(&results), 3, "{results:?}");
    for r in &refused {
        assert_eq!(r["status"], 503, "{r}");
        let m = r["message"].as_str().unwrap_or_default();
        assert!(m.contains("fail-open allowance ($0.005)"), "{m}");
    }
    // The three finished: only their cost is outstanding now.
    let more = sdk(json!({"base_url": base(&edge), "key": secret, "steps": [call(json!({}))]})).await;
    assert_eq!(ok_steps(&more), 1, "{more:?}");
    let m = http_get(&edge.addr, "/metrics").await;
    assert!(m.contains("tollgate_admissions_total{result=\"fail_open\"} 4"), "{m}");
    assert!(!m.contains("\ntollgate_fail_open_outstanding_nano_usd 0\n"), "{m}");
    assert!(Command::new("kill").arg("-CONT").args(&pids).status().unwrap().success());

    // Back: every admitted request charged once, at the ground truth.
    let row = s.settled("key", &format!("key:{key_id}"), 5).await;
    let truth = s.mock.truth();
    assert_eq!(truth.len(), 5, "the mock saw the warm-up and the four admitted requests");
    let want: u64 = truth.iter().map(truth_cost).sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut row = row;
    while row.spent_nano_usd != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        row = s.row("key", &format!("key:{key_id}")).await;
    }
    assert_eq!((row.spent_nano_usd, row.held_nano_usd, row.unsettled_nano_usd), (want, 0, 0), "{row:?}");
    // Reserves that sat in the frozen ledger's sockets may land after it
    // resumes: those of the refused requests are then released by the edge
    // (counted, never charged); those of the admitted ones are settled by
    // their charge, once.
    assert!((5..=8).contains(&row.requests), "{row:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = http_get(&edge.addr, "/metrics").await;
        if m.contains("\ntollgate_fail_open_outstanding_nano_usd 0\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the allowance was never given back: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_is_charged_what_is_known_and_a_hung_upstream_times_out() {
    let s = setup(&["--event-delay-ms", "40"]).await;
    let (key_id, secret) = s.principal("eng", "gus@corp.io").await;
    s.budget("team:eng", "1000").await;
    let cfg = s.dir.join("edge.toml");
    std::fs::write(&cfg, "version = 1\n[edge]\nupstream_timeout_secs = 2\n").unwrap();
    let edge = s.edge("edge1", &["--config", cfg.to_str().unwrap()]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();

    let h = json!({"x-api-key": secret, "anthropic-version": "2023-06-01", "content-type": "application/json"});
    let mut slow = h.clone();
    slow["x-mock-latency-ms"] = json!("6000");
    let body = |stream: bool| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 200, "stream": stream,
               "messages": [{"role": "user", "content": "tell me a long story"}]})
        .to_string()
    };
    let steps = json!([
        {"kind": "raw", "path": "/v1/messages", "headers": h, "body": body(true), "read_bytes": 1200},
        {"kind": "raw", "path": "/v1/messages", "headers": slow, "body": body(false)},
    ]);
    let started = Instant::now();
    let r = sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})).await;
    assert_eq!(r[0]["status"], 200);
    assert!(r[0]["text"].as_str().unwrap().starts_with("event: message_start"), "{}", r[0]);
    assert_eq!(r[1]["status"], 504, "{}", r[1]);
    assert_eq!(r[1]["json"]["error"]["type"], "timeout_error");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Both holds end: the cut stream is settled (estimated), the timed-out
    // request released.
    let row = s.settled("key", &format!("key:{key_id}"), 2).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let cut = loop {
        if let Some(t) = s.mock.truth().into_iter().find(|t| t.stream) {
            break t;
        }
        assert!(Instant::now() < deadline, "the mock never logged the cut stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!cut.completed, "{cut:?}");
    assert!(row.spent_nano_usd >= truth_cost(&cut), "charged {} < reported {}", row.spent_nano_usd, truth_cost(&cut));
    let ceiling = cut.usage.input_tokens * 3_000 + 200 * 15_000;
    assert!(row.spent_nano_usd <= ceiling, "charged {} > input + max_tokens {}", row.spent_nano_usd, ceiling);
    assert_eq!(row.unsettled_nano_usd, 0);
    let metrics = http_get(&edge.addr, "/metrics").await;
    assert!(metrics.contains("tollgate_open_streams 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tollgate_up_runs_a_ledger_and_an_edge_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let mock = mock(dir.path(), &[]);
    let (http, grpc) = (format!("127.0.0.1:{}", free_port().unwrap()), format!("127.0.0.1:{}", free_port().unwrap()));
    let out = dir.path().join("up.out");
    let start = || {
        Command::new(sibling_binary().unwrap())
            .args(["up", "--listen", &http, "--grpc", &grpc])
            .args(["--upstream-anthropic", &mock.url(), "--upstream-openai", &mock.url()])
            .current_dir(dir.path())
            .env("ANTHROPIC_API_KEY", UPSTREAM_KEY)
            .env("OPENAI_API_KEY", UPSTREAM_KEY)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("up.err")).unwrap())
            .spawn()
            .unwrap()
    };
    let wait_up = |out: &Path| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(out).unwrap_or_default();
            if text.contains("Point Claude Code at it") {
                return text;
            }
            assert!(Instant::now() < deadline, "tollgate up printed no onboarding: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut up = start();
    let text = wait_up(&out);
    let token_path = dir.path().join("tollgate-data/admin.token");
    assert!(text.contains("admin token:     written to ./tollgate-data/admin.token"), "{text}");
    assert!(text.contains(&format!("ANTHROPIC_BASE_URL=http://{http}")), "{text}");
    assert!(text.contains("key create --user"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);

    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();
    let admin = AdminClient::new(std::slice::from_ref(&grpc), Some(token), None).unwrap();
    admin
        .call(pb::CreateTeamRequest { name: "eng".into() }, |mut c, r| async move { c.create_team(r).await })
        .await
        .unwrap();
    let u = pb::CreateUserRequest { email: "ann@corp.io".into(), team: "eng".into() };
    admin.call(u, |mut c, r| async move { c.create_user(r).await }).await.unwrap();
    let k = pb::CreateKeyRequest { user: "ann@corp.io".into(), name: "laptop".into() };
    let key = admin.call(k, |mut c, r| async move { c.create_key(r).await }).await.unwrap();
    let steps = json!([
        {"kind": "anthropic", "stream": true, "model": "claude-sonnet-4-5", "max_tokens": 30},
        {"kind": "openai", "model": "gpt-4o", "max_tokens": 30},
    ]);
    // The key reaches the edge through the config watch within moments.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = sdk(json!({"base_url": format!("http://{http}"), "key": key.secret, "steps": steps.clone()})).await;
        if ok_steps(&r) == 2 || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(ok_steps(&r), 2, "{r:?}");
    // A single-node ledger is its own quorum: the edge stays ready when idle
    // past the config watch's staleness bound.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = http_get(&http, "/readyz").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The embedded ledger's metrics are on the edge's /metrics.
    let m = http_get(&http, "/metrics").await;
    assert!(m.contains("\ntollgate_raft_is_leader 1\n"), "{m}");
    let settled = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_ledger_commands_total{outcome=\"settled\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(settled >= Some(2), "settled {settled:?}: {m}");
    let usage = |admin: AdminClient| async move {
        let req = pb::UsageRequest { by: "user".into() };
        let rows = admin.call(req, |mut c, r| async move { c.usage(r).await }).await.unwrap().rows;
        rows.into_iter().find(|r| r.scope == "user:ann@corp.io").unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let want: u64 = loop {
        let truth = mock.truth();
        let row = usage(admin.clone()).await;
        if truth.len() == 2 && row.held_nano_usd == 0 && row.requests == 2 {
            let want = truth.iter().map(truth_cost).sum();
            assert_eq!(row.spent_nano_usd, want);
            break want;
        }
        assert!(Instant::now() < deadline, "not settled: {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // SIGTERM: a graceful exit; a restart keeps the data and the token.
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = up.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "tollgate up did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut up = start();
    let text = wait_up(&out);
    assert!(!text.contains("admin token:     written"), "not a first start: {text}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = pb::UsageRequest { by: "user".into() };
        if let Ok(resp) = admin.call(req, |mut c, r| async move { c.usage(r).await }).await {
            let row = resp.rows.into_iter().find(|r| r.scope == "user:ann@corp.io").unwrap_or_default();
            assert_eq!(row.spent_nano_usd, want, "spend survives a restart");
            break;
        }
        assert!(Instant::now() < deadline, "the restarted ledger never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = up.kill();
    let _ = up.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_its_hold_ttl_extends_its_hold() {
    // ~14 events 300 ms apart: a ~4 s stream against a 2 s hold ttl.
    let s = setup(&["--event-delay-ms", "300"]).await;
    let (key_id, secret) = s.principal("eng", "hal@corp.io").await;
    s.budget("team:eng", "1000").await;
    let cfg = s.dir.join("edge.toml");
    std::fs::write(&cfg, "version = 1\n[edge]\nhold_ttl_secs = 2\n").unwrap();
    let edge = s.edge("edge1", &["--config", cfg.to_str().unwrap()]);
    edge.wait_ready(Duration::from_secs(30)).await.unwrap();
    let steps = json!([{"kind": "anthropic", "stream": true, "model": "claude-sonnet-4-5", "max_tokens": 40}]);
    let call = tokio::spawn(sdk(json!({"base_url": base(&edge), "key": secret, "steps": steps})));
    // Wait until the stream is open, then past the original ttl.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&edge.addr, "/metrics").await.contains("tollgate_open_streams 1") {
        assert!(Instant::now() < deadline, "the stream never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_800)).await;
    let mid = s.row("key", &format!("key:{key_id}")).await;
    assert!(mid.held_nano_usd > 0 && mid.unsettled_nano_usd == 0, "the hold expired mid-stream: {mid:?}");
    let r = call.await.unwrap();
    assert_eq!(ok_steps(&r), 1, "{r:?}");
    let row = s.settled("key", &format!("key:{key_id}"), 1).await;
    let truth = s.mock.truth();
    assert_eq!(truth.len(), 1);
    assert!(truth[0].completed);
    assert_eq!((row.spent_nano_usd, row.unsettled_nano_usd), (truth_cost(&truth[0]), 0));
}
