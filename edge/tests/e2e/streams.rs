//! Streams: a client that hangs up mid-stream, a hung upstream, and a
//! stream that outlives its hold's ttl.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::sdk::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_stream_is_charged_what_is_known_and_a_hung_upstream_times_out() {
    let s = setup(&["--event-delay-ms", "40"]).await;
    let (key_id, secret) = s.principal("eng", "gus@corp.io").await;
    s.budget("team:eng", "1000").await;
    let cfg = s.dir.join("edge.toml");
    std::fs::write(&cfg, "version = 1\n[edge]\nupstream_timeout_secs = 2\n").unwrap();
    let edge = s.edge_with("edge1", &["--config", cfg.to_str().unwrap()]);
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
async fn a_stream_longer_than_its_hold_ttl_extends_its_hold() {
    // ~14 events 300 ms apart: a ~4 s stream against a 2 s hold ttl.
    let s = setup(&["--event-delay-ms", "300"]).await;
    let (key_id, secret) = s.principal("eng", "hal@corp.io").await;
    s.budget("team:eng", "1000").await;
    let cfg = s.dir.join("edge.toml");
    std::fs::write(&cfg, "version = 1\n[edge]\nhold_ttl_secs = 2\n").unwrap();
    let edge = s.edge_with("edge1", &["--config", cfg.to_str().unwrap()]);
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
