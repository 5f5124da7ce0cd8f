//! Snapshots written before the state gained its per-command limits and
//! release tombstones, or its price overrides, excess and attribution
//! tables, still load: they decode as if those fields had their defaults,
//! to the same state. A snapshot cut short anywhere else is still an error,
//! not a silently different state.

use tollgate_ledger::money::NanoUsd;
use tollgate_ledger::state::*;
use tollgate_ledger::store::{decode_applied_bytes, Applied};

fn state() -> LedgerState {
    let admin = |op| Command::Admin { actor: "t".into(), op };
    let mut s = LedgerState::new();
    let cmds = vec![
        admin(AdminOp::CreateTeam { name: "eng".into() }),
        admin(AdminOp::CreateUser { email: "a@x.io".into(), team: "eng".into() }),
        admin(AdminOp::CreateKey {
            id: "k1".into(),
            user: "a@x.io".into(),
            name: "n".into(),
            secret_sha256: "a".repeat(64),
        }),
        Command::Reserve { hold: HoldId(1), key: "k1".into(), model: "m".into(), amount: NanoUsd(500), ttl_ms: 60_000 },
        Command::Release { hold: HoldId(9) },
    ];
    s.apply(1, &Batch { time_ms: 1_795_906_800_000, cmds });
    s
}

#[test]
fn a_snapshot_from_before_the_limits_and_tombstones_decodes_to_the_same_state() {
    let applied = Applied { state: state(), ..Default::default() };
    let now = tollgate_ledger::codec::encode(&applied).unwrap();
    // The older encoding is the current one without its two last fields
    // (in this state they hold one tombstone, so use the empty defaults).
    let defaults = LedgerState::default();
    let mut old_state = applied.state.clone();
    old_state.tombstones.clear();
    let old_applied = Applied { state: old_state, ..Default::default() };
    let full = tollgate_ledger::codec::encode(&old_applied).unwrap();
    let tail = tollgate_ledger::codec::encode(&(
        &defaults.limits,
        &defaults.tombstones,
        &defaults.prices,
        &defaults.excess,
        &defaults.attribution,
        &defaults.leases,
    ))
    .unwrap();
    assert!(full.ends_with(&tail));
    let old = &full[..full.len() - tail.len()];
    let mut decoded = decode_applied_bytes(old).unwrap();
    decoded.state.rebuild_indexes();
    // Its tombstone is filed as a replay of its log would file it: the
    // same state as the current format's, digest included.
    assert_eq!(decoded.state.digest(), applied.state.digest());
    assert_eq!(decoded.state.limits, Limits::default());
    decoded.state.check_invariants().unwrap();
    // The current format decodes as it is.
    assert_eq!(decode_applied_bytes(&now).unwrap().state.digest(), applied.state.digest());
    // Cut short elsewhere: an error, whatever the padding would make of it.
    for cut in [1, 5, 40] {
        assert!(decode_applied_bytes(&old[..old.len() - cut]).is_err(), "cut {cut}");
    }
}

#[test]
fn a_snapshot_from_before_price_overrides_and_attribution_decodes_to_the_same_state() {
    let applied = Applied { state: state(), ..Default::default() };
    let full = tollgate_ledger::codec::encode(&applied).unwrap();
    let d = LedgerState::default();
    let tail = tollgate_ledger::codec::encode(&(&d.prices, &d.excess, &d.attribution, &d.leases)).unwrap();
    assert!(full.ends_with(&tail));
    let old = &full[..full.len() - tail.len()];
    let mut decoded = decode_applied_bytes(old).unwrap();
    decoded.state.rebuild_indexes();
    assert_eq!(decoded.state.digest(), applied.state.digest());
    // Its tombstones keep their callers (this format named them).
    assert_eq!(decoded.state.tombstones, applied.state.tombstones);
    for cut in [1, 5, 40] {
        assert!(decode_applied_bytes(&old[..old.len() - cut]).is_err(), "cut {cut}");
    }
}

#[test]
fn a_snapshot_from_before_leases_decodes_to_the_same_state() {
    let applied = Applied { state: state(), ..Default::default() };
    let full = tollgate_ledger::codec::encode(&applied).unwrap();
    let tail = tollgate_ledger::codec::encode(&LedgerState::default().leases).unwrap();
    assert!(full.ends_with(&tail));
    let old = &full[..full.len() - tail.len()];
    let mut decoded = decode_applied_bytes(old).unwrap();
    decoded.state.rebuild_indexes();
    assert_eq!(decoded.state.digest(), applied.state.digest());
    decoded.state.check_invariants().unwrap();
}

#[test]
fn a_snapshot_with_a_live_lease_round_trips_with_its_timers() {
    let mut s = state();
    let admin = |op| Command::Admin { actor: "t".into(), op };
    let budget = AdminOp::SetBudget {
        scope: Scope::Org,
        model: None,
        limit: NanoUsd(1_000_000),
        period: Period::Monthly,
        mode: Mode::Hard,
    };
    let ask = LeaseAsk {
        holder: "edge:a/1".into(),
        caller: "edge:a".into(),
        budget: BudgetId(0),
        seq: 1,
        add: NanoUsd(100_000),
        give_back: NanoUsd::ZERO,
        ttl_ms: 10_000,
        limit: NanoUsd(1_000_000),
    };
    let out = s.apply(2, &Batch { time_ms: 1_795_906_800_100, cmds: vec![admin(budget), Command::Lease(ask)] });
    assert!(matches!(&out[1], Outcome::Leased(g) if g.granted > NanoUsd::ZERO), "{out:?}");
    let applied = Applied { state: s, ..Default::default() };
    let bytes = tollgate_ledger::codec::encode(&applied).unwrap();
    let mut decoded = decode_applied_bytes(&bytes).unwrap();
    decoded.state.rebuild_indexes();
    assert_eq!(decoded.state.digest(), applied.state.digest());
    decoded.state.check_invariants().unwrap();
    // The lease's expiry is a timer again: the leader ticks for it.
    assert_eq!(decoded.state.next_expiry_ms(), applied.state.next_expiry_ms());
}
