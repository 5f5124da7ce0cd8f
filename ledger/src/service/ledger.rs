//! The API edges use: admission, settlement and the config watch.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{unexpected, MAX_ITEMS_PER_CALL};
use crate::money::NanoUsd;
use crate::probe::LedgerProbe;
use crate::proposer::Proposer;
use crate::state::{Attribution, BudgetId, Command, HoldId, LeaseAsk, Outcome, Usage, MAX_ATTRIBUTION_ID_BYTES};
use crate::store::StateMachineStore;

fn check_items(n: usize) -> Result<(), Status> {
    if n > MAX_ITEMS_PER_CALL {
        return Err(Status::invalid_argument(format!("{n} items in one call; the limit is {MAX_ITEMS_PER_CALL}")));
    }
    Ok(())
}

/// Key ids and model names are checked before they reach the log, so no
/// entry carries an oversized string (the state machine checks them again).
fn check_key_model(key: &str, model: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 64 {
        return Err(format!("key_id must be 1-64 bytes, got {}", key.len()));
    }
    if model.is_empty() || model.len() > 128 || model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("model must be 1-128 bytes with no whitespace or control characters".to_string());
    }
    Ok(())
}

/// The caller's role from its certificate (`edge:NAME`); empty without TLS.
fn caller<T>(req: &Request<T>) -> String {
    match tollgate_tls::peer(req).map(|p| &p.role) {
        Some(Ok(role)) => role.to_string(),
        _ => String::new(),
    }
}

/// The most bytes of an edge's own name for its leases.
const MAX_EDGE_HOLDER_BYTES: usize = 64;

/// A lease holder as the ledger names it: the caller's certificate name and
/// the edge process's own name, so no caller can reach another's leases.
fn holder_name(caller: &str, holder: &str) -> Result<String, String> {
    if holder.is_empty() || holder.len() > MAX_EDGE_HOLDER_BYTES || holder.chars().any(|c| c.is_control()) {
        return Err(format!("a lease holder must be 1-{MAX_EDGE_HOLDER_BYTES} bytes with no control characters"));
    }
    Ok(format!("{caller}/{holder}"))
}

/// Builds one command per item; an item that fails its checks gets an
/// `invalid_argument` item error and is not proposed, so one bad item never
/// fails the others batched with it. The rest go into one proposal.
async fn propose_items<T, R>(
    proposer: &Proposer,
    items: &[T],
    build: impl Fn(&T) -> Result<Command, String>,
    ok: impl Fn(&Outcome) -> R,
    err: impl Fn(pb::ItemError) -> R,
) -> Result<Vec<R>, Status> {
    check_items(items.len())?;
    let mut results: Vec<Option<R>> = Vec::with_capacity(items.len());
    let mut cmds = Vec::with_capacity(items.len());
    for item in items {
        match build(item) {
            Ok(cmd) => {
                cmds.push(cmd);
                results.push(None);
            }
            Err(message) => results.push(Some(err(pb::ItemError { code: "invalid_argument".to_string(), message }))),
        }
    }
    if !cmds.is_empty() {
        let (_, outcomes) = proposer.submit(cmds).await.map_err(|e| Status::from(&e))?;
        let mut outcomes = outcomes.iter();
        for slot in results.iter_mut().filter(|r| r.is_none()) {
            let o = outcomes.next().ok_or_else(|| Status::internal("fewer outcomes than commands"))?;
            *slot = Some(ok(o));
        }
    }
    Ok(results.into_iter().map(|r| r.expect("every slot filled")).collect())
}

/// The API edges use: admission, settlement and the config watch.
pub struct LedgerApi {
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    /// Whether this node is in touch with a leader (heartbeats need it).
    pub probe: LedgerProbe,
    /// Set when the node shuts down: config streams end, so the server's
    /// graceful shutdown is not held up by watchers that never hang up.
    pub stop: tokio_util::sync::CancellationToken,
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerApi {
    async fn reserve(&self, req: Request<pb::ReserveBatch>) -> Result<Response<pb::ReserveResults>, Status> {
        use pb::reserve_result::Outcome as R;
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.requests,
            |r| {
                check_key_model(&r.key_id, &r.model)?;
                Ok(Command::Reserve {
                    hold: HoldId::try_from(r.hold_id.as_ref())?,
                    key: r.key_id.clone(),
                    model: r.model.clone(),
                    amount: NanoUsd(r.amount_nano_usd),
                    ttl_ms: r.ttl_ms,
                })
            },
            |o| match o {
                Outcome::Granted { expires_at_ms } => R::GrantedExpiresAtMs(*expires_at_ms),
                Outcome::Denied(d) => R::Denied(pb::Denial::from(d)),
                Outcome::Rejected(r) => R::Error(r.into()),
                other => R::Error(unexpected(other)),
            },
            R::Error,
        )
        .await?;
        let results = results.into_iter().map(|o| pb::ReserveResult { outcome: Some(o) }).collect();
        Ok(Response::new(pb::ReserveResults { results }))
    }

    async fn settle(&self, req: Request<pb::SettleBatch>) -> Result<Response<pb::SettleResults>, Status> {
        use pb::settle_result::Outcome as R;
        let caller = caller(&req);
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.requests,
            |r| {
                let ids = [
                    ("session_id", &r.session_id),
                    ("agent_id", &r.agent_id),
                    ("parent_agent_id", &r.parent_agent_id),
                    ("request_class", &r.request_class),
                    ("prompt_id", &r.prompt_id),
                ];
                if let Some((name, _)) = ids.iter().find(|(_, v)| v.len() > MAX_ATTRIBUTION_ID_BYTES) {
                    return Err(format!("{name} is longer than {MAX_ATTRIBUTION_ID_BYTES} bytes"));
                }
                let (hold, cost, usage) = (
                    HoldId::try_from(r.hold_id.as_ref())?,
                    NanoUsd(r.cost_nano_usd),
                    r.usage.as_ref().map(Usage::from).unwrap_or_default(),
                );
                let some = |v: &String| (!v.is_empty()).then(|| v.clone());
                let attribution = Attribution {
                    session: some(&r.session_id),
                    agent: some(&r.agent_id),
                    parent_agent: some(&r.parent_agent_id),
                    request_class: some(&r.request_class),
                    prompt: some(&r.prompt_id),
                };
                let cmd = if !r.lease_holder.is_empty() {
                    check_key_model(&r.fail_open_key_id, &r.model)?;
                    Command::LeasedSettle {
                        hold,
                        holder: holder_name(&caller, &r.lease_holder)?,
                        key: r.fail_open_key_id.clone(),
                        model: r.model.clone(),
                        cost,
                        reserved: NanoUsd(r.reserved_nano_usd),
                        usage,
                        estimated: r.estimated,
                        ttl_ms: r.ttl_ms,
                    }
                } else if r.fail_open_key_id.is_empty() {
                    Command::Settle { hold, cost, usage, estimated: r.estimated, session: None }
                } else {
                    check_key_model(&r.fail_open_key_id, &r.model)?;
                    Command::Charge {
                        hold,
                        key: r.fail_open_key_id.clone(),
                        model: r.model.clone(),
                        cost,
                        usage,
                        estimated: r.estimated,
                        session: None,
                        ttl_ms: r.ttl_ms,
                    }
                };
                Ok(if attribution == Attribution::default() {
                    cmd
                } else {
                    Command::Attributed { attribution, cmd: Box::new(cmd) }
                })
            },
            |o| match o {
                Outcome::Settled { charged, duplicate } => {
                    R::Settled(pb::Settled { charged_nano_usd: charged.0, duplicate: *duplicate })
                }
                Outcome::Rejected(r) => R::Error(r.into()),
                other => R::Error(unexpected(other)),
            },
            R::Error,
        )
        .await?;
        let results = results.into_iter().map(|o| pb::SettleResult { outcome: Some(o) }).collect();
        Ok(Response::new(pb::SettleResults { results }))
    }

    async fn release(&self, req: Request<pb::ReleaseBatch>) -> Result<Response<pb::ReleaseResults>, Status> {
        // Tombstones are bounded per caller: name it by its certificate.
        let caller = caller(&req);
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.hold_ids,
            |h| Ok(Command::ReleaseBy { hold: HoldId::try_from(Some(h))?, caller: caller.clone() }),
            |o| match o {
                Outcome::Released => None,
                Outcome::Rejected(r) => Some(r.into()),
                other => Some(unexpected(other)),
            },
            Some,
        )
        .await?;
        let results = results.into_iter().map(|error| pb::ReleaseResult { error }).collect();
        Ok(Response::new(pb::ReleaseResults { results }))
    }

    async fn extend(&self, req: Request<pb::ExtendBatch>) -> Result<Response<pb::ExtendResults>, Status> {
        use pb::extend_result::Outcome as R;
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.requests,
            |r| Ok(Command::Extend { hold: HoldId::try_from(r.hold_id.as_ref())?, ttl_ms: r.ttl_ms }),
            |o| match o {
                Outcome::Extended { expires_at_ms } => R::ExpiresAtMs(*expires_at_ms),
                Outcome::Rejected(r) => R::Error(r.into()),
                other => R::Error(unexpected(other)),
            },
            R::Error,
        )
        .await?;
        let results = results.into_iter().map(|o| pb::ExtendResult { outcome: Some(o) }).collect();
        Ok(Response::new(pb::ExtendResults { results }))
    }

    async fn lease(&self, req: Request<pb::LeaseBatch>) -> Result<Response<pb::LeaseResults>, Status> {
        use pb::lease_result::Outcome as R;
        // Leases are bounded per caller and named by it: one edge cannot
        // settle against, or give back, another's.
        let caller = caller(&req);
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.requests,
            |r| {
                Ok(Command::Lease(LeaseAsk {
                    holder: holder_name(&caller, &r.holder)?,
                    caller: caller.clone(),
                    budget: BudgetId(r.budget_id),
                    seq: r.seq,
                    add: NanoUsd(r.add_nano_usd),
                    give_back: NanoUsd(r.give_back_nano_usd),
                    ttl_ms: r.ttl_ms,
                    limit: NanoUsd(r.limit_nano_usd),
                }))
            },
            |o| match o {
                Outcome::Leased(g) => R::Grant(pb::LeaseGrant::from(g)),
                Outcome::Rejected(r) => R::Error(r.into()),
                other => R::Error(unexpected(other)),
            },
            R::Error,
        )
        .await?;
        let results = results.into_iter().map(|o| pb::LeaseResult { outcome: Some(o) }).collect();
        Ok(Response::new(pb::LeaseResults { results }))
    }

    type WatchConfigStream = ConfigStream;

    async fn watch_config(&self, req: Request<pb::WatchConfigRequest>) -> Result<Response<ConfigStream>, Status> {
        let heartbeat = match req.get_ref().heartbeat_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms).clamp(100, 60_000))),
        };
        let sm = self.sm.clone();
        let probe = self.probe.clone();
        let mut changes = sm.watch_config();
        // One slot: a slow watcher gets the newest config, not a backlog.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent_index = 0;
            let mut send_config = true;
            loop {
                let touch = probe.in_touch();
                let msg = if send_config {
                    changes.borrow_and_update();
                    let mut snap = sm.read(|a| pb::ConfigSnapshot::from(&a.state));
                    snap.in_touch = touch;
                    sent_index = snap.index;
                    Some(snap)
                } else {
                    touch.then_some(pb::ConfigSnapshot {
                        index: sent_index,
                        heartbeat: true,
                        in_touch: true,
                        ..Default::default()
                    })
                };
                if let Some(msg) = msg {
                    if stop.is_cancelled() || tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { return }
                        send_config = true;
                    }
                    _ = beat.tick(), if heartbeat.is_some() => send_config = false,
                    // A watcher that hung up while this node was quiet.
                    _ = tx.closed() => return,
                    _ = stop.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
