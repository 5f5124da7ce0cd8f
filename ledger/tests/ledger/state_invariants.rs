//! Property tests of the budget state machine: random sequences of reserves,
//! settles, releases, extends, ticks, lease grants and leased settles by
//! two edges, with time moving across day
//! boundaries, checked after every entry against the design's invariants and
//! against a small reference model written independently of the code:
//! 1. hard cap: spent + held + leased <= limit, except recorded excess from
//!    settles above their reservation (and the model says exactly how much);
//! 2. determinism: two replicas, one restored from a snapshot mid-way, end
//!    with the same digest;
//! 3. exactly once: a second settle changes nothing and reports the first;
//! 4. conservation: spent = settled actual costs + unsettled charges, and
//!    held = the sum of live holds, per budget and period.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tollgate_ledger::money::NanoUsd;
use tollgate_ledger::state::*;

const KEYS: [(&str, &str, &str); 4] =
    [("k0", "u0@x.io", "t0"), ("k1", "u1@x.io", "t0"), ("k2", "u2@x.io", "t1"), ("k3", "u2@x.io", "t1")];
const MODELS: [&str; 2] = ["m1", "m2"];
/// 2026-11-28 23:00 UTC: the daily budget rolls an hour in.
const START_MS: u64 = 1_795_906_800_000;

#[derive(Debug, Clone)]
struct BudgetSpec {
    scope: Scope,
    model: Option<&'static str>,
    limit: u64,
    period: Period,
    mode: Mode,
}

fn setup_cmds(budgets: &[BudgetSpec]) -> Vec<Command> {
    let admin = |op| Command::Admin { actor: "test".into(), op };
    let mut cmds =
        vec![admin(AdminOp::CreateTeam { name: "t0".into() }), admin(AdminOp::CreateTeam { name: "t1".into() })];
    for u in ["u0@x.io", "u1@x.io", "u2@x.io"] {
        let team = if u == "u2@x.io" { "t1" } else { "t0" };
        cmds.push(admin(AdminOp::CreateUser { email: u.into(), team: team.into() }));
    }
    for (i, (k, u, _)) in KEYS.iter().enumerate() {
        cmds.push(admin(AdminOp::CreateKey {
            id: k.to_string(),
            user: u.to_string(),
            name: String::new(),
            secret_sha256: format!("{i:064x}"),
        }));
    }
    for b in budgets {
        cmds.push(admin(AdminOp::SetBudget {
            scope: b.scope.clone(),
            model: b.model.map(str::to_string),
            limit: NanoUsd(b.limit),
            period: b.period,
            mode: b.mode,
        }));
    }
    cmds
}

// ---------- the reference model ----------

#[derive(Debug, Clone)]
struct MBudget {
    spec: BudgetSpec,
    pstart: u64,
    settled: u64,
    unsettled: u64,
    held: u64,
    excess: u64,
    leased: u64,
    /// No lease room is granted before this.
    paused_until: u64,
}

impl MBudget {
    fn roll(&mut self, now: u64) {
        let s = self.spec.period.start_ms(now);
        if s != self.pstart {
            self.pstart = s;
            self.settled = 0;
            self.unsettled = 0;
            self.excess = (self.held + self.leased).saturating_sub(self.spec.limit);
        }
    }

    fn spent(&self) -> u64 {
        self.settled + self.unsettled
    }
}

/// One edge's lease on one budget.
#[derive(Debug, Clone, Default)]
struct MLease {
    room: u64,
    expires: u64,
    unsettled: u64,
    /// The period its unsettled remainder was charged in.
    unsettled_pstart: u64,
    seq: u64,
    last_granted: u64,
}

const HOLDERS: [&str; 2] = ["edge:a/1", "edge:b/7"];

#[derive(Debug, Clone, PartialEq)]
enum MState {
    Active(u64),
    Settled(u64),
    Expired,
    Released,
}

#[derive(Debug, Clone)]
struct MHold {
    key: usize,
    model: usize,
    amount: u64,
    ttl: u64,
    budgets: Vec<(usize, u64)>,
    state: MState,
    /// A finished hold is forgotten one ttl after it finished.
    forget_at: u64,
}

#[derive(Debug, Clone)]
struct Model {
    clock: u64,
    budgets: Vec<MBudget>,
    holds: BTreeMap<u128, MHold>,
    /// Released before any reserve was seen, with when they are forgotten.
    tombstones: Vec<(u128, u64)>,
    /// By (holder, budget).
    leases: BTreeMap<(usize, usize), MLease>,
}

impl Model {
    fn on_chain(&self, b: &BudgetSpec, key: usize, model: usize) -> bool {
        let (k, u, t) = KEYS[key];
        let scoped = match &b.scope {
            Scope::Org => true,
            Scope::Team(x) => x == t,
            Scope::User(x) => x == u,
            Scope::Key(x) => x == k,
        };
        scoped && b.model.is_none_or(|m| m == MODELS[model])
    }

    fn advance(&mut self, t: u64) {
        self.clock = self.clock.max(t);
        let now = self.clock;
        let due: Vec<u128> = self
            .holds
            .iter()
            .filter(|(_, h)| matches!(h.state, MState::Active(e) if e <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let h = self.holds.get_mut(&id).unwrap();
            for (bi, p) in h.budgets.iter_mut() {
                let b = &mut self.budgets[*bi];
                b.roll(now);
                b.held -= h.amount;
                b.unsettled += h.amount;
                *p = b.pstart;
            }
            h.state = MState::Expired;
            h.forget_at = now + MAX_TTL_MS;
        }
        self.holds.retain(|_, h| matches!(h.state, MState::Active(_)) || h.forget_at > now);
        self.tombstones.retain(|(_, at)| *at > now);
        for ((_, bi), l) in self.leases.iter_mut() {
            if l.room > 0 && l.expires <= now {
                let b = &mut self.budgets[*bi];
                b.roll(now);
                if l.unsettled_pstart != b.pstart {
                    l.unsettled = 0;
                }
                b.unsettled += l.room;
                b.leased -= l.room;
                l.unsettled += l.room;
                l.unsettled_pstart = b.pstart;
                l.room = 0;
            }
        }
        self.leases.retain(|_, l| l.room > 0 || l.expires + MAX_TTL_MS > now);
    }

    #[allow(clippy::too_many_arguments)]
    fn lease(&mut self, holder: usize, bi: usize, seq: u64, add: u64, give: u64, ttl: u64, limit_ok: bool) -> String {
        let now = self.clock;
        if ttl == 0 || ttl > MAX_LEASE_TTL_MS || self.budgets[bi].spec.mode != Mode::Hard {
            return "rejected".into();
        }
        let mut l = match self.leases.get(&(holder, bi)) {
            Some(l) if seq == l.seq => return format!("leased:{}:{}:dup", l.last_granted, l.room),
            Some(l) if seq < l.seq => return "rejected".into(),
            Some(l) => l.clone(),
            None => MLease::default(),
        };
        let others = self.leases.iter().filter(|((h, b), l)| *b == bi && *h != holder && l.room > 0).count() as u64;
        let b = &mut self.budgets[bi];
        b.roll(now);
        let back = give.min(l.room);
        l.room -= back;
        b.leased -= back;
        if l.unsettled_pstart == b.pstart {
            let take = (give - back).min(l.unsettled);
            l.unsettled -= take;
            b.unsettled -= take;
        }
        let pool = b.spec.limit.saturating_sub(b.spent() + b.held);
        let free = pool.saturating_sub(b.leased);
        let share = if now < b.paused_until || !limit_ok { 0 } else { pool / (2 * (others + 1)) };
        let granted = add.min(share.saturating_sub(l.room)).min(free);
        l.room += granted;
        b.leased += granted;
        l.expires = if l.room > 0 { l.expires.max(now + ttl) } else { l.expires.max(now) };
        l.seq = seq;
        l.last_granted = granted;
        let out = format!("leased:{granted}:{}", l.room);
        self.leases.insert((holder, bi), l);
        out
    }

    fn leased_settle(&mut self, id: u128, holder: usize, key: usize, model: usize, cost: u64, reserved: u64) -> String {
        if self.tombstones.iter().any(|(t, _)| *t == id) {
            return "rejected".into();
        }
        if let Some(h) = self.holds.get(&id) {
            return match h.state {
                MState::Settled(c) => format!("dup:{c}"),
                _ => "rejected".into(),
            };
        }
        let now = self.clock;
        let chain: Vec<usize> =
            (0..self.budgets.len()).filter(|i| self.on_chain(&self.budgets[*i].spec, key, model)).collect();
        let mut budgets = Vec::new();
        for &i in &chain {
            let b = &mut self.budgets[i];
            b.roll(now);
            let mut rest = cost;
            if let Some(l) = self.leases.get_mut(&(holder, i)) {
                let from_room = rest.min(l.room);
                l.room -= from_room;
                b.leased -= from_room;
                rest -= from_room;
                if l.unsettled_pstart == b.pstart {
                    let from_unsettled = rest.min(l.unsettled);
                    l.unsettled -= from_unsettled;
                    b.unsettled -= from_unsettled;
                    rest -= from_unsettled;
                }
            }
            let _ = rest;
            b.settled += cost;
            b.excess += cost.saturating_sub(reserved);
            if b.spec.mode == Mode::Hard {
                b.excess = b.excess.max((b.spent() + b.held + b.leased).saturating_sub(b.spec.limit));
            }
            budgets.push((i, b.pstart));
        }
        self.holds.insert(
            id,
            MHold {
                key,
                model,
                amount: reserved,
                ttl: MAX_TTL_MS,
                budgets,
                state: MState::Settled(cost),
                forget_at: now + MAX_TTL_MS,
            },
        );
        format!("settled:{cost}")
    }

    /// Returns the expected outcome kind: granted, denied(scope) or rejected.
    fn reserve(&mut self, id: u128, key: usize, model: usize, amount: u64, ttl: u64) -> String {
        if self.tombstones.iter().any(|(t, _)| *t == id) {
            return "rejected".into();
        }
        if let Some(h) = self.holds.get(&id) {
            return match h.state {
                MState::Active(_) if h.key == key && h.model == model && h.amount == amount => "granted".into(),
                _ => "rejected".into(),
            };
        }
        let now = self.clock;
        let chain: Vec<usize> =
            (0..self.budgets.len()).filter(|i| self.on_chain(&self.budgets[*i].spec, key, model)).collect();
        for &i in &chain {
            let b = &mut self.budgets[i];
            b.roll(now);
            if b.spec.mode == Mode::Hard && b.settled + b.unsettled + b.held + b.leased + amount > b.spec.limit {
                if b.leased > 0 {
                    b.paused_until = now + LEASE_PAUSE_MS;
                }
                return format!("denied:{}", b.spec.scope);
            }
        }
        let mut budgets = Vec::new();
        for &i in &chain {
            self.budgets[i].held += amount;
            budgets.push((i, self.budgets[i].pstart));
        }
        self.holds
            .insert(id, MHold { key, model, amount, ttl, budgets, state: MState::Active(now + ttl), forget_at: 0 });
        "granted".into()
    }

    fn settle(&mut self, id: u128, cost: u64) -> String {
        let now = self.clock;
        let Some(h) = self.holds.get_mut(&id) else { return "rejected".into() };
        match h.state.clone() {
            MState::Settled(c) => return format!("dup:{c}"),
            MState::Released => return "rejected".into(),
            MState::Active(_) => {
                for (bi, _) in &h.budgets {
                    let b = &mut self.budgets[*bi];
                    b.held -= h.amount;
                    b.roll(now);
                    b.settled += cost;
                    b.excess += cost.saturating_sub(h.amount);
                }
            }
            MState::Expired => {
                for (bi, p) in &h.budgets {
                    let b = &mut self.budgets[*bi];
                    b.roll(now);
                    if b.pstart == *p {
                        b.unsettled -= h.amount;
                        b.settled += cost;
                        b.excess += cost.saturating_sub(h.amount);
                    }
                }
            }
        }
        h.state = MState::Settled(cost);
        h.forget_at = now + h.ttl;
        format!("settled:{cost}")
    }

    fn release(&mut self, id: u128) -> String {
        let now = self.clock;
        let Some(h) = self.holds.get_mut(&id) else {
            if !self.tombstones.iter().any(|(t, _)| *t == id) {
                self.tombstones.push((id, now + MAX_TTL_MS));
            }
            return "released".into();
        };
        match h.state.clone() {
            MState::Released => "released".into(),
            MState::Settled(_) => "rejected".into(),
            MState::Active(_) => {
                for (bi, _) in &h.budgets {
                    self.budgets[*bi].held -= h.amount;
                }
                h.state = MState::Released;
                h.forget_at = now + h.ttl;
                "released".into()
            }
            MState::Expired => {
                for (bi, p) in &h.budgets {
                    let b = &mut self.budgets[*bi];
                    b.roll(now);
                    if b.pstart == *p {
                        b.unsettled -= h.amount;
                    }
                }
                h.state = MState::Released;
                h.forget_at = now + h.ttl;
                "released".into()
            }
        }
    }

    fn extend(&mut self, id: u128, ttl: u64) -> String {
        let now = self.clock;
        match self.holds.get_mut(&id) {
            Some(h) => match h.state {
                MState::Active(e) => {
                    let n = e.max(now + ttl);
                    h.state = MState::Active(n);
                    format!("extended:{n}")
                }
                _ => "rejected".into(),
            },
            None => "rejected".into(),
        }
    }
}

fn kind(o: &Outcome) -> String {
    match o {
        Outcome::Granted { .. } => "granted".into(),
        Outcome::Denied(d) => format!("denied:{}", d.scope),
        Outcome::Settled { charged, duplicate: true } => format!("dup:{}", charged.0),
        Outcome::Settled { charged, duplicate: false } => format!("settled:{}", charged.0),
        Outcome::Released => "released".into(),
        Outcome::Extended { expires_at_ms } => format!("extended:{expires_at_ms}"),
        Outcome::Done => "done".into(),
        Outcome::Rejected(_) => "rejected".into(),
        Outcome::Leased(g) => {
            format!("leased:{}:{}{}", g.granted.0, g.room.0, if g.duplicate { ":dup" } else { "" })
        }
    }
}

// ---------- generators ----------

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        hold: u8,
        key: usize,
        model: usize,
        amount: u64,
        ttl: u64,
    },
    /// With `session`, an `Attributed` settle (which must change no budget figure).
    Settle {
        hold: u8,
        cost: u64,
        session: Option<u8>,
    },
    Release {
        hold: u8,
    },
    Extend {
        hold: u8,
        ttl: u64,
    },
    Tick,
    Lease {
        holder: usize,
        budget: usize,
        seq: u64,
        add: u64,
        give: u64,
        ttl: u64,
        limit_ok: bool,
    },
    LeasedSettle {
        hold: u8,
        holder: usize,
        key: usize,
        model: usize,
        cost: u64,
        reserved: u64,
        session: Option<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, 0usize..4, 0usize..2, 1u64..400, 1u64..6_000)
            .prop_map(|(hold, key, model, amount, ttl)| Op::Reserve { hold, key, model, amount, ttl }),
        3 => (0u8..24, 0u64..600, prop::option::of(0u8..3)).prop_map(|(hold, cost, session)| Op::Settle { hold, cost, session }),
        1 => (0u8..24).prop_map(|hold| Op::Release { hold }),
        1 => (0u8..24, 1u64..6_000).prop_map(|(hold, ttl)| Op::Extend { hold, ttl }),
        1 => Just(Op::Tick),
        3 => (0usize..2, 0usize..5, 1u64..8, 0u64..700, 0u64..300, 1u64..9_000, prop::bool::weighted(0.9))
            .prop_map(|(holder, budget, seq, add, give, ttl, limit_ok)| Op::Lease { holder, budget, seq, add, give, ttl, limit_ok }),
        3 => (0u8..24, 0usize..2, 0usize..4, 0usize..2, 0u64..300, 0u64..300, prop::option::of(0u8..3))
            .prop_map(|(hold, holder, key, model, cost, reserved, session)| Op::LeasedSettle { hold, holder, key, model, cost, reserved, session }),
    ]
}

fn budgets() -> impl Strategy<Value = Vec<BudgetSpec>> {
    (500u64..3_000, 200u64..1_500, 200u64..1_500, 100u64..800, 100u64..800).prop_map(|(org, team, user, key, soft)| {
        vec![
            BudgetSpec { scope: Scope::Org, model: None, limit: org, period: Period::Total, mode: Mode::Hard },
            BudgetSpec {
                scope: Scope::Team("t0".into()),
                model: None,
                limit: team,
                period: Period::Daily,
                mode: Mode::Hard,
            },
            BudgetSpec {
                scope: Scope::User("u2@x.io".into()),
                model: None,
                limit: user,
                period: Period::Total,
                mode: Mode::Hard,
            },
            BudgetSpec {
                scope: Scope::Key("k1".into()),
                model: Some("m2"),
                limit: key,
                period: Period::Total,
                mode: Mode::Hard,
            },
            BudgetSpec {
                scope: Scope::Key("k3".into()),
                model: None,
                limit: soft,
                period: Period::Weekly,
                mode: Mode::Soft,
            },
        ]
    })
}

/// Batches of ops, each with how far the leader's clock moved (sometimes back).
fn history() -> impl Strategy<Value = Vec<(i64, Vec<Op>)>> {
    prop::collection::vec((-500i64..40_000, prop::collection::vec(op(), 1..6)), 1..120)
}

fn to_cmd(op: &Op, specs: &[BudgetSpec]) -> Command {
    let hid = |h: u8| HoldId(0xABCD_0000 + h as u128);
    match op {
        Op::Reserve { hold, key, model, amount, ttl } => Command::Reserve {
            hold: hid(*hold),
            key: KEYS[*key].0.into(),
            model: MODELS[*model].into(),
            amount: NanoUsd(*amount),
            ttl_ms: *ttl,
        },
        Op::Settle { hold, cost, session } => {
            let settle = Command::Settle {
                hold: hid(*hold),
                cost: NanoUsd(*cost),
                usage: Usage { input_tokens: *cost, output_tokens: 1, ..Default::default() },
                estimated: false,
                session: None,
            };
            match session {
                None => settle,
                Some(n) => Command::Attributed {
                    attribution: Attribution {
                        session: Some(format!("s{n}")),
                        agent: Some(format!("a{n}")),
                        ..Default::default()
                    },
                    cmd: Box::new(settle),
                },
            }
        }
        Op::Release { hold } => Command::Release { hold: hid(*hold) },
        Op::Extend { hold, ttl } => Command::Extend { hold: hid(*hold), ttl_ms: *ttl },
        Op::Tick => Command::Tick,
        Op::Lease { holder, budget, seq, add, give, ttl, limit_ok } => Command::Lease(LeaseAsk {
            holder: HOLDERS[*holder].into(),
            caller: HOLDERS[*holder].split('/').next().unwrap().into(),
            budget: BudgetId(*budget as u64),
            seq: *seq,
            add: NanoUsd(*add),
            give_back: NanoUsd(*give),
            ttl_ms: *ttl,
            limit: NanoUsd(specs[*budget].limit + u64::from(!*limit_ok)),
        }),
        Op::LeasedSettle { hold, holder, key, model, cost, reserved, session } => {
            let settle = Command::LeasedSettle {
                hold: hid(*hold),
                holder: HOLDERS[*holder].into(),
                key: KEYS[*key].0.into(),
                model: MODELS[*model].into(),
                cost: NanoUsd(*cost),
                reserved: NanoUsd(*reserved),
                usage: Usage { input_tokens: *cost, ..Default::default() },
                estimated: false,
                ttl_ms: 60_000,
            };
            match session {
                None => settle,
                Some(n) => Command::Attributed {
                    attribution: Attribution { session: Some(format!("s{n}")), ..Default::default() },
                    cmd: Box::new(settle),
                },
            }
        }
    }
}

fn model_apply(m: &mut Model, op: &Op) -> String {
    let hid = |h: u8| 0xABCD_0000 + h as u128;
    match op {
        Op::Reserve { hold, key, model, amount, ttl } => m.reserve(hid(*hold), *key, *model, *amount, *ttl),
        Op::Settle { hold, cost, .. } => m.settle(hid(*hold), *cost),
        Op::Release { hold } => m.release(hid(*hold)),
        Op::Extend { hold, ttl } => m.extend(hid(*hold), *ttl),
        Op::Tick => "done".into(),
        Op::Lease { holder, budget, seq, add, give, ttl, limit_ok } => {
            m.lease(*holder, *budget, *seq, *add, *give, *ttl, *limit_ok)
        }
        Op::LeasedSettle { hold, holder, key, model, cost, reserved, .. } => {
            m.leased_settle(hid(*hold), *holder, *key, *model, *cost, *reserved)
        }
    }
}

/// A budget's accounting as stored: period start and amounts.
struct Acct {
    period: Period,
    pstart: u64,
    settled: u64,
    unsettled: u64,
    held: u64,
    excess: u64,
    leased: u64,
    limit: u64,
}

/// Effective (period-aware) accounting of a budget as of `clock`:
/// (settled, unsettled, held, excess, leased).
fn effective(a: Acct, clock: u64) -> (u64, u64, u64, u64, u64) {
    if a.period.start_ms(clock) == a.pstart {
        (a.settled, a.unsettled, a.held, a.excess, a.leased)
    } else {
        (0, 0, a.held, (a.held + a.leased).saturating_sub(a.limit), a.leased)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_entry(specs in budgets(), hist in history()) {
        let mut state = LedgerState::new();
        let mut index = 1;
        let setup = state.apply(index, &Batch { time_ms: START_MS, cmds: setup_cmds(&specs) });
        prop_assert!(setup.iter().all(|o| *o == Outcome::Done), "setup failed: {setup:?}");
        let mut model = Model {
            clock: START_MS,
            budgets: specs.iter().map(|s| MBudget {
                spec: s.clone(), pstart: s.period.start_ms(START_MS), settled: 0, unsettled: 0, held: 0, excess: 0,
                leased: 0, paused_until: 0,
            }).collect(),
            holds: BTreeMap::new(),
            tombstones: Vec::new(),
            leases: BTreeMap::new(),
        };
        let mut replica = state.clone();
        let mut leader_time = START_MS as i64;
        let snapshot_at = hist.len() / 2;
        for (step, (dt, ops)) in hist.iter().enumerate() {
            index += 1;
            leader_time += dt;
            let batch = Batch { time_ms: leader_time as u64, cmds: ops.iter().map(|o| to_cmd(o, &specs)).collect() };
            let before = state.clone();
            let outcomes = state.apply(index, &batch);
            model.advance(batch.time_ms);
            for (op, out) in ops.iter().zip(&outcomes) {
                let want = model_apply(&mut model, op);
                prop_assert_eq!(kind(out), want, "step {} op {:?}", step, op);
            }
            // Invariants 1 and 4 from scratch, plus the model's exact figures.
            prop_assert!(state.check_invariants().is_ok(), "{:?}", state.check_invariants());
            prop_assert!(state.clock_ms >= before.clock_ms, "the clock went backwards");
            for (i, mb) in model.budgets.iter().enumerate() {
                let b = &state.budgets[&BudgetId(i as u64)];
                let got = effective(
                    Acct {
                        period: b.period,
                        pstart: b.period_start_ms,
                        settled: b.settled.0,
                        unsettled: b.unsettled.0,
                        held: b.held.0,
                        excess: b.excess.0,
                        leased: state.leases.leased(BudgetId(i as u64)).0,
                        limit: b.limit.0,
                    },
                    state.clock_ms,
                );
                let want = effective(
                    Acct {
                        period: mb.spec.period,
                        pstart: mb.pstart,
                        settled: mb.settled,
                        unsettled: mb.unsettled,
                        held: mb.held,
                        excess: mb.excess,
                        leased: mb.leased,
                        limit: mb.spec.limit,
                    },
                    model.clock,
                );
                prop_assert_eq!(got, want, "budget {} ({}) after step {}", i, b.scope, step);
                if b.mode == Mode::Hard {
                    prop_assert!(got.0 + got.1 + got.2 + got.4 <= b.limit.0 + got.3, "hard cap broken on {}", b.scope);
                }
            }
            // Invariant 3: replaying a settle that already happened changes no budget.
            for op in ops {
                let settled = |h: &u8| model.holds.get(&(0xABCD_0000 + *h as u128)).is_some_and(|m| matches!(m.state, MState::Settled(_)));
                if let Op::Settle { hold, .. } | Op::LeasedSettle { hold, .. } = op.clone() {
                    if !settled(&hold) {
                        continue;
                    }
                    let hold = &hold;
                    let again = Batch { time_ms: batch.time_ms, cmds: vec![to_cmd(&Op::Settle { hold: *hold, cost: 599, session: Some(1) }, &specs)] };
                    let mut probe = state.clone();
                    let o = probe.apply(index, &again);
                    prop_assert!(matches!(o[0], Outcome::Settled { duplicate: true, .. }), "a second settle was applied: {:?}", o);
                    prop_assert_eq!(&probe.budgets, &state.budgets);
                    prop_assert_eq!(&probe.usage, &state.usage);
                }
            }
            // Invariant 2: a replica restored from a snapshot half-way agrees.
            if step == snapshot_at {
                let bytes = serde_json::to_vec(&replica).unwrap();
                replica = serde_json::from_slice(&bytes).unwrap();
                replica.rebuild_indexes();
            }
            replica.apply(index, &batch);
            prop_assert_eq!(replica.digest(), state.digest(), "replica diverged at step {}", step);
        }
    }
}
