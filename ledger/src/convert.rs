//! Conversions between the state machine's domain types and the wire types
//! of `tollgate-proto`: `From`/`TryFrom` impls next to each other (the types
//! this crate shares with the edge convert in `tollgate_types::wire`), and
//! the usage query's rows.

use tollgate_proto::v1 as pb;
use tonic::{Code, Status};

use crate::money::NanoUsd;
use crate::proposer::ProposeError;
use crate::state::{AttribKind, AttribRec, BudgetId, BudgetRec, ErrorCode, HoldId, LeaseGrant, LedgerState, Rejection};

/// A hold id off the wire (absent counts as empty): exactly 16 bytes.
impl TryFrom<Option<&pb::HoldId>> for HoldId {
    type Error = String;

    fn try_from(h: Option<&pb::HoldId>) -> Result<HoldId, String> {
        let bytes = h.map(|h| h.id.as_slice()).unwrap_or_default();
        let arr: [u8; 16] =
            bytes.try_into().map_err(|_| format!("hold_id must be exactly 16 bytes, got {}", bytes.len()))?;
        Ok(HoldId(u128::from_be_bytes(arr)))
    }
}

impl From<HoldId> for pb::HoldId {
    fn from(h: HoldId) -> pb::HoldId {
        pb::HoldId { id: h.0.to_be_bytes().to_vec() }
    }
}

/// A command the state machine rejected, as one item of a batch's answer.
impl From<&Rejection> for pb::ItemError {
    fn from(r: &Rejection) -> pb::ItemError {
        pb::ItemError { code: r.code.as_str().to_string(), message: r.message.clone() }
    }
}

/// A rejected admin command, as the call's status.
impl From<&Rejection> for Status {
    fn from(r: &Rejection) -> Status {
        let code = match r.code {
            ErrorCode::InvalidArgument => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::AlreadyExists => Code::AlreadyExists,
            ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        };
        Status::new(code, r.message.clone())
    }
}

/// Metadata on a status that says the request was certainly not applied,
/// so a client may send it again (to this node or another).
pub const RETRY_SAFE_HEADER: &str = "x-tollgate-retry-safe";

/// A proposal that failed, as the call's status: marked retry safe unless
/// it may have been applied.
impl From<&ProposeError> for Status {
    fn from(e: &ProposeError) -> Status {
        let mut status = match e {
            ProposeError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
            ProposeError::NotMember(_) => Status::failed_precondition(format!(
                "{e}: start one node with --bootstrap, or point at a member of the cluster"
            )),
            // Maybe applied: the caller must not blindly retry (an edge releases the hold).
            ProposeError::Unknown(_) => Status::unknown(e.to_string()),
            // Not applied: safe to retry, here or on another node.
            ProposeError::NoLeader | ProposeError::ShuttingDown => Status::unavailable(e.to_string()),
        };
        if !matches!(e, ProposeError::Unknown(_)) {
            status.metadata_mut().insert(RETRY_SAFE_HEADER, tonic::metadata::MetadataValue::from_static("1"));
        }
        status
    }
}

impl From<&BudgetRec> for pb::Budget {
    fn from(b: &BudgetRec) -> pb::Budget {
        pb::Budget {
            scope: b.scope.to_string(),
            model: b.model.clone().unwrap_or_default(),
            limit_nano_usd: b.limit.0,
            period: b.period.as_str().to_string(),
            mode: b.mode.as_str().to_string(),
            id: 0,
        }
    }
}

impl From<&LeaseGrant> for pb::LeaseGrant {
    fn from(g: &LeaseGrant) -> pb::LeaseGrant {
        pb::LeaseGrant {
            granted_nano_usd: g.granted.0,
            room_nano_usd: g.room.0,
            share_nano_usd: g.share.0,
            expires_at_ms: g.expires_at_ms,
            duplicate: g.duplicate,
        }
    }
}

/// A budget as the config watch sends it: with the id leases name it by.
pub(crate) fn budget_with_id((id, b): (&BudgetId, &BudgetRec)) -> pb::Budget {
    pb::Budget { id: id.0, ..pb::Budget::from(b) }
}

/// The config edges follow: keys, policies, budgets, limits and prices.
impl From<&LedgerState> for pb::ConfigSnapshot {
    fn from(s: &LedgerState) -> pb::ConfigSnapshot {
        config_snapshot(s)
    }
}

fn config_snapshot(s: &LedgerState) -> pb::ConfigSnapshot {
    pb::ConfigSnapshot {
        index: s.config_index,
        teams: s.teams.keys().map(|name| pb::Team { name: name.clone() }).collect(),
        users: s.users.iter().map(|(email, u)| pb::User { email: email.clone(), team: u.team.clone() }).collect(),
        keys: s
            .keys
            .iter()
            .map(|(id, k)| pb::Key {
                id: id.clone(),
                user: k.user.clone(),
                name: k.name.clone(),
                secret_sha256: k.secret_sha256.clone(),
                revoked: k.revoked,
            })
            .collect(),
        budgets: s.budgets.iter().map(budget_with_id).collect(),
        policies: s
            .policies
            .iter()
            .map(|(scope, models)| pb::Policy { scope: scope.clone(), allowed_models: models.clone() })
            .collect(),
        heartbeat: false,
        in_touch: false,
        max_request_nano_usd: s.limits.max_request.0,
        prices: s.prices.overrides.values().map(pb::ModelPrice::from).collect(),
        discount_bp: s.prices.discount_bp,
    }
}

/// The most rows `usage --by session|agent|request-class|prompt` returns.
pub const MAX_ATTRIBUTION_ROWS: usize = 5_000;

/// Usage rows: one per budget (`by` empty), or one per team/user/key/model.
pub fn usage_rows(s: &LedgerState, by: &str) -> Result<Vec<pb::UsageRow>, Status> {
    if by.is_empty() {
        return Ok(budget_rows(s));
    }
    if let Some(kind) = AttribKind::parse(by) {
        return Ok(attribution_rows(s, kind, by));
    }
    if !matches!(by, "team" | "user" | "key" | "model") {
        return Err(Status::invalid_argument(format!(
            "usage grouping {by:?} must be one of team, user, key, model, session, agent, request-class, prompt"
        )));
    }
    let prefix = format!("{by}:");
    Ok(s.usage
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, c)| pb::UsageRow {
            scope: k.clone(),
            period: "total".to_string(),
            spent_nano_usd: c.settled.saturating_add(c.unsettled).0,
            held_nano_usd: c.held.0,
            unsettled_nano_usd: c.unsettled.0,
            limit_nano_usd: None,
            requests: c.requests,
            model: if by == "model" { k[prefix.len()..].to_string() } else { String::new() },
            input_tokens: c.usage.input_tokens,
            output_tokens: c.usage.output_tokens,
            cache_write_tokens: c.usage.cache_write_5m_tokens + c.usage.cache_write_1h_tokens,
            cache_read_tokens: c.usage.cache_read_tokens,
            excess_nano_usd: s.excess.get(k).copied().unwrap_or_default().0,
            ..Default::default()
        })
        .collect())
}

/// One row per budget, in the period the state clock is in.
fn budget_rows(s: &LedgerState) -> Vec<pb::UsageRow> {
    s.budgets
        .iter()
        .map(|(id, b)| {
            // Show the period the state clock is in, even if no entry has rolled it yet.
            let fresh = b.period.start_ms(s.clock_ms) == b.period_start_ms;
            let (settled, unsettled, requests) =
                if fresh { (b.settled, b.unsettled, b.requests) } else { (NanoUsd::ZERO, NanoUsd::ZERO, 0) };
            pb::UsageRow {
                scope: b.scope.to_string(),
                period: b.period.as_str().to_string(),
                spent_nano_usd: settled.saturating_add(unsettled).0,
                held_nano_usd: b.held.0,
                unsettled_nano_usd: unsettled.0,
                limit_nano_usd: Some(b.limit.0),
                requests,
                model: b.model.clone().unwrap_or_default(),
                period_start_ms: b.period.start_ms(s.clock_ms),
                excess_nano_usd: if fresh { b.excess.0 } else { 0 },
                leased_nano_usd: s.leases.leased(*id).0,
                ..Default::default()
            }
        })
        .collect()
}

/// One row per session, agent, request class or prompt: the most
/// recently active first, at most [`MAX_ATTRIBUTION_ROWS`] (one answer stays
/// far below a gRPC message's 4 MiB).
fn attribution_rows(s: &LedgerState, kind: AttribKind, by: &str) -> Vec<pb::UsageRow> {
    let mut recent: Vec<(&String, &AttribRec)> = s.attribution.of(kind).collect();
    recent.sort_by(|a, b| b.1.last_ms.cmp(&a.1.last_ms).then_with(|| a.0.cmp(b.0)));
    recent
        .into_iter()
        .take(MAX_ATTRIBUTION_ROWS)
        .map(|(id, r)| pb::UsageRow {
            scope: format!("{by}:{id}"),
            period: "total".to_string(),
            spent_nano_usd: r.settled.0,
            requests: r.requests,
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cache_write_tokens: r.usage.cache_write_5m_tokens + r.usage.cache_write_1h_tokens,
            cache_read_tokens: r.usage.cache_read_tokens,
            excess_nano_usd: r.excess.0,
            user: r.user.clone(),
            parent_agent: r.parent.clone().unwrap_or_default(),
            first_ms: r.first_ms,
            last_ms: r.last_ms,
            ..Default::default()
        })
        .collect()
}
