//! What the edge answers itself, without the provider: the operations
//! endpoints and the model list (from the price book, by policy).

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::proxy::{plain, Body};
use super::watch::{ConfigView, Principal};
use super::Shared;
use crate::errors::Api;
use crate::pricing::Price;

/// `/healthz`, `/readyz` and `/metrics`, if `req` asks for one.
pub(super) fn ops(s: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != Method::GET {
        return None;
    }
    Some(match req.uri().path() {
        "/healthz" => plain(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if s.config.is_live() => {
            let index = s.config.current().index;
            plain(StatusCode::OK, "text/plain", format!("ready (config index {index})\n"))
        }
        "/readyz" => {
            plain(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: the config watch is not current\n".into())
        }
        "/metrics" => {
            if let Some(leases) = &s.leases {
                s.metrics.lease_room.set(leases.room() as f64);
            }
            let mut text = s.metrics.render(s.outbox.depth(), s.fail_open.outstanding());
            if let Some(more) = &s.embedded {
                text.push_str(&more());
            }
            plain(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        _ => return None,
    })
}

/// The `--ops-listen` listener: the operations endpoints and nothing else.
pub(crate) fn ops_only(s: &Shared, req: &Request<Incoming>) -> Response<Body> {
    ops(s, req).unwrap_or_else(|| {
        plain(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this port serves /healthz, /readyz and /metrics\n".into(),
        )
    })
}

/// `GET /v1/models` in `api`'s shape: the listed models of that provider
/// that every policy on the caller's chain allows.
pub(super) fn models_list(api: Api, view: &ConfigView, principal: &Principal) -> Response<Body> {
    let provider = api.provider();
    let allowed: Vec<&Price> = view
        .prices
        .models()
        .filter(|m| m.provider.is_none_or(|p| p == provider))
        .filter(|m| view.check_policy(principal, &m.id, Some(&m.id)).is_ok())
        .map(|m| m.as_ref())
        .collect();
    plain(StatusCode::OK, "application/json", api.models_list(&allowed).to_string())
}
