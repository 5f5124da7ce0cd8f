//! A chaos run's JSON report (`tollgate-chaos run --report`, a public
//! contract: fields are added, never changed) and its one-screen summary.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::checker::{self, Fault, History, Verdict};
use crate::regions::Wan;
use crate::run::RunConfig;

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_secs: u64,
    pub nodes: u64,
    pub edges: usize,
    pub estimate: String,
    /// Whether the processes talked mutual TLS.
    pub tls: bool,
    /// Whether the edges admitted from budget leases.
    pub leases: bool,
    /// `lan` (one network) or `regions` (three, joined by `wan`).
    pub topology: String,
    pub wan: Option<Wan>,
    pub faults: Vec<Fault>,
    pub requests: checker::RequestCounts,
    pub overspend_nano_usd: u64,
    pub estimate_overshoot_nano_usd: u64,
    pub estimate_overshoot_bound_nano_usd: u64,
    /// Set for a fail-open run (`--fail-open-allowance-nano-usd`).
    pub fail_open_allowance_nano_usd: Option<u64>,
    pub fail_open_overshoot_nano_usd: u64,
    pub fail_open_overshoot_bound_nano_usd: u64,
    pub lost_charges: u64,
    pub double_charges: u64,
    pub holds_left: u64,
    /// Budgets still leasing room after every lease's ttl.
    pub leases_left: u64,
    pub digests_agree: bool,
    pub longest_unavailability_ms: u64,
    pub unavailability_by_fault: Vec<(String, u64)>,
    /// `--topology regions`: per region, the longest window with admissions
    /// failing on its edges.
    pub unavailability_by_region: Vec<(String, u64)>,
    pub election_timeout_ms: u64,
    pub upstream_responses: usize,
    pub spent_nano_usd: u64,
    pub violations: Vec<String>,
    pub passed: bool,
}

impl Report {
    pub fn summary(&self) -> String {
        let faults: Vec<String> =
            self.faults.iter().map(|f| format!("{} {} at {:.1}s", f.kind, f.target, f.at_ms as f64 / 1000.0)).collect();
        let mut s = format!(
            "scenario {} seed {} ({} s, {} ledger nodes, {} edges, {}, {}{}): {}\n  faults: {}\n  requests: {} ok, {} denied, {} failed; {} upstream responses; ${:.6} spent\n  overspend {} nano-USD, lost charges {}, double charges {}, holds left {}, digests agree: {}\n  longest unavailability {} ms (election timeout {} ms)",
            self.scenario,
            self.seed,
            self.duration_secs,
            self.nodes,
            self.edges,
            self.estimate,
            if self.tls { "mutual TLS" } else { "plaintext" },
            match &self.wan {
                Some(w) => format!(", 3 regions, WAN {} ms one way", w.one_way_ms),
                None => String::new(),
            },
            if self.passed { "PASSED" } else { "FAILED" },
            if faults.is_empty() { "none".to_string() } else { faults.join(", ") },
            self.requests.ok,
            self.requests.denied,
            self.requests.failed,
            self.upstream_responses,
            self.spent_nano_usd as f64 / 1e9,
            self.overspend_nano_usd,
            self.lost_charges,
            self.double_charges,
            self.holds_left,
            self.digests_agree,
            self.longest_unavailability_ms,
            self.election_timeout_ms,
        );
        if self.estimate == "estimate" {
            s.push_str(&format!(
                "\n  estimate mode: hard caps overshot by {} nano-USD, bound {} (what admitted requests cost beyond \
                 their reservations)",
                self.estimate_overshoot_nano_usd, self.estimate_overshoot_bound_nano_usd
            ));
        }
        if let Some(a) = self.fail_open_allowance_nano_usd {
            s.push_str(&format!(
                "\n  fail-open (allowance {a} nano-USD per edge): overshoot {} nano-USD, bound {}",
                self.fail_open_overshoot_nano_usd, self.fail_open_overshoot_bound_nano_usd
            ));
        }
        if !self.unavailability_by_region.is_empty() {
            let r: Vec<String> = self.unavailability_by_region.iter().map(|(r, ms)| format!("{r} {ms} ms")).collect();
            s.push_str(&format!("\n  longest unavailability per region: {}", r.join(", ")));
        }
        for v in &self.violations {
            s.push_str(&format!("\n  VIOLATION: {v}"));
        }
        s
    }
}

pub(crate) fn report(cfg: &RunConfig, history: &History, v: Verdict) -> Report {
    Report {
        scenario: cfg.scenario.clone(),
        seed: cfg.seed,
        duration_secs: cfg.duration.as_secs(),
        nodes: cfg.nodes,
        edges: cfg.edges,
        estimate: if cfg.strict { "strict" } else { "estimate" }.into(),
        tls: cfg.tls,
        leases: cfg.leases,
        topology: if cfg.regions.is_some() { "regions" } else { "lan" }.into(),
        wan: cfg.regions,
        faults: history.faults.clone(),
        requests: v.requests.clone(),
        overspend_nano_usd: v.overspend_nano_usd,
        estimate_overshoot_nano_usd: v.estimate_overshoot_nano_usd,
        estimate_overshoot_bound_nano_usd: v.estimate_overshoot_bound_nano_usd,
        fail_open_allowance_nano_usd: cfg.fail_open_allowance,
        fail_open_overshoot_nano_usd: v.fail_open_overshoot_nano_usd,
        fail_open_overshoot_bound_nano_usd: v.fail_open_overshoot_bound_nano_usd,
        lost_charges: v.lost_charges,
        double_charges: v.double_charges,
        holds_left: v.holds_left,
        leases_left: v.leases_left,
        digests_agree: v.digests_agree,
        longest_unavailability_ms: v.longest_unavailability_ms,
        unavailability_by_fault: v.unavailability_by_fault.clone(),
        unavailability_by_region: v.unavailability_by_region.clone(),
        election_timeout_ms: cfg.election_timeout_ms(),
        upstream_responses: history.truth.iter().filter(|t| t.status == 200).count(),
        spent_nano_usd: history.key_spend.values().map(|(s, _)| s).sum(),
        passed: v.violations.is_empty(),
        violations: v.violations,
    }
}

/// Writes the report as JSON to `path`.
pub fn write_report(r: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(r)?).with_context(|| format!("writing {}", path.display()))
}
