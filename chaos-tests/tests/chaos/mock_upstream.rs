//! The mock upstream speaks the providers' wire formats exactly as the
//! metering depends on them, and its ground-truth log records what each
//! response billed. Each test sends real HTTP over loopback.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::{json, Value};
use tollgate_chaos::mock::{read_log, spawn, MockConfig, TruthUsage};

struct Mock {
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn mock() -> Mock {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("truth.jsonl");
    let cfg = MockConfig { log: Some(log.clone()), expect_key: Some("sk-upstream".into()), ..Default::default() };
    let addr = spawn("127.0.0.1:0".parse().unwrap(), cfg).await.unwrap();
    Mock { addr, log, _dir: dir }
}

/// One HTTP/1.1 request; returns status, content type and the whole body.
async fn send(m: &Mock, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(m.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "mock");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(bytes::Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

const KEY: (&str, &str) = ("x-api-key", "sk-upstream");

/// (event, data) pairs of an SSE body.
fn sse(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_string();
                }
            }
            (event, serde_json::from_str(&data).unwrap_or(Value::String(data)))
        })
        .collect()
}

#[tokio::test]
async fn anthropic_json_reports_cache_fields_and_logs_the_truth() {
    let m = mock().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
    let (status, ctype, resp) = send(
        &m,
        "POST",
        "/v1/messages?beta=true",
        &[KEY, ("x-mock-cache-read", "7"), ("x-mock-cache-write-1h", "3")],
        &body,
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let v: Value = serde_json::from_str(&resp).unwrap();
    let input = (body.len() as u64).div_ceil(4);
    assert_eq!(v["type"], "message");
    assert_eq!(v["usage"]["input_tokens"], input);
    assert_eq!(v["usage"]["output_tokens"], 20);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 3);
    assert_eq!(v["usage"]["cache_creation"]["ephemeral_1h_input_tokens"], 3);
    let log = read_log(&m.log).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].usage,
        TruthUsage {
            input_tokens: input,
            output_tokens: 20,
            cache_write_1h_tokens: 3,
            cache_read_tokens: 7,
            ..Default::default()
        }
    );
    assert_eq!((log[0].credential.as_str(), log[0].completed, log[0].stream), ("sk-upstream", true, false));
}

#[tokio::test]
async fn anthropic_stream_has_the_event_sequence_and_cumulative_deltas() {
    let m = mock().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": true, "messages": []}).to_string();
    let (status, ctype, resp) = send(&m, "POST", "/v1/messages", &[KEY, ("x-mock-output-tokens", "40")], &body).await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let events = sse(&resp);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(names[names.len() - 4..], ["content_block_stop", "message_delta", "message_delta", "message_stop"]);
    assert!(names.iter().filter(|n| **n == "content_block_delta").count() >= 1);
    let start = &events[0].1["message"]["usage"];
    assert_eq!(start["input_tokens"], (body.len() as u64).div_ceil(4));
    let deltas: Vec<u64> = events
        .iter()
        .filter(|(e, _)| e == "message_delta")
        .map(|(_, d)| d["usage"]["output_tokens"].as_u64().unwrap())
        .collect();
    // Cumulative: the last one is the total; summing would over-count.
    assert_eq!(deltas, vec![20, 40]);
    let log = read_log(&m.log).unwrap();
    assert_eq!((log[0].usage.output_tokens, log[0].completed), (40, true));
}

#[tokio::test]
async fn mid_stream_error_arrives_after_http_200_and_bills_what_was_reported() {
    let m = mock().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true, "messages": []}).to_string();
    let (status, _, resp) = send(&m, "POST", "/v1/messages", &[KEY, ("x-mock-error", "midstream")], &body).await;
    assert_eq!(status, 200);
    let events = sse(&resp);
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
    assert!(!events.iter().any(|(e, _)| e == "message_stop"));
    let log = read_log(&m.log).unwrap();
    assert_eq!((log[0].completed, log[0].usage.output_tokens), (false, 1));
}

#[tokio::test]
async fn errors_come_in_each_providers_shape() {
    let m = mock().await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}).to_string();
    let (status, _, resp) = send(&m, "POST", "/v1/messages", &[KEY, ("x-mock-error", "529")], &body).await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(
        (status, v["type"].as_str(), v["error"]["type"].as_str()),
        (529, Some("error"), Some("overloaded_error"))
    );
    let (status, _, resp) = send(&m, "POST", "/v1/messages", &[KEY, ("x-mock-error", "429")], &body).await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((status, v["error"]["type"].as_str()), (429, Some("rate_limit_error")));
    let no_max = json!({"model": "claude-sonnet-4-5", "messages": []}).to_string();
    let (status, _, resp) = send(&m, "POST", "/v1/messages", &[KEY], &no_max).await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((status, v["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let (status, _, resp) = send(&m, "POST", "/v1/messages", &[("x-api-key", "sk-client")], &body).await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((status, v["error"]["type"].as_str()), (401, Some("authentication_error")));
    let chat = json!({"model": "gpt-5", "messages": []}).to_string();
    let (status, _, resp) = send(
        &m,
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-upstream"), ("x-mock-error", "429")],
        &chat,
    )
    .await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    // Error responses bill nothing.
    let log = read_log(&m.log).unwrap();
    assert!(log.iter().all(|r| r.usage == TruthUsage::default()));
}

#[tokio::test]
async fn openai_usage_chunk_only_when_asked_and_prompt_includes_cached() {
    let m = mock().await;
    let auth = ("authorization", "Bearer sk-upstream");
    let asked = json!({"model": "gpt-5", "stream": true, "stream_options": {"include_usage": true}, "messages": []})
        .to_string();
    let (status, _, resp) = send(
        &m,
        "POST",
        "/v1/chat/completions",
        &[auth, ("x-mock-cache-read", "5"), ("x-mock-output-tokens", "9")],
        &asked,
    )
    .await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = sse(&resp).into_iter().map(|(_, d)| d).collect();
    assert_eq!(chunks.last().unwrap(), &Value::String("[DONE]".into()));
    let usage_chunk = &chunks[chunks.len() - 2];
    assert_eq!(usage_chunk["choices"], json!([]));
    let input = (asked.len() as u64).div_ceil(4);
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], input + 5);
    assert_eq!(usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 9);
    assert!(chunks[..chunks.len() - 2].iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));

    let silent = json!({"model": "gpt-5", "stream": true, "messages": []}).to_string();
    let (_, _, resp) = send(&m, "POST", "/v1/chat/completions", &[auth], &silent).await;
    let chunks: Vec<Value> = sse(&resp).into_iter().map(|(_, d)| d).collect();
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.get("usage").is_none()));
    let log = read_log(&m.log).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].usage.cache_read_tokens, 5);
}

#[tokio::test]
async fn models_and_count_tokens() {
    let m = mock().await;
    let (status, _, resp) = send(&m, "GET", "/v1/models", &[KEY], "").await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
    let body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hello"}]}).to_string();
    let (status, _, resp) = send(&m, "POST", "/v1/messages/count_tokens", &[KEY], &body).await;
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((status, v["input_tokens"].as_u64()), (200, Some((body.len() as u64).div_ceil(4))));
}

#[tokio::test]
async fn responses_api_json_and_stream_report_usage_as_openai_does() {
    let m = mock().await;
    let bearer = ("authorization", "Bearer sk-upstream");
    let body = json!({"model": "gpt-6.2-sol", "input": "hi", "max_output_tokens": 500}).to_string();
    let input = (body.len() as u64).div_ceil(4);
    let extra = [("x-mock-output-tokens", "300"), ("x-mock-reasoning-tokens", "200")];
    let extra = [bearer, extra[0], extra[1], ("x-mock-cache-read", "40"), ("x-mock-cache-write-5m", "10")];
    let (status, ctype, resp) = send(&m, "POST", "/v1/responses", &extra, &body).await;
    assert_eq!((status, ctype.as_str()), (200, "application/json"));
    let v: Value = serde_json::from_str(&resp).unwrap();
    assert_eq!((v["object"].as_str(), v["status"].as_str()), (Some("response"), Some("completed")));
    // input_tokens includes the cached and written tokens; output the reasoning.
    let u = &v["usage"];
    assert_eq!(u["input_tokens"], input + 50);
    assert_eq!(u["input_tokens_details"], json!({"cached_tokens": 40, "cache_write_tokens": 10}));
    assert_eq!(
        (u["output_tokens"].as_u64(), u["output_tokens_details"]["reasoning_tokens"].as_u64()),
        (Some(300), Some(200))
    );
    assert_eq!(u["total_tokens"], input + 50 + 300);

    // A stream cut at max_output_tokens ends incomplete, usage on that event only.
    let body = json!({"model": "gpt-6.2-sol", "input": "hi", "stream": true, "max_output_tokens": 100}).to_string();
    let (status, ctype, resp) =
        send(&m, "POST", "/v1/responses", &[bearer, ("x-mock-output-tokens", "300")], &body).await;
    assert_eq!((status, ctype.as_str()), (200, "text/event-stream"));
    let events = sse(&resp);
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events.last().unwrap().0, "response.incomplete");
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(i as u64)));
    }
    assert!(events[0].1["response"]["usage"].is_null());
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(last["usage"]["output_tokens"], 100);

    let log = read_log(&m.log).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].api, "responses");
    assert_eq!(
        log[0].usage,
        TruthUsage {
            input_tokens: input,
            output_tokens: 300,
            cache_write_5m_tokens: 10,
            cache_read_tokens: 40,
            ..Default::default()
        }
    );
    assert_eq!((log[1].usage.output_tokens, log[1].stream, log[1].completed), (100, true, true));
    let (status, _, resp) = send(&m, "GET", &format!("/v1/responses/{}", log[0].id), &[bearer], "").await;
    assert_eq!((status, serde_json::from_str::<Value>(&resp).unwrap()["id"].as_str()), (200, Some(log[0].id.as_str())));
}
