//! Raft RPCs between ledger nodes, and proposals forwarded to the leader.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokio::sync::Semaphore;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::MAX_ITEMS_PER_CALL;
use crate::auth::{same_sender, token_matches, Gate};
use crate::network::{SnapshotHeader, MAX_SNAPSHOT_BYTES};
use crate::proposer::{ForwardRequest, Proposer};
use crate::raft_types::{Snapshot, TypeConfig};
use crate::state::{AdminOp, Command};
use crate::store::Raft;
use crate::store::StateMachineStore;

fn decode<T: serde::de::DeserializeOwned>(p: &pb::RaftPayload) -> Result<T, Status> {
    crate::codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn payload<T: serde::Serialize>(v: &T) -> Result<pb::RaftPayload, Status> {
    crate::codec::encode(v)
        .map(|data| pb::RaftPayload { data })
        .map_err(|e| Status::internal(format!("encoding raft payload: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    payload(v).map(Response::new)
}

/// Raft has stopped on this node (shutting down, or a storage failure).
fn stopped(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft stopped: {e}"))
}

/// How long a snapshot's sender may leave the receiver without its next part.
const SNAPSHOT_PART_TIMEOUT: Duration = Duration::from_secs(10);

/// The next part of a snapshot stream, if its sender sends it in time.
async fn next_part(parts: &mut Streaming<pb::RaftPayload>) -> Result<Option<pb::RaftPayload>, Status> {
    match tokio::time::timeout(SNAPSHOT_PART_TIMEOUT, parts.next()).await {
        Ok(p) => p.transpose(),
        Err(_) => Err(Status::deadline_exceeded(format!("no part of the snapshot for {SNAPSHOT_PART_TIMEOUT:?}"))),
    }
}

type AppendStream = Pin<Box<dyn Stream<Item = Result<pb::RaftPayload, Status>> + Send>>;

/// Raft RPCs between ledger nodes, plus forwarded proposals. Served only
/// to member ledgers (an interceptor checks the certificate); a message
/// that names its sender must come from that sender's certificate.
pub struct RaftRpc {
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    pub gate: Gate,
    /// One snapshot received at a time (openraft installs one at a time).
    pub snapshots: Arc<Semaphore>,
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().node_id)?;
        encode(&self.raft.append_entries(rpc).await.map_err(stopped)?)
    }

    type StreamAppendStream = AppendStream;

    async fn stream_append(&self, req: Request<Streaming<pb::RaftPayload>>) -> Result<Response<AppendStream>, Status> {
        let caller = self.gate.member(&req)?;
        // A message that cannot be read, or that speaks for another node,
        // ends the stream; its answer is that refusal, after the answers to
        // what came before it.
        let refused: Arc<Mutex<Option<Status>>> = Arc::default();
        let refuse = refused.clone();
        let gate = self.gate.clone();
        let requests = req.into_inner().scan((), move |_, msg| {
            let checked = msg.and_then(|p| {
                let started = std::time::Instant::now();
                let rpc: AppendEntriesRequest<TypeConfig> = decode(&p)?;
                same_sender(caller, rpc.vote.leader_id().node_id)?;
                gate.still_member(caller)?;
                tracing::debug!(
                    entries = rpc.entries.len(),
                    bytes = p.data.len(),
                    decode_us = started.elapsed().as_micros() as u64,
                    "append received"
                );
                Ok(rpc)
            });
            let next = match checked {
                Ok(rpc) => Some(rpc),
                Err(s) => {
                    *refuse.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                    None
                }
            };
            futures::future::ready(next)
        });
        let answers = self.raft.stream_append(requests).map(|r| match r {
            Ok(result) => payload(&result),
            Err(fatal) => Err(stopped(fatal)),
        });
        let refusal = futures::stream::once(async move { refused.lock().unwrap_or_else(|p| p.into_inner()).take() })
            .filter_map(|s| async move { s.map(Err) });
        Ok(Response::new(Box::pin(answers.chain(refusal))))
    }

    async fn install_full_snapshot(
        &self,
        req: Request<Streaming<pb::RaftPayload>>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        let caller = self.gate.member(&req)?;
        let Ok(_one) = self.snapshots.clone().try_acquire_owned() else {
            return Err(Status::unavailable("a snapshot is already being received"));
        };
        let mut parts = req.into_inner();
        let first = next_part(&mut parts).await?.ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        let header: SnapshotHeader = decode(&first)?;
        same_sender(caller, header.vote.leader_id().node_id)?;
        let size = usize::try_from(header.bytes).unwrap_or(usize::MAX);
        if size > MAX_SNAPSHOT_BYTES {
            return Err(Status::invalid_argument(format!(
                "a snapshot of {size} bytes is over this node's limit of {MAX_SNAPSHOT_BYTES}"
            )));
        }
        // Grown as the chunks arrive, never sized by the header alone.
        let mut data = Vec::new();
        while let Some(chunk) = next_part(&mut parts).await? {
            if data.len() + chunk.data.len() > size {
                return Err(Status::invalid_argument("the snapshot's data is longer than its header says"));
            }
            data.extend_from_slice(&chunk.data);
        }
        if data.len() != size {
            return Err(Status::invalid_argument("the snapshot's data is shorter than its header says"));
        }
        let snapshot = Snapshot { meta: header.meta, snapshot: data };
        encode(&self.raft.install_full_snapshot(header.vote, snapshot).await.map_err(stopped)?)
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().node_id)?;
        encode(&self.raft.vote(rpc).await.map_err(stopped)?)
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
