//! Errors in the caller's own protocol shape. A client of the Anthropic API
//! must get Anthropic's error JSON, an OpenAI client OpenAI's, so its SDK
//! and retry logic read them as they would the provider's own.
//!
//! Budget denials are **402**: Claude Code shows a 402's message at once,
//! while a 429 would make it retry for a minute.

use tollgate_types::domain::Denial;
use tollgate_types::money::NanoUsd;
use tollgate_types::period::utc_rfc3339;

pub use crate::provider::Api;

/// An error response: HTTP status and JSON body, and what it tells the
/// client about retrying (Claude Code reads `x-should-retry` and
/// `retry-after` as it does on the provider's own errors, and shows an
/// error it should not retry at once instead of retrying for a minute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    pub status: u16,
    pub body: String,
    /// `x-should-retry`: whether asking again can succeed.
    pub should_retry: bool,
    /// `retry-after`, in whole seconds.
    pub retry_after_secs: Option<u64>,
}

impl ErrorResponse {
    /// Says that retrying cannot fix this one (or can), whatever the status.
    pub fn retryable(mut self, yes: bool) -> Self {
        self.should_retry = yes;
        if !yes {
            self.retry_after_secs = None;
        }
        self
    }
}

/// Every error the gateway answers with itself, by what went wrong. The
/// one place each becomes a status, retry advice and a body in the
/// caller's protocol is [`EdgeError::in_shape`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    /// 400: the request itself is wrong (body, model, limits, price).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no key, or one that is unknown or revoked.
    #[error("{0}")]
    Unauthorized(String),
    /// 402: a hard budget has no room for the request.
    #[error("budget denied")]
    BudgetDenied(Box<Denial>),
    /// 403: a policy does not allow the model.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such route.
    #[error("{0}")]
    NoRoute(String),
    /// 405: the route takes another method.
    #[error("{0}")]
    WrongMethod(String),
    /// 408: the request body did not arrive in time.
    #[error("{0}")]
    BodyTimeout(String),
    /// 413: the request body is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 426: a WebSocket the gateway does not proxy; HTTP serves the same.
    #[error("{0}")]
    UpgradeRequired(String),
    /// 429: too many requests of one key at once.
    #[error("{0}")]
    Busy(String),
    /// 500: the gateway cannot serve this as configured (no credential):
    /// retrying cannot help.
    #[error("{0}")]
    Misconfigured(String),
    /// 500: something the gateway did not expect.
    #[error("{0}")]
    Internal(String),
    /// 502: the provider could not be reached or its answer read.
    #[error("{0}")]
    Upstream(String),
    /// 502: the provider refused the gateway's own credential: retrying
    /// cannot help until the operator fixes it.
    #[error("{0}")]
    UpstreamRefusedCredential(String),
    /// 503: starting, a settlement backlog, or the ledger out of reach.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the provider did not answer in time.
    #[error("{0}")]
    UpstreamTimeout(String),
}

impl EdgeError {
    pub fn status(&self) -> u16 {
        match self {
            EdgeError::BadRequest(_) => 400,
            EdgeError::Unauthorized(_) => 401,
            EdgeError::BudgetDenied(_) => 402,
            EdgeError::Forbidden(_) => 403,
            EdgeError::NoRoute(_) => 404,
            EdgeError::WrongMethod(_) => 405,
            EdgeError::BodyTimeout(_) => 408,
            EdgeError::TooLarge(_) => 413,
            EdgeError::UpgradeRequired(_) => 426,
            EdgeError::Busy(_) => 429,
            EdgeError::Misconfigured(_) | EdgeError::Internal(_) => 500,
            EdgeError::Upstream(_) | EdgeError::UpstreamRefusedCredential(_) => 502,
            EdgeError::Unavailable(_) => 503,
            EdgeError::UpstreamTimeout(_) => 504,
        }
    }

    /// The response in `api`'s shape: status, body and retry advice.
    pub fn in_shape(&self, api: Api) -> ErrorResponse {
        self.in_shape_for(api, Client::Other)
    }

    /// The response in `api`'s shape as `client` must get it: for Codex a
    /// refusal for what the request is (budget 402, policy 403) is a 400,
    /// the one such status it neither retries nor replaces with a message
    /// of its own, and the gateway's 429 (too many requests of one key in
    /// flight), which Codex would not retry, a 503, which it does.
    pub fn in_shape_for(&self, api: Api, client: Client) -> ErrorResponse {
        let (status, message, code) = match self {
            EdgeError::BudgetDenied(d) => (402, denial_message(d), Some("budget_exceeded")),
            other => (other.status(), other.to_string(), None),
        };
        let status = match (client, status) {
            (Client::Codex, 402 | 403) => 400,
            (Client::Codex, 429) => 503,
            _ => status,
        };
        let r = error(api, status, &message, code);
        // A 502 is retryable, but not when the provider refused our credential.
        if matches!(self, EdgeError::UpstreamRefusedCredential(_)) {
            return r.retryable(false);
        }
        r
    }
}

/// Who is calling, where that changes how an error must be answered to be
/// shown. Codex CLI 0.171 retries a 402 or 403 five times (about 6.5 s)
/// before it shows the message, shows a 429's `insufficient_quota` as its
/// own generic "Quota exceeded" text, and reads neither `x-should-retry`
/// nor `retry-after`; a 400 it shows at once, the gateway's message and
/// all. SDKs get the provider's own statuses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Client {
    #[default]
    Other,
    /// `originator: codex_…` (`codex_exec`, `codex_cli_rs`, `codex_vscode`).
    Codex,
}

impl Client {
    pub fn from_headers(h: &hyper::HeaderMap) -> Client {
        let originator = h.get("originator").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if originator.starts_with("codex") {
            Client::Codex
        } else {
            Client::Other
        }
    }
}

/// Whether a gateway error of `status` is worth retrying, and after how
/// long: busy or starting (429, 503) after a short pause, timeouts and an
/// unreachable provider (408, 502, 504) at once; a request the gateway
/// refuses for what it is (4xx: key, policy, budget, input) or cannot
/// serve as configured (500) is never retried.
fn retry_policy(status: u16) -> (bool, Option<u64>) {
    match status {
        429 => (true, Some(1)),
        503 => (true, Some(2)),
        408 | 502 | 504 => (true, None),
        _ => (false, None),
    }
}

/// An error of `status` with `message`, in `api`'s shape.
fn error(api: Api, status: u16, message: &str, code: Option<&str>) -> ErrorResponse {
    let body = api.error_body(status, message, code);
    let (should_retry, retry_after_secs) = retry_policy(status);
    ErrorResponse { status, body: body.to_string(), should_retry, retry_after_secs }
}

/// A budget denial's message, naming the scope, spent, limit and reset.
fn denial_message(d: &Denial) -> String {
    let model = d.model.as_deref().map(|m| format!(" for model {m}")).unwrap_or_default();
    let resets = match d.resets_at_ms {
        Some(ms) => format!("it resets at {}", utc_rfc3339(ms)),
        None => "it does not reset (total budget)".to_string(),
    };
    format!(
        "Tollgate: the {} budget of {}{model} is exhausted: {} spent and {} held of {} limit; \
         this request needs up to {} more; {resets}. Ask your admin to raise it.",
        d.period.as_str(),
        d.scope,
        d.spent,
        d.held,
        d.limit,
        NanoUsd(d.requested.0),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tollgate_types::domain::Scope;
    use tollgate_types::period::Period;

    use super::*;

    fn denial() -> Denial {
        Denial {
            scope: Scope::Team("eng".into()),
            model: None,
            limit: NanoUsd(250_000_000_000),
            spent: NanoUsd(249_990_000_000),
            held: NanoUsd(1_000_000),
            requested: NanoUsd(520_000_000),
            period: Period::Monthly,
            resets_at_ms: Some(1_796_083_200_000), // 2026-12-01T00:00:00Z
            leased: NanoUsd::ZERO,
        }
    }

    #[test]
    fn anthropic_402_is_a_billing_error_naming_scope_spent_limit_and_reset() {
        let r = EdgeError::BudgetDenied(Box::new(denial())).in_shape(Api::Anthropic);
        assert_eq!(r.status, 402);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "billing_error");
        let msg = v["error"]["message"].as_str().unwrap();
        for part in ["team:eng", "$249.99 spent", "$250.00 limit", "$0.52 more", "2026-12-01T00:00:00Z", "monthly"] {
            assert!(msg.contains(part), "{part:?} missing from {msg}");
        }
    }

    #[test]
    fn openai_402_is_insufficient_quota_with_budget_exceeded_code() {
        let mut d = denial();
        d.resets_at_ms = None;
        d.period = Period::Total;
        d.model = Some("gpt-5".into());
        let v: Value =
            serde_json::from_str(&EdgeError::BudgetDenied(Box::new(d.clone())).in_shape(Api::OpenAi).body).unwrap();
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["param"], Value::Null);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("for model gpt-5") && msg.contains("does not reset"), "{msg}");
    }

    #[test]
    fn gateway_errors_say_whether_a_retry_can_help() {
        let r = |status| {
            let e = error(Api::Anthropic, status, "m", None);
            (e.should_retry, e.retry_after_secs)
        };
        assert_eq!(r(429), (true, Some(1)));
        assert_eq!(r(503), (true, Some(2)));
        assert_eq!(r(504), (true, None));
        for status in [400, 401, 402, 403, 404, 413, 500] {
            assert_eq!(r(status), (false, None), "{status}");
        }
        assert!(!EdgeError::BudgetDenied(Box::new(denial())).in_shape(Api::OpenAi).should_retry);
        assert_eq!(error(Api::Anthropic, 503, "m", None).retryable(false).retry_after_secs, None);
    }

    #[test]
    fn statuses_map_to_each_providers_types() {
        let t = |api, status| {
            let v: Value = serde_json::from_str(&error(api, status, "m", None).body).unwrap();
            v["error"]["type"].as_str().unwrap().to_string()
        };
        assert_eq!(t(Api::Anthropic, 401), "authentication_error");
        assert_eq!(t(Api::Anthropic, 403), "permission_error");
        assert_eq!(t(Api::Anthropic, 413), "request_too_large");
        assert_eq!(t(Api::Anthropic, 503), "api_error");
        assert_eq!(t(Api::OpenAi, 401), "authentication_error");
        assert_eq!(t(Api::OpenAi, 503), "server_error");
    }

    #[test]
    fn each_edge_error_has_one_status_and_retry_advice() {
        let m = || "m".to_string();
        let cases = [
            (EdgeError::BadRequest(m()), 400, false, None),
            (EdgeError::Unauthorized(m()), 401, false, None),
            (EdgeError::BudgetDenied(Box::new(denial())), 402, false, None),
            (EdgeError::Forbidden(m()), 403, false, None),
            (EdgeError::NoRoute(m()), 404, false, None),
            (EdgeError::WrongMethod(m()), 405, false, None),
            (EdgeError::BodyTimeout(m()), 408, true, None),
            (EdgeError::TooLarge(m()), 413, false, None),
            (EdgeError::UpgradeRequired(m()), 426, false, None),
            (EdgeError::Busy(m()), 429, true, Some(1)),
            (EdgeError::Misconfigured(m()), 500, false, None),
            (EdgeError::Internal(m()), 500, false, None),
            (EdgeError::Upstream(m()), 502, true, None),
            (EdgeError::UpstreamRefusedCredential(m()), 502, false, None),
            (EdgeError::Unavailable(m()), 503, true, Some(2)),
            (EdgeError::UpstreamTimeout(m()), 504, true, None),
        ];
        for (e, status, retry, after) in cases {
            for api in [Api::Anthropic, Api::OpenAi] {
                let r = e.in_shape(api);
                assert_eq!((r.status, r.should_retry, r.retry_after_secs), (status, retry, after), "{e:?}");
                let v: Value = serde_json::from_str(&r.body).unwrap();
                assert!(v["error"]["message"].as_str().is_some_and(|s| !s.is_empty()), "{e:?} {v}");
            }
        }
        let openai = EdgeError::BudgetDenied(Box::new(denial())).in_shape(Api::OpenAi);
        assert!(openai.body.contains("budget_exceeded"), "{}", openai.body);
    }

    #[test]
    fn codex_gets_refusals_as_400s_it_shows_at_once_with_the_gateways_message() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(Client::from_headers(&h), Client::Other);
        h.insert("originator", "codex_exec".parse().unwrap());
        assert_eq!(Client::from_headers(&h), Client::Codex);
        let denied = EdgeError::BudgetDenied(Box::new(denial()));
        let sdk = denied.in_shape_for(Api::OpenAiResponses, Client::Other);
        let codex = denied.in_shape_for(Api::OpenAiResponses, Client::Codex);
        assert_eq!((sdk.status, codex.status), (402, 400));
        let (s, c): (Value, Value) =
            (serde_json::from_str(&sdk.body).unwrap(), serde_json::from_str(&codex.body).unwrap());
        assert_eq!(c["error"]["message"], s["error"]["message"]);
        assert!(c["error"]["message"].as_str().unwrap().starts_with("Tollgate: the monthly budget of team:eng"));
        assert_eq!(
            (c["error"]["code"].as_str(), c["error"]["type"].as_str()),
            (Some("budget_exceeded"), Some("invalid_request_error"))
        );
        assert!(!codex.should_retry);
        let policy = EdgeError::Forbidden("Tollgate: model m is not allowed".into());
        assert_eq!(policy.in_shape_for(Api::OpenAiResponses, Client::Codex).status, 400);
        // A 429 Codex would not retry; a 503 it does, after retry-after.
        let busy = EdgeError::Busy("b".into()).in_shape_for(Api::OpenAiResponses, Client::Codex);
        assert_eq!((busy.status, busy.should_retry, busy.retry_after_secs), (503, true, Some(2)));
        assert_eq!(EdgeError::Busy("b".into()).in_shape_for(Api::OpenAiResponses, Client::Other).status, 429);
        assert_eq!(EdgeError::Unavailable("u".into()).in_shape_for(Api::OpenAiResponses, Client::Codex).status, 503);
    }
}
