//! The operator's API: config changes, usage, audit and node status.

use std::str::FromStr;
use std::time::Duration;

use openraft::ServerState;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::admin_service_client::AdminServiceClient;
use tonic::{Request, Response, Status};

use crate::auth::{random_token, sha256_hex, token_matches, Audience, Gate};
use crate::convert::{usage_rows, RETRY_SAFE_HEADER};
use crate::money::NanoUsd;
use crate::proposer::{ProposeError, Proposer};
use crate::raft_types::NodeId;
use crate::state::{AdminOp, Command, Mode, ModelPrice, Outcome, Period, Scope};
use crate::store::StateMachineStore;
use crate::store::{metrics_now, Raft};

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
    pub region: String,
}

const ACTOR: &str = "admin-token";

impl AdminApi {
    fn check_member(&self) -> Result<(), Status> {
        let m = metrics_now(&self.raft);
        let membership = m.membership_config.membership();
        if membership.voter_ids().next().is_none() {
            return Err(Status::from(&ProposeError::NotMember(self.id)));
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
            self.proposer.submit_admin(cmds, token.to_string()).await.map_err(|e| Status::from(&e))?;
        match outcomes.first() {
            Some(Outcome::Done) => Ok(index),
            Some(Outcome::Rejected(r)) => Err(Status::from(r)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// For a linearizable read: `None` when this node is the leader and has
    /// applied everything committed before the read; else a client of the leader.
    async fn read_at_leader(&self) -> Result<Option<AdminServiceClient<tonic::transport::Channel>>, Status> {
        let m = metrics_now(&self.raft);
        if m.state == ServerState::Leader {
            self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await.map_err(|e| {
                // A read changes nothing: always safe to ask again.
                let mut s = Status::unavailable(format!("leadership could not be confirmed: {e}"));
                s.metadata_mut().insert(RETRY_SAFE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
                s
            })?;
            return Ok(None);
        }
        let leader = m.current_leader.ok_or_else(|| Status::from(&ProposeError::NoLeader))?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| Status::from(&ProposeError::NoLeader))?;
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
        let m = metrics_now(&self.raft);
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
            region: self.region.clone(),
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
            id: 0,
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
        let budgets = self.sm.read(|a| a.state.budgets.iter().map(crate::convert::budget_with_id).collect());
        Ok(Response::new(pb::ListBudgetsResponse { budgets }))
    }

    async fn get_config(&self, req: Request<pb::GetConfigRequest>) -> Result<Response<pb::ConfigSnapshot>, Status> {
        self.authorize(&req)?;
        if let Some(mut leader) = self.read_at_leader().await? {
            return leader.get_config(forwarded(&req, pb::GetConfigRequest {})).await;
        }
        Ok(Response::new(self.sm.read(|a| pb::ConfigSnapshot::from(&a.state))))
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
        let set = r.set.iter().map(ModelPrice::from).collect();
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
