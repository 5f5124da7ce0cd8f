//! The budget state machine: pure, deterministic, no IO and no clock.
//!
//! It takes [`Batch`]es of [`Command`]s (one Raft entry each) and returns one
//! [`Outcome`] per command. Time comes only from the batch stamp; the state's
//! clock is the largest stamp seen, so a leader with a slow clock cannot move
//! time backwards. Every replica that applies the same batches in the same
//! order ends with the same state and the same [`LedgerState::digest`].

mod admin;
mod attribution;
mod budget;
mod fail_open;
mod invariants;
mod lease;
mod tombstones;
mod types;

use std::collections::BTreeMap;

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use attribution::{AttribKind, AttribRec, AttribTable};
pub use budget::BudgetRec;
use lease::LeasedSettle;
pub use lease::{
    BudgetLeases, LeaseAsk, LeaseBook, LeaseGrant, LeaseRec, LEASE_PAUSE_MS, MAX_HOLDER_BYTES, MAX_LEASES_PER_CALLER,
    MAX_LEASE_TTL_MS,
};
pub use tollgate_types::period::{utc_rfc3339, Period};
pub use types::*;

use crate::money::NanoUsd;

/// How many admin changes the in-state audit ring keeps (the full trail is the log).
pub const AUDIT_RING_LEN: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub actor: String,
    pub time_ms: u64,
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRec {
    pub created: Stamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRec {
    pub team: String,
    pub created: Stamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRec {
    pub user: String,
    pub name: String,
    pub secret_sha256: String,
    pub revoked: bool,
    pub created: Stamp,
}

/// All-time usage of one team, user, key or model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub settled: NanoUsd,
    pub unsettled: NanoUsd,
    pub held: NanoUsd,
    pub requests: u64,
    pub estimated_settles: u64,
    pub usage: Usage,
}

/// Who a hold is for, fixed when it is granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldInfo {
    pub key: String,
    pub user: String,
    pub team: String,
    pub model: String,
    pub amount: NanoUsd,
    pub ttl_ms: u64,
    /// The budgets this hold counts against, with the epoch (period) each charge fell in.
    pub charges: Vec<(BudgetId, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Active {
        expires_at_ms: u64,
    },
    Settled {
        cost: NanoUsd,
    },
    /// Expired unsettled: its full amount is charged as unsettled spend.
    Expired,
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRec {
    /// `None` for a release that arrived before (or instead of) its reserve.
    pub info: Option<HoldInfo>,
    pub state: HoldState,
    /// When a finished hold is forgotten (its ttl after it finished; the
    /// longest ttl for a release seen before its reserve); 0 while active.
    pub forget_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRec {
    pub stamp: Stamp,
    pub what: String,
}

/// The replicated state. Fields not marked `serde(skip)` make up the digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub clock_ms: u64,
    pub last_index: u64,
    /// The last index that changed config (what the config watch reports).
    pub config_index: u64,
    pub admin_token_sha256: Option<String>,
    pub teams: BTreeMap<String, TeamRec>,
    pub users: BTreeMap<String, UserRec>,
    pub keys: BTreeMap<String, KeyRec>,
    pub budgets: BTreeMap<BudgetId, BudgetRec>,
    pub next_budget_id: u64,
    pub policies: BTreeMap<String, Vec<String>>,
    /// Persistent (structurally shared) map: copying the state for a
    /// snapshot or digest is O(1), so applies never wait on it.
    pub holds: OrdMap<HoldId, HoldRec>,
    /// Usage by `team:…`, `user:…`, `key:…`, `model:…`.
    pub usage: BTreeMap<String, Counters>,
    pub audit: Vec<AuditRec>,
    /// Bounds on single commands (see [`Limits`]).
    pub limits: Limits,
    /// Release tombstones by the caller that left them, by when each is
    /// forgotten: bounded per caller.
    pub tombstones: BTreeMap<String, OrdSet<(u64, HoldId)>>,
    /// The operator's price overrides and discount (every edge prices with
    /// them at the same config index).
    pub prices: PriceState,
    /// What requests cost beyond their reservation, by `team:…`, `user:…`,
    /// `key:…`, `model:…` (all time).
    pub excess: BTreeMap<String, NanoUsd>,
    /// Usage by session, agent, request class and prompt (bounded).
    pub attribution: AttribTable,
    /// Budget leases, by budget and holder. Last: older snapshots decode.
    pub leases: LeaseBook,
    /// Derived: live holds by expiry.
    #[serde(skip)]
    expiries: OrdSet<(u64, HoldId)>,
    /// Derived: finished holds by the time they are forgotten.
    #[serde(skip)]
    forgets: OrdSet<(u64, HoldId)>,
}

/// A hold's ttl and model name, as Reserve and Charge take them.
fn check_ttl_model(ttl_ms: u64, model: &str) -> Result<(), Outcome> {
    if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
        return Err(Outcome::reject(
            ErrorCode::InvalidArgument,
            format!("ttl_ms {ttl_ms} must be between 1 and {MAX_TTL_MS}"),
        ));
    }
    if !valid_model(model) {
        return Err(Outcome::reject(ErrorCode::InvalidArgument, format!("model {model:?} is not a valid model name")));
    }
    Ok(())
}

fn valid_model(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl LedgerState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the derived indexes after deserialization.
    pub fn rebuild_indexes(&mut self) {
        self.attribution.rebuild();
        self.leases.rebuild();
        self.expiries = OrdSet::new();
        self.forgets = OrdSet::new();
        for (id, h) in &self.holds {
            match h.state {
                HoldState::Active { expires_at_ms } => {
                    self.expiries.insert((expires_at_ms, *id));
                }
                _ => {
                    self.forgets.insert((h.forget_at_ms, *id));
                }
            }
        }
    }

    /// Hex SHA-256 of the canonical encoding of the state.
    pub fn digest(&self) -> String {
        struct HashWriter(Sha256);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashWriter(Sha256::new());
        // Serializing plain maps and structs into a hasher cannot fail.
        serde_json::to_writer(&mut w, self).expect("state serializes");
        hex(&w.0.finalize())
    }

    /// The live holds, in expiry order.
    pub fn active_holds(&self) -> usize {
        self.expiries.len()
    }

    /// The earliest expiry of a live hold or lease timer, so the leader can tick then.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        let hold = self.expiries.get_min().map(|(t, _)| *t);
        match (hold, self.leases.next_timer_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one log entry. Never fails: a bad command yields a rejection
    /// and changes nothing.
    pub fn apply(&mut self, index: u64, batch: &Batch) -> Vec<Outcome> {
        self.last_index = index;
        self.advance_clock(batch.time_ms);
        let outcomes = batch.cmds.iter().map(|c| self.apply_cmd(index, c)).collect();
        outcomes
    }

    /// Records a log index that carried no commands (blank or membership entries).
    pub fn note_index(&mut self, index: u64) {
        self.last_index = index;
    }

    fn advance_clock(&mut self, time_ms: u64) {
        self.clock_ms = self.clock_ms.max(time_ms);
        while let Some(&(at, id)) = self.expiries.get_min() {
            if at > self.clock_ms {
                break;
            }
            self.expiries.remove(&(at, id));
            self.expire(id);
        }
        while let Some(&(at, id)) = self.forgets.get_min() {
            if at > self.clock_ms {
                break;
            }
            self.forgets.remove(&(at, id));
            if self.holds.remove(&id).is_some_and(|h| h.info.is_none()) {
                self.untrack_tombstone(at, id);
            }
        }
        self.fire_lease_timers();
    }

    fn apply_cmd(&mut self, index: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::Reserve { hold, key, model, amount, ttl_ms } => self.reserve(*hold, key, model, *amount, *ttl_ms),
            Command::Settle { hold, cost, usage, estimated, session: _ } => {
                self.settle(*hold, *cost, usage, *estimated)
            }
            Command::Release { hold } => self.release(*hold, ""),
            Command::ReleaseBy { hold, caller } => self.release(*hold, caller),
            Command::Charge { hold, key, model, cost, usage, estimated, session: _, ttl_ms } => {
                self.charge_direct(*hold, key, model, *cost, usage, *estimated, *ttl_ms)
            }
            Command::Lease(ask) => self.lease(ask),
            Command::LeasedSettle { hold, holder, key, model, cost, reserved, usage, estimated, ttl_ms } => {
                let what = LeasedSettle { key, model, cost: *cost, reserved: *reserved, usage, estimated: *estimated };
                self.leased_settle(*hold, holder, &what, *ttl_ms)
            }
            Command::Attributed { attribution, cmd } => {
                if !matches!(**cmd, Command::Settle { .. } | Command::Charge { .. } | Command::LeasedSettle { .. }) {
                    return Outcome::reject(
                        ErrorCode::InvalidArgument,
                        "only a settle or a charge carries attribution",
                    );
                }
                let out = self.apply_cmd(index, cmd);
                if let (
                    Outcome::Settled { charged, duplicate: false },
                    Command::Settle { hold, usage, .. }
                    | Command::Charge { hold, usage, .. }
                    | Command::LeasedSettle { hold, usage, .. },
                ) = (&out, &**cmd)
                {
                    if let Some(info) = self.holds.get(hold).and_then(|h| h.info.clone()) {
                        let now = self.clock_ms;
                        self.attribution.record(attribution, &info, *charged, usage, now);
                    }
                }
                out
            }
            Command::Extend { hold, ttl_ms } => self.extend(*hold, *ttl_ms),
            Command::Tick => Outcome::Done,
            Command::Admin { actor, op } => {
                let stamp = Stamp { actor: actor.clone(), time_ms: self.clock_ms, index };
                let out = self.admin(op, &stamp);
                if out == Outcome::Done {
                    self.config_index = index;
                    if self.audit.len() >= AUDIT_RING_LEN {
                        self.audit.remove(0);
                    }
                    self.audit.push(AuditRec { stamp, what: op.summary() });
                }
                out
            }
        }
    }

    /// Refuses an amount above the per-request maximum.
    fn check_amount(&self, what: &str, amount: NanoUsd) -> Result<(), Outcome> {
        if amount > self.limits.max_request {
            return Err(Outcome::reject(
                ErrorCode::InvalidArgument,
                format!(
                    "{what} {amount} is above the per-request maximum {} (an operator can raise it: `tollgate admin \
                     limits set --max-request-usd`)",
                    self.limits.max_request
                ),
            ));
        }
        Ok(())
    }

    /// The user and team `key` belongs to, and whether it is revoked.
    fn key_owner(&self, key: &str) -> Result<(String, String, bool), Outcome> {
        let Some(k) = self.keys.get(key) else {
            return Err(Outcome::reject(ErrorCode::NotFound, format!("unknown key {key}")));
        };
        let Some(team) = self.users.get(&k.user).map(|u| u.team.clone()) else {
            return Err(Outcome::reject(ErrorCode::NotFound, format!("key {key} belongs to unknown user {}", k.user)));
        };
        Ok((k.user.clone(), team, k.revoked))
    }

    /// The budgets that apply to a request by `key` (on its chain) for `model`.
    fn chain_budgets(&self, team: &str, user: &str, key: &str, model: &str) -> Vec<BudgetId> {
        self.budgets
            .iter()
            .filter(|(_, b)| {
                let on_chain = match &b.scope {
                    Scope::Org => true,
                    Scope::Team(t) => t == team,
                    Scope::User(u) => u == user,
                    Scope::Key(k) => k == key,
                };
                on_chain && b.applies_to(model)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Applies `f` to the usage counters of the hold's team, user, key and model.
    fn bump(&mut self, key: &str, user: &str, team: &str, model: &str, f: impl Fn(&mut Counters)) {
        for k in [format!("team:{team}"), format!("user:{user}"), format!("key:{key}"), format!("model:{model}")] {
            f(self.usage.entry(k).or_default());
        }
    }

    fn reserve(&mut self, hold: HoldId, key: &str, model: &str, amount: NanoUsd, ttl_ms: u64) -> Outcome {
        use ErrorCode::*;
        if amount == NanoUsd::ZERO {
            return Outcome::reject(InvalidArgument, "reserve amount must be greater than zero");
        }
        if let Err(r) = self.check_amount("reserve amount", amount) {
            return r;
        }
        if let Err(r) = check_ttl_model(ttl_ms, model) {
            return r;
        }
        if let Some(existing) = self.holds.get(&hold) {
            return match (&existing.state, &existing.info) {
                (HoldState::Released, _) => Outcome::reject(
                    FailedPrecondition,
                    format!("hold {hold} was released by its edge and cannot be reserved"),
                ),
                (HoldState::Active { expires_at_ms }, Some(i))
                    if i.key == key && i.model == model && i.amount == amount =>
                {
                    // A retry of the same reserve: answer it, apply nothing.
                    Outcome::Granted { expires_at_ms: *expires_at_ms }
                }
                _ => Outcome::reject(AlreadyExists, format!("hold id {hold} is already in use")),
            };
        }
        let (user, team, revoked) = match self.key_owner(key) {
            Ok(o) => o,
            Err(r) => return r,
        };
        if revoked {
            return Outcome::reject(FailedPrecondition, format!("key {key} is revoked"));
        }
        let ids = self.chain_budgets(&team, &user, key, model);
        let now = self.clock_ms;
        for id in &ids {
            let leased = self.leases.leased(*id);
            let b = self.budgets.get_mut(id).expect("chain budget exists");
            b.roll(now, leased);
            // Soft budgets too: a hold that would overflow a sum is refused,
            // never saturated (a saturated `held` loses other holds on release).
            let fits = b.held.checked_add(amount).and_then(|h| h.checked_add(b.spent())).is_some();
            if !fits {
                return Outcome::reject(InvalidArgument, format!("reserving {amount} would overflow {}", b.scope));
            }
            if b.mode == Mode::Hard {
                // Leased room counts like held (the denial reports it as held).
                let held = b.held.saturating_add(leased);
                let used = b.spent().saturating_add(held);
                if used.checked_add(amount).is_none_or(|total| total > b.limit) {
                    let denial = Denial {
                        scope: b.scope.clone(),
                        model: b.model.clone(),
                        limit: b.limit,
                        spent: b.spent(),
                        held,
                        requested: amount,
                        period: b.period,
                        resets_at_ms: b.period.end_ms(now),
                        leased,
                    };
                    self.pause_leases(*id);
                    return Outcome::Denied(denial);
                }
            }
        }
        let mut charges = Vec::with_capacity(ids.len());
        for id in &ids {
            let b = self.budgets.get_mut(id).expect("chain budget exists");
            b.held = b.held.saturating_add(amount);
            b.requests += 1;
            charges.push((*id, b.epoch));
            self.assert_cap(*id);
        }
        self.bump(key, &user, &team, model, |c| {
            c.held = c.held.saturating_add(amount);
            c.requests = c.requests.saturating_add(1);
        });
        let expires_at_ms = now.saturating_add(ttl_ms);
        let info = HoldInfo { key: key.to_string(), user, team, model: model.to_string(), amount, ttl_ms, charges };
        self.holds
            .insert(hold, HoldRec { info: Some(info), state: HoldState::Active { expires_at_ms }, forget_at_ms: 0 });
        self.expiries.insert((expires_at_ms, hold));
        Outcome::Granted { expires_at_ms }
    }

    /// Takes a live hold's reservation off its budgets and counters.
    fn unhold(&mut self, info: &HoldInfo) {
        for (id, _) in &info.charges {
            if let Some(b) = self.budgets.get_mut(id) {
                b.held = b.held.saturating_sub(info.amount);
            }
        }
        self.bump(&info.key, &info.user, &info.team, &info.model, |c| c.held = c.held.saturating_sub(info.amount));
    }

    /// Charges `cost` as settled spend. `replacing` is an unsettled charge
    /// (made at expiry, in the recorded periods) that this cost replaces.
    fn charge(&mut self, info: &HoldInfo, cost: NanoUsd, replacing: Option<NanoUsd>, usage: &Usage, estimated: bool) {
        let now = self.clock_ms;
        for (id, charged_epoch) in &info.charges {
            let leased = self.leases.leased(*id);
            let Some(b) = self.budgets.get_mut(id) else { continue };
            b.roll(now, leased);
            let reserved = match replacing {
                Some(unsettled) if b.epoch == *charged_epoch => {
                    b.unsettled = b.unsettled.saturating_sub(unsettled);
                    unsettled
                }
                // The unsettled charge belongs to a period that is over: it
                // stays there; this period gets nothing more for this hold.
                Some(_) => continue,
                None => info.amount,
            };
            b.settled = b.settled.saturating_add(cost);
            if cost > reserved {
                b.excess = b.excess.saturating_add(cost.saturating_sub(reserved));
            }
            self.assert_cap(*id);
        }
        self.record_excess(info, cost.saturating_sub(info.amount));
        self.bump(&info.key, &info.user, &info.team, &info.model, |c| {
            if let Some(unsettled) = replacing {
                c.unsettled = c.unsettled.saturating_sub(unsettled);
            }
            c.settled = c.settled.saturating_add(cost);
            c.estimated_settles = c.estimated_settles.saturating_add(u64::from(estimated));
            attribution::add_usage(&mut c.usage, usage);
        });
    }

    /// Counts what a request cost beyond its reservation in the excess of
    /// its team, user, key and model.
    fn record_excess(&mut self, info: &HoldInfo, over: NanoUsd) {
        if over == NanoUsd::ZERO {
            return;
        }
        for k in [
            format!("team:{}", info.team),
            format!("user:{}", info.user),
            format!("key:{}", info.key),
            format!("model:{}", info.model),
        ] {
            let e = self.excess.entry(k).or_insert(NanoUsd::ZERO);
            *e = e.saturating_add(over);
        }
    }

    fn finish(&mut self, hold: HoldId, state: HoldState, keep_ms: u64) {
        let forget_at_ms = self.clock_ms.saturating_add(keep_ms);
        if let Some(h) = self.holds.get_mut(&hold) {
            if let HoldState::Active { expires_at_ms } = h.state {
                self.expiries.remove(&(expires_at_ms, hold));
            }
            self.forgets.remove(&(h.forget_at_ms, hold));
            h.state = state;
            h.forget_at_ms = forget_at_ms;
            self.forgets.insert((forget_at_ms, hold));
        }
    }

    fn settle(&mut self, hold: HoldId, cost: NanoUsd, usage: &Usage, estimated: bool) -> Outcome {
        use ErrorCode::*;
        if let Err(r) = self.check_amount("settle cost", cost) {
            return r;
        }
        let Some(h) = self.holds.get(&hold) else {
            return Outcome::reject(NotFound, format!("unknown hold {hold}"));
        };
        let info = match (&h.state, &h.info) {
            (HoldState::Settled { cost: first }, _) => return Outcome::Settled { charged: *first, duplicate: true },
            (HoldState::Released, _) | (_, None) => {
                return Outcome::reject(FailedPrecondition, format!("hold {hold} was released; nothing to settle"))
            }
            (_, Some(info)) => info.clone(),
        };
        match h.state {
            HoldState::Active { .. } => {
                self.unhold(&info);
                self.charge(&info, cost, None, usage, estimated);
            }
            _ => self.charge(&info, cost, Some(info.amount), usage, estimated),
        }
        self.finish(hold, HoldState::Settled { cost }, info.ttl_ms);
        Outcome::Settled { charged: cost, duplicate: false }
    }

    fn release(&mut self, hold: HoldId, caller: &str) -> Outcome {
        let Some(h) = self.holds.get(&hold) else {
            // Released before its reserve committed (or instead of it):
            // remember the id so the reserve can never resurrect it.
            self.leave_tombstone(hold, caller);
            return Outcome::Released;
        };
        match (&h.state, h.info.clone()) {
            (HoldState::Released, _) => Outcome::Released,
            (HoldState::Settled { .. }, _) => Outcome::reject(
                ErrorCode::FailedPrecondition,
                format!("hold {hold} is already settled; a release cannot undo a settle"),
            ),
            (HoldState::Active { .. }, Some(info)) => {
                self.unhold(&info);
                self.finish(hold, HoldState::Released, info.ttl_ms);
                Outcome::Released
            }
            (HoldState::Expired, Some(info)) => {
                // Billed nothing after all: the unsettled charge becomes zero.
                self.charge(&info, NanoUsd::ZERO, Some(info.amount), &Usage::default(), false);
                self.finish(hold, HoldState::Released, info.ttl_ms);
                Outcome::Released
            }
            (_, None) => unreachable!("only released tombstones have no info"),
        }
    }

    fn extend(&mut self, hold: HoldId, ttl_ms: u64) -> Outcome {
        if ttl_ms == 0 || ttl_ms > MAX_TTL_MS {
            return Outcome::reject(
                ErrorCode::InvalidArgument,
                format!("ttl_ms {ttl_ms} must be between 1 and {MAX_TTL_MS}"),
            );
        }
        let now = self.clock_ms;
        let Some(h) = self.holds.get_mut(&hold) else {
            return Outcome::reject(ErrorCode::NotFound, format!("unknown hold {hold}"));
        };
        let HoldState::Active { expires_at_ms } = h.state else {
            return Outcome::reject(ErrorCode::FailedPrecondition, format!("hold {hold} is no longer live"));
        };
        let new_at = expires_at_ms.max(now.saturating_add(ttl_ms));
        h.state = HoldState::Active { expires_at_ms: new_at };
        self.expiries.remove(&(expires_at_ms, hold));
        self.expiries.insert((new_at, hold));
        Outcome::Extended { expires_at_ms: new_at }
    }

    fn expire(&mut self, hold: HoldId) {
        let Some(info) = self.holds.get(&hold).and_then(|h| h.info.clone()) else { return };
        let now = self.clock_ms;
        let mut charges = Vec::with_capacity(info.charges.len());
        for (id, _) in &info.charges {
            let leased = self.leases.leased(*id);
            if let Some(b) = self.budgets.get_mut(id) {
                b.roll(now, leased);
                b.held = b.held.saturating_sub(info.amount);
                b.unsettled = b.unsettled.saturating_add(info.amount);
                charges.push((*id, b.epoch));
            }
        }
        self.bump(&info.key, &info.user, &info.team, &info.model, |c| {
            c.held = c.held.saturating_sub(info.amount);
            c.unsettled = c.unsettled.saturating_add(info.amount);
        });
        // A late settle (or a fail-open Charge, which an edge's outbox may
        // deliver long after) still replaces the unsettled charge for the
        // longest ttl: forgotten earlier, a Charge would find no hold and
        // charge its cost on top of the unsettled reservation.
        let keep = MAX_TTL_MS;
        if let Some(h) = self.holds.get_mut(&hold) {
            if let Some(i) = h.info.as_mut() {
                i.charges = charges;
            }
        }
        self.finish(hold, HoldState::Expired, keep);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
