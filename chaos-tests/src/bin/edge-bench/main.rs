//! Edge benchmark: what the edge adds to a request's latency, and how much
//! memory it needs for many open streams. Real processes on loopback: a
//! `tollgate ledger` cluster (`--nodes`, default 1, fsync on), `tollgate
//! edge` processes and `mock-upstream` processes, all from the same target
//! directory as this binary. It prints figures; it asserts nothing.
//!
//! Phase 1 (added latency): an open loop of `--rate` non-streaming
//! `POST /v1/messages` per second for `--seconds`, (a) straight to the mock,
//! (b) through the edge (budgets on: every request reserves a hold on the
//! org, team and user budgets and settles it), (c) straight to the mock
//! again, to show the noise. Each phase has an unrecorded warmup. Latency is
//! measured from the scheduled send time to the last byte of the response
//! body, so a stalled load generator cannot hide a slow server.
//!
//! Phase 2 (memory): `--streams` concurrent streaming requests through a
//! fresh edge to a mock that paces its SSE events so that each stream lasts
//! about `--stream-seconds`; samples the edge's VmRSS while all are open and
//! reads its VmHWM at the end. `--stream-rounds N` repeats it against the
//! same edge, to tell memory that is reused from memory that keeps growing.
//!
//! The edge and the ledger talk mutual TLS, as in production, unless
//! `--plaintext`. Every loop is bounded in time and count.
#![forbid(unsafe_code)]

mod memory;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_chaos::cluster::{sibling_binaries, EdgeProc, LedgerCluster, MockProc, Transport};
use tollgate_chaos::hist::Hist;
use tollgate_proto::v1 as pb;

#[derive(Parser)]
struct Args {
    /// Requests per second in the latency phases.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of each latency phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Unrecorded warmup before each latency phase, in seconds.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Concurrent open streams in the memory phase.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// How long each stream lasts (the mock paces its 15 SSE events to fit).
    #[arg(long, default_value_t = 10)]
    stream_seconds: u64,
    /// Ledger nodes (1 leaves more of a small machine's CPU to the edge).
    #[arg(long, default_value_t = 1)]
    nodes: u64,
    /// Bytes of prompt text in each request.
    #[arg(long, default_value_t = 500)]
    prompt_bytes: usize,
    /// Rounds of `--streams` streams through the same edge (more than one
    /// shows whether memory is reused or keeps growing).
    #[arg(long, default_value_t = 1)]
    stream_rounds: u32,
    /// Skip the latency phases.
    #[arg(long)]
    skip_latency: bool,
    /// Skip the memory phase.
    #[arg(long)]
    skip_streams: bool,
    /// Keep data dirs and logs after the run.
    #[arg(long)]
    keep: bool,
    /// Directory under which the processes keep their data (default: a temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Edge and ledger without TLS (for an A/B against the default mutual TLS).
    #[arg(long)]
    plaintext: bool,
    /// Run the phase through the edge twice, interleaved: an edge with
    /// budget leases off (a Raft commit per request), then one with them on
    /// (the default); each prints Raft entries and ledger CPU per 1,000 requests.
    #[arg(long)]
    compare_leases: bool,
    /// Also a closed loop: this many connections, each sending its next
    /// request as soon as the last one is answered, for `--seconds`, straight
    /// to the mock and through each edge (0: skip).
    #[arg(long, default_value_t = 0)]
    connections: usize,
}

/// The edge's flags for reaching the ledger over the cluster's TLS, if on.
fn edge_flags(cluster: &LedgerCluster, name: &str) -> anyhow::Result<Vec<String>> {
    cluster.tls_flags(&tollgate_tls::Role::Edge(name.into()))
}

/// SSE events in one Anthropic stream from the mock (3 opening, 8 deltas, 4 closing).
const MOCK_EVENTS: u64 = 15;
/// Longest a single non-streaming request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type Http = Client<HttpConnector, Full<Bytes>>;

fn http_client(max_idle: usize) -> Http {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(max_idle)
        .build(c)
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// The soft and hard "Max open files" of this process (children inherit them).
fn open_files_limit() -> Option<(String, String)> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_string(), f.next()?.to_string()))
}

fn request_body(prompt_bytes: usize, stream: bool) -> Bytes {
    let words = "the quick brown fox jumps over the lazy dog ";
    let prompt: String = words.chars().cycle().take(prompt_bytes).collect();
    let mut v = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}],
    });
    if stream {
        v["stream"] = serde_json::Value::Bool(true);
    }
    Bytes::from(v.to_string())
}

fn messages_request(uri: &Uri, key: Option<&str>, body: &Bytes) -> Request<Full<Bytes>> {
    let mut b =
        Request::post(uri.clone()).header("anthropic-version", "2023-06-01").header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("x-api-key", k);
    }
    b.body(Full::new(body.clone())).expect("a valid request")
}

/// Sends one request and reads the whole body: (status, body).
async fn send(client: &Http, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
    let resp = client.request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, body))
}

/// Where one latency phase sends its requests.
struct Target {
    label: &'static str,
    uri: Uri,
    key: Option<String>,
}

enum Outcome {
    Ok,
    Status(u16),
    Error(String),
}

/// Sends `req` (bounded by `REQUEST_TIMEOUT`) and sorts how it went.
async fn request_outcome(client: &Http, req: Request<Full<Bytes>>) -> Outcome {
    match tokio::time::timeout(REQUEST_TIMEOUT, send(client, req)).await {
        Err(_) => Outcome::Error("timed out".into()),
        Ok(Err(e)) => Outcome::Error(e),
        Ok(Ok((200, _))) => Outcome::Ok,
        Ok(Ok((status, _))) => Outcome::Status(status),
    }
}

struct Sample {
    /// Scheduled send time to the end of the response body.
    total_us: u64,
    /// Actual send time to the end of the response body.
    service_us: u64,
    /// How late the generator sent it.
    lag_us: u64,
    outcome: Outcome,
}

#[derive(Default)]
struct PhaseStats {
    total: Vec<u64>,
    service: Vec<u64>,
    lag: Vec<u64>,
    ok: u64,
    non_200: u64,
    errors: u64,
    first_problems: Vec<String>,
    /// Requests not finished by the drain deadline.
    unfinished: u64,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl PhaseStats {
    /// Counts one request: its latencies if it got a 200, else what went wrong.
    fn record(&mut self, s: Sample) {
        let problem = match s.outcome {
            Outcome::Ok => {
                self.ok += 1;
                self.total.push(s.total_us);
                self.service.push(s.service_us);
                return;
            }
            Outcome::Status(code) => {
                self.non_200 += 1;
                format!("HTTP {code}")
            }
            Outcome::Error(e) => {
                self.errors += 1;
                e
            }
        };
        if self.first_problems.len() < 3 {
            self.first_problems.push(problem);
        }
    }

    fn p(&self, p: f64) -> f64 {
        ms(pct(&self.total, p))
    }

    fn service_p(&self, p: f64) -> f64 {
        ms(pct(&self.service, p))
    }

    fn max(&self) -> f64 {
        ms(self.total.last().copied().unwrap_or(0))
    }
}

/// An open loop: request i is due at start + i / rate, sent on schedule in
/// its own task whatever the earlier ones are doing. Only 200s are timed.
async fn open_loop(client: &Http, t: &Target, body: &Bytes, rate: u64, secs: u64) -> PhaseStats {
    let total = rate.saturating_mul(secs);
    let interval_ns = 1_000_000_000 / rate.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now() + Duration::from_millis(5);
    for i in 0..total {
        let due = start + Duration::from_nanos(interval_ns * i);
        tokio::time::sleep_until(due.into()).await;
        let (client, tx, body, uri, key) = (client.clone(), tx.clone(), body.clone(), t.uri.clone(), t.key.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = request_outcome(&client, messages_request(&uri, key.as_deref(), &body)).await;
            let done = Instant::now();
            let _ = tx.send(Sample {
                total_us: done.duration_since(due).as_micros() as u64,
                service_us: done.duration_since(sent).as_micros() as u64,
                lag_us: sent.duration_since(due).as_micros() as u64,
                outcome,
            });
        });
    }
    drop(tx);
    let mut st = PhaseStats::default();
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT + Duration::from_secs(5);
    let mut received = 0u64;
    while received < total {
        let Ok(Some(s)) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
        received += 1;
        st.lag.push(s.lag_us);
        st.record(s);
    }
    st.unfinished = total - received;
    st.total.sort_unstable();
    st.service.sort_unstable();
    st.lag.sort_unstable();
    st
}

/// Warmup (unrecorded), then the measured phase.
async fn phase(client: &Http, t: &Target, body: &Bytes, args: &Args) -> PhaseStats {
    if args.warmup > 0 {
        let _ = open_loop(client, t, body, args.rate, args.warmup).await;
    }
    let st = open_loop(client, t, body, args.rate, args.seconds).await;
    print_phase(t, &st);
    st
}

async fn scrape(client: &Http, edge: &str) -> String {
    let req = Request::get(format!("http://{edge}/metrics")).body(Full::new(Bytes::new())).expect("a valid request");
    match tokio::time::timeout(Duration::from_secs(5), send(client, req)).await {
        Ok(Ok((200, b))) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

fn gauge(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sends requests through the edge until one is admitted (bounded): the
/// edge learns keys from its config watch.
async fn wait_admitted(client: &Http, uri: &Uri, key: &str, body: &Bytes) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = tokio::time::timeout(REQUEST_TIMEOUT, send(client, messages_request(uri, Some(key), body))).await;
        let last = match r {
            Ok(Ok((200, _))) => return Ok(()),
            Ok(Ok((status, b))) => format!("HTTP {status}: {}", String::from_utf8_lossy(&b)),
            Ok(Err(e)) => e,
            Err(_) => "timed out".into(),
        };
        if Instant::now() > deadline {
            bail!("the edge does not admit the benchmark key: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One team, one user, one key; hard monthly budgets far above what the run
/// spends on the org, the team and the user. Returns the key's secret.
async fn principals(cluster: &LedgerCluster) -> anyhow::Result<String> {
    let admin = cluster.admin(Duration::from_secs(30)).await.context("ledger did not come up")?;
    admin
        .call(pb::CreateTeamRequest { name: "bench".into() }, |mut c, r| async move { c.create_team(r).await })
        .await?;
    let user = pb::CreateUserRequest { email: "bench@corp.io".into(), team: "bench".into() };
    admin.call(user, |mut c, r| async move { c.create_user(r).await }).await?;
    let key = pb::CreateKeyRequest { user: "bench@corp.io".into(), name: "edge-bench".into() };
    let secret = admin.call(key, |mut c, r| async move { c.create_key(r).await }).await?.secret;
    for scope in ["org", "team:bench", "user:bench@corp.io"] {
        tollgate_chaos::cluster::set_budget(&admin, scope, "1000000").await?;
    }
    Ok(secret)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (bin, mock_bin) = sibling_binaries()?;
    let (soft, hard) = open_files_limit().unwrap_or_else(|| ("?".into(), "?".into()));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "edge-bench: {cpus} CPUs, open files limit {soft} (hard {hard}), {}-node ledger (fsync on), budgets on org, team and user",
        args.nodes
    );
    // The edge holds two sockets per stream, the mock and this process one each.
    let need = 2 * args.streams as u64 + 512;
    if !args.skip_streams && soft.parse::<u64>().is_ok_and(|n| n < need) {
        bail!("--streams {} needs an open files limit of at least {need}: run `ulimit -n 65536` first", args.streams);
    }
    let dir = match &args.data_dir {
        Some(base) => tempfile::tempdir_in(base)?,
        None => tempfile::tempdir()?,
    };
    let dir_path = dir.path().to_path_buf();
    if args.keep {
        println!("keeping data and logs in {}", dir.keep().display());
    }

    let transport = if args.plaintext { Transport::Plaintext } else { Transport::Tls };
    let mut cluster = LedgerCluster::prepare(&bin, &dir_path, args.nodes, transport, true, &[])?;
    for id in 1..=args.nodes {
        cluster.spawn(id)?;
    }
    let secret = principals(&cluster).await?;
    let client = http_client(1024);
    if !args.skip_latency {
        latency(&args, &bin, &mock_bin, &dir_path, &cluster, &secret, &client).await?;
    }
    if !args.skip_streams {
        memory::memory(&args, &bin, &mock_bin, &dir_path, &cluster, &secret).await?;
    }
    Ok(())
}

async fn latency(
    args: &Args,
    bin: &Path,
    mock_bin: &Path,
    dir: &Path,
    cluster: &LedgerCluster,
    secret: &str,
    client: &Http,
) -> anyhow::Result<()> {
    let mock = MockProc::start(mock_bin, dir, None, false, &["--event-delay-ms", "0"])?;
    mock.wait_ready(Duration::from_secs(10)).await?;
    let body = request_body(args.prompt_bytes, false);
    let direct: Uri = format!("http://{}/v1/messages", mock.addr).parse()?;
    println!(
        "\nadded latency: {} non-streaming requests/s (open loop), {} s per phase after a {} s warmup, {}-byte requests",
        args.rate,
        args.seconds,
        args.warmup,
        body.len()
    );
    println!("  latency = scheduled send → last body byte; service = actual send → last body byte");
    let a = phase(client, &Target { label: "(a) direct", uri: direct.clone(), key: None }, &body, args).await;
    let modes: &[(&str, &str)] = if args.compare_leases {
        &[("(b) leases off", "false"), ("(b) leases on", "true")]
    } else {
        &[("(b) via the edge", "true")]
    };
    let mut through = Vec::new();
    let mut edges = Vec::new();
    for (i, (label, leases)) in modes.iter().enumerate() {
        let name = format!("edge-latency-{i}");
        let flags = edge_flags(cluster, &name)?;
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let upstream = format!("http://{}", mock.addr);
        let env = [("TOLLGATE_LEASES", *leases)];
        let edge = EdgeProc::start_with_env(bin, dir, &name, &cluster.servers(), &upstream, &flags, &env)?;
        edge.wait_ready(Duration::from_secs(30)).await?;
        let via: Uri = format!("http://{}/v1/messages", edge.addr).parse()?;
        wait_admitted(client, &via, secret, &body).await?;
        through.push((label, through_edge(args, client, cluster, &edge, label, &via, secret, &body).await));
        edges.push((label, edge));
    }
    let c = phase(client, &Target { label: "(c) direct again", uri: direct.clone(), key: None }, &body, args).await;
    for (label, b) in &through {
        let added = |f: &dyn Fn(&PhaseStats) -> f64| f(b) - (f(&a) + f(&c)) / 2.0;
        println!(
            "  added by the edge, {label} (b − mean of a and c): p50 {:.2} ms, p99 {:.2} ms (service time: p50 {:.2} ms, p99 {:.2} ms); goal p99 < 0.5 ms",
            added(&|s| s.p(0.50)),
            added(&|s| s.p(0.99)),
            added(&|s| s.service_p(0.50)),
            added(&|s| s.service_p(0.99)),
        );
    }
    if args.connections > 0 {
        println!(
            "\nclosed loop: {} connections, each sending as soon as it is answered, {} s per phase",
            args.connections, args.seconds
        );
        let direct_st = closed_loop(&Target { label: "direct", uri: direct.clone(), key: None }, &body, args).await;
        for (label, edge) in &edges {
            let via: Uri = format!("http://{}/v1/messages", edge.addr).parse()?;
            let st = closed_loop(&Target { label, uri: via, key: Some(secret.into()) }, &body, args).await;
            println!(
                "  added by the edge, {label}: p50 {:.2} ms, p99 {:.2} ms",
                st.service_p(0.50) - direct_st.service_p(0.50),
                st.service_p(0.99) - direct_st.service_p(0.99)
            );
        }
        closed_loop(&Target { label: "direct again", uri: direct, key: None }, &body, args).await;
    }
    Ok(())
}

/// `--connections` workers, each on its own keep-alive connection, sending
/// back to back for `--seconds` (after the warmup); prints and returns the
/// latencies (service time: there is no schedule to be late for).
async fn closed_loop(t: &Target, body: &Bytes, args: &Args) -> PhaseStats {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.seconds);
    for _ in 0..args.connections {
        let (tx, body, uri, key) = (tx.clone(), body.clone(), t.uri.clone(), t.key.clone());
        tokio::spawn(async move {
            let client = http_client(1);
            while Instant::now() < until {
                let sent = Instant::now();
                let outcome = request_outcome(&client, messages_request(&uri, key.as_deref(), &body)).await;
                if sent < measure_from {
                    continue;
                }
                let us = sent.elapsed().as_micros() as u64;
                let _ = tx.send(Sample { total_us: us, service_us: us, lag_us: 0, outcome });
            }
        });
    }
    drop(tx);
    let mut st = PhaseStats::default();
    while let Some(s) = rx.recv().await {
        st.record(s);
    }
    st.total.sort_unstable();
    st.service.sort_unstable();
    println!(
        "  {:<16} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms | {:.0} requests/s | {} ok, {} non-200, {} errors",
        t.label,
        st.p(0.50),
        st.p(0.99),
        st.max(),
        st.ok as f64 / args.seconds.max(1) as f64,
        st.ok,
        st.non_200,
        st.errors
    );
    if !st.first_problems.is_empty() {
        println!("    first problems: {}", st.first_problems.join("; "));
    }
    st
}

/// The ledger node's committed proposals (Raft entries it appended as
/// leader) and CPU time in ms, summed over the nodes.
async fn ledger_counters(client: &Http, cluster: &LedgerCluster) -> (u64, u64) {
    let (mut entries, mut cpu_ms) = (0, 0);
    for (id, http) in &cluster.http {
        let text = scrape(client, http).await;
        entries += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("tollgate_ledger_proposals_total{result=\"committed\"} ")?.trim().parse::<f64>().ok()
            })
            .unwrap_or(0.0) as u64;
        cpu_ms += cluster.pid(*id).and_then(cpu_time_ms).unwrap_or(0);
    }
    (entries, cpu_ms)
}

/// User + system CPU time of a process, in ms (from /proc/PID/stat, at 100 ticks/s).
fn cpu_time_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10)
}

/// Warmup, then phase (b) through `edge`, with the edge's own histograms
/// and the ledger's entries and CPU per 1,000 requests.
#[allow(clippy::too_many_arguments)]
async fn through_edge(
    args: &Args,
    client: &Http,
    cluster: &LedgerCluster,
    edge: &EdgeProc,
    label: &'static str,
    via: &Uri,
    secret: &str,
    body: &Bytes,
) -> PhaseStats {
    if args.warmup > 0 {
        let t = Target { label: "warmup", uri: via.clone(), key: Some(secret.into()) };
        let _ = open_loop(client, &t, body, args.rate, args.warmup).await;
    }
    let before = scrape(client, &edge.addr).await;
    let (entries0, cpu0) = ledger_counters(client, cluster).await;
    let t = Target { label, uri: via.clone(), key: Some(secret.into()) };
    let st = open_loop(client, &t, body, args.rate, args.seconds).await;
    print_phase(&t, &st);
    // Settlements drain after the last response (the outbox lingers a little).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = scrape(client, &edge.addr).await;
    let (entries1, cpu1) = ledger_counters(client, cluster).await;
    for (name, what) in [
        ("tollgate_gateway_overhead_seconds", "time in the edge, upstream excluded"),
        ("tollgate_upstream_latency_seconds", "edge → mock, to response headers"),
    ] {
        let h = Hist::parse(&after, name).since(&Hist::parse(&before, name));
        println!("    edge's own histogram, {what}: {}", h.summary());
    }
    let per_k = |n: u64| n as f64 * 1000.0 / st.ok.max(1) as f64;
    println!(
        "    ledger: {} Raft entries ({:.1} per 1,000 requests), {} ms CPU ({:.1} ms per 1,000 requests)",
        entries1.saturating_sub(entries0),
        per_k(entries1.saturating_sub(entries0)),
        cpu1.saturating_sub(cpu0),
        per_k(cpu1.saturating_sub(cpu0)),
    );
    if let Some(pid) = edge.pid() {
        println!(
            "    edge RSS: {:.1} MB (peak {:.1} MB)",
            mb(proc_kb(pid, "VmRSS").unwrap_or(0)),
            mb(proc_kb(pid, "VmHWM").unwrap_or(0))
        );
    }
    st
}

fn print_phase(t: &Target, st: &PhaseStats) {
    println!(
        "  {:<16} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms | service p50 {:>6.2} p99 {:>6.2} | sender lag p99 {:>5.2} ms | {} ok, {} non-200, {} errors{}",
        t.label,
        st.p(0.50),
        st.p(0.99),
        st.max(),
        st.service_p(0.50),
        st.service_p(0.99),
        ms(pct(&st.lag, 0.99)),
        st.ok,
        st.non_200,
        st.errors,
        if st.unfinished > 0 { format!(", {} unfinished", st.unfinished) } else { String::new() }
    );
    if !st.first_problems.is_empty() {
        println!("    first problems: {}", st.first_problems.join("; "));
    }
}

async fn gauge_of(client: &Http, edge: &str, name: &str) -> Option<i64> {
    gauge(&scrape(client, edge).await, name)
}
