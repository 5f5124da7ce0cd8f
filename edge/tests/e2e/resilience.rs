//! Caps shared by edges, an edge killed with settlements pending, an edge
//! cut off from the ledger, and fail-open admission: nothing charged twice
//! or lost.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sdk::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_strict_edges_share_one_cap_and_the_budget_runs_out_with_402() {
    let s = setup(&[]).await;
    let (key_a, secret_a) = s.principal("ops", "cat@corp.io").await;
    let (key_b, secret_b) = s.principal("ops", "dan@corp.io").await;
    // ~$0.05: each request reserves ~0.6 cents worst case, so the cap is hit mid-way.
    s.budget("team:ops", "0.05").await;
    let e1 = s.edge_with("edge1", &["--estimate", "strict"]);
    let e2 = s.edge_with("edge2", &["--estimate", "strict"]);
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
    // Holds: their replay is what this checks (`leases` checks leased settles).
    let mut edge = s.edge_with_holds("edge1");
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
    let edge = s.edge_with("edge1", &[]);
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
        // A hold per request: what is admitted without the ledger is then
        // the allowance alone (with leases, their room first: see `leases`).
        "version = 1\n[edge]\nleases = false\nfail_mode = \"open\"\nfail_open_allowance_usd = \"0.005\"\nadmission_timeout_ms = 1000\n",
    )
    .unwrap();
    let edge = s.edge_with("edge1", &["--config", cfg.to_str().unwrap()]);
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
