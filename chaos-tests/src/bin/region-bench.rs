//! `region-bench`: admission across three regions on loopback, joined by the
//! harness's user-space WAN (`tollgate_chaos::wan`: every byte to a ledger
//! node from another region is delayed `--one-way-ms` each way, with jitter,
//! in order). One voter per region (`--region r1..r3`, WAN-sized Raft
//! timeouts), one edge per region listing its own region's node first and
//! reaching the others through the WAN, one mock provider.
//!
//! For leases off, then on: an open loop of `--rate` requests/s through each
//! region's edge for `--seconds`, printing per region the latency a client
//! sees and the edge's own time (upstream excluded), and the Raft entries
//! per 1,000 requests; then the leader's node is killed (its region dies)
//! while the load goes on, printing per surviving region the longest time
//! with no request admitted, and the node is restarted. Then a team with
//! a hard budget of `--cap-usd` is spent through two regions' edges in
//! turn until the first 402, printing how much of the limit was spent. Prints figures, asserts nothing; every loop is bounded in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;
use tollgate_chaos::cluster::{free_port, set_budget, sibling_binaries, EdgeProc, LedgerCluster, MockProc, Transport};
use tollgate_chaos::hist::Hist;
use tollgate_chaos::wan::{Delay, WanLink};
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

#[derive(Parser)]
struct Args {
    /// Delay each way between regions, in ms (60 ms round trip by default).
    #[arg(long, default_value_t = 30)]
    one_way_ms: u64,
    /// Up to this much more per chunk, in ms.
    #[arg(long, default_value_t = 2)]
    jitter_ms: u64,
    /// Requests per second through each region's edge.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Length of each measured phase, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Skip the leader-region failure phase.
    #[arg(long)]
    skip_failover: bool,
    /// Keep the data dirs and logs here.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
    /// Only this mode: `on` or `off` (default: off, then on).
    #[arg(long)]
    leases: Option<String>,
    /// The hard budget two regions' edges share until its first 402, in USD.
    #[arg(long, default_value = "0.1")]
    cap_usd: String,
}

type Http = Client<HttpConnector, Full<Bytes>>;

const REGIONS: [&str; 3] = ["r1", "r2", "r3"];
const TIMEOUT: Duration = Duration::from_secs(20);

fn body() -> Bytes {
    let v = serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}],
    });
    Bytes::from(v.to_string())
}

/// One request through `edge`: its latency in µs, or why it failed.
async fn one(client: &Http, edge: &str, key: &str, body: &Bytes) -> Result<u64, String> {
    let req = Request::post(format!("http://{edge}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("a valid request");
    let sent = Instant::now();
    let resp = tokio::time::timeout(TIMEOUT, client.request(req)).await.map_err(|_| "timed out".to_string())?;
    let resp = resp.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if status != 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let msg = v["error"]["message"].as_str().unwrap_or_default().chars().take(160).collect::<String>();
        return Err(format!("HTTP {status}: {msg}"));
    }
    Ok(sent.elapsed().as_micros() as u64)
}

/// (send time since `t0`, latency or failure) of every request of one region.
type Samples = Arc<Mutex<Vec<(Duration, Result<u64, String>)>>>;

/// An open loop of `rate`/s through `edge` until `until`.
async fn load(client: Http, edge: String, key: String, rate: u64, t0: Instant, until: Instant, out: Samples) {
    let body = body();
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut i = 0u32;
    let mut tasks = Vec::new();
    loop {
        let due = t0 + every * i;
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (client, edge, key, body, out) = (client.clone(), edge.clone(), key.clone(), body.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            let r = one(&client, &edge, &key, &body).await;
            out.lock().await.push((due.duration_since(t0), r));
        }));
        i += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

async fn scrape(client: &Http, addr: &str) -> String {
    let Ok(req) = Request::get(format!("http://{addr}/metrics")).body(Full::new(Bytes::new())) else {
        return String::new();
    };
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(r)) => String::from_utf8_lossy(&r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default())
            .into_owned(),
        _ => String::new(),
    }
}

/// Raft entries committed so far, over the nodes that answer.
async fn entries(client: &Http, cluster: &LedgerCluster) -> u64 {
    let mut n = 0.0;
    for http in cluster.http.values() {
        let text = scrape(client, http).await;
        n += text
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_ledger_proposals_total{result=\"committed\"} ")?.trim().parse().ok())
            .unwrap_or(0.0);
    }
    n as u64
}

/// The edge's own `tollgate_gateway_overhead_seconds` (upstream excluded)
/// between two scrapes: the upper bound of the bucket holding the median
/// and the 99th percentile.
fn overhead(before: &str, after: &str) -> String {
    let h = between(before, after, "tollgate_gateway_overhead_seconds");
    format!("p50 {}, p99 {}", h.bound_ms(0.5), h.bound_ms(0.99))
}

/// What histogram `name` observed between two scrapes of one process.
fn between(before: &str, after: &str, name: &str) -> Hist {
    Hist::parse(after, name).since(&Hist::parse(before, name))
}

struct World {
    cluster: LedgerCluster,
    _links: Vec<WanLink>,
    /// Per region: its node's own address (the members reach it through
    /// its WAN link).
    direct: BTreeMap<u64, String>,
    mock: MockProc,
    delay: Delay,
    key: String,
    admin: tollgate_client::AdminClient,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
}

impl World {
    /// Region `k`'s edge: its own node first, the others through the WAN,
    /// each through a link of its own (cut them all to cut the region's
    /// edge off from the ledger).
    async fn edge(&self, k: u64, leases: bool) -> anyhow::Result<(EdgeProc, Vec<WanLink>)> {
        let mut ledger = Vec::new();
        let mut links = Vec::new();
        for (j, addr) in &self.direct {
            let delay =
                if *j == k { Delay { one_way: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0 } } else { self.delay };
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let link = WanLink::start(listen, addr.parse()?, delay, k * 10 + j).await?;
            let a = link.addr.to_string();
            if *j == k {
                ledger.insert(0, a);
            } else {
                ledger.push(a);
            }
            links.push(link);
        }
        let name = format!("edge-{}-{}", REGIONS[k as usize - 1], if leases { "leases" } else { "holds" });
        let mut flags = self.cluster.tls_flags(&Role::Edge(name.clone()))?;
        flags.extend(["--region".to_string(), REGIONS[k as usize - 1].to_string()]);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        // Leases sized to ride out an election across regions (a lease
        // holds half its ttl of spend; elections here take up to ~6 s).
        let env = [("TOLLGATE_LEASES", if leases { "true" } else { "false" }), ("TOLLGATE_LEASE_TTL_SECS", "20")];
        Ok((EdgeProc::start_with_env(&self.bin, &self.dir, &name, &ledger, &self.mock.url(), &flags, &env)?, links))
    }
}

async fn start(args: &Args, dir: &std::path::Path) -> anyhow::Result<World> {
    let (bin, mock_bin) = sibling_binaries()?;
    let timeouts = ["--heartbeat-ms", "250", "--election-timeout-ms", "1500"];
    let mut cluster = LedgerCluster::prepare(&bin, dir, 3, Transport::Tls, true, &timeouts)?;
    let delay = Delay {
        one_way: Duration::from_millis(args.one_way_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        loss: 0.0,
    };
    let (mut links, mut direct) = (Vec::new(), BTreeMap::new());
    for (k, addr) in cluster.addrs.clone() {
        let target: SocketAddr = addr.parse()?;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let link = WanLink::start(listen, target, delay, k).await?;
        // Every member reaches node k through its WAN link.
        cluster.advertised.insert(k, link.addr.to_string());
        direct.insert(k, addr);
        links.push(link);
        cluster.node_args.insert(k, vec!["--region".into(), REGIONS[k as usize - 1].into()]);
    }
    for k in 1..=3 {
        cluster.spawn(k)?;
    }
    let admin = cluster.admin(Duration::from_secs(60)).await.context("the ledger did not come up")?;
    admin.call(pb::CreateTeamRequest { name: "geo".into() }, |mut c, r| async move { c.create_team(r).await }).await?;
    let user = pb::CreateUserRequest { email: "geo@corp.io".into(), team: "geo".into() };
    admin.call(user, |mut c, r| async move { c.create_user(r).await }).await?;
    let key = pb::CreateKeyRequest { user: "geo@corp.io".into(), name: "region-bench".into() };
    let key = admin.call(key, |mut c, r| async move { c.create_key(r).await }).await?.secret;
    for scope in ["org", "team:geo", "user:geo@corp.io"] {
        set_budget(&admin, scope, "1000000").await?;
    }
    let mock = MockProc::start(&mock_bin, dir, None, false, &["--event-delay-ms", "0"])?;
    mock.wait_ready(Duration::from_secs(10)).await?;
    Ok(World { cluster, _links: links, direct, mock, delay, key, admin, dir: dir.to_path_buf(), bin })
}

async fn leader(w: &World) -> Option<u64> {
    for addr in w.direct.values() {
        if let Ok(s) = tollgate_client::AdminClient::node_status_at(
            addr,
            Duration::from_secs(2),
            w.cluster.client_tls(&Role::Admin("bench".into())).ok().flatten(),
        )
        .await
        {
            if s.has_leader {
                return Some(s.leader_id);
            }
        }
    }
    None
}

/// Loads every region's edge at once for `secs`; returns each region's samples.
async fn phase(
    client: &Http,
    args: &Args,
    edges: &BTreeMap<u64, EdgeProc>,
    key: &str,
    secs: u64,
) -> BTreeMap<u64, Samples> {
    let t0 = Instant::now() + Duration::from_millis(10);
    let until = t0 + Duration::from_secs(secs);
    let mut out = BTreeMap::new();
    let mut tasks = Vec::new();
    for (k, e) in edges {
        let s: Samples = Arc::default();
        out.insert(*k, s.clone());
        tasks.push(tokio::spawn(load(client.clone(), e.addr.clone(), key.to_string(), args.rate, t0, until, s)));
    }
    for t in tasks {
        let _ = t.await;
    }
    out
}

/// Two regions' edges (not the leader's) share a fresh team's hard budget:
/// requests go to each in turn until the first 402; once every settle has
/// landed, prints how much of the limit was spent.
async fn cap(
    client: &Http,
    args: &Args,
    w: &World,
    edges: &BTreeMap<u64, EdgeProc>,
    leases: bool,
) -> anyhow::Result<()> {
    let team = format!("cap-{}", if leases { "leases" } else { "holds" });
    let email = format!("{team}@corp.io");
    let admin = &w.admin;
    admin.call(pb::CreateTeamRequest { name: team.clone() }, |mut c, r| async move { c.create_team(r).await }).await?;
    let user = pb::CreateUserRequest { email: email.clone(), team: team.clone() };
    admin.call(user, |mut c, r| async move { c.create_user(r).await }).await?;
    let key = pb::CreateKeyRequest { user: email, name: "cap".into() };
    let key = admin.call(key, |mut c, r| async move { c.create_key(r).await }).await?.secret;
    let scope = format!("team:{team}");
    set_budget(admin, &scope, &args.cap_usd).await?;
    let lead = leader(w).await.unwrap_or(1);
    let pair: Vec<(u64, &EdgeProc)> = edges.iter().filter(|(k, _)| **k != lead).map(|(k, e)| (*k, e)).take(2).collect();
    let body = body();
    let started = Instant::now();
    let (mut ok, mut sent) = (0u64, 0usize);
    let first_402 = loop {
        if started.elapsed() > Duration::from_secs(180) || sent > 100_000 {
            bail!("the {} budget never ran out", args.cap_usd);
        }
        let edge = &pair[sent % pair.len()].1.addr;
        sent += 1;
        match one(client, edge, &key, &body).await {
            Ok(_) => ok += 1,
            Err(e) if e.starts_with("HTTP 402") => break e,
            // A key the edges have not seen yet (the config watch brings it).
            Err(e) if e.starts_with("HTTP 401") && ok == 0 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("budget {scope}: {e}"),
        }
    };
    let took = started.elapsed();
    // Every settle lands (outboxes drain): spent stops moving, nothing held.
    let (mut row, mut last, mut still) = (None, None, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && still < 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let usage =
            admin.call(pb::UsageRequest { by: String::new() }, |mut c, r| async move { c.usage(r).await }).await?;
        let r = usage.rows.into_iter().find(|r| r.scope == scope).context("no usage row for the budget")?;
        still = if last == Some(r.spent_nano_usd) && r.held_nano_usd == 0 { still + 1 } else { 0 };
        last = Some(r.spent_nano_usd);
        row = Some(r);
    }
    let row = row.context("no usage")?;
    let limit = row.limit_nano_usd.unwrap_or(0);
    println!(
        "  two regions' edges (r{}) share a ${} hard budget: {ok} requests admitted in {:.1} s, then {}; spent {:.2}% of the limit ({} nano-USD left)",
        pair.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>().join(", r"),
        args.cap_usd,
        took.as_secs_f64(),
        first_402.split(':').next().unwrap_or_default(),
        row.spent_nano_usd as f64 * 100.0 / limit.max(1) as f64,
        limit.saturating_sub(row.spent_nano_usd)
    );
    Ok(())
}

async fn mode(client: &Http, args: &Args, w: &mut World, leases: bool) -> anyhow::Result<()> {
    let label = if leases { "leases on" } else { "leases off (a hold per request)" };
    let mut edges = BTreeMap::new();
    let mut edge_links = BTreeMap::new();
    for k in 1..=3u64 {
        let (e, links) = w.edge(k, leases).await?;
        e.wait_ready(Duration::from_secs(30)).await?;
        edges.insert(k, e);
        edge_links.insert(k, links);
    }
    // Warm up (and let the leases be granted).
    let _ = phase(client, args, &edges, &w.key, 3).await;
    let mut before = BTreeMap::new();
    for (k, e) in &edges {
        before.insert(*k, scrape(client, &e.addr).await);
    }
    let e0 = entries(client, &w.cluster).await;
    let lead = leader(w).await.unwrap_or(0);
    let lead_http = w.cluster.http.get(&lead).cloned().unwrap_or_default();
    let lead_before = scrape(client, &lead_http).await;
    let samples = phase(client, args, &edges, &w.key, args.seconds).await;
    let e1 = entries(client, &w.cluster).await;
    let lead_after = scrape(client, &lead_http).await;
    println!("\n{label}: {} requests/s per region for {} s; leader in region r{lead}", args.rate, args.seconds);
    let mut total = 0u64;
    for (k, s) in &samples {
        let s = s.lock().await;
        let mut ok: Vec<u64> = s.iter().filter_map(|(_, r)| r.as_ref().ok().copied()).collect();
        ok.sort_unstable();
        total += ok.len() as u64;
        let failed = s.len() - ok.len();
        let own = overhead(&before[k], &scrape(client, &edges[k].addr).await);
        println!(
            "  region r{k}{}: client latency p50 {:.2} ms, p99 {:.2} ms | time in the edge {own} | {} ok, {failed} failed",
            if *k == lead { " (leader's)" } else { "" },
            pct(&ok, 0.5),
            pct(&ok, 0.99),
            ok.len()
        );
    }
    println!(
        "  Raft entries: {} ({:.1} per 1,000 requests)",
        e1.saturating_sub(e0),
        e1.saturating_sub(e0) as f64 * 1000.0 / total.max(1) as f64
    );
    // What one commit costs against the round trip between regions.
    let commit = between(&lead_before, &lead_after, "tollgate_ledger_commit_seconds");
    let flush = between(&lead_before, &lead_after, "tollgate_ledger_log_flush_seconds").mean_ms();
    let commits = commit.count;
    let commit = commit.mean_ms();
    println!(
        "  on the leader: {commits} batches committed, mean {commit:.1} ms from proposal to apply \
         ({} ms round trip between regions); log flush mean {flush:.2} ms",
        args.one_way_ms * 2
    );
    if args.skip_failover {
        return cap(client, args, w, &edges, leases).await;
    }
    // A region's edge cut off from every ledger node (not the leader's region).
    let lead = leader(w).await.unwrap_or(1);
    let cut = (1..=3u64).find(|k| *k != lead).unwrap_or(2);
    let samples = {
        let run = phase(client, args, &edges, &w.key, 14);
        tokio::pin!(run);
        let cutter = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(cutter);
        let mut done = false;
        loop {
            tokio::select! {
                _ = &mut cutter, if !done => {
                    edge_links[&cut].iter().for_each(WanLink::cut);
                    done = true;
                }
                s = &mut run => break s,
            }
        }
    };
    edge_links[&cut].iter().for_each(WanLink::heal);
    println!("  region r{cut}'s edge is cut off from every ledger node 2 s into a 14 s load:");
    for (k, s) in &samples {
        let s = s.lock().await;
        let after: Vec<&(Duration, Result<u64, String>)> =
            s.iter().filter(|(t, _)| *t >= Duration::from_secs(2)).collect();
        let ok = after.iter().filter(|(_, r)| r.is_ok()).count();
        let last_ok = after.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| *t).max();
        let first_err = after.iter().find_map(|(_, r)| r.as_ref().err());
        println!(
            "    region r{k}{}: {ok} of {} admitted after the cut; the last sent {:.2} s after it{}",
            if *k == cut { " (cut off)" } else { "" },
            after.len(),
            last_ok.map_or(0.0, |t| t.as_secs_f64() - 2.0),
            first_err.map(|e| format!("; refused: {e}")).unwrap_or_default()
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The leader's region dies: its node and its edge.
    let Some(lead) = leader(w).await else { bail!("no leader before the failover") };
    let load_secs = 10u64;
    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Instant::now()
    };
    let mut killed_at = None;
    let samples = {
        let run = phase(client, args, &edges, &w.key, load_secs);
        tokio::pin!(run);
        tokio::pin!(killer);
        let t0 = Instant::now();
        loop {
            tokio::select! {
                at = &mut killer, if killed_at.is_none() => {
                    w.cluster.kill9(lead);
                    killed_at = Some(at.duration_since(t0));
                }
                s = &mut run => break s,
            }
        }
    };
    let killed_at = killed_at.unwrap_or_default();
    println!("  the leader's region r{lead} dies {:.1} s into a {load_secs} s load:", killed_at.as_secs_f64());
    for (k, s) in &samples {
        if *k == lead {
            continue;
        }
        let s = s.lock().await;
        // The longest run of failures, and the last success before the first
        // failure after the kill to the first success after it.
        // Successes by when they were answered.
        let mut done: Vec<Duration> =
            s.iter().filter_map(|(t, r)| r.as_ref().ok().map(|us| *t + Duration::from_micros(*us))).collect();
        done.sort_unstable();
        let (mut last_ok, mut gap) = (Duration::ZERO, Duration::ZERO);
        for t in done {
            if t > killed_at {
                gap = gap.max(t.saturating_sub(last_ok.max(killed_at)));
            }
            last_ok = t;
        }
        let failed: Vec<&String> = s.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
        println!(
            "    region r{k}: longest time with nothing admitted after the kill {:.2} s; {} requests failed{}",
            gap.as_secs_f64(),
            failed.len(),
            failed.first().map(|e| format!(", the first: {e}")).unwrap_or_default()
        );
    }
    w.cluster.spawn(lead)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while leader(w).await.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Last, so that its idle-then-busy budgets do not shape the leases above.
    cap(client, args, w, &edges, leases).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    println!(
        "region-bench: 3 regions, one voter and one edge each; {} ms each way between regions (±{} ms), mutual TLS",
        args.one_way_ms, args.jitter_ms
    );
    let mut w = start(&args, &dir).await?;
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    let client: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(c);
    let modes: &[bool] = match args.leases.as_deref() {
        Some("on") => &[true],
        Some("off") => &[false],
        _ => &[false, true],
    };
    for &leases in modes {
        mode(&client, &args, &mut w, leases).await?;
    }
    Ok(())
}
