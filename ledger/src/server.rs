//! The ledger node's gRPC services: Raft RPCs between nodes
//! ([`RaftRpc`]), the edge-facing [`LedgerApi`] and the operator's
//! [`AdminApi`]. All of them are thin: they validate, convert, and hand
//! commands to the [`Proposer`] or read the applied state.

use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use futures::Stream;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::ServerState;
use sha2::{Digest, Sha256};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tonic::{Request, Response, Status};

use crate::auth::{Audience, Gate};
use crate::convert::*;
use crate::money::NanoUsd;
use crate::node::LedgerProbe;
use crate::proposer::{ForwardRequest, ProposeError, Proposer};
use crate::raft_types::{NodeId, Raft, TypeConfig};
use crate::state::{hex, AdminOp, Attribution, Command, Mode, Outcome, Period, Scope, MAX_ATTRIBUTION_ID_BYTES};
use crate::store::StateMachineStore;

/// The most items one Reserve/Settle/Release/Extend call may carry.
pub const MAX_ITEMS_PER_CALL: usize = 4096;

fn decode<T: serde::de::DeserializeOwned>(p: &pb::RaftPayload) -> Result<T, Status> {
    crate::codec::decode(&p.data).map_err(|e| Status::invalid_argument(format!("malformed raft payload: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    crate::codec::encode(v)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding raft payload: {e}")))
}

/// Raft RPCs between ledger nodes, plus forwarded proposals. Served only
/// to member ledgers (an interceptor checks the certificate); a message
/// that names its sender must come from that sender's certificate.
pub struct RaftRpc {
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    pub gate: Gate,
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for RaftRpc {
    async fn append_entries(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let started = std::time::Instant::now();
        let bytes = req.get_ref().data.len();
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        let n = rpc.entries.len();
        let decoded = started.elapsed();
        let out = encode(&self.raft.append_entries(rpc).await);
        tracing::debug!(
            entries = n,
            bytes,
            decode_us = decoded.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "append_entries served"
        );
        out
    }

    async fn install_snapshot(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn vote(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let rpc: VoteRequest<NodeId> = decode(req.get_ref())?;
        self.gate.check_sender(&req, rpc.vote.leader_id().voted_for())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn propose(&self, req: Request<pb::RaftPayload>) -> Result<Response<pb::RaftPayload>, Status> {
        let fwd: ForwardRequest = decode(req.get_ref())?;
        if fwd.cmds.len() > MAX_ITEMS_PER_CALL * 4 {
            return Err(Status::invalid_argument("forwarded batch is too large"));
        }
        // The admin token's hash is registered only by the bootstrap node
        // itself, as its leader: never from a forwarded proposal, so no
        // caller can race it in with a hash of its own.
        if fwd.cmds.iter().any(|c| matches!(c, Command::Admin { op: AdminOp::SetAdminToken { .. }, .. })) {
            return Err(Status::permission_denied(
                "the admin token is registered only by the bootstrap node itself, never through a forwarded proposal",
            ));
        }
        // Config changes need the admin token here too.
        if fwd.cmds.iter().any(|c| matches!(c, Command::Admin { .. })) {
            let want = self.sm.read(|a| a.state.admin_token_sha256.clone());
            let ok = matches!((&fwd.admin_token, want), (Some(t), Some(w)) if token_matches(t, &w));
            if !ok {
                return Err(Status::permission_denied("forwarded admin commands need a valid admin token"));
            }
        }
        encode(&self.proposer.submit_forwarded(fwd.cmds).await)
    }
}

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
        let (_, outcomes) = proposer.submit(cmds).await.map_err(|e| propose_status(&e))?;
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
    pub stop: tokio::sync::watch::Receiver<bool>,
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
                    hold: hold_id(r.hold_id.as_ref())?,
                    key: r.key_id.clone(),
                    model: r.model.clone(),
                    amount: NanoUsd(r.amount_nano_usd),
                    ttl_ms: r.ttl_ms,
                })
            },
            |o| match o {
                Outcome::Granted { expires_at_ms } => R::GrantedExpiresAtMs(*expires_at_ms),
                Outcome::Denied(d) => R::Denied(denial_to_pb(d)),
                Outcome::Rejected(r) => R::Error(item_error(r)),
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
                let (hold, cost, usage) =
                    (hold_id(r.hold_id.as_ref())?, NanoUsd(r.cost_nano_usd), usage_from_pb(r.usage.as_ref()));
                let some = |v: &String| (!v.is_empty()).then(|| v.clone());
                let attribution = Attribution {
                    session: some(&r.session_id),
                    agent: some(&r.agent_id),
                    parent_agent: some(&r.parent_agent_id),
                    request_class: some(&r.request_class),
                    prompt: some(&r.prompt_id),
                };
                let cmd = if r.fail_open_key_id.is_empty() {
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
                Outcome::Rejected(r) => R::Error(item_error(r)),
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
        let caller = match tollgate_tls::peer(&req).map(|p| &p.role) {
            Some(Ok(role)) => role.to_string(),
            _ => String::new(),
        };
        let batch = req.into_inner();
        let results = propose_items(
            &self.proposer,
            &batch.hold_ids,
            |h| Ok(Command::ReleaseBy { hold: hold_id(Some(h))?, caller: caller.clone() }),
            |o| match o {
                Outcome::Released => None,
                Outcome::Rejected(r) => Some(item_error(r)),
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
            |r| Ok(Command::Extend { hold: hold_id(r.hold_id.as_ref())?, ttl_ms: r.ttl_ms }),
            |o| match o {
                Outcome::Extended { expires_at_ms } => R::ExpiresAtMs(*expires_at_ms),
                Outcome::Rejected(r) => R::Error(item_error(r)),
                other => R::Error(unexpected(other)),
            },
            R::Error,
        )
        .await?;
        let results = results.into_iter().map(|o| pb::ExtendResult { outcome: Some(o) }).collect();
        Ok(Response::new(pb::ExtendResults { results }))
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
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent_index = 0;
            let mut send_config = true;
            loop {
                let touch = probe.in_touch();
                let msg = if send_config {
                    changes.borrow_and_update();
                    let mut snap = sm.read(|a| config_snapshot(&a.state));
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
                    if *stop.borrow() || tx.send(Ok(msg)).await.is_err() {
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
                    _ = stop.changed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Whether this node can vouch that its config is current: it is a leader
/// that a quorum acked within `bound_ms` (or the only voter), or it follows
/// a known leader. A follower cut off from the leader stands for election
/// after its timeout and then knows no leader; a leader cut off from the
/// majority stops being acked.
pub fn in_touch(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>, bound_ms: u64) -> bool {
    match m.state {
        ServerState::Leader => {
            let alone = m.membership_config.membership().voter_ids().all(|v| v == m.id);
            alone || m.millis_since_quorum_ack.is_some_and(|ms| ms <= bound_ms)
        }
        ServerState::Follower | ServerState::Learner => m.current_leader.is_some(),
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

fn unexpected(o: &Outcome) -> pb::ItemError {
    pb::ItemError { code: "internal".to_string(), message: format!("unexpected outcome {o:?}") }
}

/// The operator's API. Admins and ledgers (forwarding reads) may call it
/// (an interceptor checks the certificate); every call but `NodeStatus`
/// also needs the admin token.
pub struct AdminApi {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: StateMachineStore,
    pub gate: Gate,
    pub tls: Option<std::sync::Arc<tollgate_tls::ClusterTls>>,
}

pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Whether `token` hashes to `want_sha256_hex`, compared in constant time.
pub fn token_matches(token: &str, want_sha256_hex: &str) -> bool {
    token_matches_hash(&sha256_hex(token), want_sha256_hex)
}

/// Whether two hex hashes are equal, compared in constant time.
pub fn token_matches_hash(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A new random secret: `prefix` + 2×`bytes` hex digits.
pub fn random_token(prefix: &str, bytes: usize) -> Result<String, Status> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", hex(&buf)))
}

const ACTOR: &str = "admin-token";

impl AdminApi {
    fn check_member(&self) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().next().is_none() {
            return Err(propose_status(&ProposeError::NotMember(self.id)));
        }
        if membership.get_node(&self.id).is_none() {
            return Err(Status::failed_precondition(format!("node {} is not a member of this cluster", self.id)));
        }
        Ok(())
    }

    /// Checks the caller's certificate and the bearer token against the
    /// replicated hash; returns the token and who is acting (the admin
    /// certificate's name over TLS, else `admin-token`), for the audit trail.
    fn authorize<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        let role = self.gate.check(req, Audience::Admins)?;
        self.check_member()?;
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing admin token: send `authorization: Bearer <token>`"))?;
        let want = self.sm.read(|a| a.state.admin_token_sha256.clone());
        let Some(want) = want else {
            // Nothing was done: safe to ask again once the bootstrap node has registered it.
            let mut s = Status::unavailable("the cluster has no admin token yet: the bootstrap node has not set it");
            s.metadata_mut().insert(RETRY_SAFE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
            return Err(s);
        };
        if !token_matches(token, &want) {
            return Err(Status::unauthenticated("invalid admin token"));
        }
        let actor = role.map_or_else(|| ACTOR.to_string(), |r| r.to_string());
        Ok((token.to_string(), actor))
    }

    async fn admin(&self, (token, actor): &(String, String), op: AdminOp) -> Result<u64, Status> {
        let cmds = vec![Command::Admin { actor: actor.clone(), op }];
        let (index, outcomes) =
            self.proposer.submit_admin(cmds, token.to_string()).await.map_err(|e| propose_status(&e))?;
        match outcomes.first() {
            Some(Outcome::Done) => Ok(index),
            Some(Outcome::Rejected(r)) => Err(rejection_status(r)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// For a linearizable read: `None` when this node is the leader and has
    /// applied everything committed before the read; else a client of the leader.
    async fn read_at_leader(&self) -> Result<Option<AdminServiceClient<tonic::transport::Channel>>, Status> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            self.raft.ensure_linearizable().await.map_err(|e| {
                // A read changes nothing: always safe to ask again.
                let mut s = Status::unavailable(format!("leadership could not be confirmed: {e}"));
                s.metadata_mut().insert(RETRY_SAFE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
                s
            })?;
            return Ok(None);
        }
        let leader = m.current_leader.ok_or_else(|| propose_status(&ProposeError::NoLeader))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| propose_status(&ProposeError::NoLeader))?;
        let ch = crate::network::channel(&addr, self.tls.clone()).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Some(AdminServiceClient::new(ch)))
    }
}

/// Copies the caller's authorization onto a forwarded request.
fn forwarded<T, U>(from: &Request<T>, msg: U) -> Request<U> {
    let mut r = Request::new(msg);
    if let Some(v) = from.metadata().get("authorization") {
        r.metadata_mut().insert("authorization", v.clone());
    }
    r.set_timeout(Duration::from_secs(10));
    r
}

fn parse_scope(s: &str) -> Result<Scope, Status> {
    Scope::parse(s).map_err(Status::invalid_argument)
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminApi {
    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        // Unauthenticated on purpose: like a health check, it shows topology
        // and progress, nothing about principals or money.
        let m = self.raft.metrics().borrow().clone();
        let (applied, digest) = self.sm.digest().await;
        let members: Vec<pb::Member> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| pb::Member { id: *id, addr: n.addr.clone() })
            .collect();
        Ok(Response::new(pb::NodeStatusResponse {
            id: self.id,
            addr: self.addr.clone(),
            role: role(m.state).to_string(),
            term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
            applied_index: applied,
            last_log_index: m.last_log_index.unwrap_or(0),
            state_digest: digest,
            initialized: !members.is_empty(),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            members,
        }))
    }

    async fn create_team(
        &self,
        req: Request<pb::CreateTeamRequest>,
    ) -> Result<Response<pb::CreateTeamResponse>, Status> {
        let auth = self.authorize(&req)?;
        let index = self.admin(&auth, AdminOp::CreateTeam { name: req.into_inner().name }).await?;
        Ok(Response::new(pb::CreateTeamResponse { index }))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let index = self.admin(&auth, AdminOp::CreateUser { email: r.email, team: r.team }).await?;
        Ok(Response::new(pb::CreateUserResponse { index }))
    }

    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let id = random_token("key_", 6)?;
        let secret = random_token("tg_", 24)?;
        let op = AdminOp::CreateKey { id: id.clone(), user: r.user, name: r.name, secret_sha256: sha256_hex(&secret) };
        let index = self.admin(&auth, op).await?;
        Ok(Response::new(pb::CreateKeyResponse { id, secret, index }))
    }

    async fn revoke_key(&self, req: Request<pb::RevokeKeyRequest>) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let auth = self.authorize(&req)?;
        let index = self.admin(&auth, AdminOp::RevokeKey { id: req.into_inner().id }).await?;
        Ok(Response::new(pb::RevokeKeyResponse { index }))
    }

    async fn set_budget(&self, req: Request<pb::SetBudgetRequest>) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let scope = parse_scope(&r.scope)?;
        let limit = NanoUsd::from_str(&r.limit_usd).map_err(|e| Status::invalid_argument(format!("limit: {e}")))?;
        let period = Period::parse(&r.period).ok_or_else(|| {
            Status::invalid_argument(format!("period {:?} must be one of daily, weekly, monthly, total", r.period))
        })?;
        let mode = if r.mode.is_empty() { Some(Mode::Hard) } else { Mode::parse(&r.mode) }
            .ok_or_else(|| Status::invalid_argument(format!("mode {:?} must be hard or soft", r.mode)))?;
        let model = (!r.model.is_empty()).then_some(r.model);
        let op = AdminOp::SetBudget { scope: scope.clone(), model: model.clone(), limit, period, mode };
        let index = self.admin(&auth, op).await?;
        let budget = pb::Budget {
            scope: scope.to_string(),
            model: model.unwrap_or_default(),
            limit_nano_usd: limit.0,
            period: period.as_str().to_string(),
            mode: mode.as_str().to_string(),
        };
        Ok(Response::new(pb::SetBudgetResponse { index, budget: Some(budget) }))
    }

    async fn set_policy(&self, req: Request<pb::SetPolicyRequest>) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let scope = parse_scope(&r.scope)?;
        let index = self.admin(&auth, AdminOp::SetPolicy { scope, allowed_models: r.allowed_models }).await?;
        Ok(Response::new(pb::SetPolicyResponse { index }))
    }

    async fn list_budgets(
        &self,
        req: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        self.authorize(&req)?;
        if let Some(mut leader) = self.read_at_leader().await? {
            return leader.list_budgets(forwarded(&req, pb::ListBudgetsRequest {})).await;
        }
        let budgets = self.sm.read(|a| a.state.budgets.values().map(budget_to_pb).collect());
        Ok(Response::new(pb::ListBudgetsResponse { budgets }))
    }

    async fn get_config(&self, req: Request<pb::GetConfigRequest>) -> Result<Response<pb::ConfigSnapshot>, Status> {
        self.authorize(&req)?;
        if let Some(mut leader) = self.read_at_leader().await? {
            return leader.get_config(forwarded(&req, pb::GetConfigRequest {})).await;
        }
        Ok(Response::new(self.sm.read(|a| config_snapshot(&a.state))))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        self.authorize(&req)?;
        if let Some(mut leader) = self.read_at_leader().await? {
            let msg = req.get_ref().clone();
            return leader.usage(forwarded(&req, msg)).await;
        }
        let by = req.get_ref().by.clone();
        let (rows, index) = self.sm.read(|a| usage_rows(&a.state, &by).map(|r| (r, a.applied_index())))?;
        Ok(Response::new(pb::UsageResponse { rows, index }))
    }

    async fn set_limits(&self, req: Request<pb::SetLimitsRequest>) -> Result<Response<pb::SetLimitsResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let max_request = NanoUsd::from_str(&r.max_request_usd)
            .map_err(|e| Status::invalid_argument(format!("max_request_usd: {e}")))?;
        let index = self.admin(&auth, AdminOp::SetLimits { max_request }).await?;
        Ok(Response::new(pb::SetLimitsResponse { index, max_request_nano_usd: max_request.0 }))
    }

    async fn set_prices(&self, req: Request<pb::SetPricesRequest>) -> Result<Response<pb::SetPricesResponse>, Status> {
        let auth = self.authorize(&req)?;
        let r = req.into_inner();
        let set = r.set.iter().map(crate::convert::model_price_from_pb).collect();
        let index = self.admin(&auth, AdminOp::SetPrices { set, remove: r.remove }).await?;
        Ok(Response::new(pb::SetPricesResponse { index }))
    }

    async fn set_discount(
        &self,
        req: Request<pb::SetDiscountRequest>,
    ) -> Result<Response<pb::SetDiscountResponse>, Status> {
        let auth = self.authorize(&req)?;
        let basis_points = req.get_ref().basis_points;
        let index = self.admin(&auth, AdminOp::SetDiscount { basis_points }).await?;
        Ok(Response::new(pb::SetDiscountResponse { index }))
    }

    async fn audit(&self, req: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        self.authorize(&req)?;
        if let Some(mut leader) = self.read_at_leader().await? {
            return leader.audit(forwarded(&req, pb::AuditRequest {})).await;
        }
        let entries = self.sm.read(|a| {
            a.state
                .audit
                .iter()
                .map(|r| pb::AuditEntry {
                    index: r.stamp.index,
                    time_ms: r.stamp.time_ms,
                    actor: r.stamp.actor.clone(),
                    what: r.what.clone(),
                })
                .collect()
        });
        Ok(Response::new(pb::AuditResponse { entries }))
    }
}
