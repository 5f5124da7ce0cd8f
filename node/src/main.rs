//! `tollgate`: one binary that composes the roles — a ledger node
//! (`tollgate ledger`) and the operator CLI (`tollgate admin`).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tollgate_ledger::node::{LedgerConfig, LedgerNode};

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "A self-hosted AI gateway cluster with a Raft-replicated budget ledger")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a ledger node (a voter of the Raft-replicated budget ledger).
    Ledger(LedgerArgs),
    /// Manage teams, users, keys and budgets; show usage and cluster status.
    Admin(tollgate_client::cli::AdminArgs),
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
    /// Leader heartbeat interval in milliseconds.
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
    let mut cfg = LedgerConfig::new(a.id, a.grpc, a.data_dir, peers);
    cfg.bootstrap = a.bootstrap;
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
    wait_for_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
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
        let default = if matches!(cli.cmd, Cmd::Admin(_)) { "warn" } else { "info,openraft=warn,sled=warn" };
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
            Cmd::Admin(a) => match tollgate_client::cli::run(a).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}
