//! The `tollgate` binary's own parts (`src/main.rs` composes the roles:
//! the ledger from `tollgate-ledger`, the edge from `tollgate-edge`, the
//! admin CLI from `tollgate-client`): `tollgate cert` and a ledger node's
//! operations endpoints.
#![forbid(unsafe_code)]

pub mod cert_cli;
pub mod ops_http;
