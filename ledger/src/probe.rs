//! What a ledger node's `/healthz`, `/readyz` and `/metrics` read: Raft's
//! view (in touch with a leader or not), the proposer's queue, the counters
//! of `metrics`, and the budgets as this node applied them. Reads only.

use crate::metrics::LedgerMetrics;
use crate::proposer::Proposer;
use crate::store::StateMachineStore;
use crate::store::{metrics_now, Raft};
use std::sync::Arc;

use openraft::ServerState;
use tollgate_types::prom::{Registry, MAX_SERIES};

/// What `/healthz`, `/readyz` and `/metrics` of a ledger node read.
#[derive(Clone)]
pub struct LedgerProbe {
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachineStore,
    pub(crate) proposer: Proposer,
    pub(crate) metrics: Arc<LedgerMetrics>,
    pub(crate) quorum_ack_bound_ms: u64,
}

impl LedgerProbe {
    /// This node's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        render(&self.metrics, &self.raft, &self.sm, self.proposer.queued(), self.quorum_ack_bound_ms)
    }

    /// Ready: leading with a quorum's recent ack (or alone), or following a
    /// known leader.
    pub fn in_touch(&self) -> bool {
        in_touch(&metrics_now(&self.raft), self.quorum_ack_bound_ms)
    }

    /// One line for `/readyz`: role, leader and applied index.
    pub fn describe(&self) -> String {
        let m = metrics_now(&self.raft);
        format!(
            "node {} {:?}, leader {}, term {}, applied index {}",
            m.id,
            m.state,
            m.current_leader.map_or("unknown".to_string(), |l| l.to_string()),
            m.current_term,
            m.last_applied.map_or(0, |l| l.index)
        )
    }
}

/// Leader only: how long ago a quorum last acknowledged it.
pub fn millis_since_quorum_ack(m: &crate::raft_types::RaftMetrics) -> Option<u64> {
    use openraft::Instant;
    m.last_quorum_acked.as_ref().map(|t| t.elapsed().as_millis() as u64)
}

/// Whether this node can vouch that its config is current: it is a leader
/// that a quorum acked within `bound_ms` (or the only voter), or it follows
/// a known leader. A follower cut off from the leader stands for election
/// after its timeout and then knows no leader; a leader cut off from the
/// majority stops being acked.
pub fn in_touch(m: &crate::raft_types::RaftMetrics, bound_ms: u64) -> bool {
    match m.state {
        ServerState::Leader => {
            let alone = m.membership_config.membership().voter_ids().all(|v| v == m.id);
            alone || millis_since_quorum_ack(m).is_some_and(|ms| ms <= bound_ms)
        }
        ServerState::Follower | ServerState::Learner => m.current_leader.is_some(),
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// The whole exposition for a node: its counters and histograms, then
/// gauges read now from Raft, the proposer and the state machine, set on a
/// registry made for this scrape (so a deleted budget is not rendered).
/// `queued` is the proposer's queue depth.
fn render(
    metrics: &LedgerMetrics,
    raft: &Raft,
    sm: &StateMachineStore,
    queued: usize,
    quorum_ack_bound_ms: u64,
) -> String {
    let now = Registry::new();
    let gauge = |name, help, v: u64| now.gauge(name, help).set(v as f64);
    let m = metrics_now(raft);
    let leading = m.state == openraft::ServerState::Leader;
    gauge("tollgate_raft_node_id", "This node's id.", m.id);
    gauge("tollgate_raft_term", "Current Raft term.", m.current_term);
    gauge("tollgate_raft_is_leader", "1 while this node leads.", u64::from(leading));
    gauge("tollgate_raft_leader_id", "The leader this node knows of (0: none).", m.current_leader.unwrap_or(0));
    gauge(
        "tollgate_raft_in_touch",
        "1 while the node leads with a quorum's recent ack, or follows a known leader (what /readyz reports).",
        u64::from(in_touch(&m, quorum_ack_bound_ms)),
    );
    gauge("tollgate_raft_last_log_index", "Last log index on this node.", m.last_log_index.unwrap_or(0));
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    gauge("tollgate_raft_applied_index", "Last log index applied to the state machine.", applied);
    gauge("tollgate_raft_snapshot_index", "Last log index in the newest snapshot.", {
        m.snapshot.map(|l| l.index).unwrap_or(0)
    });
    gauge("tollgate_raft_purged_index", "Log entries up to this index have been purged.", {
        m.purged.map(|l| l.index).unwrap_or(0)
    });
    gauge("tollgate_raft_voters", "Voters in the current membership.", {
        m.membership_config.membership().voter_ids().count() as u64
    });
    if leading {
        if let Some(ms) = millis_since_quorum_ack(&m) {
            gauge("tollgate_raft_millis_since_quorum_ack", "Leader only: time since a quorum acked.", ms);
        }
        if let Some(rep) = &m.replication {
            let last = m.last_log_index.unwrap_or(0);
            now.gauges(
                "tollgate_raft_replication_lag_entries",
                "Leader only: log entries each follower has not yet matched.",
                ["peer"],
                rep.iter().filter(|(id, _)| **id != m.id).map(|(id, matched)| {
                    ([id.to_string()], last.saturating_sub(matched.map_or(0, |l| l.index)) as f64)
                }),
            );
        }
    }
    gauge("tollgate_ledger_queued_commands", "Commands waiting for a batch on this node.", queued as u64);

    let left_out = budget_gauges(&now, sm);
    let mut out = metrics.registry.render();
    out.push_str(&now.render());
    if left_out > 0 {
        out.push_str(&format!(
            "# {left_out} more budgets left out of the tollgate_budget_* series (limit {MAX_SERIES})\n"
        ));
    }
    out
}

/// The state clock, live holds and each budget's limit, spent and held, as
/// this node has applied them (read under the lock, set after it); returns
/// how many budgets were left out.
fn budget_gauges(now: &Registry, sm: &StateMachineStore) -> usize {
    let gauge = |name, help, v: u64| now.gauge(name, help).set(v as f64);
    type Row = ([String; 4], f64);
    type Read = (u64, usize, usize, Vec<Row>, Vec<Row>, Vec<Row>, Vec<Row>, usize);
    let (clock, holds, leases, limits, spent, held, leased, total): Read = sm.read(|a| {
        let s = &a.state;
        let labels = |b: &crate::state::BudgetRec| {
            [
                b.scope.to_string(),
                b.model.clone().unwrap_or_default(),
                b.period.as_str().to_string(),
                b.mode.as_str().to_string(),
            ]
        };
        let budgets = s.budgets.iter().take(MAX_SERIES).map(|(_, b)| b);
        (
            s.clock_ms,
            s.active_holds(),
            s.leases.live(),
            budgets.clone().map(|b| (labels(b), b.limit.0 as f64)).collect(),
            // Periods roll over lazily (on the next command that touches
            // the budget): past its period's end, as of the state clock,
            // nothing is spent yet in the new one.
            budgets
                .clone()
                .map(|b| {
                    let current = b.period.start_ms(s.clock_ms) == b.period_start_ms;
                    (labels(b), if current { b.spent().0 as f64 } else { 0.0 })
                })
                .collect(),
            budgets.map(|b| (labels(b), b.held.0 as f64)).collect(),
            s.budgets.iter().take(MAX_SERIES).map(|(id, b)| (labels(b), s.leases.leased(*id).0 as f64)).collect(),
            s.budgets.len(),
        )
    });
    gauge("tollgate_ledger_clock_ms", "The state machine's clock (from the last applied entry).", clock);
    gauge("tollgate_ledger_active_holds", "Holds reserved and not yet settled, released or expired.", holds as u64);
    gauge("tollgate_ledger_live_leases", "Edge leases with room, over every budget.", leases as u64);
    let names = ["scope", "model", "period", "mode"];
    now.gauges("tollgate_budget_limit_nano_usd", "Budget limit.", names, limits);
    now.gauges(
        "tollgate_budget_spent_nano_usd",
        "Spent in the current period, as of the state clock (settled + unsettled).",
        names,
        spent,
    );
    now.gauges("tollgate_budget_held_nano_usd", "Held by live holds.", names, held);
    now.gauges("tollgate_budget_leased_nano_usd", "Leased to edges (counted like held).", names, leased);
    total.saturating_sub(MAX_SERIES)
}
