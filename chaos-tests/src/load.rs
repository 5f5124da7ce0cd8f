//! The chaos run's load: simulated users, each with its own key, sending
//! both API shapes (streaming and not) to random edges on a seeded
//! schedule, and recording what each client saw for the checker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::checker::ClientRecord;
use crate::rng::Rng;

pub(crate) type Http = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(c)
}

pub(crate) async fn http_get(client: &Http, url: &str) -> Option<String> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(3), client.request(req)).await.ok()?.ok()?;
    if resp.status() != 200 {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect()).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// A simulated user.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) key_id: String,
    pub(crate) secret: String,
    pub(crate) team: String,
    /// The edges (indexes) it sends to; empty for any.
    pub(crate) edges: Vec<usize>,
}

const MODELS: [(&str, bool); 3] = [("claude-sonnet-4-5", true), ("claude-haiku-4-5", true), ("gpt-4o", false)];

/// One request from `user`, recorded as the client saw it.
async fn one_request(client: &Http, edges: &[String], user: &User, rng: &mut Rng, t0: Instant) -> ClientRecord {
    let edge = match user.edges.len() {
        0 => rng.below(edges.len() as u64) as usize,
        n => user.edges[rng.below(n as u64) as usize],
    };
    let (model, anthropic) = MODELS[rng.below(3) as usize];
    let stream = rng.below(2) == 0;
    let max_tokens = 50 + rng.below(150);
    let content: String = "chaos load ".chars().cycle().take(50 + rng.below(300) as usize).collect();
    // What the model would write: sometimes more than the edge reserved
    // from this user's history, sometimes cut at max_tokens.
    let output = 20 + rng.below(230);
    let body = json!({"model": model, "max_tokens": max_tokens, "stream": stream,
                      "messages": [{"role": "user", "content": content}]})
    .to_string();
    let path = if anthropic { "/v1/messages" } else { "/v1/chat/completions" };
    let mut rec = ClientRecord {
        key_id: user.key_id.clone(),
        team: user.team.clone(),
        edge,
        model: model.into(),
        stream,
        body_bytes: body.len() as u64,
        max_tokens,
        start_ms: t0.elapsed().as_millis() as u64,
        outcome: "failed".into(),
        ..Default::default()
    };
    let mut b = hyper::Request::post(format!("http://{}{path}", edges[edge]))
        .header("content-type", "application/json")
        .header("x-mock-tag", &user.key_id)
        .header("x-mock-output-tokens", output);
    b = if anthropic {
        b.header("x-api-key", &user.secret).header("anthropic-version", "2023-06-01")
    } else {
        b.header("authorization", format!("Bearer {}", user.secret))
    };
    let Ok(req) = b.body(Full::new(Bytes::from(body))) else {
        return rec;
    };
    // The reservation header and whatever of the body arrived are kept even
    // when the response is cut (an edge killed mid-stream): the checker
    // needs the response id and what was reserved for it.
    let mut reserved = None;
    let mut got = Vec::new();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = client.request(req).await.map_err(|_| 0u16)?;
        let status = resp.status().as_u16();
        reserved = resp
            .headers()
            .get("x-tollgate-reserved-nano-usd")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
                Err(_) => return Err(status),
            }
        }
        Ok::<_, u16>(status)
    })
    .await;
    rec.end_ms = t0.elapsed().as_millis() as u64;
    rec.reserved_nano_usd = reserved;
    let body = Bytes::from(got);
    let status = match result {
        Ok(Ok(status)) => status,
        Ok(Err(status)) => {
            rec.status = status;
            rec.response_id = response_id(&String::from_utf8_lossy(&body), stream);
            return rec;
        }
        Err(_) => {
            rec.response_id = response_id(&String::from_utf8_lossy(&body), stream);
            return rec;
        }
    };
    rec.status = status;
    let text = String::from_utf8_lossy(&body);
    rec.response_id = response_id(&text, stream);
    rec.outcome = match status {
        200 if !stream => "ok",
        200 => {
            let complete = if anthropic {
                text.contains("event: message_stop") && !text.contains("event: error")
            } else {
                text.contains("data: [DONE]") && !text.contains("data: {\"error\"")
            };
            if complete {
                "ok"
            } else {
                "failed"
            }
        }
        402 => "denied",
        _ => "failed",
    }
    .into();
    rec
}

/// The provider's response id in a JSON body or the first event of a stream.
fn response_id(text: &str, stream: bool) -> String {
    let first = if stream {
        text.lines().find_map(|l| l.strip_prefix("data: ")).and_then(|d| serde_json::from_str::<Value>(d).ok())
    } else {
        serde_json::from_str::<Value>(text).ok()
    };
    let Some(v) = first else { return String::new() };
    v.pointer("/message/id").or_else(|| v.get("id")).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// What every simulated user's loop shares.
#[derive(Clone)]
pub(crate) struct Load {
    pub(crate) client: Http,
    pub(crate) edges: Arc<Vec<String>>,
    pub(crate) rate: f64,
    pub(crate) t0: Instant,
    pub(crate) until: Instant,
    pub(crate) out: Arc<Mutex<Vec<ClientRecord>>>,
}

pub(crate) async fn user_loop(load: Load, user: User, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut sent = 0u64;
    // Bounded by time, and by count as a backstop.
    while Instant::now() < load.until && sent < 100_000 {
        let rec = one_request(&load.client, &load.edges, &user, &mut rng, load.t0).await;
        load.out.lock().await.push(rec);
        sent += 1;
        let pause = -(1.0 - rng.unit()).max(1e-9).ln() / load.rate.max(0.01);
        tokio::time::sleep(Duration::from_secs_f64(pause.min(5.0))).await;
    }
}
