//! Raft RPCs between ledger nodes over tonic. The gRPC message is only an
//! envelope: openraft's own request and `Result` types travel inside it in
//! the ledger's binary encoding ([`crate::codec`]), so the other side gets
//! back exactly the error openraft produced.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tollgate_proto::v1::raft_service_client::RaftServiceClient;
use tollgate_proto::v1::RaftPayload;
use tollgate_tls::ClusterTls;
use tonic::transport::Channel;

use crate::raft_types::{NodeId, TypeConfig};

/// The largest gRPC message between ledger nodes (append batches, snapshot chunks).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

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
        PeerClient {
            target,
            node: node.clone(),
            client: raft_client(&node.addr, self.tls.clone()).map_err(|e| e.to_string()),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    node: BasicNode,
    /// An address that cannot even form a URI fails every call as unreachable.
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

enum Method {
    Append,
    Snapshot,
    Vote,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        let data = crate::codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let res = match method {
            Method::Append => client.append_entries(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
            Method::Vote => client.vote(request).await,
        };
        let payload = match res {
            Ok(r) => r.into_inner(),
            // Connection-level failures: back off before trying again.
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                return Err(RPCError::Unreachable(Unreachable::new(&s)))
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, E> =
            crate::codec::decode(&payload.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
