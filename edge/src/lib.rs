//! Tollgate's edge gateway: the process AI tools talk to. It authenticates
//! a virtual key against the config the ledger streams, checks policy,
//! prices the request ([`pricing`]), reserves against the budget ledger over
//! gRPC, forwards to the provider, meters the response ([`meter`]) and
//! settles through a durable outbox ([`edge`]). Its settings come from
//! [`config`]; its errors take each provider's shape ([`errors`]); what
//! differs between the providers' APIs is in [`provider`].
//!
//! It depends on the ledger only through the wire (`tollgate-proto`) and
//! the shared types (`tollgate-types`), never on the ledger's crate.
#![forbid(unsafe_code)]

pub mod config;
pub mod edge;
pub mod errors;
pub mod meter;
pub mod pricing;
pub mod provider;
