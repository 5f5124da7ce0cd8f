//! Budget leases through real processes: two edges sharing a hard budget
//! spend it to within a reservation or two of its limit (lease room on one
//! edge never refuses a request the budget could pay for), and an edge
//! cut off from the ledger admits only within its leases, then fails closed.

use std::time::{Duration, Instant};

use crate::harness::*;

/// Strict mode: a request's reservation is fixed by its body and
/// `max_tokens`, so "room for one more" is exact.
const STRICT: &str = "estimate = \"strict\"\nadmission_timeout_ms = 800";

fn reserved(r: &Reply) -> u64 {
    r.header("x-tollgate-reserved-nano-usd").and_then(|v| v.parse().ok()).expect("reservation header")
}

async fn leased(addr: &str) -> u64 {
    metric(&get(addr, "/metrics").await.body, "tollgate_admissions_total{result=\"leased\"}").unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_with_leases_spend_a_hard_budget_to_within_two_reservations_of_its_limit() {
    let s = setup(&[]).await;
    let secret = s.key("ops", "ann@ops.io").await;
    s.budget("team:ops", "0.05").await;
    let limit = 50_000_000u64;
    let edges = [s.edge("lease-a", STRICT, &[]), s.edge("lease-b", STRICT, &[])];
    for e in &edges {
        ready(&e.addr).await;
    }
    let body = message("claude-sonnet-4-5", 64);
    let (mut ok, mut reservation) = (0u64, 0u64);
    let started = Instant::now();
    let first_402 = loop {
        assert!(ok < 1_000 && started.elapsed() < Duration::from_secs(120), "the budget never ran out");
        let edge = &edges[ok as usize % 2];
        let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), body.clone()).await;
        match r.status {
            200 => {
                ok += 1;
                reservation = reserved(&r);
            }
            402 => break r,
            other => panic!("HTTP {other}: {}", r.body),
        }
    };
    let took = started.elapsed();
    assert_eq!(first_402.error().1, "billing_error", "{}", first_402.body);
    // Both edges admitted from their leases, not a hold per request.
    for e in &edges {
        assert!(leased(&e.addr).await > 0, "edge {} never admitted from a lease", e.addr);
    }
    let row = s.settled("", "team:ops", ok).await;
    assert!(row.spent_nano_usd <= limit, "{row:?}");
    // Lease room (up to a quarter of the budget on each edge while it had
    // room) came back before the 402: what was left is less than the
    // request plus the one before it, whose hold (on the other edge) may
    // not have been settled yet when this one asked.
    let room = limit - row.spent_nano_usd;
    assert!(
        room < 2 * reservation,
        "refused with {room} left, room for two reservations of {reservation}: {row:?}, {}",
        first_402.body
    );
    println!(
        "two edges, leases on: {ok} requests admitted in {:.1} s; first 402 with {room} nano-USD left of {limit} \
         ({:.3}% of the limit spent), one reservation being {reservation}",
        took.as_secs_f64(),
        row.spent_nano_usd as f64 * 100.0 / limit as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cut_off_from_the_ledger_admits_only_within_its_leases_then_fails_closed() {
    let s = setup(&[]).await;
    let secret = s.key("ops", "bob@ops.io").await;
    s.budget("team:ops", "100").await;
    let edge = s.edge("cut", &format!("{STRICT}\nlease_ttl_secs = 4"), &[]);
    ready(&edge.addr).await;
    let body = message("claude-sonnet-4-5", 64);
    // Until the edge admits from its lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    while leased(&edge.addr).await < 3 {
        assert!(Instant::now() < deadline, "no lease granted");
        let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), body.clone()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let room = metric(&get(&edge.addr, "/metrics").await.body, "tollgate_lease_room_nano_usd").unwrap();
    s.cluster.signal(1, "-STOP").unwrap();
    let cut = Instant::now();
    let (mut admitted, mut last_ok, mut first_refusal) = (Vec::new(), None, None);
    while cut.elapsed() < Duration::from_secs(7) {
        let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), body.clone()).await;
        match r.status {
            200 => {
                assert!(first_refusal.is_none(), "admitted again after a refusal while cut off");
                admitted.push(r.json()["id"].as_str().unwrap().to_string());
                last_ok = Some(cut.elapsed());
            }
            503 => {
                first_refusal.get_or_insert(cut.elapsed());
            }
            other => panic!("HTTP {other}: {}", r.body),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.cluster.signal(1, "-CONT").unwrap();
    let (last_ok, first_refusal) =
        (last_ok.expect("nothing admitted on the lease"), first_refusal.expect("never refused"));
    // Only within the lease: what the requests cost (each reservation's
    // unused part comes back to the room) is at most its room at the cut,
    // and nothing is admitted later than its ttl less the quarter the edge
    // keeps for drift.
    let truth = s.mock.truth();
    let cost: u64 = truth.iter().filter(|t| admitted.contains(&t.id)).map(tollgate_chaos::checker::truth_cost).sum();
    assert!(cost > 0 && cost <= room, "admitted {cost} on a lease with {room} of room");
    assert!(last_ok <= Duration::from_secs(3), "admitted {last_ok:?} after the cut");
    println!(
        "cut off: {} requests admitted on {room} nano-USD of lease room (costing {cost}) for {:.2} s; refused \
         (fail closed) from {:.2} s",
        admitted.len(),
        last_ok.as_secs_f64(),
        first_refusal.as_secs_f64()
    );
    // Back in touch: admitted again, and every charge reaches the ledger.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&edge.addr, "/v1/messages", &anthropic(&secret), body.clone()).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not admitted after the ledger came back: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let billed: u64 = s.mock.truth().iter().filter(|t| t.status == 200).map(tollgate_chaos::checker::truth_cost).sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = s.row("", "team:ops").await;
        // Settles replayed from the outbox, and the lease that expired
        // during the cut given back from its unsettled remainder.
        if row.spent_nano_usd == billed {
            break;
        }
        assert!(Instant::now() < deadline, "spent {} never reached the {billed} billed: {row:?}", row.spent_nano_usd);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
