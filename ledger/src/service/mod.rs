//! The ledger node's gRPC services, one per file: Raft RPCs between nodes
//! ([`RaftRpc`], `raft.rs`), the edge-facing [`LedgerApi`] (`ledger.rs`)
//! and the operator's [`AdminApi`] (`admin.rs`). All of them are thin: they
//! validate, convert, and hand commands to the proposer or read the
//! applied state. They never touch storage or Raft's internals directly.

mod admin;
mod ledger;
mod raft;

use tollgate_proto::v1 as pb;

use crate::state::Outcome;

pub use admin::AdminApi;
pub use ledger::LedgerApi;
pub use raft::RaftRpc;

/// The most items one Reserve/Settle/Release/Extend call may carry.
pub const MAX_ITEMS_PER_CALL: usize = 4096;

/// An outcome a call did not expect (a state machine bug), as an item error.
fn unexpected(o: &Outcome) -> pb::ItemError {
    pb::ItemError { code: "internal".to_string(), message: format!("unexpected outcome {o:?}") }
}
