//! Admission against an in-process fake ledger: what is reserved, and what
//! each answer of the ledger (or its silence) comes to.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tollgate_proto::v1 as pb;
use tonic::Status;

use super::*;
use crate::config::{EdgeSettings, FileConfig, Overrides};
use crate::edge::ledger::Ledger;
use crate::edge::proxy::Route;
use crate::edge::watch::{secret_hash, ConfigCache};
use crate::edge::Shared;
use crate::pricing::PriceTable;

/// A ledger with one hard budget of `room` on every key, that may fail its
/// first reserves in a chosen way.
#[derive(Default)]
struct FakeLedger {
    room: Mutex<u64>,
    held: Mutex<u64>,
    /// Fail this many reserves before answering.
    fail_first: Mutex<u32>,
    /// Whether those failures are marked safe to retry.
    failures_retry_safe: bool,
    reserves: Mutex<Vec<pb::ReserveRequest>>,
    releases: Mutex<Vec<pb::HoldId>>,
}

impl FakeLedger {
    fn with_room(room: u64) -> FakeLedger {
        FakeLedger { room: Mutex::new(room), ..Default::default() }
    }

    fn failing(times: u32, retry_safe: bool) -> FakeLedger {
        FakeLedger {
            room: Mutex::new(u64::MAX),
            fail_first: Mutex::new(times),
            failures_retry_safe: retry_safe,
            ..Default::default()
        }
    }

    fn reserves(&self) -> Vec<pb::ReserveRequest> {
        self.reserves.lock().unwrap().clone()
    }
}

impl Ledger for FakeLedger {
    fn reserve(&self, req: pb::ReserveRequest) -> BoxFuture<'_, Result<pb::ReserveResult, Status>> {
        Box::pin(async move {
            self.reserves.lock().unwrap().push(req.clone());
            {
                let mut left = self.fail_first.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    let mut st = Status::unavailable("the fake ledger is not there");
                    if self.failures_retry_safe {
                        st.metadata_mut().insert("x-tollgate-retry-safe", "1".parse().unwrap());
                    }
                    return Err(st);
                }
            }
            let room = *self.room.lock().unwrap();
            let mut held = self.held.lock().unwrap();
            let outcome = if held.saturating_add(req.amount_nano_usd) <= room {
                *held += req.amount_nano_usd;
                pb::reserve_result::Outcome::GrantedExpiresAtMs(1)
            } else {
                pb::reserve_result::Outcome::Denied(pb::Denial {
                    scope: "key:k1".into(),
                    model: String::new(),
                    limit_nano_usd: room,
                    spent_nano_usd: 0,
                    held_nano_usd: *held,
                    requested_nano_usd: req.amount_nano_usd,
                    period: "total".into(),
                    resets_at_ms: 0,
                    leased_nano_usd: 0,
                })
            };
            Ok(pb::ReserveResult { outcome: Some(outcome) })
        })
    }

    fn settle(&self, _: pb::SettleRequest) -> BoxFuture<'_, Result<pb::SettleResult, Status>> {
        Box::pin(async { Err(Status::unimplemented("not in these tests")) })
    }

    fn release(&self, hold: pb::HoldId) -> BoxFuture<'_, Result<pb::ReleaseResult, Status>> {
        Box::pin(async move {
            self.releases.lock().unwrap().push(hold);
            Ok(pb::ReleaseResult { error: None })
        })
    }
}

/// An edge over `ledger` whose config knows key `tg-k1` (id `k1`).
fn edge(dir: &tempfile::TempDir, ledger: Arc<FakeLedger>, tune: impl FnOnce(&mut EdgeSettings)) -> Arc<Shared> {
    let flags = Overrides {
        ledger: Some(vec!["127.0.0.1:1".into()]),
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut settings = EdgeSettings::resolve(&FileConfig::parse("version = 1").unwrap(), &flags, None).unwrap();
    // The per-request path; `leases_admit_locally_…` turns leases on.
    settings.leases = false;
    tune(&mut settings);
    let base = Arc::new(PriceTable::builtin());
    let config = ConfigCache::new(base.clone());
    let snapshot = pb::ConfigSnapshot {
        index: 3,
        users: vec![pb::User { email: "ann@x.io".into(), team: "eng".into() }],
        keys: vec![pb::Key {
            id: "k1".into(),
            user: "ann@x.io".into(),
            name: "laptop".into(),
            secret_sha256: secret_hash("tg-k1"),
            revoked: false,
        }],
        budgets: vec![pb::Budget {
            scope: "team:eng".into(),
            limit_nano_usd: 1_000_000_000_000,
            period: "monthly".into(),
            mode: "hard".into(),
            id: 4,
            ..Default::default()
        }],
        in_touch: true,
        ..Default::default()
    };
    config.install(ConfigView::from_snapshot(&snapshot, &base), true);
    let nodes = tollgate_client::LedgerClient::new(&settings.ledger, Duration::from_secs(1), None).unwrap();
    let metrics = Arc::new(super::super::metrics::Metrics::default());
    Shared::new(settings, ledger, nodes, config, metrics, None).unwrap()
}

async fn admit(s: &Arc<Shared>, body: &str) -> Result<(Admitted, Option<Bytes>), EdgeError> {
    let mut ctx = Ctx::new(s.clone(), Route::Messages, Instant::now());
    let parts = hyper::Request::builder().uri("/v1/messages").body(()).unwrap().into_parts().0;
    let principal = s.config.current().authenticate("tg-k1").unwrap().clone();
    let body = Bytes::copy_from_slice(body.as_bytes());
    let (adm, _, forwarded) = ctx.admit(&parts, &body, principal).await?;
    Ok((adm, forwarded))
}

const SONNET: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#;

/// Sonnet 4.5 in estimate mode, no history yet: the input estimate (2
/// tokens per 7 characters) at $3/MTok and every one of `max_tokens`
/// (below the seed) at $15/MTok, in nano-USD.
fn sonnet_estimate(body: &str, max_tokens: u64) -> u64 {
    (body.chars().count() as u64 * 2).div_ceil(7) * 3_000 + max_tokens * 15_000
}

#[tokio::test]
async fn a_granted_reservation_is_the_priced_estimate_under_one_hold() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(FakeLedger::with_room(u64::MAX));
    let s = edge(&dir, ledger.clone(), |_| {});
    let (adm, forwarded) = admit(&s, SONNET).await.unwrap();
    let want = sonnet_estimate(SONNET, 1000);
    assert_eq!(adm.reserved, NanoUsd(want));
    assert_eq!((adm.fail_open, adm.clamped, forwarded), (None, None, None));
    let sent = ledger.reserves();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].hold_id.as_ref(), Some(&adm.hold));
    assert_eq!(adm.hold.id.len(), 16);
    assert_eq!((sent[0].key_id.as_str(), sent[0].model.as_str()), ("k1", "claude-sonnet-4-5"));
    assert_eq!(sent[0].amount_nano_usd, want);
    assert_eq!(sent[0].ttl_ms, s.settings.hold_ttl.as_millis() as u64);
}

#[tokio::test]
async fn a_denial_is_a_402_with_the_ledger_figures() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(FakeLedger::with_room(1_000_000));
    let s = edge(&dir, ledger.clone(), |_| {});
    let Err(EdgeError::BudgetDenied(d)) = admit(&s, SONNET).await else { panic!("not denied") };
    assert_eq!(
        (d.limit, d.held, d.requested),
        (NanoUsd(1_000_000), NanoUsd::ZERO, NanoUsd(sonnet_estimate(SONNET, 1000)))
    );
    assert_eq!(EdgeError::BudgetDenied(d).status(), 402);
    assert_eq!(ledger.reserves().len(), 1, "a denial is not retried");
}

#[tokio::test]
async fn clamp_lowers_max_tokens_to_what_the_room_pays_for() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the input and 600 output tokens, not 601.
    let room = sonnet_estimate(SONNET, 600);
    let ledger = Arc::new(FakeLedger::with_room(room));
    let s = edge(&dir, ledger.clone(), |st| {
        st.clamp_max_tokens = true;
        st.sizing.floor_tokens = 100;
    });
    let (adm, forwarded) = admit(&s, SONNET).await.unwrap();
    assert_eq!(adm.clamped, Some(600));
    assert_eq!(adm.reserved, NanoUsd(room));
    let forwarded: serde_json::Value = serde_json::from_slice(&forwarded.expect("a lowered body")).unwrap();
    assert_eq!(forwarded["max_tokens"], 600);
    assert_eq!(forwarded["messages"][0]["content"], "hi");
    let sent = ledger.reserves();
    assert_eq!(sent.iter().map(|r| r.amount_nano_usd).collect::<Vec<_>>(), [sonnet_estimate(SONNET, 1000), room]);
    assert_ne!(sent[0].hold_id, sent[1].hold_id, "the lowered amount is a new hold");
    assert_eq!(sent[1].hold_id.as_ref(), Some(&adm.hold));
}

#[tokio::test]
async fn retry_safe_failures_are_retried_under_the_same_hold() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(FakeLedger::failing(2, true));
    let s = edge(&dir, ledger.clone(), |_| {});
    let (adm, _) = admit(&s, SONNET).await.unwrap();
    let sent = ledger.reserves();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|r| r.hold_id.as_ref() == Some(&adm.hold)));
    assert_eq!(adm.fail_open, None);
}

#[tokio::test]
async fn a_ledger_out_of_reach_fails_closed_and_releases_the_hold_it_may_have_made() {
    let dir = tempfile::tempdir().unwrap();
    // Not marked retry safe: the reserve may have landed.
    let ledger = Arc::new(FakeLedger::failing(1, false));
    let s = edge(&dir, ledger.clone(), |st| st.fail_mode = FailMode::Closed);
    let Err(e) = admit(&s, SONNET).await else { panic!("admitted") };
    assert!(matches!(e, EdgeError::Unavailable(_)), "{e:?}");
    let hold = ledger.reserves()[0].hold_id.clone().unwrap();
    // The release goes through the outbox to the same ledger.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.releases.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*ledger.releases.lock().unwrap(), [hold]);
}

#[tokio::test]
async fn fail_open_admits_within_the_allowance_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(FakeLedger::failing(u32::MAX, false));
    let one = sonnet_estimate(SONNET, 1000);
    // Room in the allowance for two such requests, not three.
    let s = edge(&dir, ledger.clone(), |st| {
        st.fail_mode = FailMode::Open;
        st.fail_open_allowance = NanoUsd(one * 2 + one / 2);
    });
    for _ in 0..2 {
        let (adm, _) = admit(&s, SONNET).await.unwrap();
        assert_eq!(adm.fail_open, Some(NanoUsd(one)));
    }
    assert!(matches!(admit(&s, SONNET).await, Err(EdgeError::Unavailable(_))));
}

#[tokio::test]
async fn leases_admit_locally_once_granted_and_fall_back_to_a_hold_before() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(FakeLedger::with_room(u64::MAX / 4));
    let s = edge(&dir, ledger.clone(), |st| st.leases = true);
    // No lease yet on the team's hard budget: a per-request hold.
    let (first, _) = admit(&s, SONNET).await.unwrap();
    assert!(first.lease.is_none());
    assert_eq!(ledger.reserves().len(), 1);
    // The renewer asked for the team budget (id 4) at its limit; granted.
    let leases = s.leases.clone().unwrap();
    let asks = leases.plan(Duration::from_millis(100));
    assert_eq!(asks.len(), 1);
    let (req, p) = asks[0].clone();
    assert_eq!((req.budget_id, req.limit_nano_usd), (4, 1_000_000_000_000));
    assert!(req.add_nano_usd >= 2 * first.reserved.0);
    let g = pb::LeaseGrant {
        granted_nano_usd: req.add_nano_usd,
        room_nano_usd: req.add_nano_usd,
        share_nano_usd: u64::MAX,
        expires_at_ms: 1,
        duplicate: false,
    };
    leases.apply(4, p, super::super::lease::Answer::Granted(g));
    // Now admitted from the lease: the ledger is not asked.
    let (second, _) = admit(&s, SONNET).await.unwrap();
    assert!(second.lease.is_some());
    assert_eq!(second.reserved, first.reserved);
    assert_eq!(ledger.reserves().len(), 1);
    assert_eq!(leases.room(), req.add_nano_usd - second.reserved.0);
}
