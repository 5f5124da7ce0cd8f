//! Charges for requests an edge admitted without the ledger
//! (`fail_mode = open`): settled if their reserve landed after all, else
//! charged to the key's budgets directly, never denied.

use super::*;

impl LedgerState {
    /// A request admitted by an edge that could not reach the ledger
    /// (`fail_mode = open`). If its reserve landed after all, this is its
    /// settle. Otherwise the cost is charged to the key's budgets as settled
    /// spend with no hold before it; nothing is denied (the provider already
    /// billed), and what goes past a hard limit is recorded as excess.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn charge_direct(
        &mut self,
        hold: HoldId,
        key: &str,
        model: &str,
        cost: NanoUsd,
        usage: &Usage,
        estimated: bool,
        ttl_ms: u64,
    ) -> Outcome {
        if self.holds.contains_key(&hold) {
            return self.settle(hold, cost, usage, estimated);
        }
        if let Err(r) = self.check_amount("charge", cost) {
            return r;
        }
        if let Err(r) = check_ttl_model(ttl_ms, model) {
            return r;
        }
        // A key revoked since is still charged: the spend happened.
        let (user, team, _revoked) = match self.key_owner(key) {
            Ok(o) => o,
            Err(r) => return r,
        };
        let ids = self.chain_budgets(&team, &user, key, model);
        let now = self.clock_ms;
        let mut charges = Vec::with_capacity(ids.len());
        for id in &ids {
            let leased = self.leases.leased(*id);
            let b = self.budgets.get_mut(id).expect("chain budget exists");
            b.roll(now, leased);
            if b.mode == Mode::Hard {
                let used = b.spent().saturating_add(b.held).saturating_add(leased).saturating_add(cost);
                let allowed = b.limit.saturating_add(b.excess);
                b.excess = b.excess.saturating_add(used.saturating_sub(allowed));
            }
            b.requests += 1;
            charges.push((*id, b.epoch));
        }
        self.bump(key, &user, &team, model, |c| c.requests = c.requests.saturating_add(1));
        // The "reservation" is the cost itself: charge() then adds no excess.
        let info =
            HoldInfo { key: key.to_string(), user, team, model: model.to_string(), amount: cost, ttl_ms, charges };
        self.holds
            .insert(hold, HoldRec { info: Some(info.clone()), state: HoldState::Settled { cost }, forget_at_ms: 0 });
        self.charge(&info, cost, None, usage, estimated);
        // Remembered for the longest ttl, like a release tombstone: a Reserve
        // of this id that commits late (from a frozen node or an old leader)
        // is refused instead of holding, and later charging, it again.
        self.finish(hold, HoldState::Settled { cost }, MAX_TTL_MS);
        Outcome::Settled { charged: cost, duplicate: false }
    }
}
