//! The counters and histograms a ledger node's parts feed (group commit:
//! commit and log flush latency, proposals and command outcomes, forwards,
//! overload), on the node's own [`Registry`]. `probe` renders them with
//! Raft's view and the budgets.

use std::time::Duration;

use tollgate_types::prom::{Counters, Histogram, Registry};

use crate::state::Outcome;

/// Counters and histograms the proposer and the log store feed.
pub struct LedgerMetrics {
    pub(crate) registry: Registry,
    commit: Histogram,
    log_flush: Histogram,
    proposals: Counters<1>,
    commands: Counters<1>,
    forwards: Counters<1>,
    overloaded: metrics::Counter,
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        let r = Registry::new();
        LedgerMetrics {
            commit: r.histogram(
                "tollgate_ledger_commit_seconds",
                "Leader only: time from proposing a batch to its commit and apply.",
            ),
            log_flush: r.histogram("tollgate_ledger_log_flush_seconds", "Time to write and fsync a log append."),
            proposals: r.counters(
                "tollgate_ledger_proposals_total",
                "Batches this node proposed as leader, by result (committed, no_leader, unknown).",
                ["result"],
            ),
            commands: r.counters(
                "tollgate_ledger_commands_total",
                "Commands applied through this node's proposals, by outcome.",
                ["outcome"],
            ),
            forwards: r.counters(
                "tollgate_ledger_forwards_total",
                "Batches this node forwarded to the leader, by result.",
                ["result"],
            ),
            overloaded: r
                .counter("tollgate_ledger_overloaded_total", "Submissions refused because the queue was full."),
            registry: r,
        }
    }
}

impl LedgerMetrics {
    /// A local proposal's fate (`committed`, `no_leader`, `unknown`) and, when
    /// it committed, how long it took and what each command came to.
    pub fn proposal(&self, result: &str, took: Duration, outcomes: &[Outcome]) {
        self.proposals.add([result], 1);
        if result == "committed" {
            self.commit.observe(took);
        }
        // One increment per outcome kind, not per command (a batch has thousands).
        const NAMES: [&str; 9] =
            ["granted", "denied", "settled", "settled_duplicate", "released", "extended", "done", "rejected", "leased"];
        let mut counts = [0u64; NAMES.len()];
        for o in outcomes {
            let i = match o {
                Outcome::Granted { .. } => 0,
                Outcome::Denied(_) => 1,
                Outcome::Settled { duplicate: false, .. } => 2,
                Outcome::Settled { duplicate: true, .. } => 3,
                Outcome::Released => 4,
                Outcome::Extended { .. } => 5,
                Outcome::Done => 6,
                Outcome::Rejected(_) => 7,
                Outcome::Leased(_) => 8,
            };
            counts[i] += 1;
        }
        for (name, n) in NAMES.iter().zip(counts) {
            if n > 0 {
                self.commands.add([name], n);
            }
        }
    }

    /// A proposal forwarded to the leader (`ok`, `no_leader`, `unknown`, `refused`).
    pub fn forward(&self, result: &str) {
        self.forwards.add([result], 1);
    }

    pub fn overloaded(&self) {
        self.overloaded.increment(1);
    }

    pub fn log_flush(&self, took: Duration) {
        self.log_flush.observe(took);
    }
}
