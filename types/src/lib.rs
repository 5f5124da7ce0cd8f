//! Tollgate's shared types, a leaf crate: money ([`money`]), UTC periods
//! ([`period`]), scopes, modes, usage, denials and model prices
//! ([`domain`]), their wire conversions ([`wire`]), and the metrics registry
//! the ledger's and the edge's `/metrics` render ([`prom`]), and the one
//! backoff every retry loop paces itself with ([`backoff`]). The
//! edge and the admin client use these without depending on the ledger
//! (openraft, sled).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod domain;
pub mod money;
pub mod period;
pub mod prom;
pub mod wire;
