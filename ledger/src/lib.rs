//! Tollgate's budget ledger: the pure budget state machine ([`state`]), its
//! openraft glue over sled ([`store`], [`network`]), group commit
//! ([`proposer`]) and the ledger, admin and Raft gRPC servers ([`server`]).
//! Only this crate knows openraft and sled.
#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod convert;
pub mod metrics;
pub mod money;
pub mod network;
pub mod node;
pub mod prom;
pub mod proposer;
pub mod raft_types;
pub mod server;
pub mod state;
pub mod store;
