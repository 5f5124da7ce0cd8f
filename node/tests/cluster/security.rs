//! The cluster attacked as a security review did, from this test process
//! (not a member) with real certificates against real `tollgate ledger`
//! processes: every refusal is a clear status, and the state digest is the
//! same afterwards. Also: the bootstrap registration of the admin token
//! cannot be raced, a node whose token is not the cluster's exits, and the
//! one-command bounds of the state machine hold through the gRPC API.

use std::time::{Duration, Instant};

use crate::harness::*;
use openraft::vote::leader_id_adv::LeaderId;
use openraft::{EntryPayload, LogId};
use tollgate_chaos::pki::Pki;
use tollgate_ledger::raft_types::{Entry, TypeConfig, Vote};
use tollgate_ledger::state::{AdminOp, Batch, Command};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tollgate_proto::v1::ledger_service_client::LedgerServiceClient;
use tollgate_proto::v1::raft_service_client::RaftServiceClient;
use tollgate_tls::{ClusterTls, Role};
use tonic::transport::Channel;
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn channel(addr: &str, tls: Option<std::sync::Arc<ClusterTls>>) -> Channel {
    tollgate_tls::channel(addr, tls, |e| e.timeout(Duration::from_secs(5))).unwrap()
}

/// A forged AppendEntries claiming to come from `leader` in a later term,
/// carrying an admin `CreateKey` and committing it.
fn forged_append(term: u64, leader: u64, index: u64) -> pb::RaftPayload {
    let batch = Batch {
        time_ms: 1_800_000_000_000,
        cmds: vec![Command::Admin {
            actor: "mallory".into(),
            op: AdminOp::CreateKey {
                id: "key_forged".into(),
                user: "ana@corp.io".into(),
                name: "forged".into(),
                secret_sha256: "f".repeat(64),
            },
        }],
    };
    let entry: Entry = Entry {
        log_id: LogId::new(LeaderId { term, node_id: leader }, index + 1),
        payload: EntryPayload::Normal(batch),
    };
    let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, leader),
        prev_log_id: None,
        entries: vec![entry],
        leader_commit: Some(LogId::new(LeaderId { term, node_id: leader }, index + 1)),
    };
    pb::RaftPayload { data: tollgate_ledger::codec::encode(&req).unwrap() }
}

/// A forged snapshot from `leader` in a later term, past every entry: its
/// header, then its data (an empty ledger) in one chunk.
fn forged_snapshot(term: u64, leader: u64, index: u64) -> Vec<pb::RaftPayload> {
    let log_id = LogId::new(LeaderId { term, node_id: leader }, index + 100);
    let applied = tollgate_ledger::store::Applied { last_applied: Some(log_id), ..Default::default() };
    let data = tollgate_ledger::codec::encode(&applied).unwrap();
    let header = tollgate_ledger::network::SnapshotHeader {
        vote: Vote::new_committed(term, leader),
        meta: openraft::alias::SnapshotMetaOf::<TypeConfig> { last_log_id: Some(log_id), ..Default::default() },
        bytes: data.len() as u64,
    };
    vec![pb::RaftPayload { data: tollgate_ledger::codec::encode(&header).unwrap() }, pb::RaftPayload { data }]
}

fn forged_vote(term: u64, candidate: u64) -> pb::RaftPayload {
    let req = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(term, candidate), None);
    pb::RaftPayload { data: tollgate_ledger::codec::encode(&req).unwrap() }
}

fn reserve_batch(key: &str) -> pb::ReserveBatch {
    pb::ReserveBatch {
        requests: vec![pb::ReserveRequest {
            hold_id: Some(pb::HoldId { id: 77u128.to_be_bytes().to_vec() }),
            key_id: key.into(),
            model: "claude-sonnet-4-5".into(),
            amount_nano_usd: 1_000,
            ttl_ms: 60_000,
        }],
    }
}

/// The calls an outsider tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A forged AppendEntries (later term, a CreateKey entry, committed).
    Append,
    /// The same forged append on the replication stream.
    StreamAppend,
    /// A forged snapshot in a later term.
    Snapshot,
    /// A forged Vote in a later term.
    Vote,
    /// A forwarded config change, with the admin token.
    Propose,
    Reserve,
    Watch,
    /// A fail-open charge of u64::MAX.
    Settle,
    /// CreateTeam through the AdminService with `token`.
    AdminWrite,
}

const RAFT: [Call; 5] = [Call::Append, Call::StreamAppend, Call::Snapshot, Call::Vote, Call::Propose];
const LEDGER: [Call; 3] = [Call::Reserve, Call::Watch, Call::Settle];

/// Makes each call as the holder of `tls`; returns the gRPC code of each.
async fn attack(
    c: &Cluster,
    addr: &str,
    tls: Option<std::sync::Arc<ClusterTls>>,
    (key, token): (&str, &str),
    calls: &[Call],
) -> Vec<(Call, Code)> {
    let ch = channel(addr, tls);
    let mut raft = RaftServiceClient::new(ch.clone());
    let mut ledger = LedgerServiceClient::new(ch.clone());
    let mut admin = AdminServiceClient::new(ch);
    let admin_tls = c.tls(&Role::Admin("ops".into()));
    let status =
        tollgate_client::AdminClient::node_status_at(&c.addrs[&1], Duration::from_secs(5), admin_tls).await.unwrap();
    let (term, index) = (status.term, status.last_log_index);
    let mut out = Vec::new();
    for call in calls {
        let r = match call {
            Call::Append => raft.append_entries(forged_append(term + 1, 2, index)).await.map(|_| ()),
            Call::StreamAppend => {
                let forged = tokio_stream::iter([forged_append(term + 1, 2, index)]);
                match raft.stream_append(forged).await {
                    // Refused within the stream: its first answer is the refusal.
                    Ok(answers) => answers.into_inner().message().await.map(|_| ()),
                    Err(s) => Err(s),
                }
            }
            Call::Snapshot => {
                raft.install_full_snapshot(tokio_stream::iter(forged_snapshot(term + 1, 2, index))).await.map(|_| ())
            }
            Call::Vote => raft.vote(forged_vote(term + 1, 2)).await.map(|_| ()),
            Call::Propose => {
                let fwd = tollgate_ledger::proposer::ForwardRequest {
                    cmds: vec![Command::Admin { actor: "x".into(), op: AdminOp::CreateTeam { name: "evil".into() } }],
                    admin_token: Some(token.into()),
                };
                let data = tollgate_ledger::codec::encode(&fwd).unwrap();
                raft.propose(pb::RaftPayload { data }).await.map(|_| ())
            }
            Call::Reserve => ledger.reserve(reserve_batch(key)).await.map(|_| ()),
            Call::Watch => ledger.watch_config(pb::WatchConfigRequest::default()).await.map(|_| ()),
            Call::Settle => {
                let settle = pb::SettleBatch {
                    requests: vec![pb::SettleRequest {
                        hold_id: Some(pb::HoldId { id: 78u128.to_be_bytes().to_vec() }),
                        cost_nano_usd: u64::MAX,
                        fail_open_key_id: key.into(),
                        model: "claude-sonnet-4-5".into(),
                        ttl_ms: 60_000,
                        ..Default::default()
                    }],
                };
                ledger.settle(settle).await.map(|_| ())
            }
            Call::AdminWrite => {
                let mut create = tonic::Request::new(pb::CreateTeamRequest { name: "evil".into() });
                create.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                admin.create_team(create).await.map(|_| ())
            }
        };
        out.push((*call, r.map_or_else(|s| s.code(), |_| Code::Ok)));
    }
    out
}

fn all(calls: &[Call], code: Code) -> Vec<(Call, Code)> {
    calls.iter().map(|c| (*c, code)).collect()
}

/// (applied index, digest, term) as node `id` reports it.
fn fingerprint(c: &Cluster, id: u64) -> (u64, String, u64) {
    let s = node_status(c, id);
    (s.applied_index, s.state_digest, s.term)
}

#[test]
fn outsiders_are_refused_and_change_nothing() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_ready();
    let key = c.principal("eng", "ana@corp.io");
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "100", "--period", "monthly"]);
    c.wait_status(&[1], "converged", Duration::from_secs(10), |s| converged(s, 3));
    let token = std::fs::read_to_string(c.token_file()).unwrap().trim().to_string();
    let before: Vec<_> = (1..=3).map(|id| fingerprint(&c, id)).collect();
    let pki = c.pki.clone().unwrap();
    // Another CA's certificate, a ledger certificate of a node that is no
    // member (id 9, from the cluster's own CA), and the roles that may not
    // call what they try.
    let stranger_dir = c.dir.join("stranger");
    let stranger = Pki::create(&stranger_dir).unwrap();
    let stranger_edge = stranger.client(&Role::Edge("e1".into())).unwrap();
    pki.issue(&Role::Ledger(9), &["127.0.0.1".into()]).unwrap();
    let non_member = pki.client(&Role::Ledger(9)).unwrap();
    let edge = c.tls(&Role::Edge("e1".into())).unwrap();
    let admin = c.tls(&Role::Admin("ops".into())).unwrap();
    let addr = c.addrs[&leader].clone();
    rt().block_on(async {
        use Code::*;
        let every: Vec<Call> = RAFT.iter().chain(LEDGER.iter()).copied().chain([Call::AdminWrite]).collect();
        let creds = (key.as_str(), token.as_str());
        // Plaintext and another CA's certificate never get past the
        // handshake: no call is served (the transport error varies).
        for (who, tls) in [("plaintext", None), ("another CA", Some(stranger_edge))] {
            let seen = attack(&c, &addr, tls, creds, &every).await;
            assert!(seen.iter().all(|(_, code)| !matches!(code, Ok | PermissionDenied)), "{who}: {seen:?}");
        }
        // An edge may not speak Raft, nor change config even with the token.
        let calls: Vec<Call> = RAFT.iter().copied().chain([Call::AdminWrite]).collect();
        let seen = attack(&c, &addr, Some(edge), creds, &calls).await;
        assert_eq!(seen, all(&calls, PermissionDenied), "edge certificate");
        // A ledger certificate of a node that is no member: no Raft, nor anything else.
        let seen = attack(&c, &addr, Some(non_member), creds, &RAFT).await;
        assert_eq!(seen, all(&RAFT, PermissionDenied), "non-member ledger certificate");
        // An admin may neither speak Raft nor admit requests; a wrong token is refused.
        let calls: Vec<Call> = RAFT.iter().chain(LEDGER.iter()).copied().collect();
        let seen = attack(&c, &addr, Some(admin.clone()), creds, &calls).await;
        assert_eq!(seen, all(&calls, PermissionDenied), "admin certificate");
        let seen = attack(&c, &addr, Some(admin), (key.as_str(), "tga_wrong"), &[Call::AdminWrite]).await;
        assert_eq!(seen, vec![(Call::AdminWrite, Unauthenticated)]);
        // A member may not speak for another member.
        let member = c.tls(&Role::Ledger(2)).unwrap();
        let follower = (1..=3).find(|i| *i != 2).unwrap();
        let mut raft = RaftServiceClient::new(channel(&c.addrs[&follower], Some(member)));
        let admin_tls = c.tls(&Role::Admin("ops".into()));
        let s = tollgate_client::AdminClient::node_status_at(&c.addrs[&1], Duration::from_secs(5), admin_tls)
            .await
            .unwrap();
        let e = raft.vote(forged_vote(s.term + 1, 3)).await.unwrap_err();
        assert_eq!(e.code(), PermissionDenied, "{e}");
        // Nor on the replication stream, nor with a snapshot.
        let forged = tokio_stream::iter([forged_append(s.term + 1, 3, s.last_log_index)]);
        let e = raft.stream_append(forged).await.unwrap().into_inner().message().await.unwrap_err();
        assert_eq!(e.code(), PermissionDenied, "{e}");
        let forged = tokio_stream::iter(forged_snapshot(s.term + 1, 3, s.last_log_index));
        let e = raft.install_full_snapshot(forged).await.unwrap_err();
        assert_eq!(e.code(), PermissionDenied, "{e}");
    });
    // Nothing changed anywhere: same index, digest and term on every node.
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<_> = (1..=3).map(|id| fingerprint(&c, id)).collect();
    assert_eq!(before, after);
    let config = c.admin_json(1, &["usage", "--json"]);
    assert_eq!(config["rows"][0]["spent_nano_usd"], 0, "{config}");
    let audit = c.admin_json(1, &["audit", "--json"]);
    assert!(!audit.to_string().contains("forged") && !audit.to_string().contains("evil"), "{audit}");
}

/// The refused u64::MAX charge of the review, through the API an edge uses:
/// an item error, and team:eng still admits.
#[test]
fn a_charge_above_the_per_request_maximum_is_refused_through_the_api() {
    let c = Cluster::start(3, &[]);
    c.wait_ready();
    let key = c.principal("eng", "ana@corp.io");
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "100", "--period", "monthly"]);
    rt().block_on(async {
        let ledger = c.ledger_client(&c.addrs.values().cloned().collect::<Vec<_>>());
        let settle = pb::SettleBatch {
            requests: vec![pb::SettleRequest {
                hold_id: Some(pb::HoldId { id: 78u128.to_be_bytes().to_vec() }),
                cost_nano_usd: u64::MAX,
                fail_open_key_id: key.clone(),
                model: "claude-sonnet-4-5".into(),
                ttl_ms: 60_000,
                ..Default::default()
            }],
        };
        let r = ledger.at(0).settle(settle).await.unwrap().into_inner();
        let Some(pb::settle_result::Outcome::Error(e)) = &r.results[0].outcome else { panic!("{r:?}") };
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("per-request maximum"), "{}", e.message);
        let r = ledger.at(1).reserve(reserve_batch(&key)).await.unwrap().into_inner();
        assert!(matches!(r.results[0].outcome, Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_))), "{r:?}");
    });
    let limits = c.admin_json(1, &["limits", "show", "--json"]);
    assert_eq!(limits["max_request_nano_usd"], 1_100_000_000_000u64);
    c.admin_ok(2, &["limits", "set", "--max-request-usd", "2000"]);
    let limits = c.admin_json(3, &["limits", "show", "--json"]);
    assert_eq!(limits["max_request_nano_usd"], 2_000_000_000_000u64);
}

/// Before the bootstrap node registers its token, a racer floods every node
/// with its own registration (plaintext, the weakest setting): every try is
/// refused, and the bootstrap node's token is the cluster's.
#[test]
fn the_admin_token_registration_cannot_be_raced() {
    // Nodes 2 and 3 first; the bootstrap node comes a second into the race.
    let mut c = Cluster::prepare_plaintext(3, &[]);
    c.spawn(2);
    c.spawn(3);
    let racer_token = "tga_racer";
    let mut refused = 0;
    let rt = rt();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut restarted = false;
    while Instant::now() < deadline {
        if !restarted && deadline - Instant::now() < Duration::from_secs(3) {
            c.spawn(1);
            restarted = true;
        }
        for addr in c.addrs.values() {
            let fwd = tollgate_ledger::proposer::ForwardRequest {
                cmds: vec![Command::Admin {
                    actor: "bootstrap".into(),
                    op: AdminOp::SetAdminToken { sha256: tollgate_ledger::auth::sha256_hex(racer_token) },
                }],
                admin_token: Some(racer_token.into()),
            };
            let data = tollgate_ledger::codec::encode(&fwd).unwrap();
            let r = rt.block_on(async {
                RaftServiceClient::new(channel(addr, None)).propose(pb::RaftPayload { data }).await
            });
            match r {
                Err(s) if s.code() == Code::PermissionDenied => refused += 1,
                Err(_) => {} // not up yet
                Ok(r) => panic!("a forwarded token registration was accepted: {:?}", r.into_inner()),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(refused > 10, "the race never reached a node ({refused} refusals)");
    c.wait_ready();
    let audit = c.admin_json(2, &["audit", "--json"]);
    let regs: Vec<_> = audit["entries"].as_array().unwrap().iter().filter(|e| e["what"] == "set admin token").collect();
    assert_eq!(regs.len(), 1, "{audit}");
    assert_eq!(regs[0]["actor"], "bootstrap");
    // The racer's token is not the cluster's.
    let out = std::process::Command::new(BIN)
        .args(["admin", "--server", &c.addrs[&2], "team", "create", "x"])
        .env("TOLLGATE_ADMIN_TOKEN", racer_token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid admin token"));
}

/// A node restarted with a token file that is not the cluster's exits with
/// an error naming the file, instead of running with a useless token.
#[test]
fn a_node_whose_token_is_not_the_clusters_exits_with_a_clear_error() {
    let mut c = Cluster::start(3, &[]);
    c.wait_ready();
    c.kill9(1);
    std::fs::write(c.token_file(), "tga_not_the_clusters\n").unwrap();
    c.spawn(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = c.exited(1).unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "node 1 kept running with a foreign token\n{}", c.log_tails());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = c.log(1);
    assert!(log.contains("the cluster's admin token is not the one in"), "{log}");
}

/// What the rotation test's load saw.
#[derive(Debug, Default)]
struct Load {
    /// Reserves granted (each then settled at 700 nano-USD, retried until acknowledged).
    granted: u64,
    /// Calls that failed and were retried or released (a node restarting).
    errors: u64,
}

/// Reserve+settle pairs through every node in turn until `stop`, as an edge
/// would: a reserve with no answer is released, a settle is retried until
/// acknowledged (it is idempotent), so every grant is charged exactly once.
async fn load(
    servers: Vec<String>,
    tls: std::sync::Arc<std::sync::Mutex<std::sync::Arc<ClusterTls>>>,
    key: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Load {
    use std::sync::atomic::Ordering;
    let mut seen = Load::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n: u128 = 1;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        n += 1;
        let hold = pb::HoldId { id: (n << 64 | 0xab).to_be_bytes().to_vec() };
        // A fresh client each round: it dials with whatever certificate is current.
        let identity = tls.lock().unwrap().clone();
        let client = tollgate_client::LedgerClient::new(&servers, Duration::from_secs(5), Some(identity)).unwrap();
        let mut batch = reserve_batch(&key);
        batch.requests[0].hold_id = Some(hold.clone());
        match client.at(n as usize).reserve(batch).await {
            Ok(r)
                if matches!(
                    r.get_ref().results[0].outcome,
                    Some(pb::reserve_result::Outcome::GrantedExpiresAtMs(_))
                ) =>
            {
                seen.granted += 1;
                let settle = pb::SettleBatch {
                    requests: vec![pb::SettleRequest { hold_id: Some(hold), cost_nano_usd: 700, ..Default::default() }],
                };
                for attempt in 0.. {
                    assert!(attempt < 200, "a settle was never acknowledged");
                    match client.at(n as usize + attempt).settle(settle.clone()).await {
                        Ok(r)
                            if matches!(
                                r.get_ref().results[0].outcome,
                                Some(pb::settle_result::Outcome::Settled(_))
                            ) =>
                        {
                            break
                        }
                        Ok(r) => panic!("settle refused: {r:?}"),
                        Err(_) => {
                            seen.errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            Ok(r) => panic!("reserve refused: {r:?}"),
            Err(_) => {
                seen.errors += 1;
                for attempt in 0.. {
                    assert!(attempt < 200, "a release was never acknowledged");
                    let release =
                        pb::ReleaseBatch { hold_ids: vec![pb::HoldId { id: (n << 64 | 0xab).to_be_bytes().to_vec() }] };
                    if client.at(n as usize + attempt).release(release).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    seen
}

/// A rolling move to a new CA with no downtime: the nodes trust both CAs
/// after SIGHUP, restart one at a time onto certificates of the new CA while
/// an edge-like client keeps reserving and settling, the client moves to a
/// new-CA certificate, and the old CA is dropped with another SIGHUP. Every
/// granted reserve is charged exactly once (nothing lost), and afterwards a
/// certificate of the old CA no longer gets in.
#[test]
fn a_rolling_restart_onto_a_new_ca_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::start(3, &[]);
    c.wait_ready();
    let key = c.principal("eng", "ana@corp.io");
    c.admin_ok(1, &["budget", "set", "team:eng", "--limit-usd", "1000", "--period", "monthly"]);
    let pki = c.pki.clone().unwrap();
    let (ca_file, old_ca) = (pki.dir.join("ca.pem"), std::fs::read_to_string(pki.dir.join("ca.pem")).unwrap());
    let new_pki = Pki::create(&c.dir.join("pki2")).unwrap();
    let new_ca = std::fs::read_to_string(new_pki.dir.join("ca.pem")).unwrap();
    let old_edge = c.tls(&Role::Edge("rot".into())).unwrap();
    let identity = Arc::new(Mutex::new(old_edge.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<String> = c.addrs.values().cloned().collect();
    let worker = {
        let (identity, stop, key, servers) = (identity.clone(), stop.clone(), key.clone(), servers.clone());
        std::thread::spawn(move || rt().block_on(load(servers, identity, key, stop)))
    };
    std::thread::sleep(Duration::from_secs(1));
    // 1. Trust both CAs everywhere: the file is replaced, then re-read.
    std::fs::write(&ca_file, format!("{old_ca}{new_ca}")).unwrap();
    for id in 1..=3 {
        c.signal(id, "-HUP");
    }
    old_edge.reload().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // 2. One node at a time onto a certificate of the new CA.
    for id in 1..=3u64 {
        c.stop(id);
        let files = new_pki.issue(&Role::Ledger(id), &["127.0.0.1".into()]).unwrap();
        let files = tollgate_tls::TlsFiles { ca: ca_file.clone(), ..files };
        c.tls_override.insert(id, Pki::flags(&files));
        c.spawn(id);
        c.wait_status(&[id], "the restarted node rejoined", Duration::from_secs(30), |s| {
            s["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["id"] == id && m["reachable"] == true && m["leader_id"].is_u64()))
        });
    }
    // 3. The client moves to the new CA too, then the old CA is dropped.
    let files = new_pki.issue(&Role::Edge("rot".into()), &[]).unwrap();
    let new_edge = ClusterTls::load(tollgate_tls::TlsFiles { ca: ca_file.clone(), ..files }).unwrap();
    *identity.lock().unwrap() = new_edge;
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&ca_file, &new_ca).unwrap();
    for id in 1..=3 {
        c.signal(id, "-HUP");
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let seen = worker.join().unwrap();
    eprintln!("rotation: {} pairs settled, {} calls retried", seen.granted, seen.errors);
    assert!(seen.granted > 20, "too little load ran: {seen:?}");
    // Nothing lost, nothing doubled: every grant charged exactly 700 nano-USD.
    // The operator needs a certificate of the new CA now too.
    let files = new_pki.issue(&Role::Admin("ops2".into()), &[]).unwrap();
    let admin_flags = Pki::flags(&tollgate_tls::TlsFiles { ca: ca_file.clone(), ..files });
    let out = std::process::Command::new(BIN)
        .args(["admin", "--server", &c.addrs[&1], "--token-file"])
        .arg(c.token_file())
        .args(&admin_flags)
        .args(["usage", "--by", "key", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = usage["rows"].as_array().unwrap().iter().find(|r| r["scope"] == format!("key:{key}")).unwrap().clone();
    assert_eq!(row["spent_nano_usd"], 700 * seen.granted, "{row}");
    assert_eq!(row["held_nano_usd"], 0, "{row}");
    // A certificate of the old CA no longer gets in; the new one does.
    rt().block_on(async {
        let old = tollgate_client::LedgerClient::new(&servers[..1], Duration::from_secs(5), Some(old_edge)).unwrap();
        assert!(old.at(0).watch_config(pb::WatchConfigRequest::default()).await.is_err());
        let new = tollgate_client::LedgerClient::new(
            &servers[..1],
            Duration::from_secs(5),
            Some(identity.lock().unwrap().clone()),
        )
        .unwrap();
        assert!(new.at(0).watch_config(pb::WatchConfigRequest::default()).await.is_ok());
    });
}

/// A ledger or edge that would talk gRPC off this machine without TLS
/// refuses to start and names the flags; `--insecure-plaintext` starts it,
/// with a warning in its log.
#[test]
fn plaintext_off_loopback_is_refused_unless_insisted_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let peers = format!("1=0.0.0.0:{port}");
    let run = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["ledger", "--id", "1", "--grpc", &format!("0.0.0.0:{port}"), "--peers", &peers])
            .arg("--data-dir")
            .arg(dir.path().join("n1"))
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run(&[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-ca") && err.contains("--insecure-plaintext"), "{err}");
    let out = std::process::Command::new(BIN)
        .args(["edge", "--ledger", "10.0.0.1:7070", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("e"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10.0.0.1:7070 is not loopback") && err.contains("--tls-cert"), "{err}");
    // Insisted on: it runs, and says so loudly.
    let mut child = run(&["--insecure-plaintext"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = String::new();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "the insecure node did not keep running");
    let _ = child.kill();
    let _ = child.wait();
    log.push_str(&reader.join().unwrap());
    assert!(log.contains("INSECURE"), "{log}");
}
