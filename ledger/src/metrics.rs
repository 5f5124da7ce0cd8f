//! The counters and histograms a ledger node's parts feed (group commit:
//! commit and log flush latency, proposals and command outcomes, forwards,
//! overload). `probe` renders them with Raft's view and the budgets.

use std::time::Duration;

use crate::prom::{Counter, Histogram};
use crate::state::Outcome;

/// Counters and histograms the proposer and the log store feed.
#[derive(Default)]
pub struct LedgerMetrics {
    pub(crate) commit: Histogram,
    pub(crate) log_flush: Histogram,
    pub(crate) proposals: Counter,
    pub(crate) commands: Counter,
    pub(crate) forwards: Counter,
    pub(crate) overloaded: Counter,
}

impl LedgerMetrics {
    /// A local proposal's fate (`committed`, `no_leader`, `unknown`) and, when
    /// it committed, how long it took and what each command came to.
    pub fn proposal(&self, result: &str, took: Duration, outcomes: &[Outcome]) {
        self.proposals.add(&[result], 1);
        if result == "committed" {
            self.commit.observe(took);
        }
        // One lock per outcome kind, not per command (a batch has thousands).
        const NAMES: [&str; 8] =
            ["granted", "denied", "settled", "settled_duplicate", "released", "extended", "done", "rejected"];
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
            };
            counts[i] += 1;
        }
        for (name, n) in NAMES.iter().zip(counts) {
            if n > 0 {
                self.commands.add(&[name], n);
            }
        }
    }

    /// A proposal forwarded to the leader (`ok`, `no_leader`, `unknown`, `refused`).
    pub fn forward(&self, result: &str) {
        self.forwards.add(&[result], 1);
    }

    pub fn overloaded(&self) {
        self.overloaded.add(&[], 1);
    }

    pub fn log_flush(&self, took: Duration) {
        self.log_flush.observe(took);
    }
}
