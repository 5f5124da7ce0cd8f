//! The three-node fixture of the SDK tests: 3 `tollgate ledger` nodes,
//! `tollgate edge` processes over mutual TLS, the `mock-upstream` binary,
//! and the official `anthropic` and `openai` Python SDKs (installed by
//! ./test.sh into a venv under target/) as the clients, driven by
//! `edge/tests/py/sdk_calls.py`. Charges are checked against the mock's
//! ground-truth log to the nano-dollar, with prices written out
//! independently of the edge's own table (`tollgate_chaos::checker`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tollgate_chaos::cluster::{sibling_binary, EdgeProc};
use tollgate_chaos::mock::TruthRecord;
use tollgate_tls::Role;

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

pub use crate::harness::{mock, Setup, UPSTREAM_KEY};

/// Three ledger nodes over mutual TLS and the mock provider.
pub async fn setup(mock_flags: &[&str]) -> Setup {
    crate::harness::setup_with(3, mock_flags).await
}

impl Setup {
    /// An edge over mutual TLS to the ledger, with its own certificate
    /// and only `extra` flags (no config file of the harness's).
    pub fn edge_with(&self, name: &str, extra: &[&str]) -> EdgeProc {
        let mut flags = self.cluster.tls_flags(&Role::Edge(name.into())).unwrap();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        EdgeProc::start(&sibling_binary().unwrap(), &self.dir, name, &self.cluster.servers(), &self.mock.url(), &flags)
            .unwrap()
    }
}

impl Setup {
    /// An edge with a hold per request (`leases = false`), for tests of
    /// what holds do.
    pub fn edge_with_holds(&self, name: &str) -> EdgeProc {
        let cfg = self.dir.join(format!("{name}-holds.toml"));
        std::fs::write(&cfg, "version = 1\n[edge]\nleases = false\n").unwrap();
        self.edge_with(name, &["--config", cfg.to_str().unwrap()])
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
