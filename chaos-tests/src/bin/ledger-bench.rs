//! Ledger benchmark: a 3-node cluster of real `tollgate ledger` processes on
//! loopback, fsync on (every append is flushed before it counts).
//!
//! Phase 1 (throughput): `--concurrency` clients each loop Reserve → Settle
//! through the nodes in turn for `--seconds`; prints settled pairs per second.
//! Phase 2 (latency): an open loop issuing `--rate` Reserves per second for
//! `--seconds` (each followed by its Settle, untimed); prints Reserve latency
//! p50/p99/max. Every loop is bounded in time and count. The nodes and the
//! clients talk mutual TLS, as in production, unless `--plaintext`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tollgate_chaos::cluster::{sibling_binary, LedgerCluster, Transport};
use tollgate_client::coalesce::{Coalescer, CoalescerConfig};
use tollgate_client::LedgerClient;
use tollgate_proto::v1 as pb;

#[derive(Parser)]
struct Args {
    /// Concurrent clients in the throughput phase.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Reserves per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Ledger nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Send all requests to the leader (without it: coalesced calls go to node 1
    /// first, as an edge's go to its own region's node; `--no-coalesce` calls
    /// go to every node in turn).
    #[arg(long)]
    leader_only: bool,
    /// Items per call when --no-coalesce is given (the caller batches by hand).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Send each request as its own gRPC call instead of coalescing
    /// concurrent requests into batched calls (as an edge does).
    #[arg(long)]
    no_coalesce: bool,
    /// Skip the throughput phase (so the latency phase starts on a fresh ledger).
    #[arg(long)]
    latency_only: bool,
    /// Keep the nodes' data dirs and logs after the run.
    #[arg(long)]
    keep: bool,
    /// Directory under which the nodes keep their data (default: a temp dir).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Run nodes and clients without TLS (for an A/B against the default mutual TLS).
    #[arg(long)]
    plaintext: bool,
}

const KEYS: usize = 64;

fn hold(n: u64, worker: u64) -> pb::HoldId {
    let id = (u128::from(worker) << 64) | u128::from(n);
    pb::HoldId { id: id.to_be_bytes().to_vec() }
}

fn reserve_req(h: pb::HoldId, key: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        hold_id: Some(h),
        key_id: key.to_string(),
        model: "claude-sonnet-4-5".to_string(),
        amount_nano_usd: 50_000,
        ttl_ms: 600_000,
    }
}

fn settle_req(h: pb::HoldId) -> pb::SettleRequest {
    pb::SettleRequest {
        hold_id: Some(h),
        cost_nano_usd: 30_000,
        usage: Some(pb::Usage { input_tokens: 5, output_tokens: 1, ..Default::default() }),
        estimated: false,
        session_id: String::new(),
        ..Default::default()
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = sibling_binary()?;
    let dir = match &args.data_dir {
        Some(base) => tempfile::tempdir_in(base)?,
        None => tempfile::tempdir()?,
    };
    let dir_path = dir.path().to_path_buf();
    if args.keep {
        println!("keeping node data and logs in {}", dir.keep().display());
    }
    let transport = if args.plaintext { Transport::Plaintext } else { Transport::Tls };
    let cluster = LedgerCluster::start_with(&bin, &dir_path, args.nodes, transport)?;
    let edge_tls = cluster.client_tls(&tollgate_tls::Role::Edge("bench".into()))?;
    let admin_tls = cluster.client_tls(&tollgate_tls::Role::Admin("harness".into()))?;
    let admin = cluster.admin(Duration::from_secs(30)).await.context("cluster did not come up")?;

    // One team, one user, KEYS keys, budgets far above what the run spends.
    admin
        .call(pb::CreateTeamRequest { name: "bench".into() }, |mut c, r| async move { c.create_team(r).await })
        .await?;
    let user = pb::CreateUserRequest { email: "bench@corp.io".into(), team: "bench".into() };
    admin.call(user, |mut c, r| async move { c.create_user(r).await }).await?;
    let mut keys = Vec::new();
    for i in 0..KEYS {
        let req = pb::CreateKeyRequest { user: "bench@corp.io".into(), name: format!("k{i}") };
        keys.push(admin.call(req, |mut c, r| async move { c.create_key(r).await }).await?.id);
    }
    for scope in ["org", "team:bench", "user:bench@corp.io"] {
        tollgate_chaos::cluster::set_budget(&admin, scope, "1000000").await?;
    }
    // Load starts once every node follows the leader: a node that started
    // after the first election learns of it only from the next append, and
    // until then answers "no leader" (which would count as errors here).
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in cluster.addrs.values() {
        loop {
            let s = tollgate_client::AdminClient::node_status_at(addr, Duration::from_secs(2), admin_tls.clone()).await;
            if s.is_ok_and(|s| s.has_leader) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "node {addr} knows no leader after 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let status =
        tollgate_client::AdminClient::node_status_at(&cluster.addrs[&1], Duration::from_secs(2), admin_tls.clone())
            .await?;
    let leader_addr = cluster.addrs[&status.leader_id].clone();
    let targets: Vec<String> = if args.leader_only { vec![leader_addr.clone()] } else { cluster.servers() };
    // One channel per target per 64 workers: HTTP/2 multiplexes, but one
    // connection per target would serialize on a single socket.
    let mut clients = Vec::new();
    for _ in 0..(args.concurrency / 64).max(1) {
        clients.push(LedgerClient::new(&targets, Duration::from_secs(10), edge_tls.clone())?);
    }
    println!(
        "ledger-bench: {} nodes (leader {}), fsync on, {}, {} keys, requests to {}",
        args.nodes,
        status.leader_id,
        if args.plaintext { "plaintext" } else { "mutual TLS" },
        KEYS,
        if args.leader_only {
            "the leader only"
        } else if args.no_coalesce {
            "every node in turn"
        } else {
            "the first node, as an edge sends to its own region's (the coalescer moves on only when it fails)"
        }
    );

    // As an edge does: concurrent requests share batched calls to every node.
    let coalescer = (!args.no_coalesce).then(|| {
        Coalescer::start(
            LedgerClient::new(&targets, Duration::from_secs(10), edge_tls.clone()).expect("client"),
            CoalescerConfig::default(),
        )
    });
    println!(
        "  {}",
        if coalescer.is_some() {
            "one request per caller, coalesced into batched calls (--no-coalesce: one call per request)".to_string()
        } else {
            format!("{} items per gRPC call, no coalescing", args.batch.max(1))
        }
    );
    if !args.latency_only {
        let leader = (leader_addr.as_str(), admin_tls.clone());
        throughput(&args, &clients, coalescer.clone(), &keys, leader, status.applied_index).await?;
    }
    let result = latency(&args, &clients, coalescer, &keys).await;
    for line in error_summary() {
        println!("{line}");
    }
    result
}

/// One reserve then its settle through the coalescer; true if both succeeded.
async fn coalesced_pair(co: &Coalescer, h: pb::HoldId, key: &str) -> bool {
    let r = co.reserve(reserve_req(h.clone(), key)).await;
    let granted =
        matches!(r, Ok(pb::ReserveResult { outcome: Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_)) }));
    if !granted {
        report_error("reserve", &r);
        return false;
    }
    let s = co.settle(settle_req(h)).await;
    if !matches!(s, Ok(pb::SettleResult { outcome: Some(pb::settle_result::Outcome::Settled(_)) })) {
        report_error("settle", &s);
        return false;
    }
    true
}

/// Failures by kind (call, gRPC code, message start), so a run with errors
/// says what they were.
static ERRORS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Prints the first few failures and counts every one by kind.
fn report_error<T: std::fmt::Debug>(what: &str, r: &T) {
    static SHOWN: AtomicU64 = AtomicU64::new(0);
    let text = format!("{r:?}");
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 3 {
        eprintln!("  {what} failed: {text}");
    }
    let kind: String = text.split(", metadata").next().unwrap_or(&text).chars().take(160).collect();
    *ERRORS.lock().unwrap_or_else(|p| p.into_inner()).entry(format!("{what}: {kind}")).or_default() += 1;
}

/// The failures counted so far, most frequent first.
fn error_summary() -> Vec<String> {
    let errors = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<(&String, &u64)> = errors.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1));
    rows.iter().take(5).map(|(k, n)| format!("  {n} × {k}")).collect()
}

async fn throughput(
    args: &Args,
    clients: &[LedgerClient],
    coalescer: Option<Coalescer>,
    keys: &[String],
    (leader_addr, admin_tls): (&str, Option<Arc<tollgate_tls::ClusterTls>>),
    start_index: u64,
) -> anyhow::Result<()> {
    // ---- phase 1: saturation ----
    let pairs = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let client = clients[w % clients.len()].clone();
        let key = keys[w % KEYS].clone();
        let (pairs, errors) = (pairs.clone(), errors.clone());
        let batch = args.batch.max(1);
        let coalescer = coalescer.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client.at(w);
            let mut n = 0u64;
            while Instant::now() < stop_at {
                if let Some(co) = &coalescer {
                    n += 1;
                    if coalesced_pair(co, hold(n, w as u64 + 1), &key).await {
                        pairs.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let holds: Vec<pb::HoldId> = (0..batch).map(|i| hold(n + i as u64, w as u64 + 1)).collect();
                n += batch as u64;
                let reserve =
                    pb::ReserveBatch { requests: holds.iter().map(|h| reserve_req(h.clone(), &key)).collect() };
                match c.reserve(reserve).await {
                    Ok(r)
                        if r.get_ref()
                            .results
                            .iter()
                            .all(|x| matches!(x.outcome, Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_)))) => {
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                let settle = pb::SettleBatch { requests: holds.into_iter().map(settle_req).collect() };
                match c.settle(settle).await {
                    Ok(_) => {
                        pairs.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let done = pairs.load(Ordering::Relaxed);
    println!(
        "throughput: {done} reserve+settle pairs in {secs:.1} s = {:.0} settles/s ({} clients, {} errors)",
        done as f64 / secs,
        args.concurrency,
        errors.load(Ordering::Relaxed)
    );
    let after = tollgate_client::AdminClient::node_status_at(leader_addr, Duration::from_secs(2), admin_tls).await?;
    println!(
        "  log entries used: {} for {} commands ({:.0} commands per entry)",
        after.applied_index - start_index,
        done * 2,
        (done * 2) as f64 / (after.applied_index - start_index).max(1) as f64
    );
    Ok(())
}

async fn latency(
    args: &Args,
    clients: &[LedgerClient],
    coalescer: Option<Coalescer>,
    keys: &[String],
) -> anyhow::Result<()> {
    // ---- phase 2: latency at a fixed rate ----
    let total = args.rate * args.seconds;
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<u64>>(total as usize + 1);
    for i in 0..total {
        ticker.tick().await;
        let client = clients[i as usize % clients.len()].clone();
        let key = keys[i as usize % KEYS].clone();
        let tx = tx.clone();
        let coalescer = coalescer.clone();
        tokio::spawn(async move {
            let h = hold(i, u64::MAX);
            let granted = |o: &Option<pb::reserve_result::Outcome>| {
                matches!(o, Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_)))
            };
            let t0 = Instant::now();
            if let Some(co) = coalescer {
                let r = co.reserve(reserve_req(h.clone(), &key)).await;
                let micros = t0.elapsed().as_micros() as u64;
                let ok = matches!(&r, Ok(r) if granted(&r.outcome));
                let _ = tx.send(ok.then_some(micros)).await;
                if ok {
                    let _ = co.settle(settle_req(h)).await;
                }
                return;
            }
            let mut c = client.at(i as usize);
            let r = c.reserve(pb::ReserveBatch { requests: vec![reserve_req(h.clone(), &key)] }).await;
            let micros = t0.elapsed().as_micros() as u64;
            let ok = matches!(&r, Ok(r) if granted(&r.get_ref().results[0].outcome));
            let _ = tx.send(ok.then_some(micros)).await;
            if ok {
                let _ = c.settle(pb::SettleBatch { requests: vec![settle_req(h)] }).await;
            }
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        match v {
            Some(us) => lat.push(us),
            None => failed += 1,
        }
    }
    lat.sort_unstable();
    println!(
        "latency at {} reserves/s for {} s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} ok, {} failed)",
        args.rate,
        args.seconds,
        pct(&lat, 0.50) as f64 / 1000.0,
        pct(&lat, 0.99) as f64 / 1000.0,
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        lat.len(),
        failed
    );
    Ok(())
}
