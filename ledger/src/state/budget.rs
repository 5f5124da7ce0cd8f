//! A budget: its limit, period and mode, and the accounting of its current
//! period (settled, unsettled, held, excess), rolled over lazily by the
//! first command that touches it in a new period.

use serde::{Deserialize, Serialize};

use super::{Mode, Period, Scope, Stamp};
use crate::money::NanoUsd;

/// A budget and its accounting for the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRec {
    pub scope: Scope,
    pub model: Option<String>,
    pub limit: NanoUsd,
    pub period: Period,
    pub mode: Mode,
    pub period_start_ms: u64,
    /// Bumped at every new period and every change of period kind: a charge
    /// records the epoch it fell in, so a late settle only replaces an
    /// unsettled charge of the very same period.
    pub epoch: u64,
    /// Actual cost of settled holds charged in this period.
    pub settled: NanoUsd,
    /// Full reservations of holds that expired unsettled, charged in this period.
    pub unsettled: NanoUsd,
    /// Reservations of live holds (across periods).
    pub held: NanoUsd,
    /// Recorded excess over the limit: settles above their reservation, and a
    /// limit lowered below what was already used.
    pub excess: NanoUsd,
    pub requests: u64,
    pub updated: Stamp,
}

impl BudgetRec {
    pub fn spent(&self) -> NanoUsd {
        self.settled.saturating_add(self.unsettled)
    }

    /// Starts a new period if `now_ms` is past the current one. `leased`
    /// is the room leases hold on this budget (kept in the lease book).
    pub(super) fn roll(&mut self, now_ms: u64, leased: NanoUsd) {
        let start = self.period.start_ms(now_ms);
        if start != self.period_start_ms {
            self.period_start_ms = start;
            self.epoch += 1;
            self.settled = NanoUsd::ZERO;
            self.unsettled = NanoUsd::ZERO;
            // Live holds and leases carry over; if a lowered limit left
            // them above it, that part stays recorded as excess.
            self.excess = self.held.saturating_add(leased).saturating_sub(self.limit);
            self.requests = 0;
        }
    }

    pub(super) fn applies_to(&self, model: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
    }
}
