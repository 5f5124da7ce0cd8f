//! The one process harness: ledger nodes ([`LedgerCluster`]), edges
//! ([`EdgeProc`]) and the mock provider ([`MockProc`]) from the built
//! binaries on loopback, each with its own data dir and log, killed on
//! drop; and the ledger's command line ([`ledger_args`]) that the chaos
//! run also starts its nodes with, inside its namespaces. The node tests,
//! the edge's end-to-end tests and the benchmarks all run on this.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tollgate_client::AdminClient;
use tollgate_tls::{ClusterTls, Role};

use crate::pki::{host_of, Pki};

/// The `tollgate` binary next to the running executable (same cargo profile).
pub fn sibling_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?;
    // Integration tests run from target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps has no parent")?;
    }
    let bin = dir.join("tollgate");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build [--release] -p tollgate-node)", bin.display());
    }
    Ok(bin)
}

/// The `tollgate` and `mock-upstream` binaries beside this executable (the
/// benchmarks run both).
pub fn sibling_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let bin = sibling_binary()?;
    let mock = bin.with_file_name("mock-upstream");
    if !mock.exists() {
        bail!("{} not found: build it first (cargo build --release -p tollgate-chaos)", mock.display());
    }
    Ok((bin, mock))
}

/// A loopback port for a child process to bind.
///
/// Ports come from 20000..32000, below Linux's ephemeral range
/// (32768..60999): a port the kernel hands out for `bind(0)` or for an
/// outgoing connection can be taken by a client socket between the moment
/// the test learns it and the moment the child binds it, which made a
/// cluster test fail with a node that never started. Within one process a
/// counter never hands out the same port twice; the start is spread by pid
/// so concurrent test binaries rarely meet, and each port is checked free.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, (std::process::id() * 97) % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Whether a cluster's processes talk mutual TLS (as in production) or
/// plaintext (loopback only; for A/B benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plaintext,
}

/// The command line of ledger node `id` (after the binary): its role, its
/// address, the membership, its data dir, and `--bootstrap` for node 1.
/// Every harness starts nodes with these (the chaos run inside namespaces).
pub fn ledger_args(id: u64, grpc: &str, peers: &str, data_dir: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["ledger", "--id", &id.to_string(), "--grpc", grpc, "--peers", peers, "--data-dir"].map(OsString::from).into();
    args.push(data_dir.into());
    if id == 1 {
        args.push("--bootstrap".into());
    }
    args
}

/// Ledger nodes of the built binary on loopback, each with its own data dir
/// and log under `dir`; every child is killed on drop.
pub struct LedgerCluster {
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub addrs: BTreeMap<u64, String>,
    /// Each node's ops endpoints (`--http`: /healthz, /readyz, /metrics),
    /// when the cluster was prepared with them.
    pub http: BTreeMap<u64, String>,
    /// The cluster's CA, when it runs over mutual TLS.
    pub pki: Option<Pki>,
    /// Flags every node gets besides its own.
    pub extra_args: Vec<String>,
    /// TLS flags that replace a node's own (a certificate from another CA).
    pub tls_override: BTreeMap<u64, Vec<String>>,
    /// Flags one node gets besides everyone's (e.g. its `--region`).
    pub node_args: BTreeMap<u64, Vec<String>>,
    /// The address the members reach a node at, when not the one it
    /// listens on (e.g. a `wan` relay in front of it).
    pub advertised: BTreeMap<u64, String>,
    children: BTreeMap<u64, Child>,
}

impl LedgerCluster {
    /// Starts `n` nodes under `dir` over mutual TLS; node 1 bootstraps the cluster.
    pub fn start(bin: &Path, dir: &Path, n: u64) -> anyhow::Result<LedgerCluster> {
        Self::start_with(bin, dir, n, Transport::Tls)
    }

    pub fn start_with(bin: &Path, dir: &Path, n: u64, transport: Transport) -> anyhow::Result<LedgerCluster> {
        let mut c = Self::prepare(bin, dir, n, transport, false, &[])?;
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// Addresses (and ops endpoints if `ops`), the CA, and `extra_args`
    /// for `n` nodes; starts none.
    pub fn prepare(
        bin: &Path,
        dir: &Path,
        n: u64,
        transport: Transport,
        ops: bool,
        extra_args: &[&str],
    ) -> anyhow::Result<LedgerCluster> {
        let mut addrs = BTreeMap::new();
        let mut http = BTreeMap::new();
        for id in 1..=n {
            addrs.insert(id, format!("127.0.0.1:{}", free_port()?));
            if ops {
                http.insert(id, format!("127.0.0.1:{}", free_port()?));
            }
        }
        let pki = match transport {
            Transport::Tls => Some(Pki::create(&dir.join("pki"))?),
            Transport::Plaintext => None,
        };
        Ok(LedgerCluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            addrs,
            http,
            pki,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls_override: BTreeMap::new(),
            node_args: BTreeMap::new(),
            advertised: BTreeMap::new(),
            children: BTreeMap::new(),
        })
    }

    pub fn peers(&self) -> String {
        let addr = |i: &u64, a: &String| self.advertised.get(i).unwrap_or(a).clone();
        self.addrs.iter().map(|(i, a)| format!("{i}={}", addr(i, a))).collect::<Vec<_>>().join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// The TLS flags of process `role` (issued on first use), or none.
    pub fn tls_flags(&self, role: &Role) -> anyhow::Result<Vec<String>> {
        let Some(pki) = &self.pki else { return Ok(vec![]) };
        let hosts = match role {
            Role::Ledger(id) => self.addrs.get(id).map(|a| vec![host_of(a)]).unwrap_or_default(),
            _ => vec![],
        };
        Ok(Pki::flags(&pki.files(role, &hosts)?))
    }

    /// An in-process client identity (`None` for a plaintext cluster).
    pub fn client_tls(&self, role: &Role) -> anyhow::Result<Option<std::sync::Arc<ClusterTls>>> {
        self.pki.as_ref().map(|p| p.client(role)).transpose()
    }

    /// Starts (or restarts) node `id` with the same flags and data dir; its
    /// log is appended to.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let tls = match self.tls_override.get(&id) {
            Some(flags) => flags.clone(),
            None => self.tls_flags(&Role::Ledger(id))?,
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args(ledger_args(id, &self.addrs[&id], &self.peers(), &self.data_dir(id)))
            .args(self.http.get(&id).map(|a| ["--http", a]).into_iter().flatten())
            .args(tls)
            .args(&self.extra_args)
            .args(self.node_args.get(&id).into_iter().flatten())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.children.insert(id, cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?);
        Ok(())
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    /// Node `id`'s log so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (id, addr) in &self.addrs {
            let log = self.log(*id);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- node {id} ({addr}) log tail ---\n{}\n", tail.join("\n")));
        }
        out
    }

    pub fn token(&self) -> anyhow::Result<String> {
        let p = self.data_dir(1).join("admin.token");
        Ok(std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?.trim().to_string())
    }

    pub fn servers(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    /// Waits (bounded) until the admin API answers with the bootstrap token.
    pub async fn admin(&self, timeout: Duration) -> anyhow::Result<AdminClient> {
        let deadline = Instant::now() + timeout;
        let tls = self.client_tls(&Role::Admin("harness".into()))?;
        loop {
            if let Ok(token) = self.token() {
                let client = AdminClient::new(&self.servers(), Some(token), tls.clone())?;
                let probe = client
                    .call(tollgate_proto::v1::ListBudgetsRequest {}, |mut c, r| async move { c.list_budgets(r).await })
                    .await;
                if probe.is_ok() {
                    return Ok(client);
                }
            }
            if Instant::now() > deadline {
                bail!("cluster not ready after {timeout:?}; see logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many nodes are running.
    pub fn running(&self) -> usize {
        self.children.len()
    }

    /// Process id of node `id`, for fault injection from outside.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(|c| c.id())
    }

    /// Sends `signal` (e.g. `-HUP`) to node `id`.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid(id).with_context(|| format!("node {id} is not running"))?;
        let st = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(st.success(), "kill {signal} {pid}: {st}");
        Ok(())
    }

    /// SIGTERM, and wait (bounded) for a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(c) = self.children.remove(&id) {
            terminate(c, Duration::from_secs(10));
        }
    }

    /// Node `id`'s exit status, once it has exited by itself.
    pub fn exited(&mut self, id: u64) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let c = self.children.get_mut(&id).with_context(|| format!("node {id} was not started"))?;
        Ok(c.try_wait()?)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LedgerCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `mock-upstream` process (the stand-in provider) on a free loopback
/// port, accepting only the upstream credential `key`, appending every
/// response to its own ground-truth log.
pub struct MockProc {
    pub addr: String,
    pub log: PathBuf,
    child: Child,
}

impl MockProc {
    /// Starts `bin` (the `mock-upstream` binary) with `extra` flags,
    /// accepting only the credential `key` if one is given, and keeping a
    /// ground-truth log if `truth_log`.
    pub fn start(
        bin: &Path,
        dir: &Path,
        key: Option<&str>,
        truth_log: bool,
        extra: &[&str],
    ) -> anyhow::Result<MockProc> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = dir.join(format!("truth-{}.jsonl", addr.replace([':', '.'], "_")));
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", &addr]);
        if let Some(key) = key {
            cmd.args(["--expect-key", key]);
        }
        if truth_log {
            cmd.arg("--log").arg(&log);
        }
        let child = cmd
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(MockProc { addr, log, child })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (bounded) until the port accepts connections.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while tokio::net::TcpStream::connect(&self.addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("mock upstream {} not listening after {timeout:?}", self.addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Every response logged so far (none before the first).
    pub fn truth(&self) -> Vec<crate::mock::TruthRecord> {
        if !self.log.exists() {
            return vec![];
        }
        crate::mock::read_log(&self.log).unwrap_or_default()
    }
}

impl Drop for MockProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An edge process (`tollgate edge`) started from the built binary.
pub struct EdgeProc {
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// Environment set on top of the defaults (see [`EdgeProc::start_with_env`]).
    env: Vec<(String, String)>,
    bin: PathBuf,
}

impl EdgeProc {
    /// Starts an edge on a free loopback port against `ledger`, forwarding
    /// both APIs to `upstream` with the credential `upstream_key`. `extra`
    /// are further flags (e.g. `--estimate strict`).
    pub fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        ledger: &[String],
        upstream: &str,
        extra: &[&str],
    ) -> anyhow::Result<EdgeProc> {
        Self::start_with_env(bin, dir, name, ledger, upstream, extra, &[])
    }

    /// As [`EdgeProc::start`], with environment variables that override the
    /// defaults (`ANTHROPIC_API_KEY` and `OPENAI_API_KEY` are
    /// `sk-upstream-test` unless set here), e.g. a wrong upstream key.
    pub fn start_with_env(
        bin: &Path,
        dir: &Path,
        name: &str,
        ledger: &[String],
        upstream: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<EdgeProc> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data_dir = dir.join(name);
        let mut args: Vec<String> = vec![
            "edge".into(),
            "--listen".into(),
            addr.clone(),
            "--ledger".into(),
            ledger.join(","),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--upstream-anthropic".into(),
            upstream.into(),
            "--upstream-openai".into(),
            upstream.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut e =
            EdgeProc { addr, log: dir.join(format!("{name}.log")), data_dir, child: None, args, env, bin: bin.into() };
        e.spawn()?;
        Ok(e)
    }

    /// (Re)starts the process with the same flags and data dir.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("ANTHROPIC_API_KEY", "sk-upstream-test")
            .env("OPENAI_API_KEY", "sk-upstream-test")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("edge {} not ready after {timeout:?}; see {}", self.addr, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no graceful shutdown, no outbox flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a graceful exit; returns its status code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        terminate(self.child.take()?, within)
    }
}

/// SIGTERM, then wait up to `within` for a graceful exit (SIGKILL after);
/// the exit code if it exited by itself.
pub fn terminate(mut child: Child, within: Duration) -> Option<i32> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sets (or replaces) a monthly hard budget of `limit_usd` dollars on
/// `scope`, as the harnesses and benchmarks do.
pub async fn set_budget(admin: &AdminClient, scope: &str, limit_usd: &str) -> anyhow::Result<()> {
    let req = tollgate_proto::v1::SetBudgetRequest {
        scope: scope.into(),
        model: String::new(),
        limit_usd: limit_usd.into(),
        period: "monthly".into(),
        mode: "hard".into(),
    };
    admin.call(req, |mut c, r| async move { c.set_budget(r).await }).await?;
    Ok(())
}
