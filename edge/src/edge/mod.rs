//! The edge gateway: an HTTP proxy in front of the Anthropic and OpenAI
//! APIs that authenticates virtual keys against the config streamed from
//! the ledger, reserves a hold before forwarding, meters usage from the
//! response (JSON or SSE, streamed through without buffering) and settles
//! through a durable outbox. See docs/edge.md.

mod admission;
mod fail_open;
mod headers;
mod lease;
mod ledger;
mod local;
mod metrics;
mod outbox;
mod proxy;
pub(crate) mod request;
mod settle;
pub mod sizing;
pub use request::valid_model_id;
mod watch;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tollgate_client::coalesce::{Coalescer, CoalescerConfig};
use tollgate_client::LedgerClient;
use tollgate_tls::http::HttpTls;
use tollgate_tls::ClusterTls;

use fail_open::FailOpen;
use lease::Leases;
use ledger::Ledger;

use crate::config::EdgeSettings;
use metrics::Metrics;
use outbox::Outbox;
use watch::ConfigCache;

use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

type UpstreamClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, http_body_util::Full<bytes::Bytes>>;

/// Shared state of one edge.
pub(crate) struct Shared {
    pub(crate) settings: EdgeSettings,
    pub(crate) config: Arc<ConfigCache>,
    /// Reserve, settle and release: batched gRPC to the cluster.
    pub(crate) ledger: Arc<dyn Ledger>,
    /// The cluster's nodes one by one: the config stream, hold extension.
    pub(crate) nodes: LedgerClient,
    pub(crate) outbox: Outbox,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) http: UpstreamClient,
    /// Work that must finish before shutdown (settlement records being
    /// written): each holds a token of this tracker.
    pub(crate) pending: TaskTracker,
    pub(crate) fail_open: Arc<FailOpen>,
    /// More metrics `/metrics` includes: those of the ledger running in the
    /// same process (`tollgate up`). The edge knows nothing of the ledger.
    pub(crate) embedded: Option<ExtraMetrics>,
    /// Requests in flight per virtual key.
    pub(crate) per_key: Arc<Limiter<String>>,
    /// Recent output tokens per (user, model), for `estimate` reservations.
    pub(crate) output_history: sizing::OutputHistory,
    /// This edge's budget leases (`leases = true`, the default).
    pub(crate) leases: Option<Arc<Leases>>,
}

/// Renders more Prometheus text for the edge's `/metrics`.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// A running edge.
pub struct Edge {
    pub local_addr: SocketAddr,
    /// Where `--ops-listen` serves, once bound.
    pub ops_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    http_tls: Option<Arc<HttpTls>>,
    /// Stops the listeners: on `shutdown`, or when the edge is dropped.
    stop: DropGuard,
    server: tokio::task::JoinHandle<()>,
}

impl Shared {
    /// The edge's state over `ledger`; opens the outbox (replaying what an
    /// earlier run left).
    fn new(
        settings: EdgeSettings,
        ledger: Arc<dyn Ledger>,
        nodes: LedgerClient,
        config: Arc<ConfigCache>,
        metrics: Arc<Metrics>,
        embedded: Option<ExtraMetrics>,
    ) -> anyhow::Result<Arc<Shared>> {
        let (outbox, fail_open) = Outbox::open(
            &settings.data_dir.join("outbox"),
            ledger.clone(),
            metrics.clone(),
            settings.fail_open_allowance,
        )?;
        Ok(Arc::new(Shared {
            http: upstream_client()?,
            per_key: Limiter::new(settings.max_concurrent_per_key),
            output_history: sizing::OutputHistory::new(settings.sizing),
            leases: settings.leases.then(|| Leases::new(settings.lease_ttl)),
            settings,
            config,
            ledger,
            nodes,
            outbox,
            metrics,
            pending: TaskTracker::new(),
            fail_open,
            embedded,
        }))
    }
}

fn upstream_client() -> anyhow::Result<UpstreamClient> {
    // Nagle off: a request or an SSE frame must not wait for more bytes.
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(https))
}

impl Edge {
    /// Binds the listener, opens the outbox (replaying what an earlier run
    /// left), starts the config watch and serves.
    pub async fn start(
        settings: EdgeSettings,
        embedded: Option<ExtraMetrics>,
        tls: Option<Arc<ClusterTls>>,
    ) -> anyhow::Result<Edge> {
        std::fs::create_dir_all(&settings.data_dir)
            .map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", settings.data_dir.display()))?;
        let http_tls = match &settings.http_tls {
            Some((cert, key)) => {
                Some(HttpTls::load(cert.clone(), key.clone()).map_err(|e| anyhow::anyhow!("HTTPS: {e}"))?)
            }
            None => None,
        };
        for (name, upstream, var) in
            [("Anthropic", &settings.anthropic, "ANTHROPIC_API_KEY"), ("OpenAI", &settings.openai, "OPENAI_API_KEY")]
        {
            if upstream.api_key.is_none() {
                tracing::warn!("no {name} credential: its requests get a 500 saying so until {var} is set");
            }
        }
        let metrics = Arc::new(Metrics::default());
        let ledger = match &settings.region {
            Some(region) => own_region_first(&settings.ledger, region, tls.clone()).await,
            None => settings.ledger.clone(),
        };
        let nodes = LedgerClient::new(&ledger, Duration::from_secs(10), tls)
            .map_err(|s| anyhow::anyhow!("ledger addresses: {}", s.message()))?;
        let config = ConfigCache::new(Arc::new(settings.prices.clone()));
        let coalescer = Arc::new(Coalescer::start(nodes.clone(), CoalescerConfig::default()));
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        let ops_listener = match settings.ops_listen {
            Some(addr) => Some(
                TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listening on --ops-listen {addr}: {e}"))?,
            ),
            None => None,
        };
        let ops_addr = ops_listener.as_ref().and_then(|l| l.local_addr().ok());
        let m = metrics.clone();
        let follow = config.clone().follow(nodes.clone(), move |i| m.config_index.set(i as f64));
        let shared = Shared::new(settings, coalescer, nodes, config, metrics, embedded)?;
        tokio::spawn(follow);
        let stop = CancellationToken::new();
        if let Some(leases) = &shared.leases {
            tokio::spawn(leases.clone().run(shared.nodes.clone(), stop.clone()));
        }
        let stopped = stop.clone();
        if let Some(l) = ops_listener {
            tokio::spawn(serve(l, shared.clone(), stopped.clone(), None, Listener::Ops));
        }
        let server = tokio::spawn(serve(listener, shared.clone(), stopped, http_tls.clone(), Listener::Gateway));
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        tracing::info!("edge listening on {scheme}://{local_addr}");
        if let Some(a) = ops_addr {
            tracing::info!("edge operations endpoints on http://{a} (/healthz, /readyz, /metrics)");
        }
        Ok(Edge { local_addr, ops_addr, shared, stop: stop.drop_guard(), server, http_tls })
    }

    /// The HTTPS certificate of the listener, for reloading on SIGHUP.
    pub fn http_tls(&self) -> Option<Arc<HttpTls>> {
        self.http_tls.clone()
    }

    /// Waits (bounded) until the config watch has delivered the config.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.shared.config.subscribe();
        while !self.shared.config.is_live() {
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Graceful shutdown: stop accepting, let in-flight requests and
    /// streams finish within the grace period, then flush the outbox.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = self.server.await;
        let grace = self.shared.settings.shutdown_grace;
        self.shared.pending.close();
        if tokio::time::timeout(grace, self.shared.pending.wait()).await.is_err() {
            tracing::warn!("settlements still being written after the grace period");
        }
        let left = self.shared.outbox.flush(Duration::from_secs(10)).await;
        if left > 0 {
            tracing::warn!("{left} outbox records not yet acknowledged; they are kept and replayed on the next start");
        } else {
            tracing::info!("outbox flushed");
        }
    }
}

/// The ledger addresses with the nodes of `region` first (each asked its
/// region, for at most a second, all at once); otherwise in the order given.
/// The config watch and lease renewals start at the first and come back to
/// it (`watch::ConfigCache::follow`), so an edge talks to its own region's
/// node while it is up.
async fn own_region_first(ledger: &[String], region: &str, tls: Option<Arc<ClusterTls>>) -> Vec<String> {
    let asks = ledger.iter().map(|addr| {
        let tls = tls.clone();
        async move {
            let status = tollgate_client::AdminClient::node_status_at(addr, Duration::from_secs(1), tls).await;
            status.map(|s| s.region).unwrap_or_default()
        }
    });
    let regions = futures::future::join_all(asks).await;
    let ordered = by_region(ledger, &regions, region);
    let list: Vec<String> =
        ordered.iter().map(|(a, r)| format!("{a} ({})", if r.is_empty() { "?" } else { r })).collect();
    tracing::info!("region {region}: ledger nodes in order of preference: {}", list.join(", "));
    ordered.into_iter().map(|(a, _)| a).collect()
}

/// `ledger` with its nodes of `region` first, each with its region (empty:
/// unknown); otherwise in the order given.
fn by_region(ledger: &[String], regions: &[String], region: &str) -> Vec<(String, String)> {
    let mut ordered: Vec<(String, String)> = ledger.iter().cloned().zip(regions.iter().cloned()).collect();
    ordered.sort_by_key(|(_, r)| r != region);
    ordered
}

#[cfg(test)]
mod region_tests {
    #[test]
    fn own_region_nodes_come_first_and_the_rest_keep_their_order() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ledger = s(&["n1:7070", "n2:7070", "n3:7070", "n4:7070"]);
        let regions = s(&["us", "eu", "", "eu"]);
        let got: Vec<String> = super::by_region(&ledger, &regions, "eu").into_iter().map(|(a, _)| a).collect();
        assert_eq!(got, s(&["n2:7070", "n4:7070", "n1:7070", "n3:7070"]));
        let none: Vec<String> = super::by_region(&ledger, &regions, "ap").into_iter().map(|(a, _)| a).collect();
        assert_eq!(none, ledger);
    }
}

/// At most `max` at once per key: client connections per IP address (an
/// address at its limit gets new connections closed at once, so one client
/// cannot take every slot), requests in flight per virtual key. The map
/// holds only keys with something open, so it is bounded by what is open.
pub(crate) struct Limiter<K: std::hash::Hash + Eq + Clone> {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<K, usize>>,
}

/// One place in a [`Limiter`], given back on drop.
pub(crate) struct Slot<K: std::hash::Hash + Eq + Clone>(Arc<Limiter<K>>, K);

pub(crate) type KeySlot = Slot<String>;

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    pub(crate) fn new(max: usize) -> Arc<Limiter<K>> {
        Arc::new(Limiter { max, counts: Default::default() })
    }

    pub(crate) fn enter(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), key.clone()))
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

/// Which requests a listener answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The gateway: provider routes and the operations endpoints.
    Gateway,
    /// `--ops-listen`: only /healthz, /readyz and /metrics.
    Ops,
}

/// The connection's byte stream: as accepted, or after its TLS handshake.
/// A client that does not finish its handshake in time loses the slot.
async fn accept_tls(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    tls: Option<&HttpTls>,
    within: Duration,
    metrics: &Metrics,
) -> Option<Box<dyn tollgate_tls::transport::Io>> {
    let Some(tls) = tls else { return Some(Box::new(stream)) };
    match tokio::time::timeout(within, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => Some(Box::new(s)),
        Ok(Err(e)) => {
            metrics.connection_refused("tls_handshake");
            tracing::debug!(%remote, "https handshake failed: {e}");
            None
        }
        Err(_) => {
            metrics.connection_refused("tls_handshake");
            tracing::debug!(%remote, "https handshake timed out");
            None
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stopped: CancellationToken,
    http_tls: Option<Arc<HttpTls>>,
    kind: Listener,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (max, per_ip) = match kind {
        Listener::Gateway => (shared.settings.max_connections, shared.settings.max_connections_per_ip),
        // Scrapers and probes: few, from few addresses.
        Listener::Ops => (64, 16),
    };
    let slots = Arc::new(Semaphore::new(max));
    let per_ip = Limiter::<IpAddr>::new(per_ip);
    let first_byte = shared.settings.first_byte_timeout;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.cancelled() => break,
        };
        let (stream, remote) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(ip_slot) = per_ip.enter(&remote.ip()) else {
            shared.metrics.connection_refused("per_ip_limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let s = shared.clone();
        let service = service_fn(move |req| {
            let s = s.clone();
            async move {
                Ok::<_, Infallible>(match kind {
                    Listener::Gateway => proxy::handle(s, req).await,
                    Listener::Ops => local::ops_only(&s, &req),
                })
            }
        });
        let watcher = graceful.watcher();
        let tls = http_tls.clone();
        let metrics = shared.metrics.clone();
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            let Some(io) = accept_tls(stream, remote, tls.as_deref(), first_byte, &metrics).await else { return };
            // The header timeout runs from the moment hyper waits for a
            // request head, so it also closes a connection that sends
            // nothing at first or idles between requests.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(first_byte)
                .serve_connection(TokioIo::new(io), service);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    let grace = shared.settings.shutdown_grace;
    tracing::info!("edge: stopped accepting; waiting up to {}s for in-flight requests", grace.as_secs());
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("edge: in-flight requests still open after the grace period; closing them");
    }
}
