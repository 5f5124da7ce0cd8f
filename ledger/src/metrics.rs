//! A ledger node's own metrics, for `/metrics`: Raft's view (term, role,
//! indexes, replication lag, quorum contact), group commit (commit and log
//! flush latency, proposals and command outcomes, queue depth) and the
//! budgets' state (limit, spent and held per budget, live holds).

use std::time::Duration;

use crate::prom::{gauge, gauge_family, Counter, Histogram};
use crate::raft_types::Raft;
use crate::state::Outcome;
use crate::store::StateMachineStore;

/// Counters and histograms the proposer and the log store feed.
#[derive(Default)]
pub struct LedgerMetrics {
    commit: Histogram,
    log_flush: Histogram,
    proposals: Counter,
    commands: Counter,
    forwards: Counter,
    overloaded: Counter,
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

    /// The whole exposition for a node. `queued` is the proposer's queue depth.
    pub fn render(&self, raft: &Raft, sm: &StateMachineStore, queued: usize, quorum_ack_bound_ms: u64) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let m = raft.metrics().borrow().clone();
        let leading = m.state == openraft::ServerState::Leader;
        gauge(&mut out, "tollgate_raft_node_id", "This node's id.", m.id);
        gauge(&mut out, "tollgate_raft_term", "Current Raft term.", m.current_term);
        gauge(&mut out, "tollgate_raft_is_leader", "1 while this node leads.", u8::from(leading));
        gauge(&mut out, "tollgate_raft_leader_id", "The leader this node knows of (0: none).", {
            m.current_leader.unwrap_or(0)
        });
        gauge(
            &mut out,
            "tollgate_raft_in_touch",
            "1 while the node leads with a quorum's recent ack, or follows a known leader (what /readyz reports).",
            u8::from(crate::server::in_touch(&m, quorum_ack_bound_ms)),
        );
        gauge(&mut out, "tollgate_raft_last_log_index", "Last log index on this node.", m.last_log_index.unwrap_or(0));
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        gauge(&mut out, "tollgate_raft_applied_index", "Last log index applied to the state machine.", applied);
        gauge(&mut out, "tollgate_raft_snapshot_index", "Last log index in the newest snapshot.", {
            m.snapshot.map(|l| l.index).unwrap_or(0)
        });
        gauge(&mut out, "tollgate_raft_purged_index", "Log entries up to this index have been purged.", {
            m.purged.map(|l| l.index).unwrap_or(0)
        });
        gauge(&mut out, "tollgate_raft_voters", "Voters in the current membership.", {
            m.membership_config.membership().voter_ids().count()
        });
        if leading {
            if let Some(ms) = m.millis_since_quorum_ack {
                gauge(&mut out, "tollgate_raft_millis_since_quorum_ack", "Leader only: time since a quorum acked.", ms);
            }
            if let Some(rep) = &m.replication {
                let last = m.last_log_index.unwrap_or(0);
                gauge_family(
                    &mut out,
                    "tollgate_raft_replication_lag_entries",
                    "Leader only: log entries each follower has not yet matched.",
                    &["peer"],
                    rep.iter().filter(|(id, _)| **id != m.id).map(|(id, matched)| {
                        (vec![id.to_string()], last.saturating_sub(matched.map_or(0, |l| l.index)))
                    }),
                );
            }
        }

        self.commit.render(
            &mut out,
            "tollgate_ledger_commit_seconds",
            "Leader only: time from proposing a batch to its commit and apply.",
        );
        self.log_flush.render(&mut out, "tollgate_ledger_log_flush_seconds", "Time to write and fsync a log append.");
        self.proposals.render(
            &mut out,
            "tollgate_ledger_proposals_total",
            "Batches this node proposed as leader, by result (committed, no_leader, unknown).",
            &["result"],
        );
        self.commands.render(
            &mut out,
            "tollgate_ledger_commands_total",
            "Commands applied through this node's proposals, by outcome.",
            &["outcome"],
        );
        self.forwards.render(
            &mut out,
            "tollgate_ledger_forwards_total",
            "Batches this node forwarded to the leader, by result.",
            &["result"],
        );
        gauge(&mut out, "tollgate_ledger_queued_commands", "Commands waiting for a batch on this node.", queued);
        self.overloaded.render(
            &mut out,
            "tollgate_ledger_overloaded_total",
            "Submissions refused because the queue was full.",
            &[],
        );

        // The budgets as this node has applied them (read under the lock,
        // rendered after it).
        type Row = (Vec<String>, u64);
        let (clock, holds, limits, spent, held): (u64, usize, Vec<Row>, Vec<Row>, Vec<Row>) = sm.read(|a| {
            let s = &a.state;
            let labels = |b: &crate::state::BudgetRec| {
                vec![
                    b.scope.to_string(),
                    b.model.clone().unwrap_or_default(),
                    b.period.as_str().to_string(),
                    b.mode.as_str().to_string(),
                ]
            };
            let budgets = s.budgets.values().take(crate::prom::MAX_SERIES);
            (
                s.clock_ms,
                s.active_holds(),
                budgets.clone().map(|b| (labels(b), b.limit.0)).collect(),
                // Periods roll over lazily (on the next command that touches
                // the budget): past its period's end, as of the state clock,
                // nothing is spent yet in the new one.
                budgets
                    .clone()
                    .map(|b| {
                        let current = b.period.start_ms(s.clock_ms) == b.period_start_ms;
                        (labels(b), if current { b.spent().0 } else { 0 })
                    })
                    .collect(),
                budgets.map(|b| (labels(b), b.held.0)).collect(),
            )
        });
        gauge(&mut out, "tollgate_ledger_clock_ms", "The state machine's clock (from the last applied entry).", clock);
        gauge(&mut out, "tollgate_ledger_active_holds", "Holds reserved and not yet settled, released or expired.", {
            holds
        });
        let names = ["scope", "model", "period", "mode"];
        gauge_family(&mut out, "tollgate_budget_limit_nano_usd", "Budget limit.", &names, limits);
        gauge_family(
            &mut out,
            "tollgate_budget_spent_nano_usd",
            "Spent in the current period, as of the state clock (settled + unsettled).",
            &names,
            spent,
        );
        gauge_family(&mut out, "tollgate_budget_held_nano_usd", "Held by live holds.", &names, held);
        out
    }
}
