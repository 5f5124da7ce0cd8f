//! The one-node fixture of the edge's process tests, on the shared harness
//! (`tollgate_chaos::cluster`): a one-node ledger over mutual TLS,
//! `tollgate edge` processes, the `mock-upstream` binary as the provider,
//! and plain HTTP/1.1 clients, so each test controls exactly what goes over
//! the wire.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tollgate_chaos::cluster::{free_port, sibling_binaries, sibling_binary, EdgeProc, LedgerCluster, MockProc};
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

pub const UPSTREAM_KEY: &str = "sk-upstream-test";
/// Longest wait for any one response.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The `mock-upstream` binary, accepting only [`UPSTREAM_KEY`].
pub fn mock(dir: &Path, extra: &[&str]) -> MockProc {
    MockProc::start(&sibling_binaries().unwrap().1, dir, Some(UPSTREAM_KEY), true, extra).unwrap()
}

pub struct Setup {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub cluster: LedgerCluster,
    pub admin: AdminClient,
    pub mock: MockProc,
}

/// A one-node ledger over mutual TLS (its own quorum) and a mock provider
/// started with `mock_flags`.
pub async fn setup(mock_flags: &[&str]) -> Setup {
    setup_with(1, mock_flags).await
}

/// `nodes` ledger nodes over mutual TLS and a mock provider started with
/// `mock_flags`.
pub async fn setup_with(nodes: u64, mock_flags: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let cluster = LedgerCluster::start(&sibling_binary().unwrap(), &path, nodes).unwrap();
    let admin = cluster.admin(Duration::from_secs(30)).await.unwrap();
    let mock = mock(&path, mock_flags);
    Setup { _dir: dir, dir: path, cluster, admin, mock }
}

impl Setup {
    /// An edge forwarding to the mock, with `edge_toml` as the `[edge]`
    /// section of its config file and `extra` flags.
    pub fn edge(&self, name: &str, edge_toml: &str, extra: &[&str]) -> EdgeProc {
        self.edge_to(name, &self.mock.url(), &[], edge_toml, extra)
    }

    /// An edge forwarding to `upstream` with environment `env`.
    pub fn edge_to(
        &self,
        name: &str,
        upstream: &str,
        env: &[(&str, &str)],
        edge_toml: &str,
        extra: &[&str],
    ) -> EdgeProc {
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("version = 1\n[edge]\n{edge_toml}\n")).unwrap();
        let mut flags = self.cluster.tls_flags(&Role::Edge(name.into())).unwrap();
        flags.extend(["--config".to_string(), config.display().to_string()]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let bin = sibling_binary().unwrap();
        EdgeProc::start_with_env(&bin, &self.dir, name, &self.cluster.servers(), upstream, &flags, env).unwrap()
    }

    /// Creates team, user and a key; returns the key's secret.
    pub async fn key(&self, team: &str, user: &str) -> String {
        self.principal(team, user).await.1
    }

    /// Creates team, user and key; returns (key id, secret).
    pub async fn principal(&self, team: &str, user: &str) -> (String, String) {
        let a = &self.admin;
        let _ =
            a.call(pb::CreateTeamRequest { name: team.into() }, |mut c, r| async move { c.create_team(r).await }).await;
        a.call(pb::CreateUserRequest { email: user.into(), team: team.into() }, |mut c, r| async move {
            c.create_user(r).await
        })
        .await
        .unwrap();
        let k = a
            .call(pb::CreateKeyRequest { user: user.into(), name: "e2e".into() }, |mut c, r| async move {
                c.create_key(r).await
            })
            .await
            .unwrap();
        (k.id, k.secret)
    }

    /// The usage rows grouped `by`.
    pub async fn usage(&self, by: &str) -> Vec<pb::UsageRow> {
        let req = pb::UsageRequest { by: by.into() };
        self.admin.call(req, |mut c, r| async move { c.usage(r).await }).await.unwrap().rows
    }

    /// The usage row of `scope` grouped `by` (zeros if none).
    pub async fn row(&self, by: &str, scope: &str) -> pb::UsageRow {
        self.usage(by).await.into_iter().find(|r| r.scope == scope).unwrap_or_default()
    }
}

pub fn loopback() -> String {
    format!("127.0.0.1:{}", free_port().unwrap())
}

/// Waits (bounded) until `GET /readyz` on the plaintext `addr` answers 200.
pub async fn ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), get_over(s, "/readyz")).await {
                if r.status == 200 {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "{addr} not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// (status, error type, message) of an error in either provider's shape.
    pub fn error(&self) -> (u16, String, String) {
        let v = self.json();
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
        (self.status, s("/error/type"), s("/error/message"))
    }

    /// The header names the mock received, sorted.
    pub fn mock_saw(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.header("x-mock-saw-headers").expect("no x-mock-saw-headers").split(',').map(String::from).collect();
        names.sort();
        names
    }
}

/// Reads a response's body to its end (bounded).
pub async fn read(resp: Response<Incoming>) -> Reply {
    let (head, body) = resp.into_parts();
    let bytes = tokio::time::timeout(REPLY_TIMEOUT, body.collect()).await.expect("body timed out").unwrap().to_bytes();
    Reply { status: head.status.as_u16(), headers: head.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

/// One HTTP/1.1 client connection; requests on it go one after another.
pub struct Conn(pub hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(addr: &str) -> Conn {
        Conn::over(TcpStream::connect(addr).await.unwrap()).await
    }

    pub async fn over<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: I) -> Conn {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    /// Sends a request; returns the response with its body not yet read.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body)).unwrap();
        // Until the previous exchange is done, the connection takes no request;
        // an error here means the server closed it.
        tokio::time::timeout(REPLY_TIMEOUT, self.0.ready()).await.expect("connection never ready").unwrap();
        tokio::time::timeout(REPLY_TIMEOUT, self.0.send_request(req)).await.expect("no response head").unwrap()
    }

    pub async fn call(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        read(self.send(method, path, headers, body.into()).await).await
    }
}

pub async fn post(addr: &str, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    Conn::open(addr).await.call("POST", path, headers, body).await
}

pub async fn get_over<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: I, path: &str) -> anyhow::Result<Reply> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new()))?;
    Ok(read(send.send_request(req).await?).await)
}

pub async fn get(addr: &str, path: &str) -> Reply {
    get_over(TcpStream::connect(addr).await.unwrap(), path).await.unwrap()
}

/// The value of one series in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (bounded) until `series` on `addr`'s /metrics reads `want`.
pub async fn await_metric(addr: &str, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(addr, "/metrics").await.body;
        if metric(&page, series) == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never reached {want}: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn anthropic(secret: &str) -> Vec<(&str, &str)> {
    vec![("x-api-key", secret), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]
}

pub fn message(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]}).to_string()
}

pub fn with<'a>(base: &[(&'a str, &'a str)], more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    [base, more].concat()
}

impl Setup {
    /// Runs `tollgate admin ARGS` as an operator would, with an admin
    /// certificate named `name` and the bootstrap token; returns (exit
    /// code, stdout, stderr).
    pub fn admin_cli(&self, name: &str, args: &[&str]) -> (i32, String, String) {
        let mut cmd = std::process::Command::new(sibling_binary().unwrap());
        cmd.arg("admin")
            .arg("--server")
            .arg(self.cluster.servers().join(","))
            .arg("--token-file")
            .arg(self.dir.join("node1").join("admin.token"))
            .args(self.cluster.tls_flags(&Role::Admin(name.into())).unwrap())
            .args(args);
        let out = cmd.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// `admin_cli` that must succeed; its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.admin_cli("ops", args);
        assert_eq!(code, 0, "tollgate admin {args:?} failed: {err}");
        out
    }

    /// Waits (bounded) until `scope` (as `tollgate admin usage --by`
    /// groups it) counts `requests` and holds nothing.
    pub async fn settled(&self, by: &str, scope: &str, requests: u64) -> pb::UsageRow {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = self.row(by, scope).await;
            if row.requests >= requests && row.held_nano_usd == 0 {
                return row;
            }
            assert!(Instant::now() < deadline, "{scope}: {row:?} never reached {requests} settled requests");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets a monthly hard budget.
    pub async fn budget(&self, scope: &str, usd: &str) {
        set_budget(&self.admin, scope, usd).await;
    }
}

/// Waits (bounded) until the edge at `addr` has installed config `index` or later.
pub async fn config_at_least(addr: &str, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(addr, "/metrics").await.body;
        if metric(&page, "tollgate_config_index").is_some_and(|i| i >= index) {
            return;
        }
        assert!(Instant::now() < deadline, "config index never reached {index}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `(index N)` a `tollgate admin` change prints.
pub fn printed_index(out: &str) -> u64 {
    let i = out.rfind("(index ").unwrap_or_else(|| panic!("no index in {out:?}"));
    out[i + 7..].split(')').next().unwrap().parse().unwrap()
}

/// Sets a monthly hard budget of `usd` dollars on `scope`.
pub async fn set_budget(admin: &AdminClient, scope: &str, usd: &str) {
    tollgate_chaos::cluster::set_budget(admin, scope, usd).await.unwrap();
}
