//! End-to-end tests of the replicated ledger with real processes: three
//! `tollgate ledger` nodes on loopback, driven by `tollgate admin` and the
//! LedgerService gRPC API, with the leader killed by SIGKILL.

use std::time::{Duration, Instant};

use crate::harness::*;
use serde_json::Value;
use tollgate_client::LedgerClient;
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

fn hold(n: u128) -> pb::HoldId {
    pb::HoldId { id: n.to_be_bytes().to_vec() }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Reserves through `addr`, retrying while the cluster has no leader
/// (bounded). When the outcome is unknown the id is released, as an edge
/// would, and a fresh one is used. Returns the id used and the outcome.
async fn reserve_any(c: &Cluster, addr: &str, key: &str, id: u128, amount: u64) -> (u128, pb::reserve_result::Outcome) {
    let client = LedgerClient::new(&[addr.to_string()], Duration::from_secs(5), c.edge_tls()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut id = id;
    loop {
        let req = pb::ReserveBatch {
            requests: vec![pb::ReserveRequest {
                hold_id: Some(hold(id)),
                key_id: key.to_string(),
                model: "claude-sonnet-4-5".to_string(),
                amount_nano_usd: amount,
                ttl_ms: 600_000,
            }],
        };
        match client.at(0).reserve(req).await {
            Ok(r) => return (id, r.into_inner().results[0].outcome.clone().unwrap()),
            Err(s)
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) && Instant::now() < deadline =>
            {
                let _ = client.at(0).release(pb::ReleaseBatch { hold_ids: vec![hold(id)] }).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                id += 1_000_000;
            }
            Err(s) => panic!("reserve via {addr}: {s}"),
        }
    }
}

async fn reserve(c: &Cluster, addr: &str, key: &str, id: u128, amount: u64) -> pb::reserve_result::Outcome {
    let (used, outcome) = reserve_any(c, addr, key, id, amount).await;
    assert_eq!(used, id, "reserve of {id} needed a retry");
    outcome
}

async fn settle(c: &Cluster, addr: &str, id: u128, cost: u64) -> pb::settle_result::Outcome {
    let client = LedgerClient::new(&[addr.to_string()], Duration::from_secs(5), c.edge_tls()).unwrap();
    let req = pb::SettleBatch {
        requests: vec![pb::SettleRequest {
            hold_id: Some(hold(id)),
            cost_nano_usd: cost,
            usage: Some(pb::Usage { input_tokens: 1000, output_tokens: 200, ..Default::default() }),
            estimated: false,
            session_id: "sess-1".to_string(),
            ..Default::default()
        }],
    };
    let r = client.at(0).settle(req).await.unwrap_or_else(|s| panic!("settle via {addr}: {s}"));
    r.into_inner().results[0].outcome.clone().unwrap()
}

fn row<'a>(usage: &'a Value, scope: &str) -> &'a Value {
    usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scope"] == scope)
        .unwrap_or_else(|| panic!("no row {scope} in {usage}"))
}

/// A 3-node cluster forms; writes go through any node; a retried settle is
/// not applied twice; a hard budget denies the reserve that would exceed it,
/// naming the scope; kill -9 of the leader elects a new one within a few
/// seconds and writes continue; the killed node restarts from its data dir
/// and catches up; all members end with equal state digests.
#[test]
fn three_node_ledger_survives_leader_kill() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_ready();
    let s = c.wait_status(&[2], "three reachable members", Duration::from_secs(10), |s| converged(s, 3));
    assert_eq!(s["members"].as_array().unwrap().len(), 3);
    // The bootstrap node wrote the admin token, readable by its owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.token_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(c.token_file()).unwrap().trim().starts_with("tga_"));
    }

    // Admin writes through every node, leader or not.
    c.admin_ok(2, &["team", "create", "eng"]);
    c.admin_ok(3, &["user", "create", "ana@corp.io", "--team", "eng"]);
    let key = c.admin_json(1, &["key", "create", "--user", "ana@corp.io", "--name", "laptop", "--json"]);
    let key_id = key["id"].as_str().unwrap().to_string();
    assert!(key["secret"].as_str().unwrap().starts_with("tg_"));
    c.admin_ok(2, &["budget", "set", "team:eng", "--limit-usd", "0.001", "--period", "monthly"]);
    c.admin_ok(3, &["budget", "set", "org", "--limit-usd", "1000", "--period", "total", "--mode", "soft"]);
    let budgets = c.admin_json(1, &["budget", "list", "--json"]);
    assert_eq!(budgets["budgets"].as_array().unwrap().len(), 2);
    // Every config change is recorded with who made it, at which index and time.
    let audit = c.admin_json(3, &["audit", "--json"]);
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries[0]["what"], "set admin token");
    assert_eq!(entries[0]["actor"], "bootstrap");
    let team = entries.iter().find(|e| e["what"] == "create team eng").unwrap();
    // Over TLS the actor is the admin certificate's name (plaintext: "admin-token").
    assert_eq!(team["actor"], "admin:ops");
    assert!(team["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(entries.windows(2).all(|w| w[0]["index"].as_u64() < w[1]["index"].as_u64()));

    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let rt = rt();
    rt.block_on(async {
        let via = c.addrs[&follower].clone();
        // 0.001 USD = 1_000_000 nano; reserve 400k, settle 300k, ten times would pass 1M.
        let mut spent = 0u64;
        let mut next = 1u128;
        loop {
            match reserve(&c, &via, &key_id, next, 400_000).await {
                pb::reserve_result::Outcome::GrantedExpiresAtMs(_) => {}
                pb::reserve_result::Outcome::Denied(d) => {
                    assert_eq!(d.scope, "team:eng");
                    assert_eq!(d.limit_nano_usd, 1_000_000);
                    assert_eq!(d.spent_nano_usd, spent);
                    assert!(spent + 400_000 > 1_000_000);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
            let first = settle(&c, &via, next, 300_000).await;
            assert_eq!(
                first,
                pb::settle_result::Outcome::Settled(pb::Settled { charged_nano_usd: 300_000, duplicate: false })
            );
            // The same settle again (a retry from an outbox): answered, not applied.
            let again = settle(&c, &c.addrs[&leader], next, 300_000).await;
            assert_eq!(
                again,
                pb::settle_result::Outcome::Settled(pb::Settled { charged_nano_usd: 300_000, duplicate: true })
            );
            spent += 300_000;
            next += 1;
        }
        assert_eq!(spent, 900_000);
    });
    let usage = c.admin_json(3, &["usage", "--json"]);
    let team = row(&usage, "team:eng");
    assert_eq!(team["spent_nano_usd"], 900_000);
    assert_eq!(team["held_nano_usd"], 0);
    assert_eq!(team["limit_nano_usd"], 1_000_000);
    assert_eq!(team["requests"], 3);
    let by_user = c.admin_json(2, &["usage", "--by", "user", "--json"]);
    assert_eq!(row(&by_user, "user:ana@corp.io")["spent_nano_usd"], 900_000);
    assert_eq!(row(&by_user, "user:ana@corp.io")["input_tokens"], 3000);
    assert_eq!(row(&by_user, "user:ana@corp.io")["limit_nano_usd"], Value::Null);

    // Kill the leader with SIGKILL and time the election.
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "1", "--period", "monthly"]);
    let killed_at = Instant::now();
    c.kill9(leader);
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let s = c.wait_status(&survivors, "a new leader", Duration::from_secs(15), |s| {
        s["leader"].as_u64().is_some_and(|l| l != leader)
    });
    let elected = killed_at.elapsed();
    eprintln!("new leader {} elected {} ms after kill -9 of {leader}", s["leader"], elected.as_millis());
    assert!(elected < Duration::from_secs(5), "election took {elected:?}");

    // Writes continue through a survivor.
    rt.block_on(async {
        let via = c.addrs[&survivors[0]].clone();
        let (id, outcome) = reserve_any(&c, &via, &key_id, 500, 1000).await;
        assert!(matches!(outcome, pb::reserve_result::Outcome::GrantedExpiresAtMs(_)));
        assert!(matches!(settle(&c, &via, id, 700).await, pb::settle_result::Outcome::Settled(_)));
    });
    c.admin_ok(survivors[1], &["team", "create", "ops"]);

    // The killed node restarts from its data dir and catches up.
    c.spawn(leader);
    let s = c.wait_status(&survivors, "all three converged", Duration::from_secs(30), |s| converged(s, 3));
    let m = &s["members"][0];
    assert_eq!(m["state_digest"].as_str().unwrap().len(), 64);
    let usage = c.admin_json(leader, &["usage", "--json"]);
    assert_eq!(row(&usage, "team:eng")["spent_nano_usd"], 900_700);
}

/// Bad input gets a clear gRPC status and changes nothing.
#[test]
fn bad_input_is_refused_with_clear_errors() {
    let c = Cluster::start(3, &[]);
    c.wait_ready();
    c.admin_ok(1, &["team", "create", "eng"]);
    let before = c.admin_json(2, &["budget", "list", "--json"]);
    let fails = |id: u64, args: &[&str], want: &str| {
        let out = c.admin_at(&c.addrs[&id], args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
    };
    fails(2, &["budget", "set", "team:nope", "--limit-usd", "5", "--period", "daily"], "unknown scope team:nope");
    fails(2, &["budget", "set", "galaxy:x", "--limit-usd", "5", "--period", "daily"], "is not one of org");
    fails(3, &["budget", "set", "team:eng", "--limit-usd", "-5", "--period", "daily"], "negative");
    fails(3, &["budget", "set", "team:eng", "--limit-usd", "5.x", "--period", "daily"], "not a decimal number");
    fails(3, &["budget", "set", "team:eng", "--limit-usd", "5", "--period", "hourly"], "must be one of daily");
    fails(
        1,
        &["budget", "set", "team:eng", "--limit-usd", "5", "--period", "daily", "--mode", "maybe"],
        "hard or soft",
    );
    fails(1, &["user", "create", "bob@corp.io", "--team", "nope"], "unknown team nope");
    fails(1, &["key", "create", "--user", "ghost@corp.io"], "unknown user ghost@corp.io");
    fails(1, &["key", "revoke", "key_000000000000"], "unknown key");
    fails(1, &["team", "create", "eng"], "already exists");
    fails(1, &["usage", "--by", "planet"], "must be one of team, user, key, model");
    // A wrong admin token.
    let bad = c.dir.join("bad.token");
    std::fs::write(&bad, "tga_wrong\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["admin", "--server", &c.addrs[&2], "--token-file", bad.to_str().unwrap()])
        .args(c.tls_flags(&Role::Admin("ops".into())))
        .args(["team", "create", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid admin token"));
    // Malformed ledger requests.
    rt().block_on(async {
        let client = LedgerClient::new(&[c.addrs[&3].clone()], Duration::from_secs(5), c.edge_tls()).unwrap();
        // One call, three items: a malformed hold id and an oversized key are
        // refused item by item; the well-formed item next to them is still
        // decided (unknown key), so one bad item never fails its neighbours.
        let item = |id: Vec<u8>, key: &str| pb::ReserveRequest {
            hold_id: Some(pb::HoldId { id }),
            key_id: key.into(),
            model: "m".into(),
            amount_nano_usd: 1,
            ttl_ms: 1000,
        };
        let batch = pb::ReserveBatch {
            requests: vec![
                item(vec![1, 2, 3], "key_x"),
                item(hold(8).id, &"k".repeat(4096)),
                item(hold(9).id, "key_nope"),
            ],
        };
        let r = client.at(0).reserve(batch).await.unwrap().into_inner();
        let errs: Vec<pb::ItemError> = r
            .results
            .into_iter()
            .map(|x| match x.outcome.unwrap() {
                pb::reserve_result::Outcome::Error(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(errs[0].code, "invalid_argument");
        assert!(errs[0].message.contains("hold_id must be exactly 16 bytes"), "{}", errs[0].message);
        assert_eq!(errs[1].code, "invalid_argument");
        assert!(errs[1].message.contains("key_id must be 1-64 bytes"), "{}", errs[1].message);
        assert_eq!(errs[2].code, "not_found");
        assert!(errs[2].message.contains("unknown key key_nope"));
        // Too many items in one call is refused whole.
        let huge = pb::ReleaseBatch { hold_ids: (0..5000u128).map(hold).collect() };
        let e = client.at(0).release(huge).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    // A forged forward straight to a Raft port cannot change config without the token.
    rt().block_on(async {
        use tollgate_ledger::proposer::ForwardRequest;
        use tollgate_ledger::state::{AdminOp, Command};
        let cmd = Command::Admin { actor: "mallory".into(), op: AdminOp::CreateTeam { name: "evil".into() } };
        let data = tollgate_ledger::codec::encode(&ForwardRequest { cmds: vec![cmd], admin_token: None }).unwrap();
        // From a member's own certificate: the forward still needs the token.
        let mut raft =
            tollgate_proto::v1::raft_service_client::RaftServiceClient::new(c.channel(&c.addrs[&1], &Role::Ledger(2)));
        let e = raft.propose(pb::RaftPayload { data }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    });
    let after = c.admin_json(2, &["budget", "list", "--json"]);
    assert_eq!(before, after);
    let audit = c.admin_json(2, &["audit", "--json"]);
    assert!(!audit["entries"].as_array().unwrap().iter().any(|e| e["what"] == "create team evil"));
}

/// A node that is not part of any initialized cluster says so.
#[test]
fn node_outside_the_cluster_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(BIN)
        .args(["ledger", "--id", "4", "--grpc", &addr, "--peers", &format!("4={addr}")])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        let out = std::process::Command::new(BIN)
            .args(["admin", "--server", &addr, "team", "create", "eng"])
            .env("TOLLGATE_ADMIN_TOKEN", "x")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success());
        if err.contains("not part of an initialized cluster") || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(err.contains("node 4 is not part of an initialized cluster"), "{err}");
}

/// Each node names its region (`--region`), and `cluster status` shows it,
/// in the JSON and the table; a region that is not a plain name is refused
/// at start.
#[test]
fn nodes_name_their_regions_in_cluster_status() {
    let mut c = Cluster::prepare_plaintext(3, &[]);
    for (id, region) in [(1, "eu-west"), (2, "us-east"), (3, "ap-south")] {
        c.node_args.insert(id, vec!["--region".into(), region.into()]);
        c.spawn(id);
    }
    c.wait_ready();
    let s = c.wait_status(&[1], "every member's region", Duration::from_secs(20), |s| {
        s["members"].as_array().is_some_and(|m| m.iter().all(|m| m["region"].is_string()))
    });
    let regions: Vec<&str> = s["members"].as_array().unwrap().iter().map(|m| m["region"].as_str().unwrap()).collect();
    assert_eq!(regions, ["eu-west", "us-east", "ap-south"], "{s}");
    let table = c.admin_ok(1, &["cluster", "status"]);
    let head = table.lines().nth(1).unwrap();
    assert!(head.starts_with("ID") && head.contains("REGION"), "{table}");
    assert!(table.lines().any(|l| l.starts_with('2') && l.contains("us-east")), "{table}");

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = std::process::Command::new(BIN)
        .args(["ledger", "--id", "1", "--grpc", &addr, "--peers", &format!("1={addr}"), "--region", "eu west"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("region \"eu west\" must be 1-64 letters"), "{err}");
}

/// A node that fell far behind (its log already compacted away on the
/// leader) catches up from a snapshot.
#[test]
fn lagging_node_catches_up_from_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-every", "20", "--logs-to-keep", "5"]);
    let leader = c.wait_ready();
    let lagger = (1..=3).rev().find(|i| *i != leader).unwrap();
    let s = c.wait_status(&[leader], "converged", Duration::from_secs(10), |s| converged(s, 3));
    let lagger_index =
        s["members"].as_array().unwrap().iter().find(|m| m["id"] == lagger).unwrap()["applied_index"].as_u64().unwrap();
    c.kill9(lagger);
    let up: Vec<u64> = (1..=3).filter(|i| *i != lagger).collect();
    for i in 0..60 {
        c.admin_ok(up[i % 2], &["team", "create", &format!("team{i}")]);
    }
    let s = c.wait_status(&[leader], "leader purged its log", Duration::from_secs(10), |s| {
        s["members"].as_array().unwrap().iter().any(|m| m["id"] == leader && m["applied_index"].as_u64() > Some(60))
    });
    eprintln!("before restart: {s}");
    // The entries the lagger is missing are gone from the leader's log: only
    // a snapshot can bring them. Snapshots are built in the background and
    // the purge follows them, so this waits for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(15);
    let purged = loop {
        let purged = node_status(&c, leader).purged_index;
        if purged > lagger_index || Instant::now() > deadline {
            break purged;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(purged > lagger_index, "leader purged only up to {purged}, lagger has {lagger_index}\n{}", c.log_tails());
    c.spawn(lagger);
    let s = c.wait_status(&[leader], "the lagger converged", Duration::from_secs(30), |s| converged(s, 3));
    eprintln!("after restart: {s}");
    let snap = node_status(&c, lagger).snapshot_index;
    assert!(snap > 20, "node {lagger} has no snapshot (snapshot_index {snap})");
    let teams = c.admin_json(lagger, &["budget", "list", "--json"]);
    assert!(teams["budgets"].is_array());
}

/// Concurrent single requests coalesced into batched calls (as an edge
/// sends them) each get their own answer: grants and denials land on the
/// right caller, and the ledger's totals match the sum of what was granted.
#[test]
fn coalesced_requests_each_get_their_own_answer() {
    use tollgate_client::coalesce::{Coalescer, CoalescerConfig};
    let c = Cluster::start(3, &[]);
    c.wait_ready();
    let key = c.principal("eng", "ana@corp.io");
    // Room for exactly 40 of the 100-nano reserves below.
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "0.000004", "--period", "total"]);
    let servers: Vec<String> = c.addrs.values().cloned().collect();
    let leader = c.leader(&[1]).unwrap();
    let index_before = node_status(&c, leader).applied_index;
    let granted: Vec<u128> = rt().block_on(async {
        let co = Coalescer::start(
            LedgerClient::new(&servers, Duration::from_secs(10), c.edge_tls()).unwrap(),
            CoalescerConfig { max_batch: 16, max_inflight: 2, max_queued: 1024 },
        );
        let mut tasks = Vec::new();
        for i in 0..60u128 {
            let co = co.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let r = co
                    .reserve(pb::ReserveRequest {
                        hold_id: Some(hold(1000 + i)),
                        key_id: key,
                        model: "m".into(),
                        amount_nano_usd: 100,
                        ttl_ms: 600_000,
                    })
                    .await
                    .unwrap();
                (i, r.outcome.unwrap())
            }));
        }
        let mut granted = Vec::new();
        for t in tasks {
            let (i, outcome) = t.await.unwrap();
            match outcome {
                pb::reserve_result::Outcome::GrantedExpiresAtMs(_) => granted.push(1000 + i),
                pb::reserve_result::Outcome::Denied(d) => assert_eq!(d.scope, "team:eng"),
                other => panic!("{other:?}"),
            }
        }
        // Group commit: the 60 concurrent reserves took far fewer log
        // entries than commands.
        let leader_addr = c.addrs[&leader].clone();
        let index_mid = tollgate_client::AdminClient::node_status_at(
            &leader_addr,
            Duration::from_secs(2),
            c.tls(&Role::Admin("ops".into())),
        )
        .await
        .unwrap()
        .applied_index;
        let entries = index_mid - index_before;
        eprintln!("60 concurrent reserves used {entries} log entries");
        assert!(entries <= 20, "{entries} log entries for 60 concurrent reserves");
        // Settle each granted hold at a cost that identifies it.
        for (n, id) in granted.iter().enumerate() {
            let r = co
                .settle(pb::SettleRequest {
                    hold_id: Some(hold(*id)),
                    cost_nano_usd: n as u64 + 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            let want =
                pb::settle_result::Outcome::Settled(pb::Settled { charged_nano_usd: n as u64 + 1, duplicate: false });
            assert_eq!(r.outcome.unwrap(), want);
        }
        granted
    });
    assert_eq!(granted.len(), 40);
    let usage = c.admin_json(2, &["usage", "--json"]);
    let team = row(&usage, "team:eng");
    assert_eq!(team["spent_nano_usd"], (1..=40).sum::<u64>());
    assert_eq!(team["held_nano_usd"], 0);
    assert_eq!(team["requests"], 40);
}

async fn next_config(s: &mut tonic::Streaming<pb::ConfigSnapshot>) -> pb::ConfigSnapshot {
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), s.next()).await.unwrap().unwrap().unwrap()
}

/// The config watch an edge relies on: a follower streams the whole config
/// at once, then again after each change (a new team, a revoked key), with
/// the index it reflects; and gRPC reflection lists the services.
#[test]
fn config_watch_streams_changes_and_reflection_lists_services() {
    use tokio_stream::StreamExt;
    let c = Cluster::start(3, &[]);
    let leader = c.wait_ready();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let key = c.principal("eng", "ana@corp.io");
    rt().block_on(async {
        let mut client = tollgate_proto::v1::ledger_service_client::LedgerServiceClient::new(
            c.channel(&c.addrs[&follower], &Role::Edge("test-edge".into())),
        );
        let mut stream = client.watch_config(pb::WatchConfigRequest::default()).await.unwrap().into_inner();

        // The first snapshot may predate the follower applying the key; wait for it.
        let mut snap = next_config(&mut stream).await;
        while !snap.keys.iter().any(|k| k.id == key) {
            snap = next_config(&mut stream).await;
        }
        assert_eq!(snap.teams, vec![pb::Team { name: "eng".into() }]);
        assert_eq!(snap.users, vec![pb::User { email: "ana@corp.io".into(), team: "eng".into() }]);
        let k = snap.keys.iter().find(|k| k.id == key).unwrap();
        assert_eq!((k.user.as_str(), k.revoked, k.secret_sha256.len()), ("ana@corp.io", false, 64));
        let first_index = snap.index;

        let revoked_at = Instant::now();
        c.admin_ok(leader, &["key", "revoke", &key]);
        let mut snap = next_config(&mut stream).await;
        while !snap.keys.iter().any(|k| k.id == key && k.revoked) {
            snap = next_config(&mut stream).await;
        }
        assert!(snap.index > first_index);
        eprintln!(
            "revocation reached the follower's watch {} ms after the CLI started",
            revoked_at.elapsed().as_millis()
        );
        assert!(revoked_at.elapsed() < Duration::from_secs(5));

        let channel = c.channel(&c.addrs[&follower], &Role::Admin("ops".into()));
        let mut refl = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
        let req = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut resp = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        let msg = resp.next().await.unwrap().unwrap();
        let Some(tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            msg.message_response
        else {
            panic!("unexpected reflection answer {msg:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["tollgate.v1.AdminService", "tollgate.v1.LedgerService", "tollgate.v1.RaftService"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
    });
}

/// A watcher that asks for heartbeats gets them while its node follows a
/// leader, each carrying only the index of the config last sent; when the
/// node loses its leader (the other two are killed), the heartbeats stop, so
/// an edge can tell a current copy from a stale one.
#[test]
fn watch_heartbeats_stop_when_the_node_loses_its_leader() {
    use tokio_stream::StreamExt;
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_ready();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    c.admin_ok(1, &["team", "create", "eng"]);
    // Every member has applied the team before the watch starts.
    c.wait_status(&[leader], "converged", Duration::from_secs(10), |s| converged(s, 3));
    let silent = rt().block_on(async {
        let mut client = tollgate_proto::v1::ledger_service_client::LedgerServiceClient::new(
            c.channel(&c.addrs[&follower], &Role::Edge("test-edge".into())),
        );
        let mut stream = client.watch_config(pb::WatchConfigRequest { heartbeat_ms: 200 }).await.unwrap().into_inner();
        let first = next_config(&mut stream).await;
        assert!(!first.heartbeat);
        assert_eq!(first.teams, vec![pb::Team { name: "eng".into() }]);
        let started = Instant::now();
        for _ in 0..5 {
            let m = next_config(&mut stream).await;
            assert!(m.heartbeat, "a config came though nothing changed: {m:?}");
            assert_eq!(m.index, first.index);
            assert!(m.teams.is_empty() && m.keys.is_empty() && m.budgets.is_empty(), "{m:?}");
        }
        // Five beats at 200 ms: about a second, not a burst and not a stall.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(5), "5 heartbeats took {took:?}");

        for id in (1..=3).filter(|i| *i != follower) {
            c.kill9(id);
        }
        // Within an election timeout or two the follower stands for
        // election, knows no leader, and goes quiet: find a silent second
        // within 15 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Err(_) => return true,
                Ok(Some(Ok(m))) => assert!(m.heartbeat && m.index == first.index, "{m:?}"),
                Ok(other) => panic!("the stream ended: {other:?}"),
            }
        }
        false
    });
    assert!(silent, "node {follower} kept sending heartbeats with no leader\n{}", c.log_tails());
}

/// Every ledger node serves /healthz, /readyz and /metrics (`--http`): the
/// leader and the followers say which they are, a granted hold shows up in
/// the budget and hold gauges on every member and in the leader's command
/// counts, and a node left without a quorum turns not ready while it stays
/// healthy.
#[test]
fn ops_endpoints_report_role_readiness_and_budgets() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_ready();
    let key = c.principal("eng", "ana@corp.io");
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "2", "--period", "total"]);
    let servers: Vec<String> = c.addrs.values().cloned().collect();
    rt().block_on(async {
        let ledger = LedgerClient::new(&servers, Duration::from_secs(10), c.edge_tls()).unwrap();
        let req = pb::ReserveRequest {
            hold_id: Some(hold(7)),
            key_id: key.clone(),
            model: "m".into(),
            amount_nano_usd: 1234,
            ttl_ms: 600_000,
        };
        let r = ledger.at(0).reserve(pb::ReserveBatch { requests: vec![req] }).await.unwrap().into_inner();
        assert!(matches!(r.results[0].outcome, Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_))), "{r:?}");
    });
    c.wait_status(&[leader], "converged", Duration::from_secs(10), |s| converged(s, 3));

    let budget = "{scope=\"team:eng\",model=\"\",period=\"total\",mode=\"hard\"}";
    for id in 1..=3u64 {
        let (status, body) = http_get(&c.http[&id], "/readyz").unwrap();
        assert_eq!(status, 200, "node {id}: {body}");
        assert!(body.contains(&format!("leader {leader}")), "node {id}: {body}");
        let (status, m) = http_get(&c.http[&id], "/metrics").unwrap();
        assert_eq!(status, 200);
        assert_eq!(metric(&m, "tollgate_raft_is_leader"), Some(if id == leader { 1.0 } else { 0.0 }), "node {id}");
        assert_eq!(metric(&m, "tollgate_raft_leader_id"), Some(leader as f64));
        assert_eq!(metric(&m, "tollgate_raft_voters"), Some(3.0));
        assert_eq!(metric(&m, "tollgate_ledger_active_holds"), Some(1.0), "node {id}");
        assert_eq!(metric(&m, &format!("tollgate_budget_held_nano_usd{budget}")), Some(1234.0), "node {id}");
        assert_eq!(metric(&m, &format!("tollgate_budget_limit_nano_usd{budget}")), Some(2e9), "node {id}");
        assert_eq!(metric(&m, &format!("tollgate_budget_spent_nano_usd{budget}")), Some(0.0), "node {id}");
        if id == leader {
            // The reserve was applied through the leader's proposer (maybe
            // forwarded to it), once.
            assert_eq!(metric(&m, "tollgate_ledger_commands_total{outcome=\"granted\"}"), Some(1.0), "{m}");
            assert!(metric(&m, "tollgate_ledger_commit_seconds_count").unwrap() >= 1.0);
            for peer in (1..=3).filter(|p| *p != leader) {
                let lag = metric(&m, &format!("tollgate_raft_replication_lag_entries{{peer=\"{peer}\"}}"));
                assert_eq!(lag, Some(0.0), "peer {peer}: {m}");
            }
        } else {
            assert_eq!(metric(&m, "tollgate_ledger_commands_total{outcome=\"granted\"}"), None, "{m}");
        }
    }
    let (status, _) = http_get(&c.http[&1], "/nope").unwrap();
    assert_eq!(status, 404);

    // Alone, a node cannot reach a quorum: not ready (within a few election
    // timeouts), still healthy.
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    for id in (1..=3).filter(|i| *i != survivor) {
        c.kill9(id);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let (status, body) = loop {
        let r = http_get(&c.http[&survivor], "/readyz").unwrap();
        if r.0 == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(http_get(&c.http[&survivor], "/healthz").unwrap().0, 200);
    let (_, m) = http_get(&c.http[&survivor], "/metrics").unwrap();
    assert_eq!(metric(&m, "tollgate_raft_in_touch"), Some(0.0), "{m}");
}

/// A learner (`--learners 4`) in a region with no voter: the leader adds
/// it, it copies the log to the same digest, serves the config watch and
/// forwards writes, and it is not in the quorum: with it and one voter
/// down, the two other voters still commit.
#[test]
fn a_learner_copies_the_log_serves_config_and_is_not_in_the_quorum() {
    let mut c = Cluster::prepare_plaintext(4, &["--learners", "4"]);
    for (id, region) in [(1, "eu-west"), (2, "us-east"), (3, "ap-south"), (4, "sa-east")] {
        c.node_args.insert(id, vec!["--region".into(), region.into()]);
        c.spawn(id);
    }
    c.wait_ready();
    let s = c.wait_status(&[1], "node 4 a learner", Duration::from_secs(20), |s| {
        s["members"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == 4 && m["role"] == "learner"))
    });
    let roles: Vec<&str> = s["members"].as_array().unwrap().iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "learner").count(), 1, "{s}");
    // A write through the learner is forwarded to the leader.
    c.admin_ok(4, &["team", "create", "via-learner"]);
    c.admin_ok(1, &["team", "create", "via-voter"]);
    c.wait_status(&[1], "the learner caught up", Duration::from_secs(20), |s| converged(s, 4));
    // Its config watch has both teams, sent in touch with the leader.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let snap = rt.block_on(async {
        let mut client = c.ledger_client(&[c.addrs[&4].clone()]).at(0);
        let req = pb::WatchConfigRequest { heartbeat_ms: 0 };
        let mut stream = client.watch_config(req).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap()
    });
    let teams: Vec<&str> = snap.teams.iter().map(|t| t.name.as_str()).collect();
    assert!(teams.contains(&"via-learner") && teams.contains(&"via-voter"), "{teams:?}");
    assert!(snap.in_touch);
    // Not in the quorum: the learner and a voter down, the others commit.
    let leader = c.leader(&[1]).unwrap();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    c.kill9(4);
    c.kill9(follower);
    c.admin_ok(leader, &["team", "create", "two-of-three"]);
}
