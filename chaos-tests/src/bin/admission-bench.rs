//! Admission benchmark: how many concurrent Claude Code turns one user with
//! a $5 hard budget gets admitted under each way of sizing reservations.
//! Real processes on loopback: a one-node `tollgate ledger` over mutual
//! TLS, one `tollgate edge` per mode, and `mock-upstream` holding every
//! burst turn open (`--hold-ms`) so they are all in flight at once.
//!
//! The turn is Claude Code's real shape as the issue saw it: Claude Opus 5.5
//! (its default model), `max_tokens` 128,000 and a ~50 KB body (system
//! prompt, tools and history; `--body-bytes`). Modes:
//! - `strict`: every body byte at the dearest input rate, all of `max_tokens`;
//! - `estimate, max_tokens`: the old estimate (input by characters / 3.5,
//!   all of `max_tokens`), reproduced with seed and floor at 128,000;
//! - `estimate, cold`: a user the edge has not seen (the 8,192-token seed);
//! - `estimate, warm`: after `--warmup` turns that each wrote `--output`
//!   tokens (the 95th percentile of them, at least the 1,024 floor);
//! - `strict + clamp` and `estimate warm + clamp`: `clamp_max_tokens`.
//!
//! Each mode has its own user, whose budget is set to what it spent warming
//! up plus $5 (`--budget-nano-usd`) just before its burst of `--burst` concurrent turns. It
//! prints figures; it asserts nothing. Every loop is bounded.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate_chaos::cluster::{sibling_binaries, EdgeProc, LedgerCluster, MockProc, Transport};
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;

#[derive(Parser)]
struct Args {
    /// Concurrent turns sent at once per mode.
    #[arg(long, default_value_t = 120)]
    burst: usize,
    /// Bytes of the request body.
    #[arg(long, default_value_t = 50_000)]
    body_bytes: usize,
    /// The turn's max_tokens.
    #[arg(long, default_value_t = 128_000)]
    max_tokens: u64,
    /// Turns before the burst in the warm modes.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Output tokens of each warm-up turn (and of each burst turn).
    #[arg(long, default_value_t = 600)]
    output: u64,
    /// How long the mock holds each burst turn before answering.
    #[arg(long, default_value_t = 4_000)]
    hold_ms: u64,
    /// The user's budget room at the burst, in nano-USD ($5).
    #[arg(long, default_value_t = 5_000_000_000)]
    budget_nano_usd: u64,
}

type Http = Client<HttpConnector, Full<Bytes>>;

struct Mode {
    name: &'static str,
    edge_toml: &'static str,
    strict: bool,
    warm: bool,
}

const MODES: [Mode; 6] = [
    Mode { name: "strict", edge_toml: "", strict: true, warm: false },
    Mode { name: "strict + clamp", edge_toml: "clamp_max_tokens = true", strict: true, warm: false },
    Mode {
        name: "estimate, max_tokens",
        edge_toml: "output_seed_tokens = 128000\noutput_floor_tokens = 128000",
        strict: false,
        warm: true,
    },
    Mode { name: "estimate, cold", edge_toml: "", strict: false, warm: false },
    Mode { name: "estimate, warm", edge_toml: "", strict: false, warm: true },
    Mode { name: "estimate warm + clamp", edge_toml: "clamp_max_tokens = true", strict: false, warm: true },
];

fn turn(body_bytes: usize, max_tokens: u64) -> Bytes {
    // Enough history that the JSON body is about `body_bytes` long.
    let filler: String =
        "fn main() { println!(\"hello\"); } // ".chars().cycle().take(body_bytes.saturating_sub(300)).collect();
    Bytes::from(
        serde_json::json!({
            "model": "claude-opus-5-5",
            "max_tokens": max_tokens,
            "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."}],
            "messages": [{"role": "user", "content": filler}],
        })
        .to_string(),
    )
}

/// (status, the reservation the edge reported); status 0 when no answer came.
async fn post(client: &Http, addr: &str, key: &str, body: &Bytes, headers: &[(&str, String)]) -> (u16, u64) {
    let mut b = Request::post(format!("http://{addr}/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let Ok(req) = b.body(Full::new(body.clone())) else { return (0, 0) };
    let sent = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let reserved =
            resp.headers().get("x-tollgate-reserved-nano-usd").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
        resp.into_body().collect().await.ok()?;
        Some((status, reserved))
    };
    tokio::time::timeout(Duration::from_secs(60), sent).await.ok().flatten().unwrap_or((0, 0))
}

/// The user's (requests admitted, nano-USD held, nano-USD spent).
async fn usage(admin: &AdminClient, user: &str) -> anyhow::Result<(u64, u64, u64)> {
    let rows =
        admin.call(pb::UsageRequest { by: "user".into() }, |mut c, r| async move { c.usage(r).await }).await?.rows;
    let row = rows.into_iter().find(|r| r.scope == format!("user:{user}")).unwrap_or_default();
    Ok((row.requests, row.held_nano_usd, row.spent_nano_usd))
}

async fn set_budget(admin: &AdminClient, user: &str, nano: u64) -> anyhow::Result<()> {
    let usd = format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000);
    tollgate_chaos::cluster::set_budget(admin, &format!("user:{user}"), &usd).await
}

/// A user in team `eng` with a key and a hard budget of `nano` nano-USD; the key's secret.
async fn new_user(admin: &AdminClient, email: &str, nano: u64) -> anyhow::Result<String> {
    let user = pb::CreateUserRequest { email: email.into(), team: "eng".into() };
    admin.call(user, |mut c, r| async move { c.create_user(r).await }).await?;
    let key = pb::CreateKeyRequest { user: email.into(), name: "bench".into() };
    let secret = admin.call(key, |mut c, r| async move { c.create_key(r).await }).await?.secret;
    set_budget(admin, email, nano).await?;
    Ok(secret)
}

/// What every mode runs against.
struct Bench<'a> {
    args: &'a Args,
    bin: &'a Path,
    dir: &'a Path,
    cluster: &'a LedgerCluster,
    admin: &'a AdminClient,
    mock: &'a MockProc,
    client: &'a Http,
}

/// What one mode's burst saw.
struct Burst {
    admitted: usize,
    denied: usize,
    /// The smallest and largest reservation of an admitted turn.
    least: u64,
    most: u64,
    ms: u64,
}

async fn run_mode(b: &Bench<'_>, mode: &Mode, k: usize) -> anyhow::Result<Burst> {
    let Bench { args, bin, dir, cluster, admin, mock, client } = *b;
    let user = format!("u{k}@corp.io");
    let key = new_user(admin, &user, 1_000_000_000_000).await?;
    let name = format!("edge{k}");
    let config = dir.join(format!("{name}.toml"));
    // No per-key concurrency limit in the way: the budget is what is measured.
    std::fs::write(&config, format!("version = 1\n[edge]\nmax_concurrent_per_key = 100000\n{}\n", mode.edge_toml))?;
    let mut flags = cluster.tls_flags(&tollgate_tls::Role::Edge(name.clone()))?;
    flags.extend(["--config".into(), config.display().to_string()]);
    flags.extend(["--estimate".into(), if mode.strict { "strict" } else { "estimate" }.into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let edge = EdgeProc::start(bin, dir, &name, &cluster.servers(), &mock.url(), &flags)?;
    edge.wait_ready(Duration::from_secs(30)).await?;
    let body = turn(args.body_bytes, args.max_tokens);
    let output = ("x-mock-output-tokens", args.output.to_string());
    // The edge learns keys from its config watch: wait until this one works.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut warm = 0;
    while warm < if mode.warm { args.warmup } else { 1 } {
        match post(client, &edge.addr, &key, &body, std::slice::from_ref(&output)).await.0 {
            200 => warm += 1,
            s if Instant::now() > deadline => bail!("{}: warm-up got HTTP {s}", mode.name),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Settles are asynchronous: wait until every warm-up turn is charged
    // and nothing is held.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let (requests, held, spent) = usage(admin, &user).await?;
        if requests >= warm as u64 && held == 0 {
            break spent;
        }
        if Instant::now() > deadline {
            bail!("{}: the warm-up never settled", mode.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let room = args.budget_nano_usd;
    set_budget(admin, &user, before + room).await?;
    let burst_key = if mode.warm {
        key.clone()
    } else {
        // Cold: a second key of a new user the edge has never seen.
        let key2 = new_user(admin, &format!("u{k}b@corp.io"), room).await?;
        // Until the edge knows the new key it answers 401; a model it does
        // not price is a 400 after the key check, and reserves nothing.
        let probe = Bytes::from(r#"{"model":"no-such-model","max_tokens":1,"messages":[]}"#);
        let deadline = Instant::now() + Duration::from_secs(15);
        while post(client, &edge.addr, &key2, &probe, &[]).await.0 == 401 {
            if Instant::now() > deadline {
                bail!("{}: the edge never learned the cold user's key", mode.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        key2
    };
    let hold = ("x-mock-latency-ms", args.hold_ms.to_string());
    let headers = [output.clone(), hold];
    let t = Instant::now();
    let statuses = futures_join((0..args.burst).map(|_| {
        let (client, addr, key, body, headers) =
            (client.clone(), edge.addr.clone(), burst_key.clone(), body.clone(), headers.clone());
        tokio::spawn(async move { post(&client, &addr, &key, &body, &headers).await })
    }))
    .await;
    let admitted = statuses.iter().filter(|s| s.0 == 200).count();
    let denied = statuses.iter().filter(|s| s.0 == 402).count();
    if admitted + denied != statuses.len() {
        bail!("{}: answers other than 200 and 402: {statuses:?}", mode.name);
    }
    let reserved: Vec<u64> = statuses.iter().filter(|s| s.0 == 200).map(|s| s.1).collect();
    let (least, most) = (reserved.iter().min().copied().unwrap_or(0), reserved.iter().max().copied().unwrap_or(0));
    Ok(Burst { admitted, denied, least, most, ms: t.elapsed().as_millis() as u64 })
}

async fn futures_join(tasks: impl Iterator<Item = tokio::task::JoinHandle<(u16, u64)>>) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap_or((0, 0)));
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (bin, mock_bin) = sibling_binaries()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let cluster = LedgerCluster::start_with(&bin, &path, 1, Transport::Tls)?;
    let admin = cluster.admin(Duration::from_secs(30)).await.context("ledger did not come up")?;
    admin.call(pb::CreateTeamRequest { name: "eng".into() }, |mut c, r| async move { c.create_team(r).await }).await?;
    let mock = MockProc::start(&mock_bin, &path, None, false, &[])?;
    mock.wait_ready(Duration::from_secs(10)).await?;
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    let client: Http = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(args.burst).build(c);
    println!(
        "admission-bench: claude-opus-5-5, max_tokens {}, {}-byte body, ${:.2} of budget room, {} concurrent \
         turns held {} ms, {} output tokens a turn ({} warm-up turns)",
        args.max_tokens,
        args.body_bytes,
        args.budget_nano_usd as f64 / 1e9,
        args.burst,
        args.hold_ms,
        args.output,
        args.warmup
    );
    println!("{:<24} {:>9} {:>7} {:>22} {:>10}", "MODE", "ADMITTED", "402", "RESERVED/TURN ($)", "BURST_MS");
    for (k, mode) in MODES.iter().enumerate() {
        let b = Bench {
            args: &args,
            bin: &bin,
            dir: &path,
            cluster: &cluster,
            admin: &admin,
            mock: &mock,
            client: &client,
        };
        let r = run_mode(&b, mode, k).await?;
        let usd = |n: u64| n as f64 / 1e9;
        let reserved = if r.least == r.most {
            format!("{:.4}", usd(r.least))
        } else {
            format!("{:.4}–{:.4}", usd(r.least), usd(r.most))
        };
        println!("{:<24} {:>9} {:>7} {:>22} {:>10}", mode.name, r.admitted, r.denied, reserved, r.ms);
    }
    Ok(())
}
