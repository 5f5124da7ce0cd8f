//! Budget leases at the edge: slices of hard budgets' room the ledger
//! grants this edge process, from which admission reserves locally (a
//! mutex and a few additions) instead of a Raft commit per request.
//!
//! A request is admitted here only when every hard budget on its chain has
//! a live lease with room for its whole reservation; otherwise admission
//! falls back to a per-request hold, exactly as without leases. Each
//! request still settles on its own id through the outbox (`settle`): its
//! cost leaves the lease's room at the ledger, and its unused reservation
//! comes back to the room here.
//!
//! What the edge may admit never exceeds what the ledger counts for it:
//! room is added only once the ledger granted it, and given back (before
//! the ask is sent) only from room no request holds. A grant is numbered;
//! one whose answer was lost is sent again with the same number, so the
//! ledger answers it rather than granting twice.
//!
//! One background task renews: it sizes each lease to half its ttl of this
//! edge's recent reservations on the budget (at least two of the largest),
//! so it rides out a leader election, within the share the ledger allows; gives back what is idle,
//! above the share, or left when a lease ran out; and extends leases before
//! they expire. Never on a request's path. The ledger's own expiry is
//! later than the edge's (the edge counts from when it sent the ask, and
//! stops admitting a quarter of the ttl before), so clock drift between
//! the two cannot let the edge admit on a lease the ledger has expired.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tollgate_client::LedgerClient;
use tollgate_proto::v1 as pb;
use tonic::Code;

/// How often the renewer looks at the leases (it sends only when one needs it).
const TICK: Duration = Duration::from_millis(100);
/// A lease no request asked of for this long is given back.
const IDLE: Duration = Duration::from_secs(5);
/// A lease with room is renewed at least this often, so a budget whose
/// leases the ledger paused (a reserve denied for leased room) gets its room
/// back within about this long.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// After an ask granted less than it asked (near a limit, or paused), the
/// next ask for more waits this long.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// The most budgets one edge leases at once (the ledger's bound per caller).
const MAX_SLOTS: usize = 4096;
/// The most asks one renewal call carries (the ledger's bound per call).
const MAX_ASKS: usize = 1000;
/// A renewal call unanswered this long is sent again (elsewhere).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// After moving to another ledger node, how long before trying the first
/// (this edge's region's) again.
const RETURN_AFTER: Duration = Duration::from_secs(30);

/// A request admitted from leases: what it reserved on which budgets.
#[derive(Debug)]
pub(crate) struct Ticket {
    budgets: Vec<u64>,
    amount: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    seq: u64,
    add: u64,
    give_back: u64,
    sent_at: Instant,
}

/// This edge's lease on one budget.
#[derive(Debug)]
struct Slot {
    /// The budget's limit the lease was asked for.
    limit: u64,
    /// Room no request holds: what admission may reserve.
    avail: u64,
    /// Reserved by requests in flight.
    reserved: u64,
    /// Admission stops at this instant unless renewed.
    deadline: Option<Instant>,
    pending: Option<Pending>,
    /// The most room the ledger said this edge may keep.
    share: Option<u64>,
    /// Reserved (asked) since the last tick, and the rate it makes, per second.
    window: u64,
    rate: u64,
    /// The largest reservation asked of this lease.
    largest: u64,
    last_used: Instant,
    /// No ask for more before this.
    ask_after: Instant,
    /// When the last ask was sent.
    asked_at: Instant,
}

impl Slot {
    fn new(limit: u64, now: Instant) -> Slot {
        Slot {
            limit,
            avail: 0,
            reserved: 0,
            deadline: None,
            pending: None,
            share: None,
            window: 0,
            rate: 0,
            largest: 0,
            last_used: now,
            ask_after: now,
            asked_at: now,
        }
    }

    fn live(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }
}

/// The leases of one edge process.
pub(crate) struct Leases {
    /// This process's name for its leases (the ledger prefixes the caller's
    /// certificate name): a new process never inherits an old one's.
    holder: String,
    ttl: Duration,
    slots: Mutex<HashMap<u64, Slot>>,
    /// Grant numbers, increasing across every budget.
    seq: AtomicU64,
    wake: Notify,
    /// Set when the ledger has no `Lease` call (an older version): every
    /// request then takes a per-request hold.
    unsupported: AtomicBool,
}

impl Leases {
    pub(crate) fn new(ttl: Duration) -> Arc<Leases> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the OS random source failed");
        let holder = id.iter().map(|b| format!("{b:02x}")).collect();
        Arc::new(Leases {
            holder,
            ttl,
            slots: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            wake: Notify::new(),
            unsupported: AtomicBool::new(false),
        })
    }

    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `amount` on every budget of `chain` (id, limit) if each has
    /// a live lease with the room; else `None`, and the demand is noted so
    /// the renewer asks for leases.
    pub(crate) fn try_admit(&self, chain: &[(u64, u64)], amount: u64) -> Option<Ticket> {
        if self.unsupported.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        let mut slots = self.slots();
        let mut fits = true;
        for &(id, limit) in chain {
            if !slots.contains_key(&id) && slots.len() >= MAX_SLOTS {
                return None;
            }
            let slot = slots.entry(id).or_insert_with(|| Slot::new(limit, now));
            if slot.limit != limit {
                // The budget changed: nothing is admitted on the old
                // lease; the renewer gives it back and asks anew.
                slot.limit = limit;
                slot.deadline = None;
            }
            slot.window = slot.window.saturating_add(amount);
            slot.largest = slot.largest.max(amount);
            slot.last_used = now;
            fits &= slot.live(now) && slot.avail >= amount;
        }
        if !fits {
            drop(slots);
            self.wake.notify_one();
            return None;
        }
        for (id, _) in chain {
            let slot = slots.get_mut(id).expect("entered above");
            slot.avail -= amount;
            slot.reserved += amount;
        }
        Some(Ticket { budgets: chain.iter().map(|(id, _)| *id).collect(), amount })
    }

    /// A leased request finished having cost `cost` (zero: never billed):
    /// its unused reservation is room again; a cost above it takes more.
    pub(crate) fn finish(&self, t: &Ticket, cost: u64) {
        let mut slots = self.slots();
        for id in &t.budgets {
            if let Some(slot) = slots.get_mut(id) {
                slot.reserved = slot.reserved.saturating_sub(t.amount);
                slot.avail = if cost <= t.amount {
                    slot.avail.saturating_add(t.amount - cost)
                } else {
                    slot.avail.saturating_sub(cost - t.amount)
                };
            }
        }
    }

    /// Room no request holds, over every lease (for metrics).
    pub(crate) fn room(&self) -> u64 {
        self.slots().values().map(|s| s.avail).fold(0, u64::saturating_add)
    }

    /// What to ask of the ledger now, one item per lease that needs it.
    pub(super) fn plan(&self, elapsed: Duration) -> Vec<(pb::LeaseRequest, Pending)> {
        let now = Instant::now();
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut asks = Vec::new();
        let mut slots = self.slots();
        slots.retain(|_, s| {
            // Forgotten once idle with nothing held, owed or unknown.
            !(now.duration_since(s.last_used) > IDLE * 2 && s.avail == 0 && s.reserved == 0 && s.pending.is_none())
        });
        // Renewals due soon ride along with one that is due: one call (one
        // log entry) renews them all.
        // An idle lease is not renewed, even with requests still riding on
        // it: it expires, and their settles replace its unsettled room.
        let due = |s: &Slot, within: Duration| {
            s.live(now)
                && now.duration_since(s.last_used) <= IDLE
                && (s.reserved > 0 || s.avail > 0)
                && now.duration_since(s.asked_at) >= within
        };
        let renew_after = if slots.values().any(|s| due(s, RENEW_EVERY)) { RENEW_EVERY / 2 } else { RENEW_EVERY };
        for (id, s) in slots.iter_mut() {
            let per_sec = s.window.saturating_mul(1000) / (elapsed.as_millis().max(1) as u64);
            s.rate = (s.rate.saturating_mul(3).saturating_add(per_sec)) / 4;
            s.window = 0;
            if asks.len() >= MAX_ASKS {
                continue;
            }
            if let Some(p) = s.pending {
                asks.push((ask(&self.holder, *id, s.limit, p, ttl_ms), p));
                continue;
            }
            let idle = now.duration_since(s.last_used) > IDLE;
            let live = s.live(now);
            let target = if idle {
                0
            } else {
                // Half the ttl of recent reservations: enough to ride out
                // a leader election (a few election timeouts) without a grant.
                let horizon = s.rate.saturating_mul((self.ttl / 2).as_millis() as u64) / 1000;
                horizon.max(s.largest.saturating_mul(2))
            };
            // Given back: everything when idle or no longer admissible (a
            // lease that ran out, or a changed budget); above the share;
            // well above what the horizon needs.
            let give_back = if idle || !live {
                s.avail
            } else if let Some(share) = s.share.filter(|sh| s.avail.saturating_add(s.reserved) > *sh) {
                s.avail.min(s.avail.saturating_add(s.reserved) - share)
            } else if s.avail > target.saturating_mul(2) {
                s.avail - target
            } else {
                0
            };
            let left = s.avail - give_back;
            // Renewed while requests still ride on it, before it runs out.
            let renew = due(s, renew_after)
                || (live && !idle && s.deadline.is_some_and(|d| d.saturating_duration_since(now) < self.ttl / 2));
            // Topped up to the target with every renewal (so a lease holds
            // close to its horizon when the ledger stops answering), and at
            // once when below half of it.
            let want_more =
                !idle && target > 0 && now >= s.ask_after && (left < target / 2 + 1 || (renew && left < target));
            let add = if want_more { target.saturating_sub(left) } else { 0 };
            if add == 0 && give_back == 0 && !renew {
                continue;
            }
            let p = Pending { seq: self.seq.fetch_add(1, Ordering::Relaxed), add, give_back, sent_at: now };
            // Given back before it is sent: never admitted on again.
            s.avail = left;
            s.pending = Some(p);
            s.asked_at = now;
            asks.push((ask(&self.holder, *id, s.limit, p, ttl_ms), p));
        }
        asks
    }

    /// Applies the answer to one ask.
    pub(super) fn apply(&self, id: u64, p: Pending, answer: Answer) {
        let now = Instant::now();
        let mut slots = self.slots();
        let Some(s) = slots.get_mut(&id) else { return };
        if s.pending.map(|q| q.seq) != Some(p.seq) {
            return;
        }
        match answer {
            Answer::Granted(g) => {
                s.pending = None;
                s.avail = s.avail.saturating_add(g.granted_nano_usd);
                s.share = Some(g.share_nano_usd);
                // The ledger's expiry is at least `ttl` after it applied
                // the ask, so after it was sent; a quarter is left for drift.
                s.deadline = (g.room_nano_usd > 0).then(|| p.sent_at + self.ttl - self.ttl / 4);
                if g.granted_nano_usd < p.add {
                    s.ask_after = now + ASK_AGAIN;
                }
            }
            Answer::Refused => {
                // Certainly not applied, and it would not be: the room
                // given back stays given back (stranded at the ledger until
                // the lease expires there: over-counted, never under).
                s.pending = None;
                s.ask_after = now + ASK_AGAIN * 5;
            }
            Answer::NotSent => {
                s.pending = None;
                s.avail = s.avail.saturating_add(p.give_back);
            }
            // Unknown: sent again as it is at the next tick.
            Answer::Unknown => {}
        }
    }

    /// The renewer: every tick (or when admission found a lease missing or
    /// short), sends what `plan` asks in one call, preferring the first
    /// ledger node listed (this edge's own region), moving on when it fails
    /// and coming back to it after `RETURN_AFTER`.
    pub(crate) async fn run(self: Arc<Self>, nodes: LedgerClient, stop: CancellationToken) {
        let mut node = 0usize;
        let mut moved_at = Instant::now();
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
            if self.unsupported.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if !node.is_multiple_of(nodes.len()) && now.duration_since(moved_at) >= RETURN_AFTER {
                // Back to the first node (this edge's region's) once in a while.
                node = 0;
            }
            let asks = self.plan(now.duration_since(last));
            last = now;
            if asks.is_empty() {
                continue;
            }
            let batch = pb::LeaseBatch { requests: asks.iter().map(|(r, _)| r.clone()).collect() };
            let mut client = nodes.at(node);
            let call = client.lease(batch);
            let answers: Vec<Answer> = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(r)) => {
                    let results = r.into_inner().results;
                    if results.len() != asks.len() {
                        vec![Answer::Unknown; asks.len()]
                    } else {
                        results.iter().map(Answer::from).collect()
                    }
                }
                Ok(Err(st)) if st.code() == Code::Unimplemented => {
                    tracing::warn!("the ledger grants no leases (an older version): every request takes a hold");
                    self.unsupported.store(true, Ordering::Relaxed);
                    self.slots().clear();
                    return;
                }
                Ok(Err(st)) => {
                    tracing::debug!("lease renewal at ledger node {node}: {}", st.message());
                    node = node.wrapping_add(1);
                    moved_at = Instant::now();
                    let a = if tollgate_client::retryable(&st) { Answer::NotSent } else { Answer::Unknown };
                    vec![a; asks.len()]
                }
                Err(_) => {
                    node = node.wrapping_add(1);
                    moved_at = Instant::now();
                    vec![Answer::Unknown; asks.len()]
                }
            };
            for ((req, p), a) in asks.into_iter().zip(answers) {
                self.apply(req.budget_id, p, a);
            }
        }
    }
}

fn ask(holder: &str, id: u64, limit: u64, p: Pending, ttl_ms: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        holder: holder.to_string(),
        budget_id: id,
        seq: p.seq,
        add_nano_usd: p.add,
        give_back_nano_usd: p.give_back,
        ttl_ms,
        limit_nano_usd: limit,
    }
}

#[derive(Debug, Clone)]
pub(super) enum Answer {
    Granted(pb::LeaseGrant),
    /// The ledger refused it (unknown budget, a soft one, too many leases).
    Refused,
    /// Certainly not applied (never reached the ledger, or refused before proposing).
    NotSent,
    Unknown,
}

impl From<&pb::LeaseResult> for Answer {
    fn from(r: &pb::LeaseResult) -> Answer {
        match &r.outcome {
            Some(pb::lease_result::Outcome::Grant(g)) => Answer::Granted(*g),
            Some(pb::lease_result::Outcome::Error(e)) => {
                tracing::warn!("the ledger refused a lease ({}): {}", e.code, e.message);
                Answer::Refused
            }
            None => Answer::Unknown,
        }
    }
}

#[cfg(test)]
mod tests;
