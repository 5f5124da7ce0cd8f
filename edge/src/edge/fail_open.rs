//! `fail_mode = open`: when the ledger cannot be reached, the edge admits
//! requests anyway, but only up to an allowance, so the spend the ledger
//! does not know about is bounded per edge.
//!
//! What counts against the allowance (`outstanding`): the reservations of
//! requests admitted without the ledger while they run, then their actual
//! cost until the ledger acknowledges the charge from the outbox. A request
//! that reached no provider gives its reservation back. So the overshoot of
//! any budget, per edge and outage, is at most the allowance plus what a
//! settle costs above its reservation. Admissions always wait the whole
//! admission timeout first: acknowledgements refill the allowance, so a
//! shorter probe would let a slow but working ledger be bypassed without
//! bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tollgate_types::money::NanoUsd;

pub struct FailOpen {
    limit: u64,
    outstanding: AtomicU64,
    /// An admission found the ledger out of reach; cleared by any answer
    /// (for the log: the edge says when the ledger is back).
    unreachable: AtomicBool,
}

impl FailOpen {
    /// `already`: fail-open charges an earlier run left in the outbox.
    pub fn new(limit: NanoUsd, already: u64) -> FailOpen {
        FailOpen { limit: limit.0, outstanding: AtomicU64::new(already), unreachable: AtomicBool::new(false) }
    }

    /// Takes `amount` from the allowance if it all fits.
    pub fn take(&self, amount: NanoUsd) -> bool {
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| o.checked_add(amount.0).filter(|t| *t <= self.limit))
            .is_ok()
    }

    /// The request finished and cost `cost`: that, not its reservation, is
    /// outstanding until the ledger acknowledges the charge.
    pub fn settled(&self, amount: NanoUsd, cost: NanoUsd) {
        let _ = self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
            Some(o.saturating_sub(amount.0).saturating_add(cost.0))
        });
    }

    /// A reservation given back (nothing billed), or a charge the ledger has
    /// now acknowledged.
    pub fn give_back(&self, amount: NanoUsd) {
        let _ =
            self.outstanding.fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(o.saturating_sub(amount.0)));
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    pub fn ledger_unreachable(&self) {
        if !self.unreachable.swap(true, Ordering::AcqRel) {
            tracing::warn!("the ledger does not answer admissions");
        }
    }

    pub fn ledger_answered(&self) {
        if self.unreachable.swap(false, Ordering::AcqRel) {
            tracing::info!("the ledger answers again");
        }
    }

    /// The last admission found the ledger out of reach.
    #[cfg(test)]
    pub fn ledger_out_of_reach(&self) -> bool {
        self.unreachable.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_bounds_reservations_then_costs_until_acknowledged() {
        let f = FailOpen::new(NanoUsd(1000), 100);
        assert!(f.take(NanoUsd(600)));
        assert!(!f.take(NanoUsd(301)), "100 + 600 + 301 > 1000");
        assert!(f.take(NanoUsd(300)));
        assert_eq!(f.outstanding(), 1000);
        // The 600 request cost 250: 350 comes back at once.
        f.settled(NanoUsd(600), NanoUsd(250));
        assert_eq!(f.outstanding(), 650);
        // The 300 request reached no provider.
        f.give_back(NanoUsd(300));
        assert_eq!(f.outstanding(), 350);
        // The ledger acknowledged both charges (this run's and the earlier one's).
        f.give_back(NanoUsd(250));
        f.give_back(NanoUsd(100));
        assert_eq!(f.outstanding(), 0);
        f.give_back(NanoUsd(5));
        assert_eq!(f.outstanding(), 0, "never below zero");
        assert!(!f.ledger_out_of_reach());
        f.ledger_unreachable();
        assert!(f.ledger_out_of_reach());
        f.ledger_answered();
        assert!(!f.ledger_out_of_reach());
    }
}
