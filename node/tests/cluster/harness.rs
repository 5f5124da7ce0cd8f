//! The node tests' face of the shared process harness
//! ([`tollgate_chaos::cluster::LedgerCluster`]: real `tollgate` ledger
//! processes on loopback, each with its own data dir): panicking instead
//! of returning errors, and driving the nodes through the `tollgate admin`
//! command line. Every wait has a deadline; every child is killed on drop.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_chaos::cluster::{LedgerCluster, Transport};
use tollgate_tls::{ClusterTls, Role};

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// `GET path` on a node's ops endpoint: (status, body), or `None` if it
/// does not answer.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The value of one exact series (`name{labels}` as printed) in a
/// Prometheus exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A loopback port for a child to bind (outside the ephemeral range, never
/// the same twice in one test process).
pub fn free_port() -> u16 {
    tollgate_chaos::cluster::free_port().unwrap()
}

/// A ledger cluster in a temporary directory, every node with its ops
/// endpoints (`--http`).
pub struct Cluster {
    c: LedgerCluster,
    /// Removed after the nodes are killed (fields drop in order).
    _dir: tempfile::TempDir,
}

impl Deref for Cluster {
    type Target = LedgerCluster;
    fn deref(&self) -> &LedgerCluster {
        &self.c
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut LedgerCluster {
        &mut self.c
    }
}

impl Cluster {
    /// Starts `n` ledger nodes over mutual TLS; node 1 bootstraps.
    pub fn start(n: u64, extra_args: &[&str]) -> Cluster {
        Self::started(Self::prepare(n, extra_args, Transport::Tls))
    }

    /// `n` ledger nodes on loopback without TLS, none started: the caller
    /// spawns them when it wants.
    pub fn prepare_plaintext(n: u64, extra_args: &[&str]) -> Cluster {
        Self::prepare(n, extra_args, Transport::Plaintext)
    }

    fn prepare(n: u64, extra_args: &[&str], transport: Transport) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let c = LedgerCluster::prepare(BIN.as_ref(), dir.path(), n, transport, true, extra_args).unwrap();
        Cluster { c, _dir: dir }
    }

    fn started(mut c: Cluster) -> Cluster {
        for id in 1..=c.addrs.len() as u64 {
            c.spawn(id);
        }
        c
    }

    /// Starts (or restarts) node `id`.
    pub fn spawn(&mut self, id: u64) {
        self.c.spawn(id).unwrap();
    }

    /// Sends `signal` (e.g. `-HUP`) to node `id`.
    pub fn signal(&self, id: u64, signal: &str) {
        self.c.signal(id, signal).unwrap();
    }

    /// The `--tls-*` flags of `role` (issued on first use), none without TLS.
    pub fn tls_flags(&self, role: &Role) -> Vec<String> {
        self.c.tls_flags(role).unwrap()
    }

    /// A loaded identity for an in-process client, none without TLS.
    pub fn tls(&self, role: &Role) -> Option<Arc<ClusterTls>> {
        self.c.tls_flags(role).unwrap();
        self.c.client_tls(role).unwrap()
    }

    /// What an edge would use to reach the ledger.
    pub fn edge_tls(&self) -> Option<Arc<ClusterTls>> {
        self.tls(&Role::Edge("test-edge".into()))
    }

    /// A channel to `addr` as `role` (over TLS when the cluster has it).
    pub fn channel(&self, addr: &str, role: &Role) -> tonic::transport::Channel {
        tollgate_tls::channel(addr, self.tls(role), |e| e.timeout(Duration::from_secs(10))).unwrap()
    }

    pub fn ledger_client(&self, servers: &[String]) -> tollgate_client::LedgerClient {
        tollgate_client::LedgerClient::new(servers, Duration::from_secs(10), self.edge_tls()).unwrap()
    }

    pub fn token_file(&self) -> PathBuf {
        self.data_dir(1).join("admin.token")
    }

    pub fn admin_at(&self, server: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("admin")
            .args(["--server", server])
            .arg("--token-file")
            .arg(self.token_file())
            .args(self.tls_flags(&Role::Admin("ops".into())))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs an admin command through node `id` and insists it succeeds.
    pub fn admin_ok(&self, id: u64, args: &[&str]) -> String {
        let out = self.admin_at(&self.addrs[&id], args);
        assert!(
            out.status.success(),
            "admin {args:?} via node {id} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates `team`, a user `email` in it and a key for that user, all
    /// through node 1; returns the key's id.
    pub fn principal(&self, team: &str, email: &str) -> String {
        self.admin_ok(1, &["team", "create", team]);
        self.admin_ok(1, &["user", "create", email, "--team", team]);
        self.admin_json(1, &["key", "create", "--user", email, "--json"])["id"].as_str().unwrap().to_string()
    }

    pub fn admin_json(&self, id: u64, args: &[&str]) -> Value {
        let out = self.admin_ok(id, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not json ({e}): {out}"))
    }

    /// `cluster status --json` asked through any of `via`.
    pub fn status(&self, via: &[u64]) -> Option<Value> {
        let servers = via.iter().map(|i| self.addrs[i].clone()).collect::<Vec<_>>().join(",");
        let out = self.admin_at(&servers, &["cluster", "status", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// Waits until `pred` holds for the status seen through `via`.
    pub fn wait_status(&self, via: &[u64], what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status(via) {
                if pred(&s) {
                    return s;
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting for {what}; last status {s}\n{}", self.log_tails());
                }
            } else if Instant::now() > deadline {
                panic!("timed out waiting for {what}; no status\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a leader and for the admin token to be registered.
    pub fn wait_ready(&self) -> u64 {
        self.wait_status(&[1], "a leader", Duration::from_secs(20), |s| s["leader"].is_u64());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = self.admin_at(&self.addrs[&1], &["budget", "list", "--json"]);
            if out.status.success() {
                // Every node has heard from the leader (a node that has not
                // yet says it is not part of an initialized cluster).
                let n = self.running();
                let s = self.wait_status(&[1], "all members caught up", Duration::from_secs(20), |s| converged(s, n));
                return s["leader"].as_u64().unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("admin token never became usable");
    }

    pub fn leader(&self, via: &[u64]) -> Option<u64> {
        self.status(via).and_then(|s| s["leader"].as_u64())
    }
}

/// Every reachable member reports the same digest at the same applied index.
pub fn converged(s: &Value, n: usize) -> bool {
    let Some(members) = s["members"].as_array() else { return false };
    let reachable: Vec<&Value> = members.iter().filter(|m| m["reachable"] == Value::Bool(true)).collect();
    reachable.len() == n
        && reachable
            .windows(2)
            .all(|w| w[0]["applied_index"] == w[1]["applied_index"] && w[0]["state_digest"] == w[1]["state_digest"])
}

/// Node `id`'s own status, straight from its AdminService.
pub fn node_status(c: &Cluster, id: u64) -> tollgate_proto::v1::NodeStatusResponse {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls = c.tls(&Role::Admin("ops".into()));
        tollgate_client::AdminClient::node_status_at(&c.addrs[&id], Duration::from_secs(2), tls).await.unwrap()
    })
}
