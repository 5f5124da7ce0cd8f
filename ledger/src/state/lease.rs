//! Budget leases: a slice of a hard budget's room granted to one edge
//! process (its holder), which admits requests against it locally and
//! settles each request on its own id. A lease counts against its budget
//! like a hold: for a hard budget, `spent + held + leased ≤ limit` after
//! every entry (DESIGN.md, "Leases").
//!
//! - **Grant** (`Command::Lease`): grows the holder's room by at most what it
//!   asks, its fair share (half the room neither spent nor held, split
//!   among the holders using the budget) and what is free; gives back the
//!   room it names first, and pushes the expiry out. Numbered by the holder
//!   (`seq`), so a retry is answered, not applied twice.
//! - **Settle** (`Command::LeasedSettle`): a request's actual cost moves from
//!   its holder's room (or, once the lease expired, from its unsettled
//!   remainder) to settled spend; what goes past that is charged like a
//!   fail-open charge (excess only beyond the limit).
//! - **Expiry**: room left at expiry is charged as unsettled spend, like an
//!   expired hold; settles that arrive later replace it, and a holder that
//!   is still alive gives back what it never used. The record is kept for
//!   the longest hold ttl after expiry, then forgotten.
//! - A hard reserve denied while leases hold room of that budget pauses its
//!   grants: holders renewing in the meantime get a share of zero and give
//!   their room back, so lease room never strands a request the budget
//!   could still pay for for longer than a renewal.

use std::collections::BTreeMap;

use imbl::OrdSet;
use serde::{Deserialize, Serialize};

use super::*;

/// The most lease records one caller (an edge's certificate name) may have.
pub const MAX_LEASES_PER_CALLER: usize = 4096;
/// The longest holder name (the caller's name, `/`, the edge process's own).
pub const MAX_HOLDER_BYTES: usize = 192;
/// The longest a lease may be granted for at once (it is renewed).
pub const MAX_LEASE_TTL_MS: u64 = 5 * 60 * 1000;
/// How long a budget grants no new lease room after a reserve on it was
/// denied while leases held some of its room.
pub const LEASE_PAUSE_MS: u64 = 3_000;

/// One holder's lease on one budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRec {
    /// Who sent the grants (an edge's certificate name; empty without TLS).
    pub caller: String,
    /// Room counted against the budget while the lease is live.
    pub room: NanoUsd,
    pub expires_at_ms: u64,
    /// Room that expired unused, charged as unsettled spend in the budget's
    /// period `unsettled_epoch`; late settles and give-backs replace it.
    pub unsettled: NanoUsd,
    pub unsettled_epoch: u64,
    /// The last grant's number and what it granted (a retry gets the same).
    pub seq: u64,
    pub last_granted: NanoUsd,
}

impl LeaseRec {
    /// When this record's timer fires: its expiry while it has room, else
    /// when it is forgotten.
    fn timer_at(&self) -> u64 {
        if self.room > NanoUsd::ZERO {
            self.expires_at_ms
        } else {
            self.expires_at_ms.saturating_add(MAX_TTL_MS)
        }
    }
}

/// The leases of one budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetLeases {
    /// The sum of the live leases' room.
    pub leased: NanoUsd,
    /// No lease room is granted before this time.
    pub paused_until_ms: u64,
    pub holders: BTreeMap<String, LeaseRec>,
}

/// Every lease, by budget and holder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBook {
    pub budgets: BTreeMap<BudgetId, BudgetLeases>,
    /// Derived: each record's next timer (expiry, or when it is forgotten).
    #[serde(skip)]
    timers: OrdSet<(u64, BudgetId, String)>,
    /// Derived: records per caller.
    #[serde(skip)]
    per_caller: BTreeMap<String, usize>,
}

impl LeaseBook {
    /// The room leased out of budget `id`.
    pub fn leased(&self, id: BudgetId) -> NanoUsd {
        self.budgets.get(&id).map_or(NanoUsd::ZERO, |b| b.leased)
    }

    pub fn get(&self, id: BudgetId, holder: &str) -> Option<&LeaseRec> {
        self.budgets.get(&id)?.holders.get(holder)
    }

    /// Live leases (with room), for status and metrics.
    pub fn live(&self) -> usize {
        self.budgets.values().flat_map(|b| b.holders.values()).filter(|l| l.room > NanoUsd::ZERO).count()
    }

    pub(super) fn rebuild(&mut self) {
        self.timers = OrdSet::new();
        self.per_caller.clear();
        for (id, b) in &self.budgets {
            for (holder, l) in &b.holders {
                self.timers.insert((l.timer_at(), *id, holder.clone()));
                *self.per_caller.entry(l.caller.clone()).or_default() += 1;
            }
        }
    }

    pub(super) fn next_timer_ms(&self) -> Option<u64> {
        self.timers.get_min().map(|(t, _, _)| *t)
    }

    /// Replaces a record (or inserts it), keeping the indexes.
    fn put(&mut self, id: BudgetId, holder: &str, rec: LeaseRec) {
        let b = self.budgets.entry(id).or_default();
        match b.holders.get(holder) {
            Some(old) => {
                self.timers.remove(&(old.timer_at(), id, holder.to_string()));
            }
            None => *self.per_caller.entry(rec.caller.clone()).or_default() += 1,
        }
        self.timers.insert((rec.timer_at(), id, holder.to_string()));
        b.holders.insert(holder.to_string(), rec);
    }

    fn forget(&mut self, id: BudgetId, holder: &str) {
        let Some(b) = self.budgets.get_mut(&id) else { return };
        let Some(old) = b.holders.remove(holder) else { return };
        self.timers.remove(&(old.timer_at(), id, holder.to_string()));
        if let Some(n) = self.per_caller.get_mut(&old.caller) {
            *n -= 1;
            if *n == 0 {
                self.per_caller.remove(&old.caller);
            }
        }
        if b.holders.is_empty() && b.leased == NanoUsd::ZERO && b.paused_until_ms == 0 {
            self.budgets.remove(&id);
        }
    }

    /// Checks the derived indexes and sums against the records.
    pub(super) fn check(&self, clock_ms: u64) -> Result<(), String> {
        let mut timers = 0usize;
        let mut callers: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, b) in &self.budgets {
            let mut sum = NanoUsd::ZERO;
            for (holder, l) in &b.holders {
                if l.room > NanoUsd::ZERO && l.expires_at_ms <= clock_ms {
                    return Err(format!("lease {holder} on budget {} has room past its expiry", id.0));
                }
                if !self.timers.contains(&(l.timer_at(), *id, holder.clone())) {
                    return Err(format!("lease {holder} on budget {} is missing from the timers", id.0));
                }
                sum = sum.checked_add(l.room).ok_or("lease room overflows")?;
                *callers.entry(l.caller.as_str()).or_default() += 1;
                timers += 1;
            }
            if sum != b.leased {
                return Err(format!("budget {} leased {} but its leases' room sums to {sum}", id.0, b.leased));
            }
        }
        if timers != self.timers.len() {
            return Err("lease timers and lease records disagree".to_string());
        }
        if callers.len() != self.per_caller.len()
            || callers.iter().any(|(c, n)| self.per_caller.get(*c) != Some(n) || *n > MAX_LEASES_PER_CALLER)
        {
            return Err("lease counts per caller disagree with the records".to_string());
        }
        Ok(())
    }
}

/// What a grant asks for (`Command::Lease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAsk {
    pub holder: String,
    pub caller: String,
    pub budget: BudgetId,
    pub seq: u64,
    /// Room to add, at most (the fair share and what is free may grant less).
    pub add: NanoUsd,
    /// Room the holder never used and hands back, taken first.
    pub give_back: NanoUsd,
    pub ttl_ms: u64,
    /// The limit the holder sized its ask for: a budget changed since grants nothing.
    pub limit: NanoUsd,
}

/// What a leased request cost, as its settle says.
pub(super) struct LeasedSettle<'a> {
    pub key: &'a str,
    pub model: &'a str,
    pub cost: NanoUsd,
    pub reserved: NanoUsd,
    pub usage: &'a Usage,
    pub estimated: bool,
}

/// What a grant came to (`Outcome::Leased`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    pub granted: NanoUsd,
    /// The holder's room after the grant.
    pub room: NanoUsd,
    /// The most room this holder may keep now: above it, it gives back.
    pub share: NanoUsd,
    pub expires_at_ms: u64,
    /// A retry of a grant already applied: nothing changed.
    pub duplicate: bool,
}

/// What budget `b` has neither spent nor held (leased room is part of it).
fn pool(b: &BudgetRec) -> NanoUsd {
    b.limit.saturating_sub(b.spent().saturating_add(b.held))
}

/// A holder's fair share of budget `b`: half its pool, split evenly among
/// the holders using it (`others` besides this one).
fn fair_share(b: &BudgetRec, others: u64) -> NanoUsd {
    NanoUsd(pool(b).0 / (2 * (others + 1)))
}

impl LedgerState {
    pub(super) fn lease(&mut self, ask: &LeaseAsk) -> Outcome {
        use ErrorCode::*;
        if ask.ttl_ms == 0 || ask.ttl_ms > MAX_LEASE_TTL_MS {
            return Outcome::reject(
                InvalidArgument,
                format!("lease ttl_ms {} must be between 1 and {MAX_LEASE_TTL_MS}", ask.ttl_ms),
            );
        }
        if ask.holder.is_empty() || ask.holder.len() > MAX_HOLDER_BYTES {
            return Outcome::reject(InvalidArgument, format!("a lease holder must be 1-{MAX_HOLDER_BYTES} bytes"));
        }
        let Some(b) = self.budgets.get(&ask.budget) else {
            return Outcome::reject(NotFound, format!("unknown budget {}", ask.budget.0));
        };
        if b.mode != Mode::Hard {
            return Outcome::reject(FailedPrecondition, format!("budget {} is soft: it needs no lease", b.scope));
        }
        let now = self.clock_ms;
        let existing = self.leases.get(ask.budget, &ask.holder).cloned();
        if let Some(l) = &existing {
            if ask.seq == l.seq {
                let share = self.lease_share(ask.budget, &ask.holder);
                return Outcome::Leased(LeaseGrant {
                    granted: l.last_granted,
                    room: l.room,
                    share,
                    expires_at_ms: l.expires_at_ms,
                    duplicate: true,
                });
            }
            if ask.seq < l.seq {
                return Outcome::reject(
                    FailedPrecondition,
                    format!("lease grant {} is older than the last one applied ({})", ask.seq, l.seq),
                );
            }
        } else if self.leases.per_caller.get(&ask.caller).copied().unwrap_or(0) >= MAX_LEASES_PER_CALLER {
            return Outcome::reject(
                FailedPrecondition,
                format!("caller {:?} already has {MAX_LEASES_PER_CALLER} leases", ask.caller),
            );
        }
        let mut l = existing.unwrap_or(LeaseRec { caller: ask.caller.clone(), ..Default::default() });
        let leased = self.leases.leased(ask.budget);
        let others = self.lease_users(ask.budget, &ask.holder);
        let paused = now < self.leases.budgets.get(&ask.budget).map_or(0, |x| x.paused_until_ms);
        let b = self.budgets.get_mut(&ask.budget).expect("checked above");
        b.roll(now, leased);
        // Give back first: room, then (once expired) its unsettled remainder.
        let back = ask.give_back.min(l.room);
        l.room = l.room.saturating_sub(back);
        let mut leased = leased.saturating_sub(back);
        if l.unsettled_epoch == b.epoch {
            let take = ask.give_back.saturating_sub(back).min(l.unsettled);
            l.unsettled = l.unsettled.saturating_sub(take);
            b.unsettled = b.unsettled.saturating_sub(take);
        }
        let free = pool(b).saturating_sub(leased);
        let share = if paused || ask.limit != b.limit { NanoUsd::ZERO } else { fair_share(b, others) };
        let granted = ask.add.min(share.saturating_sub(l.room)).min(free);
        l.room = l.room.saturating_add(granted);
        leased = leased.saturating_add(granted);
        if l.room > NanoUsd::ZERO {
            l.expires_at_ms = l.expires_at_ms.max(now.saturating_add(ask.ttl_ms));
        } else {
            l.expires_at_ms = l.expires_at_ms.max(now);
        }
        l.seq = ask.seq;
        l.last_granted = granted;
        let grant = LeaseGrant { granted, room: l.room, share, expires_at_ms: l.expires_at_ms, duplicate: false };
        self.leases.put(ask.budget, &ask.holder, l);
        self.leases.budgets.get_mut(&ask.budget).expect("just put").leased = leased;
        self.assert_cap(ask.budget);
        Outcome::Leased(grant)
    }

    /// The holders other than `holder` with live room on budget `id`.
    fn lease_users(&self, id: BudgetId, holder: &str) -> u64 {
        self.leases.budgets.get(&id).map_or(0, |b| {
            b.holders.iter().filter(|(h, l)| h.as_str() != holder && l.room > NanoUsd::ZERO).count() as u64
        })
    }

    /// What `holder` may keep on budget `id` now (for a duplicate's answer).
    fn lease_share(&self, id: BudgetId, holder: &str) -> NanoUsd {
        let Some(b) = self.budgets.get(&id) else { return NanoUsd::ZERO };
        if self.clock_ms < self.leases.budgets.get(&id).map_or(0, |x| x.paused_until_ms) {
            return NanoUsd::ZERO;
        }
        fair_share(b, self.lease_users(id, holder))
    }

    /// A reserve on budget `id` was denied: while leases hold some of its
    /// room, no lease grows, and renewing holders are told to give back.
    pub(super) fn pause_leases(&mut self, id: BudgetId) {
        let until = self.clock_ms.saturating_add(LEASE_PAUSE_MS);
        if let Some(b) = self.leases.budgets.get_mut(&id) {
            if b.leased > NanoUsd::ZERO {
                b.paused_until_ms = until;
            }
        }
    }

    /// Settles a request admitted under `holder`'s leases, on its own id.
    pub(super) fn leased_settle(&mut self, hold: HoldId, holder: &str, r: &LeasedSettle, ttl_ms: u64) -> Outcome {
        if let Some(h) = self.holds.get(&hold) {
            return match h.state {
                HoldState::Settled { cost: first } => Outcome::Settled { charged: first, duplicate: true },
                _ => Outcome::reject(ErrorCode::AlreadyExists, format!("hold id {hold} is already in use")),
            };
        }
        if let Err(e) = self.check_amount("settle cost", r.cost) {
            return e;
        }
        if let Err(e) = check_ttl_model(ttl_ms, r.model) {
            return e;
        }
        // A key revoked since is still charged: the spend happened.
        let (user, team, _revoked) = match self.key_owner(r.key) {
            Ok(o) => o,
            Err(e) => return e,
        };
        let ids = self.chain_budgets(&team, &user, r.key, r.model);
        let now = self.clock_ms;
        let over = r.cost.saturating_sub(r.reserved);
        let mut charges = Vec::with_capacity(ids.len());
        for id in &ids {
            let mut leased = self.leases.leased(*id);
            let b = self.budgets.get_mut(id).expect("chain budget exists");
            b.roll(now, leased);
            if let Some(mut l) = self.leases.get(*id, holder).cloned() {
                // The cost comes out of the lease's room, then (once it
                // expired) out of its unsettled remainder.
                let from_room = r.cost.min(l.room);
                l.room = l.room.saturating_sub(from_room);
                leased = leased.saturating_sub(from_room);
                if l.unsettled_epoch == b.epoch {
                    let from_unsettled = r.cost.saturating_sub(from_room).min(l.unsettled);
                    l.unsettled = l.unsettled.saturating_sub(from_unsettled);
                    b.unsettled = b.unsettled.saturating_sub(from_unsettled);
                }
                self.leases.put(*id, holder, l);
                self.leases.budgets.get_mut(id).expect("just put").leased = leased;
            }
            b.settled = b.settled.saturating_add(r.cost);
            // Beyond its reservation is excess, as for a hold's settle; and
            // for a hard budget, whatever a cost the lease did not cover
            // takes past the limit.
            b.excess = b.excess.saturating_add(over);
            if b.mode == Mode::Hard {
                let used = b.spent().saturating_add(b.held).saturating_add(leased);
                b.excess = b.excess.max(used.saturating_sub(b.limit));
            }
            b.requests += 1;
            charges.push((*id, b.epoch));
            self.assert_cap(*id);
        }
        let info = HoldInfo {
            key: r.key.to_string(),
            user,
            team,
            model: r.model.to_string(),
            amount: r.reserved,
            ttl_ms,
            charges,
        };
        self.record_excess(&info, over);
        let (cost, usage, estimated) = (r.cost, r.usage, r.estimated);
        self.bump(r.key, &info.user, &info.team, r.model, |c| {
            c.requests = c.requests.saturating_add(1);
            c.settled = c.settled.saturating_add(cost);
            c.estimated_settles = c.estimated_settles.saturating_add(u64::from(estimated));
            attribution::add_usage(&mut c.usage, usage);
        });
        self.holds.insert(hold, HoldRec { info: Some(info), state: HoldState::Settled { cost }, forget_at_ms: 0 });
        // Remembered for the longest ttl: the outbox may repeat it that late.
        self.finish(hold, HoldState::Settled { cost }, MAX_TTL_MS);
        Outcome::Settled { charged: cost, duplicate: false }
    }

    /// Fires the lease timers that are due: room left at expiry becomes
    /// unsettled spend; a record with no room is forgotten.
    pub(super) fn fire_lease_timers(&mut self) {
        while let Some((at, id, holder)) = self.leases.timers.get_min().cloned() {
            if at > self.clock_ms {
                break;
            }
            let Some(mut l) = self.leases.get(id, &holder).cloned() else {
                self.leases.timers.remove(&(at, id, holder));
                continue;
            };
            if l.room == NanoUsd::ZERO {
                self.leases.forget(id, &holder);
                continue;
            }
            let leased = self.leases.leased(id);
            if let Some(b) = self.budgets.get_mut(&id) {
                b.roll(self.clock_ms, leased);
                if l.unsettled_epoch != b.epoch {
                    // An older period's unsettled remainder stays in that period.
                    l.unsettled = NanoUsd::ZERO;
                }
                b.unsettled = b.unsettled.saturating_add(l.room);
                l.unsettled = l.unsettled.saturating_add(l.room);
                l.unsettled_epoch = b.epoch;
            }
            let room = l.room;
            l.room = NanoUsd::ZERO;
            self.leases.put(id, &holder, l);
            self.leases.budgets.get_mut(&id).expect("just put").leased = leased.saturating_sub(room);
        }
    }
}
