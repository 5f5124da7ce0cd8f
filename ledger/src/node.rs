//! A ledger node: sled storage, openraft, group commit and the gRPC
//! services, wired together. `tollgate ledger` starts one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tollgate_proto::v1::admin_service_server::AdminServiceServer;
use tollgate_proto::v1::ledger_service_server::LedgerServiceServer;
use tollgate_proto::v1::raft_service_server::RaftServiceServer;
use tollgate_tls::{ClusterTls, Role};
use tollgate_types::backoff::{self, BackoffBuilder};
use tonic::service::interceptor::InterceptedService;

use crate::auth::{random_token, sha256_hex, token_matches_hash};
use crate::auth::{Audience, Gate};
use crate::metrics::LedgerMetrics;
use crate::network::{Network, MAX_MESSAGE_BYTES};
use crate::probe::LedgerProbe;
use crate::proposer::{now_ms, Proposer, ProposerConfig};
use crate::raft_types::NodeId;
use crate::service::{AdminApi, LedgerApi, RaftRpc};
use crate::state::{AdminOp, Command, ErrorCode, Outcome};
use crate::store::{metrics_now, Raft};
use crate::store::{open_db, LogStore, StateMachineStore};

/// Everything a ledger node needs to start.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// This node's id; must appear in `peers`.
    pub id: NodeId,
    /// The gRPC address this node listens on.
    pub grpc_addr: SocketAddr,
    /// Where the log, vote, snapshots and the admin token live.
    pub data_dir: PathBuf,
    /// Every member's id and advertised gRPC address (`host:port`).
    pub peers: BTreeMap<NodeId, String>,
    /// The members of `peers` that do not vote (`--learners`): they
    /// replicate the log and serve config, reads and edges (forwarding
    /// writes) in a region that has no voter. The leader adds them.
    pub learners: std::collections::BTreeSet<NodeId>,
    /// Initialise the cluster with `peers` as voters if it is not yet initialised.
    pub bootstrap: bool,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout range; must be well above the heartbeat.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log rather than a full snapshot.
    pub logs_to_keep: u64,
    pub proposer: ProposerConfig,
    /// The cluster's mutual TLS (a `ledger` certificate for this node's
    /// id); `None` serves and dials plaintext.
    pub tls: Option<Arc<ClusterTls>>,
    /// Where the node runs (`--region`), reported by `cluster status`; empty
    /// when not named.
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node id {0} is not in --peers; list every voter, this node included")]
    SelfNotInPeers(NodeId),
    #[error("node id 0 is reserved; use ids from 1")]
    ZeroId,
    #[error("--learners: {0}")]
    Learner(String),
    #[error("election timeout {min}..{max} ms must be a range above 3 x heartbeat {heartbeat} ms")]
    Timeouts { heartbeat: u64, min: u64, max: u64 },
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("region {0:?} must be 1-64 letters, digits, '-', '_' or '.'")]
    Region(String),
    #[error("the TLS certificate names {0}, but this is ledger node {1}: issue one with `tollgate cert issue --role ledger --id {1}`")]
    WrongCertificate(Role, NodeId),
}

impl LedgerConfig {
    pub fn new(id: NodeId, grpc_addr: SocketAddr, data_dir: PathBuf, peers: BTreeMap<NodeId, String>) -> Self {
        LedgerConfig {
            id,
            grpc_addr,
            data_dir,
            peers,
            learners: Default::default(),
            bootstrap: false,
            heartbeat_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_every_entries: 5000,
            logs_to_keep: 1000,
            proposer: ProposerConfig::default(),
            tls: None,
            region: String::new(),
        }
    }

    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.id == 0 || self.peers.contains_key(&0) {
            return Err(ConfigError::ZeroId);
        }
        if !self.peers.contains_key(&self.id) {
            return Err(ConfigError::SelfNotInPeers(self.id));
        }
        let (h, min, max) = (self.heartbeat_ms, self.election_timeout_min_ms, self.election_timeout_max_ms);
        if h == 0 || min <= 3 * h || max <= min {
            return Err(ConfigError::Timeouts { heartbeat: h, min, max });
        }
        if self.snapshot_every_entries == 0 {
            return Err(ConfigError::Zero("snapshot_every_entries"));
        }
        if let Some(id) = self.learners.iter().find(|id| !self.peers.contains_key(id)) {
            return Err(ConfigError::Learner(format!("learner {id} is not in --peers")));
        }
        if self.learners.len() >= self.peers.len() {
            return Err(ConfigError::Learner("at least one member of --peers must vote".into()));
        }
        if self.bootstrap && self.learners.contains(&self.id) {
            return Err(ConfigError::Learner(format!("node {} is a learner and cannot bootstrap", self.id)));
        }
        if self.proposer.max_batch_cmds == 0
            || self.proposer.max_inflight == 0
            || self.proposer.max_forwards == 0
            || self.proposer.max_queued == 0
        {
            return Err(ConfigError::Zero("proposer limits"));
        }
        let region_ok = self.region.len() <= 64
            && self.region.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !region_ok {
            return Err(ConfigError::Region(self.region.clone()));
        }
        if let Some(tls) = &self.tls {
            if tls.role() != &Role::Ledger(self.id) {
                return Err(ConfigError::WrongCertificate(tls.role().clone(), self.id));
            }
        }
        Ok(self)
    }
}

/// A running ledger node.
pub struct LedgerNode {
    pub id: NodeId,
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    pub admin_token_path: PathBuf,
    probe: LedgerProbe,
    shutdown: CancellationToken,
    /// Stops the node's tasks if it is dropped without `shutdown`.
    _stop_on_drop: DropGuard,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// Set when the node cannot go on (its admin token is not the
    /// cluster's): the process should exit with this message.
    fatal: watch::Receiver<Option<String>>,
}

/// openraft's settings from the node's.
fn raft_config(cfg: &LedgerConfig) -> anyhow::Result<openraft::Config> {
    Ok(openraft::Config {
        cluster_name: "tollgate".to_string(),
        heartbeat_interval: cfg.heartbeat_ms,
        election_timeout_min: cfg.election_timeout_min_ms,
        election_timeout_max: cfg.election_timeout_max_ms,
        // Keep append messages well under the gRPC limit: entries carry batches.
        max_payload_entries: 8,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
        max_in_snapshot_log_to_keep: cfg.logs_to_keep,
        install_snapshot_timeout: 2000,
        ..Default::default()
    }
    .validate()?)
}

/// Binds the gRPC address and serves the Raft, ledger and admin services
/// (each behind the gate for its audience, see `auth`: a refused caller
/// gets PERMISSION_DENIED before any handler runs) until `shutdown`.
async fn serve(
    cfg: &LedgerConfig,
    raft: &Raft,
    proposer: &Proposer,
    sm: &StateMachineStore,
    probe: &LedgerProbe,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let listener = tokio::net::TcpListener::bind(cfg.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", cfg.grpc_addr))?;
    let advertised = cfg.peers.get(&cfg.id).cloned().unwrap_or_else(|| cfg.grpc_addr.to_string());
    let shutdown_rx = shutdown.clone();
    let gate = Gate::new(cfg.tls.is_some(), raft.metrics(), cfg.peers.keys().copied().collect());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let raft_rpc = RaftRpc {
        raft: raft.clone(),
        proposer: proposer.clone(),
        sm: sm.clone(),
        gate: gate.clone(),
        snapshots: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let ledger_api =
        LedgerApi { proposer: proposer.clone(), sm: sm.clone(), probe: probe.clone(), stop: shutdown.clone() };
    let admin_api = AdminApi {
        id: cfg.id,
        addr: advertised,
        raft: raft.clone(),
        proposer: proposer.clone(),
        sm: sm.clone(),
        gate: gate.clone(),
        tls: cfg.tls.clone(),
        region: cfg.region.clone(),
    };
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(4096)
        .add_service(InterceptedService::new(
            RaftServiceServer::new(raft_rpc)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            gate.interceptor(Audience::Members),
        ))
        .add_service(InterceptedService::new(
            LedgerServiceServer::new(ledger_api).max_decoding_message_size(16 * 1024 * 1024),
            gate.interceptor(Audience::Edges),
        ))
        .add_service(InterceptedService::new(AdminServiceServer::new(admin_api), gate.interceptor(Audience::Anyone)))
        .add_service(InterceptedService::new(reflection, gate.interceptor(Audience::Anyone)));
    let incoming = tollgate_tls::incoming(listener, cfg.tls.clone());
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        shutdown_rx.cancelled().await;
    }));
    let transport = if cfg.tls.is_some() { "mutual TLS" } else { "plaintext" };
    tracing::info!(id = cfg.id, addr = %cfg.grpc_addr, transport, "ledger node serving gRPC");
    Ok(server)
}

impl LedgerNode {
    /// Opens storage, starts Raft and serves gRPC on `cfg.grpc_addr`.
    pub async fn start(cfg: LedgerConfig) -> anyhow::Result<LedgerNode> {
        let cfg = cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
        let open = |sub: &str| {
            open_db(&cfg.data_dir.join(sub)).with_context(|| {
                format!("opening ledger storage in {} (is another node using it?)", cfg.data_dir.display())
            })
        };
        let db = open("raft")?;
        let metrics = Arc::new(LedgerMetrics::default());
        let log_store = LogStore::new(&db)?.with_metrics(metrics.clone());
        // Snapshots get a database of their own: writing a large one must not
        // hold up the flush that every log append waits for.
        let sm = StateMachineStore::new(&open("snapshots")?)?;

        let raft_config = raft_config(&cfg)?;
        let raft =
            Raft::new(cfg.id, Arc::new(raft_config), Network { tls: cfg.tls.clone() }, log_store, sm.clone()).await?;
        let proposer = Proposer::start(cfg.id, raft.clone(), cfg.proposer.clone(), metrics.clone(), cfg.tls.clone());
        let probe = LedgerProbe {
            raft: raft.clone(),
            sm: sm.clone(),
            proposer: proposer.clone(),
            metrics,
            quorum_ack_bound_ms: cfg.election_timeout_max_ms,
        };

        let shutdown = CancellationToken::new();
        // An error below stops what was started.
        let _stop_on_drop = shutdown.clone().drop_guard();
        let server = serve(&cfg, &raft, &proposer, &sm, &probe, &shutdown).await?;
        let admin_token_path = cfg.data_dir.join("admin.token");
        let (fail, fatal) = watch::channel(None);
        if cfg.bootstrap {
            bootstrap(&raft, &cfg).await?;
        }
        // The bootstrap node writes the token; any node that has one checks
        // it against the cluster's.
        let token =
            if cfg.bootstrap { Some(load_or_create_token(&admin_token_path)?) } else { read_token(&admin_token_path) };
        if let Some(token) = token {
            let registrar = TokenRegistrar {
                raft: raft.clone(),
                proposer: proposer.clone(),
                sm: sm.clone(),
                hash: sha256_hex(&token),
                path: admin_token_path.clone(),
                register: cfg.bootstrap,
                fail,
            };
            tokio::spawn(registrar.run(shutdown.clone()));
        }
        tokio::spawn(ticker(raft.clone(), proposer.clone(), sm.clone(), shutdown.clone()));
        if !cfg.learners.is_empty() {
            tokio::spawn(add_learners(raft.clone(), cfg.clone(), shutdown.clone()));
        }
        Ok(LedgerNode {
            id: cfg.id,
            raft,
            proposer,
            sm,
            admin_token_path,
            probe,
            shutdown,
            _stop_on_drop,
            server,
            fatal,
        })
    }

    /// Resolves when the node cannot go on, with the reason; the process
    /// should then shut it down and exit with an error.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        let why = match fatal.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Waits (bounded) until the cluster has an admin token registered.
    pub async fn wait_admin_token(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.sm.read(|a| a.state.admin_token_sha256.is_none()) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// A cheap handle for health checks and metrics (for an HTTP endpoint).
    pub fn probe(&self) -> LedgerProbe {
        self.probe.clone()
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = self.raft.shutdown().await;
    }
}

async fn bootstrap(raft: &Raft, cfg: &LedgerConfig) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    let members: BTreeMap<NodeId, BasicNode> = cfg
        .peers
        .iter()
        .filter(|(id, _)| !cfg.learners.contains(id))
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(voters = ?cfg.peers.keys().collect::<Vec<_>>(), "initialised the cluster");
            Ok(())
        }
        // Another node's vote or log got here first: the cluster exists.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => bail!("initialising the cluster: {e}"),
    }
}

/// Reads the admin token, creating it (mode 0600) on first boot.
fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let token = random_token("tga_", 24).map_err(|s| anyhow::anyhow!(s.message().to_string()))?;
    let tmp = path.with_extension("token.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        writeln!(f, "{token}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    // The rename itself must survive a crash, or a restart would mint a second token.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    }
    tracing::info!(path = %path.display(), "wrote a new admin token");
    Ok(token)
}

/// A token file left by an earlier start, if any (non-bootstrap nodes only
/// have one if an operator put it there).
fn read_token(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Registers the admin token's hash with the cluster (bootstrap node) and
/// checks that the cluster's hash is this node's token.
struct TokenRegistrar {
    raft: Raft,
    proposer: Proposer,
    sm: StateMachineStore,
    hash: String,
    path: PathBuf,
    /// Propose the hash while the cluster has none (the bootstrap node).
    register: bool,
    fail: watch::Sender<Option<String>>,
}

impl TokenRegistrar {
    /// Until the state has a hash: while this node leads, proposes it
    /// (locally: a forwarded registration is refused by every node, so no
    /// other caller can race one in); while another node leads, asks for an
    /// election now and then, which this node wins once caught up (nothing
    /// but this registration can change config before it). Then checks the
    /// registered hash is this node's token, and stops the node if not.
    async fn run(self, stop: CancellationToken) {
        let pauses = || backoff::pauses(Duration::from_millis(100), Duration::from_secs(2)).build();
        let mut backoff = pauses();
        let mut last_elect = std::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                return;
            }
            match self.sm.read(|a| a.state.admin_token_sha256.clone()) {
                Some(h) if token_matches_hash(&h, &self.hash) => {
                    tracing::info!("admin token registered with the cluster");
                    return;
                }
                Some(_) => {
                    let why = format!(
                        "the cluster's admin token is not the one in {}: this data dir belongs to another cluster, or \
                         the token file was replaced. Restore the original token file (or start from an empty data dir)",
                        self.path.display()
                    );
                    tracing::error!("{why}");
                    let _ = self.fail.send(Some(why));
                    return;
                }
                None if !self.register => {}
                None => self.try_register(&mut last_elect).await,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(2))) => {}
                _ = stop.cancelled() => return,
            }
            // While no leader is known yet (an election under way) keep
            // looking often: registering is what makes the admin API usable.
            let leaderless = metrics_now(&self.raft).current_leader.is_none();
            if leaderless {
                backoff = pauses();
            }
        }
    }

    async fn try_register(&self, last_elect: &mut std::time::Instant) {
        let m = metrics_now(&self.raft);
        if m.state == ServerState::Leader {
            let cmd = Command::Admin {
                actor: "bootstrap".to_string(),
                op: AdminOp::SetAdminToken { sha256: self.hash.clone() },
            };
            match self.proposer.submit(vec![cmd]).await {
                Ok((_, o)) if o.first() == Some(&Outcome::Done) => {}
                Ok((_, o)) if matches!(o.first(), Some(Outcome::Rejected(r)) if r.code == ErrorCode::AlreadyExists) => {
                }
                Ok((_, o)) => tracing::warn!(outcome = ?o, "registering the admin token was refused"),
                Err(e) => tracing::debug!(error = %e, "admin token not registered yet"),
            }
        } else if m.current_leader.is_some() && last_elect.elapsed() > Duration::from_secs(3) {
            *last_elect = std::time::Instant::now();
            tracing::info!("another node leads before the admin token is registered; standing for election");
            let _ = self.raft.trigger().elect(false).await;
        }
    }
}

/// On the leader, proposes a tick when holds are due to expire and no other
/// traffic would advance the state machine's clock.
/// While this node leads, adds each `--learners` member the membership
/// lacks (once a second; adding does not wait for it to catch up).
async fn add_learners(raft: Raft, cfg: LedgerConfig, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
        let missing: Vec<NodeId> = {
            let m = metrics_now(&raft);
            if m.state != ServerState::Leader {
                continue;
            }
            let membership = m.membership_config.membership().clone();
            cfg.learners.iter().copied().filter(|id| membership.get_node(id).is_none()).collect()
        };
        for id in missing {
            let node = BasicNode { addr: cfg.peers[&id].clone() };
            match raft.add_learner(id, node, false).await {
                Ok(_) => tracing::info!(learner = id, "added a learner"),
                Err(e) => tracing::warn!(learner = id, "adding a learner: {e}"),
            }
        }
    }
}

async fn ticker(raft: Raft, proposer: Proposer, sm: StateMachineStore, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.cancelled() => return,
        }
        if metrics_now(&raft).state != ServerState::Leader {
            continue;
        }
        let due = sm.read(|a| a.state.next_expiry_ms()).is_some_and(|t| t <= now_ms());
        if due {
            if let Err(e) = proposer.submit(vec![Command::Tick]).await {
                tracing::debug!(error = %e, "tick not proposed");
            }
        }
    }
}
