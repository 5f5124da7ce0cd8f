//! The real Codex CLI (`@openai/codex`, pinned in `edge/tests/codex`,
//! installed by ./test.sh under target/codex) pointed at `tollgate up` as
//! the README says, answered by the mock provider: its turn is metered to
//! the nano-dollar and attributed to its session, a WebSocket it is told
//! to try falls back to HTTP at once, and a hard cap's refusal reaches it
//! once, as a message it shows, not a retry loop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tollgate_chaos::cluster::{free_port, sibling_binary};

use crate::sdk::*;

/// Codex CLI: $TOLLGATE_CODEX (set by ./test.sh), else where ./test.sh installs it.
fn codex() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_CODEX") {
        return PathBuf::from(p);
    }
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/codex/node_modules/.bin/codex");
    assert!(bin.exists(), "Codex CLI is not installed: run ./test.sh (it installs target/codex) or set TOLLGATE_CODEX");
    bin
}

/// `tollgate admin ARGS` against `tollgate up`'s ledger; stdout.
fn admin(dir: &Path, grpc: &str, args: &[&str]) -> String {
    let out = Command::new(sibling_binary().unwrap())
        .args(["admin", "--server", grpc, "--token-file"])
        .arg(dir.join("tollgate-data/admin.token"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `codex exec PROMPT` with its own home and working directory; (exit
/// success, stdout, stderr).
async fn codex_exec(dir: &Path, secret: &str, prompt: &str) -> (bool, String, String) {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let child = tokio::process::Command::new(codex())
        .args(["exec", "--skip-git-repo-check", prompt])
        .current_dir(&work)
        .env("CODEX_HOME", dir.join("codex-home"))
        .env("TOLLGATE_API_KEY", secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("codex exec did not finish in 120 s")
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_cli_runs_through_tollgate_up_metered_attributed_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mock = mock(d, &[]);
    let (http, grpc) = (format!("127.0.0.1:{}", free_port().unwrap()), format!("127.0.0.1:{}", free_port().unwrap()));
    let out = d.join("up.out");
    let _up = KillOnDrop(
        Command::new(sibling_binary().unwrap())
            .args(["up", "--listen", &http, "--grpc", &grpc, "--upstream-openai", &mock.url()])
            .current_dir(d)
            .env("OPENAI_API_KEY", UPSTREAM_KEY)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(d.join("up.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("Point Claude Code at it") {
        assert!(Instant::now() < deadline, "tollgate up did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    admin(d, &grpc, &["team", "create", "eng"]);
    admin(d, &grpc, &["user", "create", "cody@corp.io", "--team", "eng"]);
    let key: Value =
        serde_json::from_str(&admin(d, &grpc, &["key", "create", "--user", "cody@corp.io", "--json"])).unwrap();
    let secret = key["secret"].as_str().unwrap();
    admin(d, &grpc, &["budget", "set", "team:eng", "--limit-usd", "100", "--period", "monthly"]);
    std::fs::create_dir_all(d.join("codex-home")).unwrap();
    std::fs::write(
        d.join("codex-home/config.toml"),
        format!(
            "model = \"gpt-6.2-sol\"\nmodel_provider = \"tollgate\"\n\n[model_providers.tollgate]\nname = \"Tollgate\"\n\
             base_url = \"http://{http}/v1\"\nenv_key = \"TOLLGATE_API_KEY\"\nwire_api = \"responses\"\n\
             supports_websockets = true\n"
        ),
    )
    .unwrap();
    // The key reaches the edge through the config watch within moments.
    let bearer = format!("Bearer {secret}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::harness::Conn::open(&http)
        .await
        .call("GET", "/v1/models", &[("authorization", &bearer)], "")
        .await
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "the key never reached the edge");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, stdout, stderr) = codex_exec(d, secret, "say hi").await;
    assert!(ok, "codex failed: {stdout}\n{stderr}");
    assert!(stdout.contains("lorem"), "the mock's answer: {stdout}\n{stderr}");
    let session = stderr.lines().find_map(|l| l.strip_prefix("session id: ")).expect("codex names its session").trim();
    // Told the provider takes WebSockets, Codex tried one, got a 426 and
    // went on over HTTP at once.
    let metrics = crate::harness::get(&http, "/metrics").await.body;
    assert_eq!(
        crate::harness::metric(&metrics, r#"tollgate_requests_total{route="other",model="",status="426"}"#),
        Some(1),
        "{metrics}"
    );
    // Charged exactly what the provider billed, attributed to Codex's session.
    let truth = mock.truth();
    assert!(!truth.is_empty() && truth.iter().all(|t| t.api == "responses" && t.model == "gpt-6.2-sol"), "{truth:?}");
    let want: u64 = truth.iter().map(truth_cost).sum();
    let spent = |by: &str, scope: &str| {
        let v: Value = serde_json::from_str(&admin(d, &grpc, &["usage", "--by", by, "--json"])).unwrap();
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scope"] == scope)
            .map(|r| r["spent_nano_usd"].as_u64().unwrap())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while spent("user", "user:cody@corp.io") != Some(want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(spent("user", "user:cody@corp.io"), Some(want), "ledger vs the mock's ground truth");
    assert_eq!(spent("session", &format!("session:{session}")), Some(want));

    // Over its cap, Codex shows the gateway's message after one request.
    admin(d, &grpc, &["budget", "set", "team:eng", "--limit-usd", "0.000001", "--period", "monthly"]);
    let (ok, stdout, stderr) = codex_exec(d, secret, "and again").await;
    assert!(!ok, "codex went on over the cap: {stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("Tollgate: the monthly budget of team:eng is exhausted"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(mock.truth().len(), truth.len(), "nothing more reached the provider");
    let metrics = crate::harness::get(&http, "/metrics").await.body;
    let refused = r#"tollgate_requests_total{route="/v1/responses",model="gpt-6.2-sol",status="400"}"#;
    assert_eq!(crate::harness::metric(&metrics, refused), Some(1), "refused once, not retried: {metrics}");
}

/// `tollgate up`, stopped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
