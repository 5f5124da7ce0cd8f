//! Every chaos scenario, briefly, through the `tollgate-chaos` binary: a
//! private network of namespaces, 3 `tollgate ledger` nodes, 2 `tollgate
//! edge`s (all over mutual TLS), the mock upstream and 12 simulated users over 4 teams with hard
//! budgets that run out during the run; the fault is injected from outside
//! and the invariant checker must pass. The scenarios run one at a time (they
//! share 2 cores); each seed is fixed so a failure can be repeated with
//! `cargo run --release -p tollgate-chaos -- run --scenario S --seed N`.
//!
//! Seeds kept as regressions: rolling-restart seed 3 found a ledger node
//! whose graceful shutdown waited 5 s on config watchers (5 s unavailable
//! per restart); leader-partition seed 3 found followers whose forwarded
//! proposals stayed stuck on the cut-off old leader (7 s unavailable);
//! leader-kill seed 1 found forwards to a dead leader answered "outcome
//! unknown" instead of "retry" (95 requests refused, 2 s without admission).
//!
//! `--topology regions` (three regions, a voter and an edge in each, joined
//! by the user-space WAN of 30 ms each way) runs the three region scenarios
//! and the leader's death; by hand, every scenario runs on it.

use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn scenario(name: &str, seed: u64) -> Value {
    run(name, seed, &[])
}

/// Runs one scenario with `extra` flags; checks what holds in every mode
/// and returns the report.
fn run(name: &str, seed: u64, extra: &[&str]) -> Value {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let keep = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate-chaos"))
        .args(["run", "--scenario", name, "--seed", &seed.to_string(), "--duration", "15", "--report"])
        .arg(&report)
        .args(extra)
        .arg("--keep")
        .arg(&keep)
        .output()
        .expect("running tollgate-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{name} seed {seed} failed:\n{stdout}\n{stderr}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for field in ["scenario", "seed", "faults", "requests", "overspend_nano_usd", "lost_charges", "double_charges"] {
        assert!(r.get(field).is_some(), "report lacks {field}: {r}");
    }
    assert_eq!(r["scenario"], name);
    assert_eq!(r["seed"], seed);
    // Every process talked mutual TLS, as a production cluster does.
    assert_eq!(r["tls"], true);
    assert_eq!(r["overspend_nano_usd"], 0);
    assert_eq!(r["lost_charges"], 0);
    assert_eq!(r["double_charges"], 0);
    assert_eq!(r["digests_agree"], true);
    assert!(!r["faults"].as_array().unwrap().is_empty(), "no fault was injected: {r}");
    assert!(r["faults"][0]["at_ms"].as_u64().unwrap() > 0);
    let ok = r["requests"]["ok"].as_u64().unwrap();
    assert!(ok > 50, "too little load went through: {r}");
    assert!(r["upstream_responses"].as_u64().unwrap() >= ok);
    // Admission comes back: no outage beyond a few election timeouts.
    let longest = r["longest_unavailability_ms"].as_u64().unwrap();
    assert!(longest < 10 * r["election_timeout_ms"].as_u64().unwrap(), "{name}: {longest} ms unavailable: {r}");
    r
}

#[test]
fn leader_kill() {
    scenario("leader-kill", 1);
}

/// Estimate mode (reservations sized from each user's recent outputs, which
/// the load makes vary and sometimes exceed): the hard caps may be
/// overshot, but by no more than what the admitted requests cost beyond
/// what the edges reported reserving for them — the checker fails the run
/// otherwise — and the load does go past its reservations.
#[test]
fn estimate_mode_overshoots_hard_caps_only_within_the_bound() {
    let r = run("edge-kill", 4, &["--estimate", "estimate"]);
    assert_eq!(r["estimate"], "estimate");
    let (over, bound) =
        (r["estimate_overshoot_nano_usd"].as_u64().unwrap(), r["estimate_overshoot_bound_nano_usd"].as_u64().unwrap());
    assert!(over <= bound, "{over} > {bound}: {r}");
    assert!(bound > 0, "no request cost more than its reservation, so the bound was not exercised: {r}");
    println!("estimate mode: hard caps overshot by {over} nano-USD, bound {bound}");
}

#[test]
fn follower_kill() {
    scenario("follower-kill", 3);
}

#[test]
fn edge_kill() {
    scenario("edge-kill", 2);
}

#[test]
fn leader_pause() {
    scenario("leader-pause", 3);
}

#[test]
fn leader_partition() {
    scenario("leader-partition", 3);
}

#[test]
fn edge_partition() {
    scenario("edge-partition", 2);
}

#[test]
fn rolling_restart() {
    scenario("rolling-restart", 3);
}

/// A scenario on three regions: each region's own unavailability is
/// reported, and no region is without admission for 10 election timeouts
/// beyond how long a fault struck it.
fn across_regions(name: &str, seed: u64) -> Value {
    let r = run(name, seed, &["--topology", "regions"]);
    assert_eq!(r["topology"], "regions");
    assert_eq!(r["wan"]["one_way_ms"], 30);
    assert_eq!(r["edges"], 3);
    let by_region = r["unavailability_by_region"].as_array().unwrap();
    let names: Vec<&str> = by_region.iter().map(|p| p[0].as_str().unwrap()).collect();
    assert_eq!(names, ["r1", "r2", "r3"], "{r}");
    let bound = 10 * r["election_timeout_ms"].as_u64().unwrap();
    for p in by_region {
        let region = p[0].as_str().unwrap();
        // A region a fault struck may be out for as long as the fault lasted.
        let struck = r["faults"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["target"].as_str().unwrap().split(' ').next() == Some(region))
            .map(|f| f["healed_ms"].as_u64().unwrap() - f["at_ms"].as_u64().unwrap())
            .max()
            .unwrap_or(0);
        let out = p[1].as_u64().unwrap();
        assert!(out < bound + struck, "{name}: region {region} unavailable {out} ms (struck {struck} ms): {r}");
    }
    if name.starts_with("region-") {
        // Each fault names the region it struck.
        for f in r["faults"].as_array().unwrap() {
            assert!(names.iter().any(|n| f["target"].as_str().unwrap().starts_with(n)), "{f}");
        }
    }
    r
}

#[test]
fn region_partition() {
    across_regions("region-partition", 1);
}

#[test]
fn region_kill() {
    let r = across_regions("region-kill", 1);
    // Every process of the struck region died: its edge is among the killed.
    assert!(!r["faults"][0]["edges"].as_array().unwrap().is_empty(), "{r}");
}

#[test]
fn region_cutoff() {
    across_regions("region-cutoff", 1);
}

#[test]
fn leader_kill_across_regions() {
    across_regions("leader-kill", 1);
}
