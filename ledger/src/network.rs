//! Raft RPCs between ledger nodes over tonic. The gRPC message is only an
//! envelope: openraft's own request and response types travel inside it in
//! the ledger's binary encoding ([`crate::codec`]).
//!
//! Replication to a follower is one long-lived bidirectional stream
//! (`StreamAppend`): the leader sends each new run of entries as soon as it
//! is in its log, without waiting for the answer to the previous one, and
//! the follower answers in order. Across regions that is what makes a
//! commit cost one round trip: with one request in flight per follower, a
//! new entry waited behind the one being answered and behind the empty
//! request that told the follower of the last commit.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tollgate_proto::v1::raft_service_client::RaftServiceClient;
use tollgate_proto::v1::RaftPayload;
use tollgate_tls::ClusterTls;
use tonic::transport::Channel;

use crate::raft_types::{NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

/// The largest gRPC message between ledger nodes (append batches, snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A snapshot travels in chunks of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// The largest snapshot a node accepts: it is assembled in memory.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

/// The first message of a snapshot stream: who sends it and what it covers;
/// the chunks of its data follow.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub bytes: u64,
}

/// A lazily connected channel to a peer at `addr` (`host:port`), over the
/// cluster's mutual TLS when `tls` is set.
pub fn channel(addr: &str, tls: Option<Arc<ClusterTls>>) -> Result<Channel, tonic::transport::Error> {
    tollgate_tls::channel(addr, tls, |e| {
        e.connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
    })
}

pub fn raft_client(
    addr: &str,
    tls: Option<Arc<ClusterTls>>,
) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
    Ok(RaftServiceClient::new(channel(addr, tls)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Builds one [`PeerClient`] per replication target.
#[derive(Clone, Default)]
pub struct Network {
    pub tls: Option<Arc<ClusterTls>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient { target, client: raft_client(&node.addr, self.tls.clone()).map_err(|e| e.to_string()) }
    }
}

pub struct PeerClient {
    target: NodeId,
    /// An address that cannot even form a URI fails every call as unreachable.
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

/// A gRPC failure as openraft takes it: connection-level failures back off
/// before the next try, the rest are retried at once.
fn rpc_error(s: tonic::Status) -> RPCError<TypeConfig> {
    if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
        RPCError::Unreachable(Unreachable::new(&s))
    } else {
        RPCError::Network(NetworkError::new(&s))
    }
}

fn decode_reply<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, RPCError<TypeConfig>> {
    crate::codec::decode(&p.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

fn envelope<T: Serialize>(v: &T) -> Result<RaftPayload, RPCError<TypeConfig>> {
    crate::codec::encode(v).map(|data| RaftPayload { data }).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl PeerClient {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        match &self.client {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(envelope(&rpc)?);
        request.set_timeout(option.hard_ttl());
        let reply = self.client()?.append_entries(request).await.map_err(rpc_error)?;
        decode_reply(reply.get_ref())
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut client = self.client()?;
            // Counted as they leave and as their answers come, so a follower
            // that stops answering is noticed within the soft ttl, however
            // long the stream has been idle before.
            let sent = Arc::new(AtomicU64::new(0));
            let counted = sent.clone();
            // A request that cannot be encoded ends the stream (never skipped:
            // the answers must match the requests one for one); openraft
            // starts a new one for what was left unanswered.
            let requests = input.scan((), move |_, rpc| {
                let next = match crate::codec::encode(&rpc) {
                    Ok(data) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        Some(RaftPayload { data })
                    }
                    Err(e) => {
                        tracing::error!("encoding an append request: {e}");
                        None
                    }
                };
                futures::future::ready(next)
            });
            let setup = tokio::time::timeout(option.soft_ttl(), client.stream_append(requests));
            let responses = match setup.await {
                Ok(r) => r.map_err(rpc_error)?.into_inner(),
                Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&Msg("stream setup timed out".into())))),
            };
            let ttl = option.soft_ttl();
            let state = Some((responses, sent, 0u64));
            let answers = futures::stream::unfold(state, move |state| async move {
                let (mut responses, sent, got) = state?;
                let next = if sent.load(Ordering::SeqCst) > got {
                    match tokio::time::timeout(ttl, responses.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            let e = Unreachable::new(&Msg(format!("no answer to an append within {ttl:?}")));
                            return Some((Err(RPCError::Unreachable(e)), None));
                        }
                    }
                } else {
                    responses.next().await
                };
                let item = match next? {
                    Ok(p) => decode_reply::<StreamAppendResult<TypeConfig>>(&p),
                    Err(s) => Err(rpc_error(s)),
                };
                // An error, or a refusal from the follower, ends the stream.
                let go_on = matches!(item, Ok(Ok(_)));
                Some((item, go_on.then_some((responses, sent, got + 1))))
            })
            .boxed();
            Ok(answers)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut request = tonic::Request::new(envelope(&rpc)?);
        request.set_timeout(option.hard_ttl());
        let reply = self.client()?.vote(request).await.map_err(rpc_error)?;
        decode_reply(reply.get_ref())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(streaming_error)?;
        let header = SnapshotHeader { vote, meta: snapshot.meta, bytes: snapshot.snapshot.len() as u64 };
        let first = envelope(&header).map_err(streaming_error)?;
        let data = snapshot.snapshot;
        let chunks: Vec<RaftPayload> =
            data.chunks(SNAPSHOT_CHUNK_BYTES).map(|c| RaftPayload { data: c.to_vec() }).collect();
        // openraft's snapshot timeout, for each chunk and for the answer.
        let budget = option.soft_ttl() * (chunks.len() as u32 + 1);
        let messages = futures::stream::iter(std::iter::once(first).chain(chunks));
        tracing::debug!(target = self.target, bytes = data.len(), "sending a snapshot");
        let send = tokio::time::timeout(budget, client.install_full_snapshot(messages));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = send => {
                let Ok(reply) = reply else {
                    let e = Msg(format!("the snapshot was not installed within {budget:?}"));
                    return Err(StreamingError::Unreachable(Unreachable::new(&e)));
                };
                let reply = reply.map_err(|s| streaming_error(rpc_error(s)))?;
                decode_reply(reply.get_ref()).map_err(streaming_error)
            }
        }
    }
}

fn streaming_error(e: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
    }
}
