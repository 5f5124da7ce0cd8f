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
use tokio::sync::Notify;
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
            let ttl = option.soft_ttl();
            // Counted as they leave, with a wake-up for the answer side: an
            // answer is awaited for at most the soft ttl from the moment a
            // request is outstanding, however long the stream was idle.
            let sent = Arc::new(AtomicU64::new(0));
            let left = Arc::new(Notify::new());
            let (counted, leaving) = (sent.clone(), left.clone());
            // A request that cannot be encoded ends the stream (never skipped:
            // the answers must match the requests one for one); openraft
            // starts a new one for what was left unanswered.
            let requests = input.scan((), move |_, rpc| {
                let next = match crate::codec::encode(&rpc) {
                    Ok(data) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        leaving.notify_one();
                        Some(RaftPayload { data })
                    }
                    Err(e) => {
                        tracing::error!("encoding an append request: {e}");
                        None
                    }
                };
                futures::future::ready(next)
            });
            // Once the answers stop being read (an error, a refusal, or
            // openraft moving on), the requests stop too: hyper would
            // otherwise keep sending what openraft's next stream sends.
            let (requests, stop) = futures::stream::abortable(requests);
            let stop = AbortOnDrop(stop);
            let responses = match tokio::time::timeout(ttl, client.stream_append(requests)).await {
                Ok(r) => r.map_err(rpc_error)?.into_inner(),
                Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&Msg("stream setup timed out".into())))),
            };
            let state = Some((responses, stop, 0u64));
            let answers = futures::stream::unfold(state, move |state| {
                let (sent, left) = (sent.clone(), left.clone());
                async move {
                    let (mut responses, stop, got) = state?;
                    let next = loop {
                        if sent.load(Ordering::SeqCst) > got {
                            match tokio::time::timeout(ttl, responses.next()).await {
                                Ok(n) => break n,
                                Err(_) => {
                                    let e = Unreachable::new(&Msg(format!("no answer to an append within {ttl:?}")));
                                    return Some((Err(RPCError::Unreachable(e)), None));
                                }
                            }
                        }
                        // Nothing outstanding: wait for an answer (the end of
                        // the stream) or for a request to leave.
                        tokio::select! {
                            n = responses.next() => break n,
                            _ = left.notified() => {}
                        }
                    };
                    let item = match next? {
                        Ok(p) => decode_reply::<StreamAppendResult<TypeConfig>>(&p),
                        Err(s) => Err(rpc_error(s)),
                    };
                    // An error, or a refusal from the follower, ends the stream.
                    let go_on = matches!(item, Ok(Ok(_)));
                    Some((item, go_on.then_some((responses, stop, got + 1))))
                }
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
        let data = Arc::new(snapshot.snapshot);
        if data.len() > MAX_SNAPSHOT_BYTES {
            // Every node refuses it: say so here rather than retry unseen.
            let e = Msg(format!("a snapshot of {} bytes is over the limit of {MAX_SNAPSHOT_BYTES}", data.len()));
            tracing::error!(target = self.target, "{e}");
            return Err(StreamingError::Network(NetworkError::new(&e)));
        }
        let header = SnapshotHeader { vote, meta: snapshot.meta, bytes: data.len() as u64 };
        let first = envelope(&header).map_err(streaming_error)?;
        let chunks = data.len().div_ceil(SNAPSHOT_CHUNK_BYTES);
        // openraft's snapshot timeout, for each chunk and for the answer.
        let budget = option.soft_ttl() * (chunks as u32 + 1);
        let bytes = data.clone();
        // Each chunk is copied out only as it is sent.
        let rest = futures::stream::iter(0..chunks).map(move |i| {
            let end = ((i + 1) * SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            RaftPayload { data: bytes[i * SNAPSHOT_CHUNK_BYTES..end].to_vec() }
        });
        let messages = futures::stream::once(async { first }).chain(rest);
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

/// Aborts the request stream it guards when dropped.
struct AbortOnDrop(futures::stream::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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

#[cfg(test)]
mod tests {
    //! The replication stream's timeout, against a follower that takes
    //! appends and never answers (a stuck Raft core or disk behind a live
    //! connection).

    use std::pin::Pin;
    use std::time::Instant;

    use openraft::vote::leader_id_adv::LeaderId;
    use tollgate_proto::v1 as pb;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    /// Reads every append and answers none.
    struct Mute;

    type Answers = Pin<Box<dyn Stream<Item = Result<pb::RaftPayload, Status>> + Send>>;

    #[tonic::async_trait]
    impl pb::raft_service_server::RaftService for Mute {
        async fn append_entries(&self, _: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
            Err(Status::unimplemented("mute"))
        }

        type StreamAppendStream = Answers;

        async fn stream_append(&self, req: Request<Streaming<pb::RaftPayload>>) -> Result<Response<Answers>, Status> {
            let appends = req.into_inner();
            // Drain the appends; answer nothing, ever.
            let answers = futures::stream::unfold(appends, |mut appends| async move {
                while appends.next().await.is_some() {}
                futures::future::pending::<()>().await;
                None::<(Result<pb::RaftPayload, Status>, _)>
            });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn install_full_snapshot(
            &self,
            _: Request<Streaming<pb::RaftPayload>>,
        ) -> Result<Response<pb::RaftPayload>, Status> {
            Err(Status::unimplemented("mute"))
        }

        async fn vote(&self, _: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
            Err(Status::unimplemented("mute"))
        }

        async fn propose(&self, _: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
            Err(Status::unimplemented("mute"))
        }
    }

    fn append() -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(openraft::LogId::new(LeaderId { term: 1, node_id: 1 }, 5)),
            leader_commit: None,
            entries: vec![],
        }
    }

    #[tokio::test]
    async fn an_unanswered_append_fails_within_the_soft_ttl_even_after_an_idle_spell() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_service_server::RaftServiceServer::new(Mute))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut peer = Network::default().new_client(2, &BasicNode { addr }).await;
        let option = RPCOption::new(Duration::from_millis(400));
        let ttl = option.soft_ttl();
        let (tx, rx) = futures::channel::mpsc::channel::<AppendEntriesRequest<TypeConfig>>(4);
        let mut answers = peer.stream_append(rx, option).await.unwrap();
        // Idle for three ttls: nothing is outstanding, so nothing fails.
        let idle = tokio::time::timeout(ttl * 3, answers.next()).await;
        assert!(idle.is_err(), "an idle stream ended or answered: {:?}", idle.ok());
        // Then an append leaves and is never answered: an error within the ttl of it.
        let sent = Instant::now();
        let mut tx = tx;
        futures::SinkExt::send(&mut tx, append()).await.unwrap();
        // (Five ttls of slack above for a loaded machine; never before the ttl.)
        let first = tokio::time::timeout(ttl * 5, answers.next()).await.expect("no error within five ttls");
        let waited = sent.elapsed();
        assert!(matches!(first, Some(Err(RPCError::Unreachable(_)))), "{first:?}");
        assert!(waited >= ttl, "failed after {waited:?}, before the ttl {ttl:?}");
        // And the stream ends there.
        assert!(answers.next().await.is_none());
    }
}
