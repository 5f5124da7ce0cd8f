//! `tollgate up`: a ledger and an edge in one process, as the README's
//! first command runs them.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tollgate_chaos::cluster::{free_port, sibling_binary};
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;

use crate::sdk::*;

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
