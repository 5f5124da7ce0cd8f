//! A mock model provider that speaks the Anthropic Messages and OpenAI chat
//! completions wire formats (JSON and SSE, with cache fields), because the
//! real providers cannot be reached from tests. Every response's usage is
//! appended to a ground-truth log (JSON lines) that tests compare the
//! gateway's metering against, to the token.
//!
//! Behaviour per request is steered by headers, which a gateway forwards
//! untouched like any unknown header:
//! - `x-mock-output-tokens: N`: output tokens the model would write, cut at
//!   `max_tokens` with `stop_reason: "max_tokens"` (default: `--output-tokens`);
//! - `x-mock-cache-read: N`, `x-mock-cache-write-5m: N`,
//!   `x-mock-cache-write-1h: N`: cache token counts;
//! - `x-mock-error: 429 | 500 | 529 | midstream`: an error response, or
//!   (streams) an `error` event after HTTP 200 and half the deltas;
//! - `x-mock-latency-ms: N`: delay before the response starts;
//! - `x-mock-tag: T`: copied into the response's ground-truth record, so a
//!   load generator can attribute each response (e.g. to a key);
//! - `x-mock-provider-headers: 1`: the response also carries headers a real
//!   provider sends that a gateway must not pass on to its clients:
//!   `set-cookie: a=b`, `anthropic-organization-id: org_123` and
//!   `openai-organization: org-456`.
//!
//! So that tests can see what a gateway forwarded, every response carries
//! `x-mock-saw-headers` (the lowercase names of the request's headers, each
//! once, comma separated), `x-mock-echo-anthropic-*` (the value of each
//! `anthropic-*` request header, as received) and, once the request body
//! was read, `x-mock-body-bytes` and `x-mock-body-sha256` (its length and
//! hex SHA-256). A 429 carries `retry-after`, `x-should-retry` and
//! `anthropic-ratelimit-unified-*` headers as the provider's do.
//!
//! Input tokens are derived from the request (`ceil(body bytes / 4)`), so a
//! test can predict them; the log records what was actually sent.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod responses;

/// The providers' own request size limit.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// How the mock behaves when a request does not say otherwise.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Delay before a response starts.
    pub latency_ms: u64,
    /// Delay between SSE events.
    pub event_delay_ms: u64,
    /// Output tokens when neither the request nor a header says.
    pub output_tokens: u64,
    /// Where to append the ground-truth log (JSON lines); none if unset.
    pub log: Option<PathBuf>,
    /// If set, the only upstream credential accepted (401 otherwise).
    pub expect_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig { latency_ms: 0, event_delay_ms: 0, output_tokens: 50, log: None, expect_key: None }
    }
}

/// One response as the provider produced it: the ground truth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TruthUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub cache_read_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TruthRecord {
    pub seq: u64,
    pub id: String,
    pub api: String,
    pub model: String,
    pub stream: bool,
    pub status: u16,
    /// The whole response reached the client (false: error mid-stream or the
    /// client went away).
    pub completed: bool,
    /// Usage as billed: for an interrupted stream, what was reported so far.
    pub usage: TruthUsage,
    /// The credential the mock received (to check the gateway used its own).
    pub credential: String,
    /// The request's `x-mock-tag` header, if any.
    #[serde(default)]
    pub tag: String,
}

struct State {
    cfg: MockConfig,
    seq: AtomicU64,
    log: Option<Mutex<std::fs::File>>,
}

impl State {
    fn record(&self, r: &TruthRecord) {
        if let Some(log) = &self.log {
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(line) = serde_json::to_string(r) {
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            }
        }
    }
}

/// Reads a ground-truth log.
pub fn read_log(path: &std::path::Path) -> std::io::Result<Vec<TruthRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", content_type.parse().expect("static header"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str, seq: u64) -> Response<Body> {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": format!("req_mock_{seq}")}),
    )
}

fn openai_error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

fn header_u64(req: &hyper::HeaderMap, name: &str) -> Option<u64> {
    req.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

fn credential(h: &hyper::HeaderMap) -> String {
    h.get("x-api-key")
        .or_else(|| h.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).to_string())
        .unwrap_or_default()
}

/// Serves until the listener fails; one task per connection.
pub async fn serve(listener: TcpListener, cfg: MockConfig) -> std::io::Result<()> {
    let log = match &cfg.log {
        Some(p) => Some(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)),
        None => None,
    };
    let state = Arc::new(State { cfg, seq: AtomicU64::new(0), log });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr, cfg: MockConfig) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, cfg));
    Ok(local)
}

struct Plan {
    seq: u64,
    model: String,
    stream: bool,
    usage: TruthUsage,
    error: Option<String>,
    credential: String,
    tag: String,
    /// `max_tokens` when the output was cut there, else `end_turn`.
    stop_reason: &'static str,
    /// Of the output, how many tokens were reasoning (Responses API).
    reasoning_tokens: u64,
}

impl Plan {
    /// The ground-truth record of this request's response.
    fn truth(&self, id: String, api: &str, status: u16, completed: bool, usage: TruthUsage) -> TruthRecord {
        TruthRecord {
            seq: self.seq,
            id,
            api: api.to_string(),
            model: self.model.clone(),
            stream: self.stream,
            status,
            completed,
            usage,
            credential: self.credential.clone(),
            tag: self.tag.clone(),
        }
    }
}

/// Sends `frames` with `delay` after each; false if the client went away.
async fn send_paced(tx: &mpsc::Sender<Bytes>, frames: impl IntoIterator<Item = Bytes>, delay: Duration) -> bool {
    for f in frames {
        if tx.send(f).await.is_err() {
            return false;
        }
        tokio::time::sleep(delay).await;
    }
    true
}

/// Answers `req`, then adds the headers that show what the mock received
/// (and the provider-only headers, when asked for).
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let saw = req.headers().keys().map(|n| n.as_str()).collect::<Vec<_>>().join(",");
    let provider_headers = req.headers().get("x-mock-provider-headers").is_some_and(|v| v == "1");
    let echo: Vec<(String, hyper::header::HeaderValue)> = req
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str().starts_with("anthropic-"))
        .map(|(n, v)| (format!("x-mock-echo-{n}"), v.clone()))
        .collect();
    let mut body_seen = None;
    let mut r = respond(state, req, &mut body_seen).await;
    let h = r.headers_mut();
    if let Ok(v) = saw.parse() {
        h.insert("x-mock-saw-headers", v);
    }
    for (name, value) in echo {
        if let Ok(name) = hyper::header::HeaderName::from_bytes(name.as_bytes()) {
            h.insert(name, value);
        }
    }
    if let Some((n, sha)) = body_seen {
        h.insert("x-mock-body-bytes", n.into());
        if let Ok(v) = sha.parse() {
            h.insert("x-mock-body-sha256", v);
        }
    }
    if provider_headers {
        for (name, value) in
            [("set-cookie", "a=b"), ("anthropic-organization-id", "org_123"), ("openai-organization", "org-456")]
        {
            h.insert(name, hyper::header::HeaderValue::from_static(value));
        }
    }
    r
}

/// The response to `req`; sets `body_seen` (length, hex SHA-256) once the body is read.
async fn respond(state: Arc<State>, req: Request<Incoming>, body_seen: &mut Option<(usize, String)>) -> Response<Body> {
    let seq = state.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let api = if path.starts_with("/v1/responses") {
        "responses"
    } else if path.starts_with("/v1/chat/") {
        "openai"
    } else {
        "anthropic"
    };
    let too_large = || match api {
        "openai" | "responses" => openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "request too large",
        ),
        _ => {
            anthropic_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", "Request exceeds the maximum size", seq)
        }
    };
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return too_large(),
    };
    *body_seen = Some((bytes.len(), {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
    }));
    let cred = credential(&parts.headers);
    if let Some(want) = &state.cfg.expect_key {
        if &cred != want {
            return match api {
                "openai" | "responses" => openai_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "invalid_api_key",
                    "Incorrect API key provided",
                ),
                _ => anthropic_error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key", seq),
            };
        }
    }
    let latency = header_u64(&parts.headers, "x-mock-latency-ms").unwrap_or(state.cfg.latency_ms);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/v1/models") => json_response(StatusCode::OK, &models()),
        (&Method::POST, "/v1/messages/count_tokens") => {
            let Ok(_) = serde_json::from_slice::<Value>(&bytes) else {
                return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "malformed JSON body", seq);
            };
            json_response(StatusCode::OK, &json!({"input_tokens": input_tokens(&bytes)}))
        }
        (&Method::POST, "/v1/messages" | "/v1/chat/completions" | "/v1/responses" | "/v1/responses/compact") => {
            metered(state, api, &parts.headers, &bytes, seq, cred)
        }
        (&Method::GET, p) if p.starts_with("/v1/responses/") && !p["/v1/responses/".len()..].contains('/') => {
            // A stored response, as far as a forwarding test needs one.
            let id = &p["/v1/responses/".len()..];
            json_response(StatusCode::OK, &json!({"id": id, "object": "response", "status": "completed", "output": []}))
        }
        _ => match api {
            "openai" | "responses" => {
                openai_error(StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url", "Unknown request URL")
            }
            _ => anthropic_error(StatusCode::NOT_FOUND, "not_found_error", "Not found", seq),
        },
    }
}

/// A metered call (`api`: anthropic, openai or responses): its plan from
/// the body and the `x-mock-*` headers, then the JSON or the stream.
fn metered(
    state: Arc<State>,
    api: &str,
    h: &hyper::HeaderMap,
    bytes: &Bytes,
    seq: u64,
    cred: String,
) -> Response<Body> {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return match api {
            "openai" | "responses" => {
                openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", "malformed JSON body")
            }
            _ => anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "malformed JSON body", seq),
        };
    };
    let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_u64));
    if api == "anthropic" && max_tokens.is_none() {
        return anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", "max_tokens: Field required", seq);
    }
    // What the model would write, cut at max_tokens as a provider
    // cuts it (its stop_reason then says so).
    let wanted = header_u64(h, "x-mock-output-tokens").unwrap_or(state.cfg.output_tokens).max(1);
    let output = wanted.min(max_tokens.unwrap_or(u64::MAX)).max(1);
    let stop_reason = if wanted > output { "max_tokens" } else { "end_turn" };
    let plan = Plan {
        seq,
        model: body.get("model").and_then(Value::as_str).unwrap_or("unknown").to_string(),
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        usage: TruthUsage {
            input_tokens: input_tokens(bytes),
            output_tokens: output,
            cache_write_5m_tokens: header_u64(h, "x-mock-cache-write-5m").unwrap_or(0),
            cache_write_1h_tokens: header_u64(h, "x-mock-cache-write-1h").unwrap_or(0),
            cache_read_tokens: header_u64(h, "x-mock-cache-read").unwrap_or(0),
        },
        error: h.get("x-mock-error").and_then(|v| v.to_str().ok()).map(str::to_string),
        credential: cred,
        reasoning_tokens: header_u64(h, "x-mock-reasoning-tokens").unwrap_or(0).min(output),
        tag: h.get("x-mock-tag").and_then(|v| v.to_str().ok()).unwrap_or_default().chars().take(200).collect(),
        stop_reason,
    };
    if let Some(resp) = status_error(&state, api, &plan) {
        return resp;
    }
    match (api, plan.stream) {
        ("anthropic", false) => anthropic_json(&state, plan),
        ("anthropic", true) => anthropic_sse(state, plan),
        ("responses", false) => responses::json(&state, plan),
        ("responses", true) => responses::sse(state, plan),
        (_, false) => openai_json(&state, plan),
        (_, true) => {
            let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
            openai_sse(state, plan, include_usage)
        }
    }
}

fn input_tokens(body: &[u8]) -> u64 {
    (body.len() as u64).div_ceil(4).max(1)
}

fn models() -> Value {
    let data: Vec<Value> = [
        ("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
        ("claude-sonnet-4-5", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
        ("claude-haiku-4-5", "Claude Haiku 4.5", "2025-10-15T00:00:00Z"),
    ]
    .iter()
    .map(|(id, name, at)| json!({"type": "model", "id": id, "display_name": name, "created_at": at}))
    .collect();
    json!({"data": data, "has_more": false, "first_id": "claude-opus-4-1", "last_id": "claude-haiku-4-5"})
}

/// An error status the request asked for (429, 500, 529), logged as such.
fn status_error(state: &State, api: &str, plan: &Plan) -> Option<Response<Body>> {
    let code: u16 = plan.error.as_deref()?.parse().ok()?;
    let status = StatusCode::from_u16(code).ok()?;
    state.record(&plan.truth(format!("err_mock_{}", plan.seq), api, code, true, TruthUsage::default()));
    Some(match (api, code) {
        ("openai" | "responses", 429) => openai_error(status, "requests", "rate_limit_exceeded", "Rate limit reached"),
        ("openai" | "responses", _) => openai_error(status, "server_error", "server_error", "The server had an error"),
        (_, 429) => {
            let mut r = anthropic_error(
                status,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
                plan.seq,
            );
            for (name, value) in [
                ("retry-after", "7"),
                ("x-should-retry", "true"),
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", "1798000000"),
            ] {
                r.headers_mut().insert(name, hyper::header::HeaderValue::from_static(value));
            }
            r
        }
        (_, 529) => anthropic_error(status, "overloaded_error", "Overloaded", plan.seq),
        _ => anthropic_error(status, "api_error", "Internal server error", plan.seq),
    })
}

fn anthropic_usage(u: &TruthUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_5m_tokens + u.cache_write_1h_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": u.cache_write_1h_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn text_for(tokens: u64) -> String {
    "lorem ".repeat(tokens.min(64) as usize)
}

fn anthropic_json(state: &State, plan: Plan) -> Response<Body> {
    let id = format!("msg_mock_{:08}", plan.seq);
    let body = json!({
        "id": id, "type": "message", "role": "assistant", "model": plan.model,
        "content": [{"type": "text", "text": text_for(plan.usage.output_tokens)}],
        "stop_reason": plan.stop_reason, "stop_sequence": null,
        "usage": anthropic_usage(&plan.usage, plan.usage.output_tokens),
    });
    state.record(&plan.truth(id, "anthropic", 200, true, plan.usage.clone()));
    let mut r = json_response(StatusCode::OK, &body);
    r.headers_mut().insert("request-id", format!("req_mock_{}", plan.seq).parse().expect("ascii"));
    r
}

fn sse_event(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Streams frames produced by `produce`; the returned body ends when it does.
fn sse_response(frames: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(frames), |b| {
        Ok::<_, Infallible>(Frame::data(b))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert("content-type", "text/event-stream".parse().expect("static header"));
    r.headers_mut().insert("cache-control", "no-cache".parse().expect("static header"));
    r
}

fn anthropic_sse(state: Arc<State>, plan: Plan) -> Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    let delay = Duration::from_millis(state.cfg.event_delay_ms);
    tokio::spawn(async move {
        let id = format!("msg_mock_{:08}", plan.seq);
        let u = plan.usage.clone();
        let total = u.output_tokens;
        let stop_reason = plan.stop_reason;
        let midstream = plan.error.as_deref() == Some("midstream");
        let mut reported = 1u64; // message_start carries an initial output count
        let mut truth =
            plan.truth(id.clone(), "anthropic", 200, false, TruthUsage { output_tokens: reported, ..u.clone() });
        let mut events = vec![
            sse_event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": id, "type": "message", "role": "assistant", "model": plan.model, "content": [],
                    "stop_reason": null, "stop_sequence": null, "usage": anthropic_usage(&u, 1)}}),
            ),
            sse_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            sse_event("ping", &json!({"type": "ping"})),
        ];
        let deltas = total.clamp(1, 8);
        for i in 0..deltas {
            if midstream && i == deltas / 2 {
                break;
            }
            events.push(sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lorem "}}),
            ));
        }
        let mut sent_all = send_paced(&tx, events, delay).await;
        if sent_all && midstream {
            // The provider failed after HTTP 200: it bills what it reported.
            let err = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            let _ = tx.send(sse_event("error", &err)).await;
            truth.usage.output_tokens = reported;
            state.record(&truth);
            return;
        }
        if sent_all {
            // Two cumulative message_deltas: a client must take the last, never sum.
            let half = (total / 2).max(1);
            let tail = [
                sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
                sse_event(
                    "message_delta",
                    &json!({"type": "message_delta", "delta": {"stop_reason": null, "stop_sequence": null}, "usage": {"output_tokens": half}}),
                ),
                sse_event(
                    "message_delta",
                    &json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": total}}),
                ),
                sse_event("message_stop", &json!({"type": "message_stop"})),
            ];
            for (i, ev) in tail.into_iter().enumerate() {
                if tx.send(ev).await.is_err() {
                    sent_all = false;
                    break;
                }
                reported = match i {
                    1 => half,
                    2 => total,
                    _ => reported,
                };
                tokio::time::sleep(delay).await;
            }
        }
        truth.usage.output_tokens = reported;
        truth.completed = sent_all;
        state.record(&truth);
    });
    sse_response(rx)
}

fn openai_usage(u: &TruthUsage) -> Value {
    // prompt_tokens includes cached tokens, unlike Anthropic's input_tokens.
    let prompt = u.input_tokens + u.cache_read_tokens;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    })
}

fn openai_json(state: &State, plan: Plan) -> Response<Body> {
    let id = format!("chatcmpl-mock{:08}", plan.seq);
    let body = json!({
        "id": id, "object": "chat.completion", "created": 1_764_374_400u64, "model": plan.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text_for(plan.usage.output_tokens), "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": openai_usage(&plan.usage),
        "service_tier": "default", "system_fingerprint": "fp_mock",
    });
    state.record(&plan.truth(id, "openai", 200, true, plan.usage.clone()));
    json_response(StatusCode::OK, &body)
}

fn openai_sse(state: Arc<State>, plan: Plan, include_usage: bool) -> Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    let delay = Duration::from_millis(state.cfg.event_delay_ms);
    tokio::spawn(async move {
        let id = format!("chatcmpl-mock{:08}", plan.seq);
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_374_400u64,
                "model": plan.model, "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            if include_usage {
                c["usage"] = Value::Null;
            }
            Bytes::from(format!("data: {c}\n\n"))
        };
        let mut frames = vec![chunk(json!({"role": "assistant", "content": "", "refusal": null}), Value::Null)];
        for _ in 0..plan.usage.output_tokens.clamp(1, 8) {
            frames.push(chunk(json!({"content": "lorem "}), Value::Null));
        }
        frames.push(chunk(json!({}), json!("stop")));
        if include_usage {
            let c = json!({"id": id, "object": "chat.completion.chunk", "created": 1_764_374_400u64,
                "model": plan.model, "system_fingerprint": "fp_mock", "choices": [], "usage": openai_usage(&plan.usage)});
            frames.push(Bytes::from(format!("data: {c}\n\n")));
        }
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let completed = send_paced(&tx, frames, delay).await;
        state.record(&plan.truth(id.clone(), "openai", 200, completed, plan.usage.clone()));
    });
    sse_response(rx)
}
