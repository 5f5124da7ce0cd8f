//! Which headers cross the edge: what the provider must not see from the
//! client (its credential, cookies, addresses, hop-by-hop headers) and what
//! the client must not see from the provider (cookies, the company's
//! organisation ids). Everything else passes through untouched.

use hyper::header::{HeaderMap, HeaderName};

/// Hop-by-hop headers, those the edge sets itself, the client's cookies and
/// the client's forwarding headers (its addresses are not the provider's
/// business).
pub(super) fn skip_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "x-api-key"
            | "authorization"
            | "accept-encoding"
            | "cookie"
            | "forwarded"
            | "via"
            | "x-real-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
    ) || name.as_str().starts_with("x-forwarded-")
}

/// Hop-by-hop headers, cookies the provider sets, and the provider's
/// account identifiers (the company's organisation is not the client's).
pub(super) fn skip_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "set-cookie"
            | "anthropic-organization-id"
            | "openai-organization"
            | "openai-project"
    )
}

/// Header names listed in `Connection` (hop-by-hop by declaration).
pub(super) fn connection_named(h: &HeaderMap) -> Vec<String> {
    h.get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}
