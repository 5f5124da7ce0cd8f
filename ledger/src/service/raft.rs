//! Raft RPCs between ledger nodes, and proposals forwarded to the leader.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::MAX_ITEMS_PER_CALL;
use crate::auth::{token_matches, Gate};
use crate::proposer::{ForwardRequest, Proposer};
use crate::raft_types::{NodeId, Raft, TypeConfig};
use crate::state::{AdminOp, Command};
use crate::store::StateMachineStore;

fn decode<T: serde::de::DeserializeOwned>(p: &pb::RaftPayload) -> Result<T, Status> {
    crate::codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    crate::codec::encode(v)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding raft payload: {e}")))
}

/// Raft RPCs between ledger nodes, plus forwarded proposals. Served only
/// to member ledgers (an interceptor checks the certificate); a message
/// that names its sender must come from that sender's certificate.
pub struct RaftRpc {
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    pub gate: Gate,
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let started = std::time::Instant::now();
        let bytes = req.get_ref().data.len();
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        let n = rpc.entries.len();
        let decoded = started.elapsed();
        let out = encode(&self.raft.append_entries(rpc).await);
        tracing::debug!(
            entries = n,
            bytes,
            decode_us = decoded.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "append_entries served"
        );
        out
    }

    async fn install_snapshot(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn propose(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let fwd: ForwardRequest = decode(req.get_ref())?;
        if fwd.cmds.len() > MAX_ITEMS_PER_CALL * 4 {
            return Err(Status::invalid_argument("forwarded batch is too large"));
        }
        // The admin token's hash is registered only by the bootstrap node
        // itself, as its leader: never from a forwarded proposal, so no
        // caller can race it in with a hash of its own.
        if fwd.cmds.iter().any(|c| matches!(c, Command::Admin { op: AdminOp::SetAdminToken { .. }, .. })) {
            return Err(Status::permission_denied(
                "the admin token is registered only by the bootstrap node itself, never through a forwarded proposal",
            ));
        }
        // Config changes need the admin token here too.
        if fwd.cmds.iter().any(|c| matches!(c, Command::Admin { .. })) {
            let want = self.sm.read(|a| a.state.admin_token_sha256.clone());
            let ok = matches!((&fwd.admin_token, want), (Some(t), Some(w)) if token_matches(t, &w));
            if !ok {
                return Err(Status::permission_denied("forwarded admin commands need a valid admin token"));
            }
        }
        encode(&self.proposer.submit_forwarded(fwd.cmds).await)
    }
}
