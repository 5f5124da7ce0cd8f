//! The state machine's invariants (DESIGN.md, "The ledger state machine"):
//! the hard cap, asserted on every budget a command touches, and every
//! invariant recomputed from scratch for the tests.

use std::collections::BTreeMap;

use super::*;

impl LedgerState {
    /// Invariant 1, checked on every budget a command touches: a hard budget
    /// never goes over its limit except by recorded excess. A violation is a
    /// bug in this file, so it stops the node rather than corrupt the ledger.
    pub(super) fn assert_cap(&self, id: BudgetId) {
        if let Some(b) = self.budgets.get(&id) {
            if b.mode == Mode::Hard {
                let used = b.spent().saturating_add(b.held).saturating_add(self.leases.leased(id));
                assert!(
                    used <= b.limit.saturating_add(b.excess),
                    "hard cap violated on budget {} ({}): used {} > limit {} + excess {}",
                    id.0,
                    b.scope,
                    used,
                    b.limit,
                    b.excess
                );
            }
        }
    }

    /// Checks every invariant from scratch (O(state)); used by tests after each step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held: BTreeMap<BudgetId, NanoUsd> = BTreeMap::new();
        for (id, h) in &self.holds {
            if let (HoldState::Active { expires_at_ms }, Some(info)) = (&h.state, &h.info) {
                if *expires_at_ms <= self.clock_ms {
                    return Err(format!("hold {id} is active past its expiry"));
                }
                if !self.expiries.contains(&(*expires_at_ms, *id)) {
                    return Err(format!("hold {id} is missing from the expiry index"));
                }
                for (b, _) in &info.charges {
                    let e = held.entry(*b).or_default();
                    *e = e.saturating_add(info.amount);
                }
            }
        }
        if self.expiries.len() != self.holds.values().filter(|h| matches!(h.state, HoldState::Active { .. })).count() {
            return Err("expiry index and live holds disagree".to_string());
        }
        let mut tracked = 0usize;
        for (caller, set) in &self.tombstones {
            if set.is_empty() || set.len() as u64 > self.limits.max_tombstones_per_caller.max(1) {
                return Err(format!("caller {caller:?} has {} tombstones", set.len()));
            }
            for (at, id) in set {
                let ok = self.holds.get(id).is_some_and(|h| h.info.is_none() && h.forget_at_ms == *at);
                if !ok {
                    return Err(format!("tombstone {id} of {caller:?} is not a released hold forgotten at {at}"));
                }
            }
            tracked += set.len();
        }
        if tracked != self.holds.values().filter(|h| h.info.is_none()).count() {
            return Err("tombstone index and released holds disagree".to_string());
        }
        for (id, b) in &self.budgets {
            let want = held.get(id).copied().unwrap_or_default();
            if b.held != want {
                return Err(format!("budget {} held {} but live holds sum to {}", id.0, b.held, want));
            }
            let used = b.spent().saturating_add(b.held).saturating_add(self.leases.leased(*id));
            if b.mode == Mode::Hard && used > b.limit.saturating_add(b.excess) {
                return Err(format!("budget {} over its hard limit", id.0));
            }
        }
        self.leases.check(self.clock_ms)?;
        if let Some(id) = self.leases.budgets.keys().find(|id| !self.budgets.contains_key(id)) {
            return Err(format!("leases on budget {} that does not exist", id.0));
        }
        Ok(())
    }
}
