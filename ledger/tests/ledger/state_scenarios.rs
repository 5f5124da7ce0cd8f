//! Worked scenarios of the budget state machine, one per rule of the design:
//! each builds a tiny org, applies entries with explicit times and asserts the
//! exact figures that result.

use tollgate_ledger::money::NanoUsd;
use tollgate_ledger::state::*;

const T0: u64 = 1_795_906_800_000; // 2026-11-28 23:00 UTC
const HOUR: u64 = 3_600_000;

fn admin(op: AdminOp) -> Command {
    Command::Admin { actor: "alice".into(), op }
}

fn org(limit: u64, period: Period) -> (LedgerState, u64) {
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
                    period,
                    mode: Mode::Hard,
                }),
            ],
        },
    );
    assert!(out.iter().all(|o| *o == Outcome::Done), "{out:?}");
    (s, 2)
}

fn reserve(hold: u128, amount: u64, ttl_ms: u64) -> Command {
    Command::Reserve { hold: HoldId(hold), key: "k1".into(), model: "m".into(), amount: NanoUsd(amount), ttl_ms }
}

fn settle(hold: u128, cost: u64) -> Command {
    Command::Settle {
        hold: HoldId(hold),
        cost: NanoUsd(cost),
        usage: Usage::default(),
        estimated: false,
        session: None,
    }
}

fn one(s: &mut LedgerState, index: &mut u64, time_ms: u64, cmd: Command) -> Outcome {
    *index += 1;
    s.apply(*index, &Batch { time_ms, cmds: vec![cmd] }).remove(0)
}

fn team_budget(s: &LedgerState) -> &BudgetRec {
    s.budgets.values().next().unwrap()
}

#[test]
fn hard_budget_denies_the_reserve_that_would_exceed_it_and_names_the_scope() {
    let (mut s, mut i) = org(1000, Period::Daily);
    assert!(matches!(one(&mut s, &mut i, T0, reserve(1, 600, 60_000)), Outcome::Granted { .. }));
    assert_eq!(one(&mut s, &mut i, T0, settle(1, 550)), Outcome::Settled { charged: NanoUsd(550), duplicate: false });
    assert!(matches!(one(&mut s, &mut i, T0, reserve(2, 400, 2 * HOUR)), Outcome::Granted { .. }));
    // 550 spent + 400 held + 51 > 1000.
    let Outcome::Denied(d) = one(&mut s, &mut i, T0, reserve(3, 51, 60_000)) else { panic!("not denied") };
    assert_eq!(d.scope, Scope::Team("eng".into()));
    assert_eq!((d.limit, d.spent, d.held, d.requested), (NanoUsd(1000), NanoUsd(550), NanoUsd(400), NanoUsd(51)));
    assert_eq!(d.resets_at_ms, Some(T0 + HOUR)); // midnight UTC
                                                 // Exactly at the limit is allowed.
    assert!(matches!(one(&mut s, &mut i, T0, reserve(4, 50, 2 * HOUR)), Outcome::Granted { .. }));
    // After midnight the daily budget starts again; the live holds still count.
    let b = team_budget(&s);
    assert_eq!((b.spent(), b.held), (NanoUsd(550), NanoUsd(450)));
    assert!(matches!(one(&mut s, &mut i, T0 + HOUR, reserve(5, 550, 60_000)), Outcome::Granted { .. }));
    let b = team_budget(&s);
    assert_eq!((b.spent(), b.held, b.requests), (NanoUsd(0), NanoUsd(1000), 1));
}

#[test]
fn second_settle_reports_the_first_and_changes_nothing() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 500, 60_000));
    assert_eq!(one(&mut s, &mut i, T0, settle(1, 120)), Outcome::Settled { charged: NanoUsd(120), duplicate: false });
    let before = s.budgets.clone();
    assert_eq!(one(&mut s, &mut i, T0, settle(1, 999)), Outcome::Settled { charged: NanoUsd(120), duplicate: true });
    assert_eq!(s.budgets, before);
    assert_eq!(team_budget(&s).spent(), NanoUsd(120));
    // A release after a settle cannot undo it.
    assert!(matches!(one(&mut s, &mut i, T0, Command::Release { hold: HoldId(1) }), Outcome::Rejected(_)));
}

#[test]
fn expiry_charges_the_full_hold_as_unsettled_and_a_late_settle_replaces_it() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 300, 1_000));
    assert_eq!(s.next_expiry_ms(), Some(T0 + 1_000));
    one(&mut s, &mut i, T0 + 1_000, Command::Tick);
    let b = team_budget(&s);
    assert_eq!((b.settled, b.unsettled, b.held), (NanoUsd(0), NanoUsd(300), NanoUsd(0)));
    assert_eq!(s.active_holds(), 0);
    assert_eq!(
        one(&mut s, &mut i, T0 + 1_500, settle(1, 90)),
        Outcome::Settled { charged: NanoUsd(90), duplicate: false }
    );
    let b = team_budget(&s);
    assert_eq!((b.settled, b.unsettled, b.held), (NanoUsd(90), NanoUsd(0), NanoUsd(0)));
    assert_eq!(s.usage["team:eng"].settled, NanoUsd(90));
    assert_eq!(s.usage["team:eng"].unsettled, NanoUsd(0));
}

#[test]
fn a_release_that_arrives_first_stops_the_reserve_from_resurrecting_the_hold() {
    let (mut s, mut i) = org(1000, Period::Total);
    assert_eq!(one(&mut s, &mut i, T0, Command::Release { hold: HoldId(7) }), Outcome::Released);
    let Outcome::Rejected(r) = one(&mut s, &mut i, T0 + 5, reserve(7, 100, 60_000)) else { panic!("reserved") };
    assert_eq!(r.code, ErrorCode::FailedPrecondition);
    assert_eq!(team_budget(&s).held, NanoUsd(0));
    // The tombstone is kept at least as long as the longest hold could live.
    one(&mut s, &mut i, T0 + MAX_TTL_MS - 1, Command::Tick);
    assert!(matches!(one(&mut s, &mut i, T0 + MAX_TTL_MS - 1, reserve(7, 100, 60_000)), Outcome::Rejected(_)));
}

#[test]
fn finished_holds_are_forgotten_after_the_retention_window() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 100, 60_000));
    one(&mut s, &mut i, T0 + 10, settle(1, 10));
    assert_eq!(s.holds.len(), 1);
    // Kept for one ttl (60 s) after it finished, so a retried settle is answered...
    assert_eq!(
        one(&mut s, &mut i, T0 + 60_000, settle(1, 10)),
        Outcome::Settled { charged: NanoUsd(10), duplicate: true }
    );
    one(&mut s, &mut i, T0 + 10 + 60_000, Command::Tick);
    assert_eq!(s.holds.len(), 0);
    // ...then forgotten: a very late duplicate is refused, never charged again.
    assert!(matches!(one(&mut s, &mut i, T0 + 20 + 60_000, settle(1, 10)), Outcome::Rejected(_)));
    assert_eq!(team_budget(&s).spent(), NanoUsd(10));
}

#[test]
fn clock_never_moves_backwards() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0 + 5_000, Command::Tick);
    one(&mut s, &mut i, T0 + 1_000, reserve(1, 100, 2_000));
    assert_eq!(s.clock_ms, T0 + 5_000);
    assert_eq!(s.next_expiry_ms(), Some(T0 + 7_000));
}

#[test]
fn extend_keeps_a_streaming_hold_alive() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 100, 1_000));
    assert_eq!(
        one(&mut s, &mut i, T0 + 900, Command::Extend { hold: HoldId(1), ttl_ms: 1_000 }),
        Outcome::Extended { expires_at_ms: T0 + 1_900 }
    );
    one(&mut s, &mut i, T0 + 1_500, Command::Tick);
    assert_eq!(s.active_holds(), 1);
    assert_eq!(team_budget(&s).unsettled, NanoUsd(0));
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    let (mut s, mut i) = org(1000, Period::Total);
    let digest = |s: &LedgerState| {
        let mut c = s.clone();
        c.last_index = 0;
        c.digest()
    };
    let before = digest(&s);
    let cases = vec![
        (reserve(1, 0, 1_000), ErrorCode::InvalidArgument),
        (reserve(1, 10, 0), ErrorCode::InvalidArgument),
        (reserve(1, 10, MAX_TTL_MS + 1), ErrorCode::InvalidArgument),
        (
            Command::Reserve { hold: HoldId(1), key: "nope".into(), model: "m".into(), amount: NanoUsd(1), ttl_ms: 10 },
            ErrorCode::NotFound,
        ),
        (settle(99, 1), ErrorCode::NotFound),
        (admin(AdminOp::CreateTeam { name: "eng".into() }), ErrorCode::AlreadyExists),
        (admin(AdminOp::CreateTeam { name: "bad name".into() }), ErrorCode::InvalidArgument),
        (admin(AdminOp::CreateUser { email: "b@x.io".into(), team: "nope".into() }), ErrorCode::NotFound),
        (admin(AdminOp::CreateUser { email: "not-an-email".into(), team: "eng".into() }), ErrorCode::InvalidArgument),
        (
            admin(AdminOp::CreateKey {
                id: "k2".into(),
                user: "a@x.io".into(),
                name: String::new(),
                secret_sha256: "xyz".into(),
            }),
            ErrorCode::InvalidArgument,
        ),
        (admin(AdminOp::RevokeKey { id: "k9".into() }), ErrorCode::NotFound),
        (
            admin(AdminOp::SetBudget {
                scope: Scope::User("ghost@x.io".into()),
                model: None,
                limit: NanoUsd(1),
                period: Period::Total,
                mode: Mode::Hard,
            }),
            ErrorCode::NotFound,
        ),
        (
            admin(AdminOp::SetPolicy { scope: Scope::Team("ghost".into()), allowed_models: vec!["m".into()] }),
            ErrorCode::NotFound,
        ),
    ];
    for (cmd, code) in cases {
        let Outcome::Rejected(r) = one(&mut s, &mut i, T0, cmd.clone()) else { panic!("{cmd:?} was not rejected") };
        assert_eq!(r.code, code, "{cmd:?}: {}", r.message);
        assert!(!r.message.is_empty());
    }
    assert_eq!(digest(&s), before);
}

#[test]
fn admin_changes_are_audited_with_actor_and_entry_time() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0 + 42, admin(AdminOp::RevokeKey { id: "k1".into() }));
    let last = s.audit.last().unwrap();
    assert_eq!((last.stamp.actor.as_str(), last.stamp.time_ms, last.stamp.index), ("alice", T0 + 42, i));
    assert_eq!(last.what, "revoke key k1");
    assert_eq!(s.config_index, i);
    // A revoked key can no longer reserve.
    assert!(
        matches!(one(&mut s, &mut i, T0 + 50, reserve(1, 1, 10)), Outcome::Rejected(r) if r.code == ErrorCode::FailedPrecondition)
    );
}

#[test]
fn lowering_a_limit_below_usage_is_recorded_as_excess_and_blocks_new_reserves() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 800, 60_000));
    let out = one(
        &mut s,
        &mut i,
        T0,
        admin(AdminOp::SetBudget {
            scope: Scope::Team("eng".into()),
            model: None,
            limit: NanoUsd(500),
            period: Period::Total,
            mode: Mode::Hard,
        }),
    );
    assert_eq!(out, Outcome::Done);
    assert_eq!(team_budget(&s).excess, NanoUsd(300));
    assert!(matches!(one(&mut s, &mut i, T0, reserve(2, 1, 60_000)), Outcome::Denied(_)));
    assert!(s.check_invariants().is_ok());
}

#[test]
fn a_late_settle_only_replaces_unsettled_spend_of_the_same_period() {
    // total → daily → (next day) → total again: the period start is back to
    // 0, but the expired hold's unsettled charge belongs to a period that is
    // gone; the late settle must not take it off the current one.
    let (mut s, mut i) = org(100, Period::Total);
    let set = |period| {
        admin(AdminOp::SetBudget {
            scope: Scope::Team("eng".into()),
            model: None,
            limit: NanoUsd(100),
            period,
            mode: Mode::Hard,
        })
    };
    let min = 60_000;
    one(&mut s, &mut i, T0, reserve(1, 50, 40 * min)); // 23:00, expires 23:40, kept until 00:20
    one(&mut s, &mut i, T0 + 40 * min, Command::Tick); // expired: 50 unsettled
    assert_eq!(team_budget(&s).unsettled, NanoUsd(50));
    assert_eq!(one(&mut s, &mut i, T0 + 41 * min, set(Period::Daily)), Outcome::Done);
    // 00:01: a new day, a new daily period with nothing spent.
    assert!(matches!(one(&mut s, &mut i, T0 + 61 * min, reserve(2, 100, HOUR)), Outcome::Granted { .. }));
    assert_eq!(one(&mut s, &mut i, T0 + 62 * min, set(Period::Total)), Outcome::Done);
    assert_eq!(
        one(&mut s, &mut i, T0 + 63 * min, settle(1, 10)),
        Outcome::Settled { charged: NanoUsd(10), duplicate: false }
    );
    let b = team_budget(&s);
    assert_eq!((b.settled, b.unsettled, b.held), (NanoUsd(0), NanoUsd(0), NanoUsd(100)));
    assert!(s.check_invariants().is_ok());
}

#[test]
fn token_counts_saturate_instead_of_overflowing() {
    let (mut s, mut i) = org(1000, Period::Total);
    for h in [1, 2] {
        one(&mut s, &mut i, T0, reserve(h, 1, 60_000));
        let big = Usage { input_tokens: u64::MAX, ..Default::default() };
        let cmd = Command::Settle { hold: HoldId(h), cost: NanoUsd(1), usage: big, estimated: false, session: None };
        assert!(matches!(one(&mut s, &mut i, T0, cmd), Outcome::Settled { .. }));
    }
    assert_eq!(s.usage["team:eng"].usage.input_tokens, u64::MAX);
}

fn charge(hold: u128, key: &str, cost: u64) -> Command {
    Command::Charge {
        hold: HoldId(hold),
        key: key.into(),
        model: "m".into(),
        cost: NanoUsd(cost),
        usage: Usage { input_tokens: 10, output_tokens: 2, ..Default::default() },
        estimated: false,
        session: None,
        ttl_ms: 60_000,
    }
}

#[test]
fn a_fail_open_charge_without_a_hold_is_charged_once_and_overshoot_is_recorded_as_excess() {
    let (mut s, mut i) = org(1000, Period::Total);
    one(&mut s, &mut i, T0, reserve(1, 600, 60_000));
    one(&mut s, &mut i, T0, settle(1, 600));
    // The edge admitted hold 9 while the ledger was out of reach; the
    // provider billed 700. Never denied: 1300 spent, 300 of it over the limit.
    assert_eq!(
        one(&mut s, &mut i, T0 + 10, charge(9, "k1", 700)),
        Outcome::Settled { charged: NanoUsd(700), duplicate: false }
    );
    let b = team_budget(&s).clone();
    assert_eq!((b.settled, b.held, b.excess, b.requests), (NanoUsd(1300), NanoUsd(0), NanoUsd(300), 2));
    assert_eq!(s.usage["key:k1"].settled, NanoUsd(1300));
    assert_eq!(s.usage["key:k1"].usage.input_tokens, 10);
    assert_eq!(s.usage["model:m"].requests, 2);
    assert!(s.check_invariants().is_ok());
    // Replayed by the outbox, or settled again: answered, nothing applied.
    assert_eq!(
        one(&mut s, &mut i, T0 + 20, charge(9, "k1", 700)),
        Outcome::Settled { charged: NanoUsd(700), duplicate: true }
    );
    assert_eq!(one(&mut s, &mut i, T0 + 20, settle(9, 5)), Outcome::Settled { charged: NanoUsd(700), duplicate: true });
    assert_eq!(team_budget(&s), &b);
    // A reserve that arrives late under the same id cannot hold anything.
    let Outcome::Rejected(r) = one(&mut s, &mut i, T0 + 30, reserve(9, 700, 60_000)) else { panic!("reserved") };
    assert_eq!(r.code, ErrorCode::AlreadyExists);
    // The budget is past its limit: the next reserve is denied.
    assert!(matches!(one(&mut s, &mut i, T0 + 30, reserve(2, 1, 60_000)), Outcome::Denied(_)));
    assert!(s.check_invariants().is_ok());
}

#[test]
fn a_fail_open_charge_settles_the_hold_when_its_reserve_landed_after_all() {
    let (mut s, mut i) = org(1000, Period::Total);
    // The reserve committed, but the edge never heard the answer.
    assert!(matches!(one(&mut s, &mut i, T0, reserve(5, 400, 60_000)), Outcome::Granted { .. }));
    assert_eq!(
        one(&mut s, &mut i, T0 + 10, charge(5, "k1", 250)),
        Outcome::Settled { charged: NanoUsd(250), duplicate: false }
    );
    let b = team_budget(&s);
    assert_eq!((b.settled, b.held, b.excess, b.requests), (NanoUsd(250), NanoUsd(0), NanoUsd(0), 1));
    assert_eq!(s.active_holds(), 0);
    assert!(s.check_invariants().is_ok());
}

#[test]
fn a_fail_open_charge_for_an_unknown_key_or_bad_input_changes_nothing_and_a_revoked_key_is_still_charged() {
    let (mut s, mut i) = org(1000, Period::Total);
    let before = s.clone();
    let Outcome::Rejected(r) = one(&mut s, &mut i, T0, charge(3, "k_nope", 10)) else { panic!("charged") };
    assert_eq!(r.code, ErrorCode::NotFound);
    let mut bad_ttl = charge(3, "k1", 10);
    if let Command::Charge { ttl_ms, .. } = &mut bad_ttl {
        *ttl_ms = 0;
    }
    let Outcome::Rejected(r) = one(&mut s, &mut i, T0, bad_ttl) else { panic!("charged") };
    assert_eq!(r.code, ErrorCode::InvalidArgument);
    assert_eq!((s.budgets.clone(), s.holds.len(), s.usage.clone()), (before.budgets, before.holds.len(), before.usage));
    one(&mut s, &mut i, T0, admin(AdminOp::RevokeKey { id: "k1".into() }));
    assert_eq!(
        one(&mut s, &mut i, T0, charge(4, "k1", 10)),
        Outcome::Settled { charged: NanoUsd(10), duplicate: false }
    );
    assert_eq!(team_budget(&s).settled, NanoUsd(10));
}

#[test]
fn a_fail_open_charge_long_after_its_reserve_expired_replaces_the_unsettled_charge_once() {
    let (mut s, mut i) = org(1000, Period::Total);
    // The reserve committed but the edge never heard: it admitted fail-open.
    assert!(matches!(one(&mut s, &mut i, T0, reserve(5, 400, 60_000)), Outcome::Granted { .. }));
    one(&mut s, &mut i, T0 + 60_000, Command::Tick);
    assert_eq!(team_budget(&s).unsettled, NanoUsd(400));
    // The outbox delivers the charge ten ttls later (a long partition).
    one(&mut s, &mut i, T0 + 11 * 60_000, Command::Tick);
    assert_eq!(
        one(&mut s, &mut i, T0 + 11 * 60_000, charge(5, "k1", 250)),
        Outcome::Settled { charged: NanoUsd(250), duplicate: false }
    );
    let b = team_budget(&s);
    assert_eq!((b.settled, b.unsettled, b.held), (NanoUsd(250), NanoUsd(0), NanoUsd(0)));
    // A charged id stays refused for a late reserve for the longest ttl.
    one(&mut s, &mut i, T0 + HOUR, charge(6, "k1", 100));
    one(&mut s, &mut i, T0 + 2 * HOUR, Command::Tick);
    let Outcome::Rejected(r) = one(&mut s, &mut i, T0 + 2 * HOUR, reserve(6, 100, 60_000)) else { panic!("reserved") };
    assert_eq!(r.code, ErrorCode::AlreadyExists);
    assert_eq!(team_budget(&s).settled, NanoUsd(350));
    assert!(s.check_invariants().is_ok());
}

/// The review's findings, each a command a rogue or buggy caller could send:
/// the state machine bounds what one command may do, whoever sent it.
mod bounds {
    use super::*;

    fn soft_team(s: &mut LedgerState, i: &mut u64) {
        let op = AdminOp::SetBudget {
            scope: Scope::Team("eng".into()),
            model: None,
            limit: NanoUsd(1_000),
            period: Period::Monthly,
            mode: Mode::Soft,
        };
        assert_eq!(one(s, i, T0, admin(op)), Outcome::Done);
    }

    #[test]
    fn a_settle_or_charge_above_the_per_request_maximum_is_refused_and_changes_nothing() {
        let (mut s, mut i) = org(u64::MAX, Period::Monthly);
        assert!(matches!(one(&mut s, &mut i, T0, reserve(1, 600, 60_000)), Outcome::Granted { .. }));
        let before = s.digest();
        let huge = |hold: u128| Command::Charge {
            hold: HoldId(hold),
            key: "k1".into(),
            model: "m".into(),
            cost: NanoUsd(u64::MAX),
            usage: Usage::default(),
            estimated: false,
            session: None,
            ttl_ms: 60_000,
        };
        // A settle of a live hold, a fail-open charge of it, and one of an unknown hold.
        for cmd in [settle(1, u64::MAX), huge(1), huge(9)] {
            let Outcome::Rejected(r) = one(&mut s, &mut i, T0, cmd) else { panic!("accepted") };
            assert_eq!(r.code, ErrorCode::InvalidArgument);
            assert!(r.message.contains("per-request maximum $1100.00"), "{}", r.message);
        }
        // Only the index moved.
        s.check_invariants().unwrap();
        assert_eq!(team_budget(&s).spent(), NanoUsd::ZERO);
        assert_eq!(team_budget(&s).held, NanoUsd(600));
        assert_ne!(before, s.digest()); // last_index differs
                                        // Reserves are bounded the same way; an operator can raise the bound.
        let big = DEFAULT_MAX_REQUEST.0 + 1;
        assert!(matches!(one(&mut s, &mut i, T0, reserve(2, big, 60_000)), Outcome::Rejected(_)));
        let op = AdminOp::SetLimits { max_request: NanoUsd(big) };
        assert_eq!(one(&mut s, &mut i, T0, admin(op)), Outcome::Done);
        assert!(matches!(one(&mut s, &mut i, T0, reserve(2, big, 60_000)), Outcome::Granted { .. }));
        assert_eq!(s.audit.last().unwrap().what, "set limits max request $1100.000000001");
        let op = AdminOp::SetLimits { max_request: NanoUsd::ZERO };
        assert!(matches!(one(&mut s, &mut i, T0, admin(op)), Outcome::Rejected(_)));
    }

    #[test]
    fn a_soft_budget_refuses_a_hold_that_would_overflow_instead_of_saturating() {
        let (mut s, mut i) = org(1_000, Period::Monthly);
        soft_team(&mut s, &mut i);
        let op = AdminOp::SetLimits { max_request: NanoUsd(u64::MAX) };
        assert_eq!(one(&mut s, &mut i, T0, admin(op)), Outcome::Done);
        assert!(matches!(one(&mut s, &mut i, T0, reserve(1, 500, 60_000)), Outcome::Granted { .. }));
        // Today's finding: a u64::MAX hold saturated `held`, and releasing it
        // wiped the other hold of the team.
        let Outcome::Rejected(r) = one(&mut s, &mut i, T0, reserve(2, u64::MAX, 60_000)) else { panic!("held") };
        assert!(r.message.contains("overflow"), "{}", r.message);
        assert_eq!(one(&mut s, &mut i, T0, Command::Release { hold: HoldId(2) }), Outcome::Released);
        assert_eq!(team_budget(&s).held, NanoUsd(500));
        s.check_invariants().unwrap();
    }

    #[test]
    fn release_tombstones_are_bounded_per_caller_and_expire() {
        let (mut s, mut i) = org(1_000, Period::Monthly);
        let max = s.limits.max_tombstones_per_caller;
        let release = |hold: u128, caller: &str| Command::ReleaseBy { hold: HoldId(hold), caller: caller.into() };
        // One call's worth at a time, as a flood of unknown-id releases would come.
        let mut id = 1_000u128;
        while (id - 1_000) < u128::from(max) + 5_000 {
            i += 1;
            let cmds = (0..4096).map(|k| release(id + k, "edge:mallory")).collect();
            s.apply(i, &Batch { time_ms: T0, cmds });
            id += 4096;
        }
        assert_eq!(s.tombstones["edge:mallory"].len() as u64, max);
        // Another caller keeps its own: its tombstones still refuse a late reserve.
        assert_eq!(one(&mut s, &mut i, T0, release(7, "edge:honest")), Outcome::Released);
        let Outcome::Rejected(r) = one(&mut s, &mut i, T0, reserve(7, 10, 60_000)) else { panic!("resurrected") };
        assert_eq!(r.code, ErrorCode::FailedPrecondition);
        assert_eq!(s.holds.len() as u64, max + 1);
        s.check_invariants().unwrap();
        // After the longest ttl they are all forgotten.
        one(&mut s, &mut i, T0 + MAX_TTL_MS + 1, Command::Tick);
        assert!(s.tombstones.is_empty() && s.holds.is_empty());
        s.check_invariants().unwrap();
    }
}

fn price(model: &str, input: u64, output: u64) -> ModelPrice {
    ModelPrice {
        model: model.into(),
        provider: Some("anthropic".into()),
        input,
        output,
        cache_write_5m: None,
        cache_write_1h: Some(8_000_000),
        cache_read: None,
    }
}

#[test]
fn price_overrides_and_the_discount_are_replicated_config_validated_and_audited() {
    let (mut s, mut i) = org(1000, Period::Daily);
    let set = |set: Vec<ModelPrice>, remove: Vec<String>| admin(AdminOp::SetPrices { set, remove });
    let before = s.config_index;
    assert_eq!(
        one(
            &mut s,
            &mut i,
            T0,
            set(vec![price("claude-opus-5-5", 3_600_000, 18_000_000), price("my-ft", 1, 2)], vec![])
        ),
        Outcome::Done
    );
    assert!(s.config_index > before, "edges see the change at a new config index");
    assert_eq!(s.prices.overrides["claude-opus-5-5"].input, 3_600_000);
    assert_eq!(s.prices.overrides.len(), 2);
    assert_eq!(
        s.audit.last().unwrap().what,
        "set prices: claude-opus-5-5 in $3.6 out $18 w1h $8; my-ft in $0.000001 out $0.000002 w1h $8"
    );
    assert_eq!(s.audit.last().unwrap().stamp.actor, "alice");
    // All or nothing: one bad price changes nothing.
    let prices = s.prices.clone();
    let config_index = s.config_index;
    for bad in [
        price("has space", 1, 1),
        price("free", 0, 0),
        price("dear", MAX_PRICE_PICO_PER_TOKEN + 1, 1),
        ModelPrice { provider: Some("bedrock".into()), ..price("m", 1, 1) },
    ] {
        let out = one(&mut s, &mut i, T0, set(vec![price("ok", 1, 1), bad.clone()], vec![]));
        assert!(matches!(out, Outcome::Rejected(Rejection { code: ErrorCode::InvalidArgument, .. })), "{bad:?}");
    }
    let out = one(&mut s, &mut i, T0, set(vec![], vec!["never-set".into()]));
    assert!(matches!(out, Outcome::Rejected(Rejection { code: ErrorCode::NotFound, .. })));
    let many: Vec<ModelPrice> = (0..=MAX_PRICE_OVERRIDES).map(|n| price(&format!("m{n}"), 1, 1)).collect();
    let out = one(&mut s, &mut i, T0, set(many, vec![]));
    assert!(matches!(out, Outcome::Rejected(Rejection { code: ErrorCode::InvalidArgument, .. })));
    assert_eq!((&s.prices, s.config_index), (&prices, config_index), "rejections changed nothing");
    assert_eq!(one(&mut s, &mut i, T0, set(vec![], vec!["my-ft".into()])), Outcome::Done);
    assert_eq!(s.prices.overrides.keys().collect::<Vec<_>>(), ["claude-opus-5-5"]);
    assert_eq!(one(&mut s, &mut i, T0, admin(AdminOp::SetDiscount { basis_points: 1250 })), Outcome::Done);
    assert_eq!(s.prices.discount_bp, 1250);
    assert_eq!(s.audit.last().unwrap().what, "set discount 12.50%");
    let out = one(&mut s, &mut i, T0, admin(AdminOp::SetDiscount { basis_points: MAX_DISCOUNT_BP + 1 }));
    assert!(matches!(out, Outcome::Rejected(_)));
    assert_eq!(s.prices.discount_bp, 1250);
}

fn attributed(hold: u128, cost: u64, output: u64, a: Attribution) -> Command {
    Command::Attributed {
        attribution: a,
        cmd: Box::new(Command::Settle {
            hold: HoldId(hold),
            cost: NanoUsd(cost),
            usage: Usage { output_tokens: output, ..Default::default() },
            estimated: false,
            session: None,
        }),
    }
}

fn ids(session: &str, agent: &str, parent: Option<&str>, class: Option<&str>) -> Attribution {
    Attribution {
        session: Some(session.into()),
        agent: Some(agent.into()),
        parent_agent: parent.map(Into::into),
        request_class: class.map(Into::into),
        prompt: None,
    }
}

#[test]
fn settles_count_by_session_agent_and_request_class_and_excess_over_the_reservation_shows_per_principal() {
    let (mut s, mut i) = org(100_000, Period::Daily);
    for (h, amount) in [(1, 100), (2, 100), (3, 100)] {
        assert!(matches!(one(&mut s, &mut i, T0, reserve(h, amount, 60_000)), Outcome::Granted { .. }));
    }
    // The main agent, then a subagent it spawned, in one session.
    let main = ids("sess-1", "agent-main", None, Some("main"));
    let sub = ids("sess-1", "agent-sub", Some("agent-main"), Some("subagent"));
    assert_eq!(
        one(&mut s, &mut i, T0 + 5, attributed(1, 80, 10, main.clone())),
        Outcome::Settled { charged: NanoUsd(80), duplicate: false }
    );
    assert_eq!(
        one(&mut s, &mut i, T0 + 9, attributed(2, 130, 20, sub)),
        Outcome::Settled { charged: NanoUsd(130), duplicate: false }
    );
    // A duplicate settle counts nowhere.
    assert_eq!(
        one(&mut s, &mut i, T0 + 10, attributed(2, 130, 20, main.clone())),
        Outcome::Settled { charged: NanoUsd(130), duplicate: true }
    );
    let get = |s: &LedgerState, k: AttribKind, id: &str| {
        s.attribution.of(k).find(|(i, _)| *i == id).map(|(_, r)| r.clone()).unwrap()
    };
    let session = get(&s, AttribKind::Session, "sess-1");
    assert_eq!((session.settled, session.requests, session.usage.output_tokens), (NanoUsd(210), 2, 30));
    assert_eq!(session.excess, NanoUsd(30), "hold 2 cost 30 more than its reservation");
    assert_eq!((session.first_ms, session.last_ms, session.user.as_str()), (T0 + 5, T0 + 9, "a@x.io"));
    let sub = get(&s, AttribKind::Agent, "agent-sub");
    assert_eq!((sub.settled, sub.parent.as_deref()), (NanoUsd(130), Some("agent-main")));
    assert_eq!(get(&s, AttribKind::Agent, "agent-main").parent, None);
    assert_eq!(get(&s, AttribKind::RequestClass, "subagent").settled, NanoUsd(130));
    assert_eq!(s.attribution.of(AttribKind::Prompt).count(), 0);
    // Per principal: the same 30 of excess on the team, user, key and model.
    for k in ["team:eng", "user:a@x.io", "key:k1", "model:m"] {
        assert_eq!(s.excess[k], NanoUsd(30), "{k}");
    }
    // A plain settle (no attribution) is counted as before, nowhere else.
    one(&mut s, &mut i, T0 + 11, settle(3, 50));
    assert_eq!(get(&s, AttribKind::Session, "sess-1").requests, 2);
    s.check_invariants().unwrap();
    // The state still has a digest (every replica compares it).
    assert_eq!(s.digest().len(), 64);
}

#[test]
fn attribution_is_bounded_per_kind_and_forgets_the_least_recently_updated() {
    let (mut s, mut i) = org(u64::MAX / 4, Period::Total);
    let cap = AttribKind::RequestClass.capacity() as u128;
    for h in 1..=cap + 2 {
        one(&mut s, &mut i, T0 + h as u64, reserve(h, 10, 60_000));
        let a = Attribution { request_class: Some(format!("class-{h}")), ..Default::default() };
        one(&mut s, &mut i, T0 + h as u64, attributed(h, 10, 1, a));
    }
    let classes: Vec<String> = s.attribution.of(AttribKind::RequestClass).map(|(id, _)| id.clone()).collect();
    assert_eq!(classes.len() as u128, cap);
    assert!(!classes.contains(&"class-1".to_string()) && !classes.contains(&"class-2".to_string()));
    assert!(classes.contains(&format!("class-{}", cap + 2)));
    // The bound holds after a restart from a snapshot (the derived index is rebuilt).
    let bytes = tollgate_ledger::codec::encode(&s).unwrap();
    let mut back: LedgerState = tollgate_ledger::codec::decode_snapshot(&bytes).unwrap();
    back.rebuild_indexes();
    let h = cap + 3;
    one(&mut back, &mut i, T0 + h as u64, reserve(h, 10, 60_000));
    one(
        &mut back,
        &mut i,
        T0 + h as u64,
        attributed(h, 10, 1, Attribution { request_class: Some("new".into()), ..Default::default() }),
    );
    assert_eq!(back.attribution.of(AttribKind::RequestClass).count() as u128, cap);
    assert!(back.attribution.of(AttribKind::RequestClass).all(|(id, _)| id != "class-3"));
}

#[test]
fn attribution_wraps_only_a_settle_or_a_charge() {
    let (mut s, mut i) = org(1000, Period::Daily);
    let cmd = Command::Attributed { attribution: Attribution::default(), cmd: Box::new(reserve(1, 10, 60_000)) };
    assert!(matches!(
        one(&mut s, &mut i, T0, cmd),
        Outcome::Rejected(Rejection { code: ErrorCode::InvalidArgument, .. })
    ));
    assert!(s.holds.is_empty());
}
