//! The edge's side of leases, without a ledger: what admission may take,
//! what the renewer asks, and how answers (granted, refused, lost) change
//! the room.

use super::*;

const TTL: Duration = Duration::from_secs(10);

fn grant(granted: u64, room: u64, share: u64) -> Answer {
    Answer::Granted(pb::LeaseGrant {
        granted_nano_usd: granted,
        room_nano_usd: room,
        share_nano_usd: share,
        expires_at_ms: 1,
        duplicate: false,
    })
}

/// Asks, then answers every ask with `answer(request)`.
fn renew(l: &Leases, answer: impl Fn(&pb::LeaseRequest) -> Answer) -> Vec<pb::LeaseRequest> {
    let asks = l.plan(TICK);
    for (req, p) in &asks {
        l.apply(req.budget_id, *p, answer(req));
    }
    asks.into_iter().map(|(r, _)| r).collect()
}

#[test]
fn nothing_is_admitted_before_a_grant_and_the_demand_makes_the_renewer_ask() {
    let l = Leases::new(TTL);
    let chain = [(3, 1_000_000), (5, 9_000_000)];
    assert!(l.try_admit(&chain, 40_000).is_none());
    let asks = renew(&l, |r| grant(r.add_nano_usd, r.add_nano_usd, 10_000_000));
    assert_eq!(asks.len(), 2);
    for a in &asks {
        // At least two of the largest reservation, for the limit it saw.
        assert!(a.add_nano_usd >= 80_000, "{a:?}");
        assert_eq!(a.give_back_nano_usd, 0);
        assert_eq!(a.ttl_ms, 10_000);
        assert_eq!(a.holder, l.holder());
    }
    assert_eq!(asks.iter().find(|a| a.budget_id == 3).unwrap().limit_nano_usd, 1_000_000);
    let t = l.try_admit(&chain, 40_000).expect("admitted from the leases");
    let room_after = l.room();
    // Settled at 15,000 of its 40,000: 25,000 comes back to each lease.
    l.finish(&t, 15_000);
    assert_eq!(l.room(), room_after + 2 * 25_000);
}

#[test]
fn a_request_needs_room_on_every_budget_of_its_chain() {
    let l = Leases::new(TTL);
    let chain = [(1, 1_000_000), (2, 1_000_000)];
    l.try_admit(&chain, 10_000);
    // The second budget is granted only a little (it is near its limit).
    renew(&l, |r| {
        if r.budget_id == 1 {
            grant(r.add_nano_usd, r.add_nano_usd, 500_000)
        } else {
            grant(5_000, 5_000, 5_000)
        }
    });
    assert!(l.try_admit(&chain, 10_000).is_none());
    assert!(l.try_admit(&chain, 5_000).is_some());
    // Nothing was taken from the first lease by the refused request.
    assert_eq!(l.slots()[&1].reserved, 5_000);
}

#[test]
fn a_lost_answer_is_asked_again_as_it_was_and_an_unsent_one_restores_its_give_back() {
    let l = Leases::new(TTL);
    l.try_admit(&[(7, 1_000_000)], 10_000);
    let first = renew(&l, |_| Answer::Unknown);
    let again = renew(&l, |_| Answer::Unknown);
    assert_eq!(first, again, "resent with the same number, add and give-back");
    renew(&l, |r| grant(r.add_nano_usd, r.add_nano_usd, 1_000_000));
    assert!(l.slots()[&7].pending.is_none());
    let avail = l.slots()[&7].avail;
    // The budget's limit changes: nothing is admitted on the old lease, and
    // all of it is given back with the next ask.
    assert!(l.try_admit(&[(7, 2_000_000)], 10_000).is_none());
    let asks = renew(&l, |_| Answer::NotSent);
    assert_eq!(asks[0].give_back_nano_usd, avail);
    assert_eq!(asks[0].limit_nano_usd, 2_000_000);
    assert!(asks[0].seq > first[0].seq);
    // Never sent: the room is still this edge's to give back.
    assert_eq!(l.slots()[&7].avail, avail);
}

#[test]
fn room_above_the_share_is_given_back_and_a_refusal_waits_before_asking_again() {
    let l = Leases::new(TTL);
    l.try_admit(&[(9, 10_000_000)], 100_000);
    renew(&l, |r| grant(r.add_nano_usd, r.add_nano_usd, 10_000_000));
    let t = l.try_admit(&[(9, 10_000_000)], 100_000).unwrap();
    // The ledger now allows 50,000 (another edge joined, or the budget paused).
    l.slots().get_mut(&9).unwrap().share = Some(150_000);
    let asks = renew(&l, |_| Answer::Refused);
    let avail_before = asks[0].give_back_nano_usd + l.slots()[&9].avail;
    assert_eq!(asks[0].give_back_nano_usd, avail_before + 100_000 - 150_000);
    // A refusal: the give-back stays given back, and no ask follows at once.
    assert!(renew(&l, |r| grant(r.add_nano_usd, 0, 0)).is_empty());
    l.finish(&t, 100_000);
}

#[test]
fn a_lease_stops_admitting_a_quarter_ttl_before_the_ledger_could_expire_it() {
    let l = Leases::new(TTL);
    l.try_admit(&[(4, 1_000_000)], 1_000);
    let asks = l.plan(TICK);
    let (req, p) = asks[0].clone();
    l.apply(req.budget_id, p, grant(10_000, 10_000, 500_000));
    let deadline = l.slots()[&4].deadline.unwrap();
    assert_eq!(deadline, p.sent_at + TTL * 3 / 4);
    // A grant of no room admits nothing.
    l.try_admit(&[(6, 1_000_000)], 1_000);
    renew(&l, |r| if r.budget_id == 6 { grant(0, 0, 0) } else { Answer::Unknown });
    assert!(l.slots()[&6].deadline.is_none());
    assert!(l.try_admit(&[(6, 1_000_000)], 1_000).is_none());
}
