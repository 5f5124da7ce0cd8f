//! `tollgate-chaos`: runs one chaos scenario against real processes and
//! checks the invariants (see `tollgate_chaos::run`).
//!
//! ```sh
//! cargo run --release -p tollgate-chaos -- run --scenario leader-kill --seed 7 --duration 60 --report r.json
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tollgate_chaos::regions::{Wan, REGION_SCENARIOS};
use tollgate_chaos::run::{run, write_report, RunConfig, SCENARIOS};

#[derive(Parser)]
#[command(
    name = "tollgate-chaos",
    about = "Chaos scenarios against a real Tollgate cluster, with an invariant checker"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario (needs root: it builds a private network of namespaces).
    Run(Box<RunArgs>),
    /// List the scenarios.
    List,
}

#[derive(Args)]
struct RunArgs {
    /// leader-kill, follower-kill, edge-kill, leader-pause, leader-partition, edge-partition or
    /// rolling-restart; with `--topology regions` also region-partition (the leader's region, then
    /// another, cut off), region-kill (every process of the leader's region) or region-cutoff (one
    /// region's edges lose every ledger node).
    #[arg(long)]
    scenario: String,
    /// Seed of the load and of the fault schedule (print it to repeat a run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Ledger nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Edges (default 2, or 3 with `--topology regions`: one per region).
    #[arg(long)]
    edges: Option<usize>,
    #[arg(long, default_value_t = 4)]
    teams: usize,
    /// Simulated users (each with its own key), spread over the teams.
    #[arg(long, default_value_t = 12)]
    users: usize,
    /// Requests per second per user.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// Admission estimate of the edges: strict (caps never exceeded) or estimate.
    #[arg(long, default_value = "strict", value_parser = ["strict", "estimate"])]
    estimate: String,
    /// Run the edges with fail_mode = open and this allowance each, in
    /// nano-USD (1000000000 = $1). The checker then allows an overshoot of
    /// up to edges x allowance x faults (plus the estimate bound) and reports it.
    #[arg(long)]
    fail_open_allowance_nano_usd: Option<u64>,
    /// Keep logs and data in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Run the cluster without TLS (`--insecure-plaintext`) instead of the
    /// default mutual TLS between every process, e.g. for an A/B comparison.
    #[arg(long)]
    plaintext: bool,
    /// Budget leases on the edges (`on`, their default) or `off` (a hold per request).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    leases: String,
    /// `lan` (every process on one network) or `regions`: three regions (a
    /// voter in each, edges spread over them) joined by a user-space WAN.
    #[arg(long, default_value = "lan", value_parser = ["lan", "regions"])]
    topology: String,
    /// `--topology regions`: delay each way between regions, in ms.
    #[arg(long, default_value_t = 30)]
    wan_one_way_ms: u64,
    /// `--topology regions`: up to this much more per chunk, in ms (in order).
    #[arg(long, default_value_t = 5)]
    wan_jitter_ms: u64,
    /// `--topology regions`: chance that a chunk is lost once (it arrives
    /// 200 ms late, what follows it waiting behind, as over TCP).
    #[arg(long, default_value_t = 0.001)]
    wan_loss: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let a = match cli.cmd {
        Cmd::List => {
            for s in SCENARIOS {
                println!("{s}");
            }
            for s in REGION_SCENARIOS {
                println!("{s} (--topology regions)");
            }
            return ExitCode::SUCCESS;
        }
        Cmd::Run(a) => *a,
    };
    let bin_dir = match std::env::current_exe() {
        Ok(p) => p.parent().map(PathBuf::from).unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let regions = (a.topology == "regions").then_some(Wan {
        one_way_ms: a.wan_one_way_ms,
        jitter_ms: a.wan_jitter_ms,
        loss: a.wan_loss,
    });
    let cfg = RunConfig {
        scenario: a.scenario,
        seed: a.seed,
        duration: Duration::from_secs(a.duration.max(5)),
        nodes: a.nodes,
        edges: a.edges.unwrap_or(if regions.is_some() { 3 } else { 2 }),
        teams: a.teams,
        users: a.users,
        rate: a.rate,
        strict: a.estimate == "strict",
        fail_open_allowance: a.fail_open_allowance_nano_usd,
        keep: a.keep,
        bin_dir,
        tls: !a.plaintext,
        leases: a.leases == "on",
        regions,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(report) => {
            println!("{}", report.summary());
            if let Some(path) = &a.report {
                if let Err(e) = write_report(&report, path) {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
