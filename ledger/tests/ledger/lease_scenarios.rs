//! Worked scenarios of budget leases, one per rule (`state::lease`): each
//! builds a tiny org with one hard team budget, applies entries with
//! explicit times and asserts the exact figures that result.

use tollgate_ledger::money::NanoUsd;
use tollgate_ledger::state::*;

const T0: u64 = 1_795_906_800_000; // 2026-11-28 23:00 UTC
const TEAM: BudgetId = BudgetId(0);

fn org(limit: u64) -> Ledger {
    let admin = |op| Command::Admin { actor: "alice".into(), op };
    let mut s = LedgerState::new();
    let out = s.apply(
        1,
        &Batch {
            time_ms: T0,
            cmds: vec![
                admin(AdminOp::CreateTeam { name: "eng".into() }),
                admin(AdminOp::CreateUser { email: "a@x.io".into(), team: "eng".into() }),
                admin(AdminOp::CreateKey {
                    id: "k1".into(),
                    user: "a@x.io".into(),
                    name: "laptop".into(),
                    secret_sha256: "a".repeat(64),
                }),
                admin(AdminOp::SetBudget {
                    scope: Scope::Team("eng".into()),
                    model: None,
                    limit: NanoUsd(limit),
                    period: Period::Monthly,
                    mode: Mode::Hard,
                }),
            ],
        },
    );
    assert!(out.iter().all(|o| *o == Outcome::Done), "{out:?}");
    Ledger { s, index: 1, limit }
}

struct Ledger {
    s: LedgerState,
    index: u64,
    limit: u64,
}

impl Ledger {
    fn apply(&mut self, time_ms: u64, cmd: Command) -> Outcome {
        self.index += 1;
        let out = self.s.apply(self.index, &Batch { time_ms, cmds: vec![cmd] }).remove(0);
        self.s.check_invariants().unwrap();
        out
    }

    fn lease(&mut self, time_ms: u64, holder: &str, seq: u64, add: u64, give_back: u64) -> LeaseGrant {
        let ask = LeaseAsk {
            holder: holder.into(),
            caller: holder.split('/').next().unwrap().into(),
            budget: TEAM,
            seq,
            add: NanoUsd(add),
            give_back: NanoUsd(give_back),
            ttl_ms: 10_000,
            limit: NanoUsd(self.limit),
        };
        match self.apply(time_ms, Command::Lease(ask)) {
            Outcome::Leased(g) => g,
            other => panic!("not leased: {other:?}"),
        }
    }

    fn settle(&mut self, time_ms: u64, hold: u128, holder: &str, cost: u64) -> Outcome {
        self.settle_reserved(time_ms, hold, holder, cost, cost)
    }

    fn settle_reserved(&mut self, time_ms: u64, hold: u128, holder: &str, cost: u64, reserved: u64) -> Outcome {
        let cmd = Command::LeasedSettle {
            hold: HoldId(hold),
            holder: holder.into(),
            key: "k1".into(),
            model: "m".into(),
            cost: NanoUsd(cost),
            reserved: NanoUsd(reserved),
            usage: Usage::default(),
            estimated: false,
            ttl_ms: 60_000,
        };
        self.apply(time_ms, cmd)
    }

    fn reserve(&mut self, time_ms: u64, hold: u128, amount: u64) -> Outcome {
        let cmd = Command::Reserve {
            hold: HoldId(hold),
            key: "k1".into(),
            model: "m".into(),
            amount: NanoUsd(amount),
            ttl_ms: 60_000,
        };
        self.apply(time_ms, cmd)
    }

    /// (settled, unsettled, held, leased, excess) of the team budget.
    fn figures(&self) -> (u64, u64, u64, u64, u64) {
        let b = &self.s.budgets[&TEAM];
        (b.settled.0, b.unsettled.0, b.held.0, self.s.leases.leased(TEAM).0, b.excess.0)
    }
}

#[test]
fn a_lease_is_at_most_half_the_room_and_a_settle_moves_its_cost_from_leased_to_spent() {
    let mut l = org(10_000);
    let g = l.lease(T0, "edge:a/1", 1, 8_000, 0);
    // Half of the 10,000 neither spent nor held, for the only holder.
    assert_eq!((g.granted.0, g.room.0, g.share.0, g.duplicate), (5_000, 5_000, 5_000, false));
    assert_eq!(g.expires_at_ms, T0 + 10_000);
    assert_eq!(l.settle(T0 + 1, 7, "edge:a/1", 1_200), Outcome::Settled { charged: NanoUsd(1_200), duplicate: false });
    assert_eq!(l.figures(), (1_200, 0, 0, 3_800, 0));
    // Exactly once: the outbox repeating it changes nothing.
    assert_eq!(l.settle(T0 + 2, 7, "edge:a/1", 999), Outcome::Settled { charged: NanoUsd(1_200), duplicate: true });
    assert_eq!(l.figures(), (1_200, 0, 0, 3_800, 0));
    // Per-request holds see the leased room as used.
    let Outcome::Denied(d) = l.reserve(T0 + 3, 50, 5_001) else { panic!("not denied") };
    assert_eq!((d.spent.0, d.held.0), (1_200, 3_800));
    assert!(matches!(l.reserve(T0 + 3, 51, 5_000), Outcome::Granted { .. }));
}

#[test]
fn a_retried_grant_is_answered_not_applied_twice_and_an_older_one_is_refused() {
    let mut l = org(10_000);
    let g = l.lease(T0, "edge:a/1", 4, 1_000, 0);
    let again = l.lease(T0 + 5, "edge:a/1", 4, 1_000, 0);
    assert_eq!((again.granted.0, again.room.0, again.duplicate), (1_000, 1_000, true));
    assert_eq!(again.expires_at_ms, g.expires_at_ms);
    assert_eq!(l.figures().3, 1_000);
    let ask = LeaseAsk {
        holder: "edge:a/1".into(),
        caller: "edge:a".into(),
        budget: TEAM,
        seq: 3,
        add: NanoUsd(1),
        give_back: NanoUsd::ZERO,
        ttl_ms: 10_000,
        limit: NanoUsd(10_000),
    };
    assert!(
        matches!(l.apply(T0 + 6, Command::Lease(ask)), Outcome::Rejected(r) if r.code == ErrorCode::FailedPrecondition)
    );
}

#[test]
fn two_holders_share_the_room_and_a_changed_limit_grants_nothing() {
    let mut l = org(12_000);
    assert_eq!(l.lease(T0, "edge:a/1", 1, 100_000, 0).room.0, 6_000);
    // The second holder's share is a quarter of the pool; the room left is 6,000.
    let b = l.lease(T0, "edge:b/1", 1, 100_000, 0);
    assert_eq!((b.room.0, b.share.0), (3_000, 3_000));
    // The first renews: its share is now a quarter too, so it gives back.
    let a = l.lease(T0 + 1, "edge:a/1", 2, 0, 0);
    assert_eq!((a.room.0, a.share.0), (6_000, 3_000));
    let a = l.lease(T0 + 2, "edge:a/1", 3, 0, 3_000);
    assert_eq!(a.room.0, 3_000);
    assert_eq!(l.figures().3, 6_000);
    // An edge that sized its ask for another limit is granted nothing.
    l.limit = 11_000;
    let stale = l.lease(T0 + 3, "edge:b/1", 2, 1_000, 0);
    assert_eq!((stale.granted.0, stale.share.0, stale.room.0), (0, 0, 3_000));
}

#[test]
fn an_expired_lease_is_charged_unsettled_and_late_settles_and_give_backs_replace_it() {
    let mut l = org(10_000);
    l.lease(T0, "edge:a/1", 1, 2_000, 0);
    assert_eq!(l.s.next_expiry_ms(), Some(T0 + 10_000));
    l.apply(T0 + 10_000, Command::Tick);
    assert_eq!(l.figures(), (0, 2_000, 0, 0, 0));
    // A request admitted before the expiry settles late: its cost replaces
    // that much of the unsettled charge.
    l.settle(T0 + 11_000, 1, "edge:a/1", 700);
    assert_eq!(l.figures(), (700, 1_300, 0, 0, 0));
    // The edge, back in touch, gives back what it never used.
    let g = l.lease(T0 + 12_000, "edge:a/1", 2, 0, 1_000);
    assert_eq!((g.granted.0, g.room.0), (0, 0));
    assert_eq!(l.figures(), (700, 300, 0, 0, 0));
    // Forgotten the longest hold ttl after it was last touched; a settle
    // later than that is charged directly.
    l.apply(T0 + 11_999 + MAX_TTL_MS, Command::Tick);
    assert!(l.s.leases.get(TEAM, "edge:a/1").is_some());
    l.apply(T0 + 12_000 + MAX_TTL_MS, Command::Tick);
    assert!(l.s.leases.get(TEAM, "edge:a/1").is_none());
    l.settle(T0 + 12_001 + MAX_TTL_MS, 2, "edge:a/1", 100);
    assert_eq!(l.figures(), (800, 300, 0, 0, 0));
}

#[test]
fn a_cost_beyond_the_lease_is_charged_and_excess_is_what_passed_the_reservation_or_the_limit() {
    let mut l = org(1_000);
    assert_eq!(l.lease(T0, "edge:a/1", 1, 400, 0).room.0, 400);
    assert!(matches!(l.reserve(T0, 9, 500), Outcome::Granted { .. }));
    // 450 on a 400 lease, reserved as 450: still within the limit, no excess.
    l.settle(T0 + 1, 1, "edge:a/1", 450);
    assert_eq!(l.figures(), (450, 0, 500, 0, 0));
    // 600 reserved as 600 with no lease room left: 450 + 500 held + 600 =
    // 1,550, so 550 past the limit.
    l.settle(T0 + 2, 2, "edge:a/1", 600);
    assert_eq!(l.figures(), (1_050, 0, 500, 0, 550));
    // 80 reserved as 30: 50 beyond its reservation is excess, on the budget
    // and in the key's usage.
    let mut l = org(10_000);
    l.lease(T0, "edge:a/1", 1, 400, 0);
    l.settle_reserved(T0 + 1, 1, "edge:a/1", 80, 30);
    assert_eq!(l.figures(), (80, 0, 0, 320, 50));
    assert_eq!(l.s.excess["key:k1"], NanoUsd(50));
}

#[test]
fn a_reserve_denied_while_leases_hold_room_pauses_grants_so_the_room_comes_back() {
    let mut l = org(1_000);
    assert_eq!(l.lease(T0, "edge:a/1", 1, 1_000, 0).room.0, 500);
    assert!(matches!(l.reserve(T0, 1, 400), Outcome::Granted { .. }));
    // 400 held + 500 leased: a reserve of 200 would fit the budget without the lease.
    assert!(matches!(l.reserve(T0 + 1, 2, 200), Outcome::Denied(_)));
    let g = l.lease(T0 + 2, "edge:a/1", 2, 1_000, 0);
    assert_eq!((g.granted.0, g.share.0), (0, 0));
    let g = l.lease(T0 + 3, "edge:a/1", 3, 0, 500);
    assert_eq!(g.room.0, 0);
    assert!(matches!(l.reserve(T0 + 4, 3, 200), Outcome::Granted { .. }));
    // The pause ends: leases grow again, from what is left.
    let g = l.lease(T0 + 2 + LEASE_PAUSE_MS, "edge:a/1", 4, 1_000, 0);
    assert_eq!(g.room.0, 200); // (1,000 - 600 held) / 2
}

#[test]
fn soft_budgets_take_no_lease_and_a_caller_has_a_bounded_number() {
    let mut l = org(1_000);
    l.apply(
        T0,
        Command::Admin {
            actor: "alice".into(),
            op: AdminOp::SetBudget {
                scope: Scope::Org,
                model: None,
                limit: NanoUsd(5),
                period: Period::Monthly,
                mode: Mode::Soft,
            },
        },
    );
    let ask = |budget, holder: String| LeaseAsk {
        holder,
        caller: "edge:a".into(),
        budget,
        seq: 1,
        add: NanoUsd(1),
        give_back: NanoUsd::ZERO,
        ttl_ms: 1_000,
        limit: NanoUsd(1_000),
    };
    let soft = l.apply(T0, Command::Lease(ask(BudgetId(1), "edge:a/1".into())));
    assert!(matches!(soft, Outcome::Rejected(r) if r.code == ErrorCode::FailedPrecondition));
    for n in 0..MAX_LEASES_PER_CALLER {
        l.index += 1;
        l.s.apply(l.index, &Batch { time_ms: T0, cmds: vec![Command::Lease(ask(TEAM, format!("edge:a/{n}")))] });
    }
    let over = l.apply(T0, Command::Lease(ask(TEAM, "edge:a/last".into())));
    assert!(matches!(&over, Outcome::Rejected(r) if r.code == ErrorCode::FailedPrecondition), "{over:?}");
}
