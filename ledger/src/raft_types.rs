//! The openraft type configuration of the ledger.

use serde::{Deserialize, Serialize};

use crate::state::{Batch, Outcome};

/// What applying one entry returns: one outcome per command of its batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerResponse(pub Vec<Outcome>);

openraft::declare_raft_types!(
    /// The ledger's Raft types: entries carry [`Batch`]es of budget commands.
    pub TypeConfig:
        D = Batch,
        R = LedgerResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A snapshot's bytes: the bincode of the applied state.
pub type SnapshotData = Vec<u8>;

pub type NodeId = u64;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
/// Raft's metrics as they change (`Raft::metrics`).
pub type MetricsWatch = openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics>;
