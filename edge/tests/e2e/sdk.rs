//! The three-node fixture of the SDK tests: 3 `tollgate ledger` nodes,
//! `tollgate edge` processes over mutual TLS, the `mock-upstream` binary,
//! and the official `anthropic` and `openai` Python SDKs (installed by
//! ./test.sh into a venv under target/) as the clients, driven by
//! `edge/tests/py/sdk_calls.py`. Charges are checked against the mock's
//! ground-truth log to the nano-dollar, with prices written out
//! independently of the edge's own table (`tollgate_chaos::checker`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_chaos::cluster::{sibling_binaries, sibling_binary, EdgeProc, LedgerCluster, MockProc};
use tollgate_chaos::mock::TruthRecord;
use tollgate_client::AdminClient;
use tollgate_proto::v1 as pb;
use tollgate_tls::Role;

pub const UPSTREAM_KEY: &str = "sk-upstream-test";

/// The Python with the SDKs: $TOLLGATE_PYTHON (set by ./test.sh), else the
/// venv ./test.sh makes under target/.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.exists(),
        "the Python SDKs are not installed: run ./test.sh (it makes the venv target/pyenv) or set TOLLGATE_PYTHON"
    );
    venv
}

/// Runs the SDK driver with `plan`; returns what each step saw.
pub async fn sdk(plan: Value) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sdk_calls.py");
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting python");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("the SDK driver timed out")
        .expect("the SDK driver failed to run");
    assert!(out.status.success(), "sdk_calls.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad driver output ({e}): {:?}", out.stdout))
}

/// The cost of a ground-truth response, at the checker's independent
/// prices; a model without a test price is a mistake in the test.
pub fn truth_cost(r: &TruthRecord) -> u64 {
    assert!(tollgate_chaos::checker::rates(&r.model).is_some(), "no test price for {}", r.model);
    tollgate_chaos::checker::truth_cost(r)
}

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

pub async fn setup(mock_flags: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let bin = sibling_binary().unwrap();
    let cluster = LedgerCluster::start(&bin, &path, 3).unwrap();
    let admin = cluster.admin(Duration::from_secs(30)).await.unwrap();
    let mock = mock(&path, mock_flags);
    Setup { _dir: dir, dir: path, cluster, admin, mock }
}

impl Setup {
    /// An edge over mutual TLS to the ledger, with its own certificate.
    pub fn edge(&self, name: &str, extra: &[&str]) -> EdgeProc {
        let mut flags = self.cluster.tls_flags(&Role::Edge(name.into())).unwrap();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        EdgeProc::start(&sibling_binary().unwrap(), &self.dir, name, &self.cluster.servers(), &self.mock.url(), &flags)
            .unwrap()
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

    pub async fn budget(&self, scope: &str, usd: &str) {
        crate::harness::set_budget(&self.admin, scope, usd).await;
    }

    pub async fn usage(&self, by: &str) -> Vec<pb::UsageRow> {
        let req = pb::UsageRequest { by: by.into() };
        self.admin.call(req, |mut c, r| async move { c.usage(r).await }).await.unwrap().rows
    }

    pub async fn row(&self, by: &str, scope: &str) -> pb::UsageRow {
        self.usage(by).await.into_iter().find(|r| r.scope == scope).unwrap_or_default()
    }

    /// Waits (bounded) until `scope` counts `requests` admissions and holds
    /// nothing (every hold settled or released).
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
}

pub fn base(e: &EdgeProc) -> String {
    format!("http://{}", e.addr)
}

pub fn ok_steps(results: &[Value]) -> usize {
    results.iter().filter(|r| r["ok"] == true).count()
}

pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}
