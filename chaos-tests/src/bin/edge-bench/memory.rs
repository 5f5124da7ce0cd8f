//! Phase 2 (memory): many concurrent streams through a fresh edge, paced
//! by the mock so each lasts about `--stream-seconds`, while the edge's RSS
//! is sampled.

use super::*;

/// How one stream ended.
enum StreamOutcome {
    /// HTTP 200, read to the end, `message_stop` seen and no `error` event.
    Complete,
    /// HTTP 200 but cut short or ended by an error event.
    Incomplete(String),
    Status(u16),
    Error(String),
}

/// Open streams now, and the most at once.
#[derive(Default)]
struct Gauge {
    open: AtomicU64,
    most: AtomicU64,
}

async fn one_stream(
    client: Http,
    uri: Uri,
    key: String,
    body: Bytes,
    gauge: Arc<Gauge>,
    limit: Duration,
) -> StreamOutcome {
    let req = messages_request(&uri, Some(&key), &body);
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
        Err(_) => return StreamOutcome::Error("no response headers in time".into()),
        Ok(Err(e)) => return StreamOutcome::Error(format!("request: {e}")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if status != 200 {
        return StreamOutcome::Status(status);
    }
    let now = gauge.open.fetch_add(1, Ordering::Relaxed) + 1;
    gauge.most.fetch_max(now, Ordering::Relaxed);
    let read = tokio::time::timeout(limit, resp.into_body().collect()).await;
    gauge.open.fetch_sub(1, Ordering::Relaxed);
    match read {
        Err(_) => StreamOutcome::Incomplete(format!("not finished after {limit:?}")),
        Ok(Err(e)) => StreamOutcome::Incomplete(format!("body: {e}")),
        Ok(Ok(b)) => {
            let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
            if text.contains("event: error") {
                StreamOutcome::Incomplete(format!("error event: {}", text.lines().last().unwrap_or_default()))
            } else if !text.contains("event: message_stop") {
                StreamOutcome::Incomplete("no message_stop".into())
            } else {
                StreamOutcome::Complete
            }
        }
    }
}

pub(crate) async fn memory(
    args: &Args,
    bin: &Path,
    mock_bin: &Path,
    dir: &Path,
    cluster: &LedgerCluster,
    secret: &str,
) -> anyhow::Result<()> {
    let delay_ms = (args.stream_seconds * 1000 / MOCK_EVENTS).max(1);
    let mock = MockProc::start(mock_bin, dir, None, false, &["--event-delay-ms", &delay_ms.to_string()])?;
    mock.wait_ready(Duration::from_secs(10)).await?;
    let flags = edge_flags(cluster, "edge-streams")?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let edge = EdgeProc::start(bin, dir, "edge-streams", &cluster.servers(), &format!("http://{}", mock.addr), &flags)?;
    edge.wait_ready(Duration::from_secs(30)).await?;
    let pid = edge.pid().context("the edge is not running")?;
    let client = http_client(args.streams + 16);
    let via: Uri = format!("http://{}/v1/messages", edge.addr).parse()?;
    wait_admitted(&client, &via, secret, &request_body(args.prompt_bytes, false)).await?;
    let idle_kb = proc_kb(pid, "VmRSS").unwrap_or(0);
    let n = args.streams;
    println!(
        "\nmemory: {n} concurrent streams through a fresh edge, each ~{} s (the mock waits {delay_ms} ms after each of its {MOCK_EVENTS} events), opened 1 per ms",
        args.stream_seconds
    );
    println!("  edge RSS before (one request served): {:.1} MB", mb(idle_kb));
    for round in 1..=args.stream_rounds.max(1) {
        if args.stream_rounds > 1 {
            println!("  round {round} of {}:", args.stream_rounds);
        }
        stream_round(args, &client, &via, secret, pid, &edge.addr).await;
    }
    Ok(())
}

/// `--streams` streams at once through the edge; prints what the edge's RSS did.
async fn stream_round(args: &Args, client: &Http, via: &Uri, secret: &str, pid: u32, edge_addr: &str) {
    let n = args.streams;
    let gauge = Arc::new(Gauge::default());
    let finished = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StreamOutcome>();
    let limit = Duration::from_secs(args.stream_seconds * 3 + 30);
    let body = request_body(args.prompt_bytes, true);
    let ramp = {
        let (client, gauge, finished, via, key) =
            (client.clone(), gauge.clone(), finished.clone(), via.clone(), secret.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..n {
                tick.tick().await;
                let (client, gauge, finished, tx) = (client.clone(), gauge.clone(), finished.clone(), tx.clone());
                let fut = one_stream(client, via.clone(), key.clone(), body.clone(), gauge, limit);
                tokio::spawn(async move {
                    let _ = tx.send(fut.await);
                    finished.fetch_add(1, Ordering::Relaxed);
                });
            }
        })
    };

    // Sample every 100 ms until every stream has ended (bounded).
    let started = Instant::now();
    let deadline = started + Duration::from_secs(n as u64 / 1000 + 5) + REQUEST_TIMEOUT + limit;
    let (mut rss_all_open, mut rss_any, mut all_open_samples) = (0u64, 0u64, 0u64);
    let mut edge_reported: Option<i64> = None;
    while (finished.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rss = proc_kb(pid, "VmRSS").unwrap_or(0);
        rss_any = rss_any.max(rss);
        if gauge.open.load(Ordering::Relaxed) as usize == n {
            rss_all_open = rss_all_open.max(rss);
            all_open_samples += 1;
            if edge_reported.is_none() {
                edge_reported = gauge_of(client, edge_addr, "tollgate_open_streams").await;
            }
        }
    }
    let elapsed = started.elapsed();
    let _ = ramp.await;
    // VmHWM, or a larger sample (the kernel's RSS counters are approximate).
    let hwm = proc_kb(pid, "VmHWM").unwrap_or(0).max(rss_any);
    let (mut complete, mut incomplete, mut non_200, mut errors, mut problems) = (0, 0, 0, 0, Vec::new());
    while let Ok(o) = rx.try_recv() {
        let problem = match o {
            StreamOutcome::Complete => {
                complete += 1;
                None
            }
            StreamOutcome::Incomplete(why) => {
                incomplete += 1;
                Some(why)
            }
            StreamOutcome::Status(code) => {
                non_200 += 1;
                Some(format!("HTTP {code}"))
            }
            StreamOutcome::Error(e) => {
                errors += 1;
                Some(e)
            }
        };
        if let Some(p) = problem.filter(|_| problems.len() < 3) {
            problems.push(p);
        }
    }
    let unfinished = n - (complete + incomplete + non_200 + errors);
    if all_open_samples > 0 {
        println!(
            "  edge RSS with {n} open streams: current {:.1} MB, peak {:.1} MB (goal < 150 MB)",
            mb(rss_all_open),
            mb(hwm)
        );
        println!(
            "    current = largest VmRSS sampled every 100 ms while all {n} were open (~{:.1} s); peak = VmHWM at the end",
            all_open_samples as f64 / 10.0
        );
    } else {
        println!(
            "  all {n} streams were never open at once (most: {}); edge RSS: largest sample {:.1} MB, peak {:.1} MB",
            gauge.most.load(Ordering::Relaxed),
            mb(rss_any),
            mb(hwm)
        );
    }
    println!(
        "  most streams open at once: {} (the edge's tollgate_open_streams then: {})",
        gauge.most.load(Ordering::Relaxed),
        edge_reported.map_or("not read".to_string(), |v| v.to_string())
    );
    println!(
        "  streams: {n} sent, {} answered 200, {complete} read to the end (message_stop, no error event), {incomplete} cut short, {non_200} non-200, {errors} errors, {unfinished} unfinished; {:.1} s in all",
        complete + incomplete,
        elapsed.as_secs_f64()
    );
    if !problems.is_empty() {
        println!("    first problems: {}", problems.join("; "));
    }
    println!("  edge RSS after the streams closed: {:.1} MB", mb(proc_kb(pid, "VmRSS").unwrap_or(0)));
}
