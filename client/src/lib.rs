//! A typed Rust client for Tollgate's gRPC APIs ([`AdminClient`],
//! [`LedgerClient`]) and the `tollgate admin …` command line ([`cli`]).
#![forbid(unsafe_code)]

pub mod cli;
pub mod coalesce;
pub mod price_cli;
mod table;
pub mod tls_args;

use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::v1::ledger_service_client::LedgerServiceClient;
use tollgate_tls::ClusterTls;
use tollgate_types::backoff::{self, Retryable};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How many rounds over the server list a call makes before giving up.
const ROUNDS: usize = 5;

/// A lazily connected channel to a ledger node at `addr` (`host:port`),
/// over the cluster's mutual TLS when `tls` is set.
pub fn channel(addr: &str, timeout: Duration, tls: Option<Arc<ClusterTls>>) -> Result<Channel, Status> {
    let addr = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    tollgate_tls::channel(addr, tls, |e| e.connect_timeout(Duration::from_millis(1000)).timeout(timeout))
        .map_err(|e| Status::invalid_argument(format!("bad server address {addr:?}: {e}")))
}

/// Errors that certainly mean "not applied", so trying another server (or
/// again after a pause) cannot apply a write twice: the ledger marks such
/// statuses with `x-tollgate-retry-safe`, and a connection that could not be
/// opened never carried the request (decided from the error's type, see
/// [`tollgate_tls::never_connected`]). A transport `UNAVAILABLE` after the
/// request may have been delivered, `UNKNOWN` and `DEADLINE_EXCEEDED` are
/// not retried.
pub fn retryable(s: &Status) -> bool {
    s.metadata().get("x-tollgate-retry-safe").is_some() || tollgate_tls::never_connected(s)
}

/// How a round over the servers failed: every server was out of reach
/// (try another round), or one answered with an error.
enum Round {
    Retry(Status),
    Fatal(Status),
}

/// The operator's client: tries each server in turn, and retries a few
/// rounds while the cluster elects a leader.
#[derive(Clone)]
pub struct AdminClient {
    servers: Vec<(String, AdminServiceClient<Channel>)>,
    token: Option<String>,
    tls: Option<Arc<ClusterTls>>,
}

impl AdminClient {
    pub fn new(servers: &[String], token: Option<String>, tls: Option<Arc<ClusterTls>>) -> Result<Self, Status> {
        if servers.is_empty() {
            return Err(Status::invalid_argument("no server given"));
        }
        let servers = servers
            .iter()
            .map(|s| Ok((s.clone(), AdminServiceClient::new(channel(s, Duration::from_secs(15), tls.clone())?))))
            .collect::<Result<_, Status>>()?;
        Ok(AdminClient { servers, token, tls })
    }

    /// The TLS identity this client dials with, if any.
    pub fn tls(&self) -> Option<Arc<ClusterTls>> {
        self.tls.clone()
    }

    fn request<T>(&self, msg: T) -> Result<Request<T>, Status> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| Status::invalid_argument("the admin token contains characters not allowed in a header"))?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }

    /// Calls `f` on each server until one answers with something other than
    /// a retryable error, for a bounded number of rounds over the list
    /// (pausing 200 ms, then longer, between rounds).
    pub async fn call<T, R, F, Fut>(&self, msg: T, f: F) -> Result<R, Status>
    where
        T: Clone,
        F: Fn(AdminServiceClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let round = || async {
            let mut last = Round::Retry(Status::unavailable("no server answered"));
            for (addr, client) in &self.servers {
                match f(client.clone(), self.request(msg.clone()).map_err(Round::Fatal)?).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if retryable(&s) => {
                        last = Round::Retry(Status::new(s.code(), format!("{addr}: {}", s.message())))
                    }
                    Err(s) => return Err(Round::Fatal(s)),
                }
            }
            Err(last)
        };
        let pauses = backoff::pauses(Duration::from_millis(200), Duration::from_secs(5)).with_max_times(ROUNDS - 1);
        round
            .retry(pauses)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, Round::Retry(_)))
            .await
            .map_err(|(Round::Retry(s) | Round::Fatal(s))| s)
    }

    /// Asks one server (not the list) for its own status.
    pub async fn node_status_at(
        addr: &str,
        timeout: Duration,
        tls: Option<Arc<ClusterTls>>,
    ) -> Result<pb::NodeStatusResponse, Status> {
        let mut c = AdminServiceClient::new(channel(addr, timeout, tls)?);
        let mut req = Request::new(pb::NodeStatusRequest {});
        req.set_timeout(timeout);
        Ok(c.node_status(req).await?.into_inner())
    }

    pub fn first_server(&self) -> &str {
        &self.servers[0].0
    }

    pub fn servers(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|(a, _)| a.as_str())
    }
}

/// The edges' client for admission and settlement.
#[derive(Clone)]
pub struct LedgerClient {
    servers: Vec<(String, LedgerServiceClient<Channel>)>,
}

impl LedgerClient {
    pub fn new(servers: &[String], timeout: Duration, tls: Option<Arc<ClusterTls>>) -> Result<Self, Status> {
        if servers.is_empty() {
            return Err(Status::invalid_argument("no ledger server given"));
        }
        let servers = servers
            .iter()
            .map(|s| Ok((s.clone(), LedgerServiceClient::new(channel(s, timeout, tls.clone())?))))
            .collect::<Result<_, Status>>()?;
        Ok(LedgerClient { servers })
    }

    /// The client for server `i` (modulo the list), for callers that spread load.
    pub fn at(&self, i: usize) -> LedgerServiceClient<Channel> {
        self.servers[i % self.servers.len()].1.clone()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}
