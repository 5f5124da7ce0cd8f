//! `tollgate`: one binary that composes the roles — the embedded default
//! (`tollgate up`: a single-node ledger and an edge in one process), a
//! ledger node (`tollgate ledger`), an edge (`tollgate edge`) and the
//! operator CLI (`tollgate admin`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tollgate_client::tls_args::TlsArgs;
use tollgate_edge::config::{is_loopback, EdgeSettings, EstimateMode, FileConfig, Overrides};
use tollgate_edge::edge::Edge;
use tollgate_ledger::node::{LedgerConfig, LedgerNode};
use tollgate_tls::ClusterTls;

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "A self-hosted AI gateway cluster with a Raft-replicated budget ledger")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the embedded default: a single-node ledger and an edge in one process.
    Up(UpArgs),
    /// Run an edge gateway (the HTTP proxy clients point their base URL at).
    Edge(EdgeArgs),
    /// Run a ledger node (a voter of the Raft-replicated budget ledger).
    Ledger(LedgerArgs),
    /// Manage teams, users, keys and budgets; show usage and cluster status.
    Admin(tollgate_client::cli::AdminArgs),
    /// The cluster's certificates: a CA, and certificates for ledgers, edges and admins.
    Cert(tollgate_node::cert_cli::CertArgs),
}

#[derive(Debug, Args)]
struct LedgerArgs {
    /// This node's id (1, 2, …); must appear in --peers.
    #[arg(long)]
    id: u64,
    /// gRPC listen address (Raft, ledger and admin APIs).
    #[arg(long)]
    grpc: SocketAddr,
    /// Directory for the log, vote, snapshots and admin token.
    #[arg(long)]
    data_dir: PathBuf,
    /// Every voter as ID=HOST:PORT, comma separated, this node included.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<String>,
    /// Initialise the cluster with --peers as voters if it is not yet
    /// initialised (safe to repeat), and write DATA_DIR/admin.token on first boot.
    #[arg(long)]
    bootstrap: bool,
    /// Where this node runs (e.g. eu-west), shown by `tollgate admin cluster
    /// status`: 1-64 letters, digits, '-', '_' or '.'.
    #[arg(long, env = "TOLLGATE_REGION", default_value = "")]
    region: String,
    /// Ids of --peers that do not vote (e.g. `--learners 4,5`): they copy the
    /// log and serve config and edges where a region has no voter. Give every
    /// node the same list; the leader adds them.
    #[arg(long, value_delimiter = ',')]
    learners: Vec<u64>,
    /// Leader heartbeat interval in milliseconds (raise it with the
    /// election timeout for round trips between regions).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Election timeout lower bound in milliseconds (the upper bound is twice it).
    #[arg(long, default_value_t = 600)]
    election_timeout_ms: u64,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = 5000)]
    snapshot_every: u64,
    /// Log entries kept behind the latest snapshot.
    #[arg(long, default_value_t = 1000)]
    logs_to_keep: u64,
    /// Serve GET /healthz, /readyz and /metrics (Prometheus) on this HTTP
    /// address, e.g. 127.0.0.1:9090. Off unless given.
    #[arg(long)]
    http: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Serve and dial gRPC without TLS although an address is not loopback.
    /// Anyone who can reach the port can then forge Raft traffic: only for
    /// a network you trust completely.
    #[arg(long)]
    insecure_plaintext: bool,
}

#[derive(Debug, Args)]
struct EdgeArgs {
    /// Config file (TOML, `version = 1`); flags and TOLLGATE_* variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Ledger gRPC addresses, comma separated (any members of the cluster).
    #[arg(long, value_delimiter = ',')]
    ledger: Option<Vec<String>>,
    /// Directory for the settle outbox [default: ./tollgate-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Anthropic API base URL [default: https://api.anthropic.com].
    #[arg(long)]
    upstream_anthropic: Option<String>,
    /// OpenAI API base URL [default: https://api.openai.com].
    #[arg(long)]
    upstream_openai: Option<String>,
    /// Admission estimate: `strict` (worst case, caps never exceeded) or `estimate` [default: estimate].
    #[arg(long, value_parser = ["strict", "estimate"])]
    estimate: Option<String>,
    /// Mutual TLS to the ledger (an `edge` certificate; for `tollgate up`,
    /// a `ledger` certificate for node 1, which its edge uses too).
    #[command(flatten)]
    tls: TlsArgs,
    /// Talk to the ledger without TLS although its address is not loopback
    /// (anyone on the path can read and forge settlements).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Serve HTTPS to AI tools with this certificate (PEM; re-read on SIGHUP).
    #[arg(long, value_name = "FILE", requires = "http_tls_key")]
    http_tls_cert: Option<PathBuf>,
    /// The private key of --http-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "http_tls_cert")]
    http_tls_key: Option<PathBuf>,
    /// Also serve /metrics, /healthz and /readyz on this address (an
    /// operations port that clients' traffic cannot crowd out).
    #[arg(long)]
    ops_listen: Option<SocketAddr>,
    /// The region this edge runs in: the ledger nodes of the same region
    /// (as their `--region` says) are preferred for the config watch and
    /// lease renewals [env: TOLLGATE_REGION].
    #[arg(long)]
    region: Option<String>,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    edge: EdgeArgs,
    /// gRPC address of the embedded ledger (admin API: `tollgate admin --server`) [default: 127.0.0.1:7070].
    #[arg(long)]
    grpc: Option<SocketAddr>,
}

fn edge_settings(a: &EdgeArgs, ledger_default: Option<Vec<String>>) -> Result<EdgeSettings, String> {
    let file = match &a.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig { version: tollgate_edge::config::CONFIG_VERSION, ..Default::default() },
    };
    let flags = Overrides {
        listen: a.listen,
        ledger: a.ledger.clone(),
        data_dir: a.data_dir.clone(),
        upstream_anthropic: a.upstream_anthropic.clone(),
        upstream_openai: a.upstream_openai.clone(),
        estimate: a.estimate.as_deref().map(EstimateMode::parse).transpose()?,
        cluster_tls: a.tls.files()?,
        insecure_plaintext: a.insecure_plaintext,
        http_tls_cert: a.http_tls_cert.clone(),
        http_tls_key: a.http_tls_key.clone(),
        ops_listen: a.ops_listen,
        region: a.region.clone(),
    };
    EdgeSettings::resolve(&file, &flags, ledger_default)
}

async fn run_edge(a: EdgeArgs) -> ExitCode {
    let settings = match edge_settings(&a, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let tls = match load_tls(settings.cluster_tls.as_ref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    warn_plaintext(settings.insecure_plaintext && tls.is_none(), "edge");
    let edge = match Edge::start(settings, None, tls.clone()).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let reload = spawn_reloader(tls, edge.http_tls());
    wait_for_signal().await;
    reload.abort();
    tracing::info!("shutting down");
    edge.shutdown().await;
    ExitCode::SUCCESS
}

/// Loads the cluster TLS files (exit 64 on a bad one).
fn load_tls(files: Option<&tollgate_tls::TlsFiles>) -> Result<Option<std::sync::Arc<ClusterTls>>, ExitCode> {
    let Some(files) = files else { return Ok(None) };
    match ClusterTls::load(files.clone()) {
        Ok(t) => {
            tracing::info!(identity = %t.role(), "mutual TLS on");
            Ok(Some(t))
        }
        Err(e) => {
            eprintln!("error: TLS: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// Said at every start that runs without TLS on a non-loopback address.
fn warn_plaintext(insecure: bool, what: &str) {
    if insecure {
        tracing::warn!(
            "INSECURE: this {what} runs gRPC without TLS (--insecure-plaintext): anyone who can reach its network \
             can read admin tokens and settlements and forge ledger traffic"
        );
    }
}

/// Re-reads the certificate files on SIGHUP: new connections use them.
fn spawn_reloader(
    cluster: Option<std::sync::Arc<ClusterTls>>,
    http: Option<std::sync::Arc<tollgate_tls::http::HttpTls>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            if let Some(t) = &cluster {
                match t.reload() {
                    Ok(()) => tracing::info!(identity = %t.role(), "SIGHUP: reloaded the cluster TLS files"),
                    Err(e) => tracing::error!("SIGHUP: keeping the previous cluster TLS files: {e}"),
                }
            }
            if let Some(t) = &http {
                match t.reload() {
                    Ok(()) => tracing::info!("SIGHUP: reloaded the HTTP listener's certificate"),
                    Err(e) => tracing::error!("SIGHUP: keeping the previous HTTP certificate: {e}"),
                }
            }
            if cluster.is_none() && http.is_none() {
                tracing::info!("SIGHUP: no TLS files to reload");
            }
        }
    })
}

/// `tollgate up`'s edge settings and the embedded ledger's gRPC address
/// (flag, `TOLLGATE_GRPC`, the file's `[up] grpc`, or 127.0.0.1:7070),
/// which must be loopback unless TLS or `--insecure-plaintext` says otherwise.
fn up_settings(a: &UpArgs) -> Result<(EdgeSettings, SocketAddr), ExitCode> {
    let file = match &a.edge.config {
        Some(p) => match FileConfig::load(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
        None => None,
    };
    let grpc = match a.grpc {
        Some(g) => g,
        None => match std::env::var("TOLLGATE_GRPC").ok().filter(|v| !v.is_empty()) {
            Some(v) => match v.parse() {
                Ok(g) => g,
                Err(_) => {
                    eprintln!("error: TOLLGATE_GRPC={v:?} is not HOST:PORT");
                    return Err(ExitCode::from(EXIT_CONFIG));
                }
            },
            None => file.as_ref().and_then(|f| f.up.grpc).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7070))),
        },
    };
    let settings = match edge_settings(&a.edge, Some(vec![grpc.to_string()])) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(EXIT_CONFIG));
        }
    };
    if settings.cluster_tls.is_none() && !grpc.ip().is_loopback() && !settings.insecure_plaintext {
        eprintln!(
            "error: the embedded ledger's gRPC address {grpc} is not loopback: give it mutual TLS (--tls-ca, \
             --tls-cert, --tls-key with a ledger certificate for node 1; see `tollgate cert`), or \
             --insecure-plaintext on a network you trust completely"
        );
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    Ok((settings, grpc))
}

async fn run_up(a: UpArgs) -> ExitCode {
    let (settings, grpc) = match up_settings(&a) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let tls = match load_tls(settings.cluster_tls.as_ref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    warn_plaintext(settings.insecure_plaintext && tls.is_none() && !grpc.ip().is_loopback(), "gateway");
    let data_dir = settings.data_dir.clone();
    let first_start = !data_dir.join("admin.token").exists();
    let mut cfg = LedgerConfig::new(1, grpc, data_dir.clone(), BTreeMap::from([(1, grpc.to_string())]));
    cfg.bootstrap = true;
    cfg.tls = tls.clone();
    let node = match LedgerNode::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // The embedded ledger's metrics are served on the edge's /metrics.
    let probe = node.probe();
    let ledger_metrics: tollgate_edge::edge::ExtraMetrics = std::sync::Arc::new(move || probe.render_metrics());
    let edge = match Edge::start(settings.clone(), Some(ledger_metrics), tls.clone()).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    if !edge.wait_ready(Duration::from_secs(30)).await {
        tracing::warn!("the edge has not yet received its config from the embedded ledger");
    }
    // The onboarding below tells the operator to run admin commands now.
    if !node.wait_admin_token(Duration::from_secs(30)).await {
        tracing::warn!("the admin token is not registered yet; admin commands will wait for it");
    }
    print_onboarding(&settings, grpc, &data_dir, first_start, edge.local_addr);
    let reload = spawn_reloader(tls, edge.http_tls());
    tokio::select! {
        _ = wait_for_signal() => {}
        why = node.failed() => {
            eprintln!("error: {why}");
            reload.abort();
            edge.shutdown().await;
            node.shutdown().await;
            return ExitCode::FAILURE;
        }
    }
    reload.abort();
    tracing::info!("shutting down");
    edge.shutdown().await;
    node.shutdown().await;
    ExitCode::SUCCESS
}

fn print_onboarding(s: &EdgeSettings, grpc: SocketAddr, data_dir: &std::path::Path, first: bool, http: SocketAddr) {
    let token = data_dir.join("admin.token");
    let mut admin =
        if grpc == SocketAddr::from(([127, 0, 0, 1], 7070)) && data_dir == std::path::Path::new("./tollgate-data") {
            "tollgate admin".to_string()
        } else {
            format!("tollgate admin --server {grpc} --token-file {}", token.display())
        };
    if let Some(tls) = &s.cluster_tls {
        // The admin API then takes an admin certificate of the same CA.
        admin.push_str(&format!(" --tls-ca {} --tls-cert ADMIN.pem --tls-key ADMIN.key", tls.ca.display()));
    }
    let scheme = if s.http_tls.is_some() { "https" } else { "http" };
    let grpc_kind = if s.cluster_tls.is_some() { "gRPC, mutual TLS" } else { "gRPC" };
    let mut out = String::new();
    out.push_str(&format!("\nTollgate is up.\n  gateway:         {scheme}://{http}\n  admin ({grpc_kind}): {grpc}\n"));
    out.push_str(&format!("  data:            {}\n  estimate mode:   {:?}\n", data_dir.display(), s.estimate));
    if first {
        out.push_str(&format!("  admin token:     written to {} (mode 0600)\n", token.display()));
    }
    for (name, up, var) in [("Anthropic", &s.anthropic, "ANTHROPIC_API_KEY"), ("OpenAI", &s.openai, "OPENAI_API_KEY")] {
        let cred =
            if up.api_key.is_some() { "credential set".to_string() } else { format!("no credential: set {var}") };
        out.push_str(&format!("  {name:<16} {} ({cred})\n", up.url));
    }
    out.push_str(&format!(
        "\nCreate a team, a user, a key and a budget:\n\
         \x20 {admin} team create eng\n\
         \x20 {admin} user create ann@example.com --team eng\n\
         \x20 {admin} key create --user ann@example.com --name laptop     # prints the key once\n\
         \x20 {admin} budget set team:eng --limit-usd 100 --period monthly\n\
         \nPoint Claude Code at it (the key from `key create`):\n\
         \x20 ANTHROPIC_BASE_URL={scheme}://{http} ANTHROPIC_AUTH_TOKEN=<key> claude\n\
         \nSee spend:\n\
         \x20 {admin} usage --by user\n"
    ));
    println!("{out}");
}

fn parse_peers(peers: &[String]) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for p in peers {
        let (id, addr) = p.split_once('=').ok_or_else(|| format!("peer {p:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("peer {p:?}: {id:?} is not a node id"))?;
        if addr.trim().is_empty() {
            return Err(format!("peer {p:?} has no address"));
        }
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer id {id} is listed twice"));
        }
    }
    Ok(out)
}

/// Exit code for a bad configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

async fn run_ledger(a: LedgerArgs) -> ExitCode {
    let peers = match parse_peers(&a.peers) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --peers: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let tls_files = match a.tls.files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let exposed = !a.grpc.ip().is_loopback() || peers.values().any(|p| !is_loopback(p));
    if tls_files.is_none() && exposed && !a.insecure_plaintext {
        eprintln!(
            "error: this node's gRPC address or a peer's is not loopback, and it has no TLS: give --tls-ca, \
             --tls-cert and --tls-key (a ledger certificate for node {}; see `tollgate cert`), or \
             --insecure-plaintext on a network you trust completely",
            a.id
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let tls = match load_tls(tls_files.as_ref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    warn_plaintext(a.insecure_plaintext && tls.is_none() && exposed, "ledger node");
    let mut cfg = LedgerConfig::new(a.id, a.grpc, a.data_dir, peers);
    cfg.bootstrap = a.bootstrap;
    cfg.tls = tls.clone();
    cfg.region = a.region;
    cfg.learners = a.learners.iter().copied().collect();
    cfg.heartbeat_ms = a.heartbeat_ms;
    cfg.election_timeout_min_ms = a.election_timeout_ms;
    cfg.election_timeout_max_ms = a.election_timeout_ms.saturating_mul(2);
    cfg.snapshot_every_entries = a.snapshot_every;
    cfg.logs_to_keep = a.logs_to_keep;
    let cfg = match cfg.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let node = match LedgerNode::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let stop_http = tokio_util::sync::CancellationToken::new();
    let stopped = stop_http.clone();
    let http = match a.http {
        Some(addr) => match tollgate_node::ops_http::start(addr, node.probe(), stopped).await {
            Ok((_, task)) => Some(task),
            Err(e) => {
                eprintln!("error: {e:#}");
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let reload = spawn_reloader(tls, None);
    let failed = tokio::select! {
        _ = wait_for_signal() => None,
        why = node.failed() => Some(why),
    };
    reload.abort();
    tracing::info!("shutting down");
    stop_http.cancel();
    if let Some(task) = http {
        let _ = task.await;
    }
    node.shutdown().await;
    if let Some(why) = failed {
        eprintln!("error: {why}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let default =
            if matches!(cli.cmd, Cmd::Admin(_) | Cmd::Cert(_)) { "warn" } else { "info,openraft=warn,sled=warn" };
        tracing_subscriber::EnvFilter::new(default)
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Ledger(a) => run_ledger(a).await,
            Cmd::Edge(a) => run_edge(a).await,
            Cmd::Up(a) => run_up(a).await,
            Cmd::Cert(a) => tollgate_node::cert_cli::run(a),
            Cmd::Admin(a) => match tollgate_client::cli::run(a, tollgate_edge::pricing::listing).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}
