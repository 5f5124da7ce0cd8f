//! One request through the edge: route, authenticate, check policy, reserve,
//! forward; metering and settlement are in `settle`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;
use tollgate_types::money::NanoUsd;

use super::headers::{connection_named, skip_request_header, skip_response_header};
use super::local::{models_list, ops};
use super::request::{valid_model_id, Head};
use super::settle::Settler;
use super::watch::{ConfigView, Principal};
use super::{KeySlot, Shared};
use crate::errors::{Api, Client, EdgeError, ErrorResponse};

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// Most bytes of an upstream error body or non-metered response kept.
const MAX_ERROR_BODY: usize = 4 * 1024 * 1024;
/// Frames buffered between the upstream and a slow client.
const STREAM_BUFFER: usize = 32;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn respond_error(e: &ErrorResponse) -> Response<Body> {
    let mut r = Response::new(full(e.body.clone()));
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("x-should-retry", HeaderValue::from_static(if e.should_retry { "true" } else { "false" }));
    if let Some(secs) = e.retry_after_secs {
        h.insert("retry-after", HeaderValue::from(secs));
    }
    r
}

pub(super) fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
    r
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Metered: a hold is reserved and settled.
    Messages,
    ChatCompletions,
    /// `POST /v1/responses` and `/v1/responses/compact` (which reports usage too).
    Responses,
    /// Authenticated and forwarded, not charged.
    CountTokens,
    /// Counting a Responses request's input tokens: forwarded, not charged.
    ResponseInputTokens,
    /// A stored response: retrieve, delete, cancel, its input items
    /// (forwarded only with `stored_responses`).
    StoredResponse,
    Models(Api),
}

impl Route {
    fn api(self) -> Api {
        match self {
            Route::Messages | Route::CountTokens => Api::Anthropic,
            Route::ChatCompletions => Api::OpenAi,
            Route::Responses | Route::ResponseInputTokens | Route::StoredResponse => Api::OpenAiResponses,
            Route::Models(api) => api,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Messages => "/v1/messages",
            Route::ChatCompletions => "/v1/chat/completions",
            Route::CountTokens => "/v1/messages/count_tokens",
            Route::Responses => "/v1/responses",
            Route::ResponseInputTokens => "/v1/responses/input_tokens",
            Route::StoredResponse => "/v1/responses/*",
            Route::Models(_) => "/v1/models",
        }
    }
}

/// The virtual key: `x-api-key`, else `Authorization: Bearer`.
fn presented_key(h: &HeaderMap) -> Option<&str> {
    if let Some(k) = h.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k.trim());
    }
    let auth = h.get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// The route of a request, or the error in the shape of the API its path
/// (best) names.
fn route(method: &Method, path: &str, h: &HeaderMap) -> Result<Route, ErrorResponse> {
    let guess = if path.starts_with("/v1/responses") {
        Api::OpenAiResponses
    } else if path.starts_with("/v1/chat") || path.starts_with("/v1/completions") {
        Api::OpenAi
    } else {
        Api::Anthropic
    };
    if path == "/v1/responses"
        && h.get("upgrade").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    {
        // Codex, told `supports_websockets = true`, falls back to HTTP
        // streaming (metered the same) on a 426.
        return Err(EdgeError::UpgradeRequired(
            "Tollgate serves the Responses API over HTTP (server-sent events), not WebSocket: leave \
             supports_websockets unset for this provider"
                .into(),
        )
        .in_shape(guess));
    }
    let r = match path {
        "/v1/messages" => (Method::POST, Route::Messages),
        "/v1/messages/count_tokens" => (Method::POST, Route::CountTokens),
        "/v1/chat/completions" => (Method::POST, Route::ChatCompletions),
        "/v1/responses" | "/v1/responses/compact" => (Method::POST, Route::Responses),
        "/v1/responses/input_tokens" => (Method::POST, Route::ResponseInputTokens),
        p if p.starts_with("/v1/responses/") => match stored_response(p) {
            // Retrieve, delete, cancel, list input items.
            Some(m) if m.contains(method) => (method.clone(), Route::StoredResponse),
            Some(m) => {
                let names: Vec<&str> = m.iter().map(Method::as_str).collect();
                let only = format!("{path} accepts {} only", names.join(" or "));
                return Err(EdgeError::WrongMethod(only).in_shape(guess));
            }
            None => {
                return Err(EdgeError::NoRoute(format!("Tollgate has no route for {method} {path}")).in_shape(guess))
            }
        },
        "/v1/models" => {
            // Both providers serve this path; Anthropic clients send their version header.
            let anthropic = h.contains_key("anthropic-version") || h.contains_key("x-api-key");
            (Method::GET, Route::Models(if anthropic { Api::Anthropic } else { Api::OpenAi }))
        }
        _ => return Err(EdgeError::NoRoute(format!("Tollgate has no route for {method} {path}")).in_shape(guess)),
    };
    if *method != r.0 {
        return Err(EdgeError::WrongMethod(format!("{path} accepts {} only", r.0)).in_shape(r.1.api()));
    }
    Ok(r.1)
}

/// The methods a stored response's path takes (`/v1/responses/{id}`,
/// `…/cancel`, `…/input_items`), or `None` for no such path.
fn stored_response(path: &str) -> Option<&'static [Method]> {
    static ONE: [Method; 2] = [Method::GET, Method::DELETE];
    static CANCEL: [Method; 1] = [Method::POST];
    static ITEMS: [Method; 1] = [Method::GET];
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let plausible =
        !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (plausible, tail) {
        (true, "") => Some(&ONE),
        (true, "cancel") => Some(&CANCEL),
        (true, "input_items") => Some(&ITEMS),
        _ => None,
    }
}

/// The 400 for an implausible model id (its echo is bounded and escaped).
pub(super) fn invalid_model_message(model: &str) -> String {
    let shown: String = model.chars().take(40).collect();
    format!(
        "model: {shown:?}{} is not a valid model id (1-128 characters, no spaces or control characters)",
        if shown.len() < model.len() { "…" } else { "" }
    )
}

/// Entry point for every request.
pub(crate) async fn handle(s: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let t0 = Instant::now();
    let path = req.uri().path().to_string();
    if let Some(r) = ops(&s, &req) {
        return r;
    }
    // Claude Code's connectivity check: answered here, without a key.
    if path == "/api/hello" && matches!(*req.method(), Method::HEAD | Method::GET) {
        return plain(StatusCode::OK, "text/plain", "ok\n".into());
    }
    let route = match route(req.method(), &path, req.headers()) {
        Ok(r) => r,
        Err(e) => {
            s.metrics.request("other", "", e.status);
            return respond_error(&e);
        }
    };
    let client = Client::from_headers(req.headers());
    let mut ctx = Ctx::new(s.clone(), route, t0);
    let resp = match ctx.run(req).await {
        Ok(r) => r,
        Err(e) => {
            ctx.overhead = t0.elapsed();
            respond_error(&e.in_shape_for(ctx.api, client))
        }
    };
    let model = s.config.current().prices.label(&ctx.model).to_string();
    let model = model.as_str();
    s.metrics.request(route.label(), model, resp.status().as_u16());
    if !ctx.overhead.is_zero() {
        s.metrics.overhead(ctx.overhead);
    }
    resp
}

pub(super) struct Ctx {
    pub(super) s: Arc<Shared>,
    route: Route,
    pub(super) api: Api,
    t0: Instant,
    pub(super) model: String,
    /// Time spent in the edge, upstream excluded (set once known).
    overhead: Duration,
    /// This request's place in its key's concurrency limit; a metered
    /// request hands it to its settler, which keeps it until the end.
    slot: Option<KeySlot>,
}

/// Tells the client what admission reserved for its request and, when
/// `clamp_max_tokens` lowered it, the output limit it ran with (its
/// `stop_reason` then says `max_tokens` if it hit it).
fn tag(mut r: Response<Body>, reserved: NanoUsd, clamped: Option<u64>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert("x-tollgate-reserved-nano-usd", HeaderValue::from(reserved.0));
    if let Some(n) = clamped {
        h.insert("x-tollgate-max-tokens-clamped", HeaderValue::from(n));
    }
    r
}

impl Ctx {
    pub(super) fn new(s: Arc<Shared>, route: Route, t0: Instant) -> Ctx {
        Ctx { s, route, api: route.api(), t0, model: String::new(), overhead: Duration::ZERO, slot: None }
    }

    async fn run(&mut self, req: Request<Incoming>) -> Result<Response<Body>, EdgeError> {
        let (parts, body) = req.into_parts();
        let Some(secret) = presented_key(&parts.headers) else {
            return Err(EdgeError::Unauthorized(
                ("Tollgate: no API key given (send it in x-api-key or Authorization: Bearer)").into(),
            ));
        };
        let view = self.s.config.current();
        if view.index == 0 && !self.s.config.is_live() {
            return Err(EdgeError::Unavailable(
                ("Tollgate is starting: it has not yet received its config from the ledger").into(),
            ));
        }
        let Some(principal) = view.authenticate(secret).cloned() else {
            return Err(EdgeError::Unauthorized("Tollgate: invalid or revoked API key".into()));
        };
        let max = self.s.settings.max_concurrent_per_key;
        self.slot = Some(self.s.per_key.enter(&principal.key_id).ok_or_else(|| {
            EdgeError::Busy(format!(
                "Tollgate: this API key already has {max} requests in flight, the most the gateway allows per key; \
                     retry when one finishes"
            ))
        })?);
        let body = self.read_body(&parts, body).await?;
        if let Route::Models(api) = self.route {
            // Answered here, from the price book: each engineer sees the
            // models the gateway prices and their policy allows (Claude
            // Code's gateway model discovery waits 3 s and takes no redirect).
            return Ok(models_list(api, &view, &principal));
        }
        if self.api.upstream(&self.s.settings).api_key.is_none() {
            // A configuration problem no retry fixes: say so at once.
            let var = self.api.credential_var();
            return Err(EdgeError::Misconfigured(format!(
                "Tollgate has no credential for this provider: the gateway's operator must set {var} in its \
                     environment or config"
            )));
        }
        match self.route {
            Route::Messages | Route::ChatCompletions | Route::Responses => self.metered(parts, body, principal).await,
            Route::StoredResponse if !self.s.settings.stored_responses => Err(EdgeError::Forbidden(
                "Tollgate: stored responses all live in this gateway's one OpenAI account, where any key that \
                     knows an id could reach another user's, so it does not serve them (an operator can allow it \
                     with stored_responses = true)"
                    .into(),
            )),
            Route::CountTokens | Route::ResponseInputTokens | Route::StoredResponse | Route::Models(_) => {
                self.passthrough(parts, body, &view, &principal).await
            }
        }
    }

    /// The request body, within the size limit and the read timeout.
    async fn read_body(&self, parts: &hyper::http::request::Parts, body: Incoming) -> Result<Bytes, EdgeError> {
        let limit = self.s.settings.max_body_bytes;
        let declared = parts.headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(EdgeError::TooLarge(format!("Tollgate: the request body exceeds the {limit}-byte limit")));
        }
        match tokio::time::timeout(self.s.settings.body_read_timeout, Limited::new(body, limit).collect()).await {
            Err(_) => Err(EdgeError::BodyTimeout("Tollgate: timed out reading the request body".into())),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err(EdgeError::TooLarge(format!("Tollgate: the request body exceeds the {limit}-byte limit")))
            }
            Ok(Err(e)) => Err(EdgeError::BadRequest(format!("Tollgate: could not read the request body: {e}"))),
            Ok(Ok(b)) => Ok(b.to_bytes()),
        }
    }

    /// A request that is authenticated and policed but not charged
    /// (`count_tokens`): forwarded, its answer read whole (bounded).
    async fn passthrough(
        &mut self,
        parts: hyper::http::request::Parts,
        body: Bytes,
        view: &ConfigView,
        principal: &Principal,
    ) -> Result<Response<Body>, EdgeError> {
        let model = Head::parse(&body).ok().and_then(|h| h.model.map(|m| m.into_owned()));
        if let Some(model) = model {
            if !valid_model_id(&model) {
                return Err(EdgeError::BadRequest(invalid_model_message(&model)));
            }
            let listed = view.prices.lookup(&model).map(|p| p.id.clone());
            if let Err(scope) = view.check_policy(principal, &model, listed.as_deref()) {
                return Err(EdgeError::Forbidden(format!(
                    "Tollgate: model {model} is not allowed by the policy of {scope}"
                )));
            }
            self.model = model;
        }
        let up = self.forward(&parts, body).await?;
        let t = Instant::now();
        let (head, body) = up.into_parts();
        let body = match tokio::time::timeout(
            self.s.settings.upstream_timeout,
            Limited::new(body, self.s.settings.max_response_bytes).collect(),
        )
        .await
        {
            Ok(Ok(b)) => b.to_bytes(),
            _ => return Err(EdgeError::Upstream("Tollgate: the upstream response could not be read".into())),
        };
        self.overhead += t.elapsed();
        Ok(self.client_response(head, full(body), true))
    }

    /// The response to the client: upstream status and headers, `body`.
    fn client_response(&self, head: hyper::http::response::Parts, body: Body, keep_length: bool) -> Response<Body> {
        let mut r = Response::new(body);
        *r.status_mut() = head.status;
        let named = connection_named(&head.headers);
        for (name, value) in head.headers.iter() {
            if skip_response_header(name)
                || (!keep_length && name == "content-length")
                || named.iter().any(|n| n == name.as_str())
            {
                continue;
            }
            r.headers_mut().append(name.clone(), value.clone());
        }
        r
    }

    /// Sends the request upstream with the gateway's credential.
    async fn forward(
        &mut self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, EdgeError> {
        let upstream = self.api.upstream(&self.s.settings);
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri = format!("{}{pq}", upstream.url);
        let mut b = Request::builder().method(parts.method.clone()).uri(&uri);
        let named = connection_named(&parts.headers);
        let keep_metadata = self.s.settings.forward_client_metadata;
        for (name, value) in parts.headers.iter() {
            if skip_request_header(name)
                || named.iter().any(|n| n == name.as_str())
                || (!keep_metadata && name == "x-codex-turn-metadata")
            {
                continue;
            }
            b = b.header(name, value);
        }
        // A GET carries no body upstream, whatever the client sent: a body on
        // a pooled connection would desynchronise it.
        let body = if parts.method == Method::GET || parts.method == Method::HEAD { Bytes::new() } else { body };
        let key = upstream.api_key.as_deref().unwrap_or_default();
        let (name, value) = self.api.credential_header(key);
        b = b.header(name, value);
        let req = b
            .header("accept-encoding", "identity")
            .body(Full::new(body))
            .map_err(|e| EdgeError::Internal(format!("Tollgate: building the upstream request: {e}")))?;
        self.overhead += self.t0.elapsed();
        let sent = Instant::now();
        let result = tokio::time::timeout(self.s.settings.upstream_timeout, self.s.http.request(req)).await;
        self.s.metrics.upstream(sent.elapsed());
        match result {
            Err(_) => Err(EdgeError::UpstreamTimeout("Tollgate: the upstream did not answer in time".into())),
            Ok(Err(e)) => {
                // The details name internal addresses: for the log, not the client.
                tracing::warn!(upstream = %upstream.url, error = %e, "could not reach the upstream");
                Err(EdgeError::Upstream("Tollgate: could not reach the model provider; try again shortly".into()))
            }
            Ok(Ok(r)) if matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                // The client's key was fine (it got this far): the provider
                // refused the gateway's own credential. Its body describes
                // the company's account, so it stays in the log.
                tracing::error!(
                    upstream = %upstream.url, status = %r.status(),
                    "the provider refused the gateway's credential; check ANTHROPIC_API_KEY / OPENAI_API_KEY"
                );
                Err(EdgeError::UpstreamRefusedCredential(format!(
                    "Tollgate: the model provider refused this gateway's own credential (HTTP {}); the gateway is \
                     misconfigured: tell its operator",
                    r.status().as_u16()
                )))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    async fn metered(
        &mut self,
        parts: hyper::http::request::Parts,
        body: Bytes,
        principal: Principal,
    ) -> Result<Response<Body>, EdgeError> {
        let (adm, head, clamped_body) = self.admit(&parts, &body, principal).await?;
        // OpenAI streams report usage only when asked: ask, and hide the
        // extra chunk from a client that did not.
        let ask_usage = self.api.must_ask_for_usage(&head);
        let rewritten = match (&clamped_body, ask_usage) {
            (_, false) => None,
            (None, true) => head.with_include_usage(),
            (Some(b), true) => Head::parse(b).ok().and_then(|h| h.with_include_usage()),
        };
        drop(head);
        let strip_usage = rewritten.is_some();
        let body = rewritten.or(clamped_body).unwrap_or(body);
        let (reserved, clamped) = (adm.reserved, adm.clamped);
        let settler = Settler { s: self.s.clone(), adm, api: self.api, done: false, _slot: self.slot.take() };
        let up = match self.forward(&parts, body).await {
            Ok(r) => r,
            Err(e) => {
                settler.release();
                return Err(e);
            }
        };
        let after = Instant::now();
        let (head, up_body) = up.into_parts();
        if !head.status.is_success() {
            // The provider billed nothing: release, and pass its error through unmodified.
            settler.release();
            let bytes = match tokio::time::timeout(
                self.s.settings.upstream_timeout,
                Limited::new(up_body, MAX_ERROR_BODY).collect(),
            )
            .await
            {
                Ok(Ok(b)) => b.to_bytes(),
                _ => Bytes::new(),
            };
            self.overhead += after.elapsed();
            return Ok(self.client_response(head, full(bytes), false));
        }
        let is_sse = head
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if is_sse {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(STREAM_BUFFER);
            let idle = self.s.settings.stream_idle_timeout;
            tokio::spawn(settler.pump(up_body, tx, strip_usage, idle));
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            self.overhead += after.elapsed();
            return Ok(tag(self.client_response(head, BodyExt::boxed(body), false), reserved, clamped));
        }
        let limit = self.s.settings.max_response_bytes;
        let read = tokio::time::timeout(self.s.settings.upstream_timeout, Limited::new(up_body, limit).collect()).await;
        let t = Instant::now();
        let bytes = match read {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                // The provider may have done the work: charge the estimate.
                settler.settle_estimate();
                return Err(EdgeError::Upstream("Tollgate: the upstream response was cut short or too large".into()));
            }
        };
        settler.settle_json(&bytes);
        self.overhead += t.elapsed();
        Ok(tag(self.client_response(head, full(bytes), true), reserved, clamped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_keys() {
        let mut h = HeaderMap::new();
        assert_eq!(route(&Method::POST, "/v1/messages", &h).unwrap(), Route::Messages);
        assert_eq!(route(&Method::GET, "/v1/models", &h).unwrap(), Route::Models(Api::OpenAi));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(route(&Method::GET, "/v1/models", &h).unwrap(), Route::Models(Api::Anthropic));
        assert_eq!(route(&Method::GET, "/v1/messages", &h).unwrap_err().status, 405);
        assert_eq!(route(&Method::POST, "/v2/nothing", &h).unwrap_err().status, 404);
        // The Responses API: metered create and compact, the stored-response
        // routes forwarded, anything else an OpenAI-shaped 404 or 405.
        let r = |m: Method, p: &str| route(&m, p, &HeaderMap::new());
        assert_eq!(r(Method::POST, "/v1/responses").unwrap(), Route::Responses);
        assert_eq!(r(Method::POST, "/v1/responses/compact").unwrap(), Route::Responses);
        assert_eq!(r(Method::POST, "/v1/responses/input_tokens").unwrap(), Route::ResponseInputTokens);
        assert_eq!(r(Method::GET, "/v1/responses/resp_abc123").unwrap(), Route::StoredResponse);
        assert_eq!(r(Method::DELETE, "/v1/responses/resp_abc123").unwrap(), Route::StoredResponse);
        assert_eq!(r(Method::POST, "/v1/responses/resp_abc123/cancel").unwrap(), Route::StoredResponse);
        assert_eq!(r(Method::GET, "/v1/responses/resp_abc123/input_items").unwrap(), Route::StoredResponse);
        let mut ws = HeaderMap::new();
        ws.insert("upgrade", HeaderValue::from_static("websocket"));
        let e = route(&Method::GET, "/v1/responses", &ws).unwrap_err();
        assert_eq!(e.status, 426);
        assert!(e.body.contains("not WebSocket"), "{}", e.body);
        let wrong = r(Method::POST, "/v1/responses/resp_abc123").unwrap_err();
        assert_eq!(wrong.status, 405);
        assert!(wrong.body.contains("accepts GET or DELETE only") && wrong.body.contains("invalid_request_error"));
        for p in ["/v1/responses/resp_1/other", "/v1/responses/a%2Fb", "/v1/responses/"] {
            let e = r(Method::GET, p).unwrap_err();
            assert_eq!(e.status, 404, "{p}");
            let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
            assert!(v["error"]["message"].as_str().unwrap().contains("no route for GET"), "{p}: {v}");
        }
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer  tg-abc "));
        assert_eq!(presented_key(&h), Some("tg-abc"));
        h.insert("x-api-key", HeaderValue::from_static("tg-xyz"));
        assert_eq!(presented_key(&h), Some("tg-xyz"));
    }
}
