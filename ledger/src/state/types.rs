//! The vocabulary of the budget state machine: ids, scopes, commands and
//! their outcomes. These are domain types; the gRPC wire types live in
//! `tollgate-proto` and convert in `crate::convert`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Period;
use crate::money::NanoUsd;
pub use tollgate_types::domain::{
    Denial, Mode, ModelPrice, Scope, Usage, MAX_DISCOUNT_BP, MAX_PRICE_OVERRIDES, MAX_PRICE_PICO_PER_TOKEN,
};

/// The longest a hold may live before it expires unsettled. Streams can run
/// for many minutes; an edge still streaming extends its hold.
pub const MAX_TTL_MS: u64 = 2 * 60 * 60 * 1000;

/// The per-request maximum unless an operator sets another
/// (`tollgate admin limits set`): $1,100, above the largest reservation an
/// edge with its default settings can make (a 32 MiB body in strict mode,
/// every byte priced as a 1-hour cache write of the dearest listed model:
/// about $1,007, plus that model's largest output).
pub const DEFAULT_MAX_REQUEST: NanoUsd = NanoUsd(1_100_000_000_000);

/// Release tombstones (ids released before, or instead of, their reserve)
/// kept per caller; past this the caller's oldest is forgotten early.
pub const DEFAULT_MAX_TOMBSTONES_PER_CALLER: u64 = 65_536;

/// Bounds on what a single command may do, whoever sent it. Replicated, so
/// every node applies the same bounds at the same index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest amount one Reserve may hold and one Settle or Charge may charge.
    pub max_request: NanoUsd,
    /// Release tombstones kept per caller (an edge's certificate name).
    pub max_tombstones_per_caller: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request: DEFAULT_MAX_REQUEST, max_tombstones_per_caller: DEFAULT_MAX_TOMBSTONES_PER_CALLER }
    }
}

/// A hold id minted by the edge, unique per request, so a retry is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HoldId(pub u128);

impl fmt::Display for HoldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A budget id, assigned by the state machine in order of creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BudgetId(pub u64);

/// One command of a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Hold `amount` on every budget of the key's chain, if all have room.
    Reserve { hold: HoldId, key: String, model: String, amount: NanoUsd, ttl_ms: u64 },
    /// Charge the actual cost of a hold and release the rest. Exactly once.
    Settle { hold: HoldId, cost: NanoUsd, usage: Usage, estimated: bool, session: Option<String> },
    /// The request never reached the provider: drop the hold, charge nothing.
    Release { hold: HoldId },
    /// Push a live hold's expiry to at least now + `ttl_ms`.
    Extend { hold: HoldId, ttl_ms: u64 },
    /// Only advances the clock (expiring holds that are due).
    Tick,
    /// A change of config, recorded with who made it.
    Admin { actor: String, op: AdminOp },
    /// A request an edge admitted without the ledger (`fail_mode = open`):
    /// settles the hold if its reserve did land after all, else charges
    /// `cost` to the key's budgets directly (never denied: the spend already
    /// happened; what goes past a hard limit is recorded as excess). Exactly
    /// once per hold id, like Settle. Appended last: older logs still decode.
    Charge {
        hold: HoldId,
        key: String,
        model: String,
        cost: NanoUsd,
        usage: Usage,
        estimated: bool,
        session: Option<String>,
        /// How long the finished hold is remembered (duplicates answered).
        ttl_ms: u64,
    },
    /// Release, naming the caller that sent it (`edge:NAME` from its
    /// certificate; empty without TLS), so the tombstones one caller can
    /// leave are bounded. Appended last: older logs still decode.
    ReleaseBy { hold: HoldId, caller: String },
    /// A Settle or Charge with who and what it was for beyond the key
    /// (Claude Code's session, agent, request class, prompt): counted in
    /// bounded per-session/agent/class/prompt usage. Appended last: older
    /// logs still decode.
    Attributed { attribution: Attribution, cmd: Box<Command> },
    /// Grow, give back or renew an edge's lease on a hard budget
    /// (`state::lease`). Appended last: older logs still decode.
    Lease(super::LeaseAsk),
    /// Settle a request an edge admitted under its leases, on the request's
    /// own id: its cost comes out of `holder`'s lease room on each budget
    /// of the key's chain. Exactly once per id. Appended last.
    LeasedSettle {
        hold: HoldId,
        holder: String,
        key: String,
        model: String,
        cost: NanoUsd,
        /// What the edge reserved for it: a cost above is recorded as excess.
        reserved: NanoUsd,
        usage: Usage,
        estimated: bool,
        /// How long the settled id is remembered (duplicates answered).
        ttl_ms: u64,
    },
}

/// The longest attribution id (session, agent, class, prompt) kept.
pub const MAX_ATTRIBUTION_ID_BYTES: usize = 256;

/// Who and what a settled request was for, beyond its key: the
/// `x-claude-code-*` headers Claude Code sends. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub session: Option<String>,
    pub agent: Option<String>,
    pub parent_agent: Option<String>,
    pub request_class: Option<String>,
    pub prompt: Option<String>,
}

/// The replicated part of the price book: the operator's overrides of the
/// shipped list prices and the org-wide negotiated discount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceState {
    pub overrides: std::collections::BTreeMap<String, ModelPrice>,
    /// Taken off every cost an edge computes, in basis points (1/100 %).
    pub discount_bp: u32,
}

/// Config changes. Validated again by the state machine, so a bad one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminOp {
    /// Set once, by the bootstrap node: the hash of the admin token.
    SetAdminToken {
        sha256: String,
    },
    CreateTeam {
        name: String,
    },
    CreateUser {
        email: String,
        team: String,
    },
    CreateKey {
        id: String,
        user: String,
        name: String,
        secret_sha256: String,
    },
    RevokeKey {
        id: String,
    },
    SetBudget {
        scope: Scope,
        model: Option<String>,
        limit: NanoUsd,
        period: Period,
        mode: Mode,
    },
    SetPolicy {
        scope: Scope,
        allowed_models: Vec<String>,
    },
    /// Replaces the per-request maximum. Appended last: older logs decode.
    SetLimits {
        max_request: NanoUsd,
    },
    /// Sets (or replaces) prices and removes overrides, all or nothing.
    /// Appended last: older logs decode.
    SetPrices {
        set: Vec<ModelPrice>,
        remove: Vec<String>,
    },
    /// The org-wide negotiated discount, in basis points.
    SetDiscount {
        basis_points: u32,
    },
}

impl AdminOp {
    /// A short description for the audit trail.
    pub fn summary(&self) -> String {
        match self {
            AdminOp::SetAdminToken { .. } => "set admin token".to_string(),
            AdminOp::CreateTeam { name } => format!("create team {name}"),
            AdminOp::CreateUser { email, team } => format!("create user {email} in team {team}"),
            AdminOp::CreateKey { id, user, .. } => format!("create key {id} for {user}"),
            AdminOp::RevokeKey { id } => format!("revoke key {id}"),
            AdminOp::SetBudget { scope, model, limit, period, mode } => format!(
                "set budget {scope}{} {} {} {}",
                model.as_deref().map(|m| format!(" model {m}")).unwrap_or_default(),
                limit,
                period.as_str(),
                mode.as_str()
            ),
            AdminOp::SetPolicy { scope, allowed_models } => {
                format!("set policy {scope} allow [{}]", allowed_models.join(","))
            }
            AdminOp::SetLimits { max_request } => format!("set limits max request {max_request}"),
            AdminOp::SetPrices { set, remove } => {
                // The audit ring keeps short lines: a bulk import names its
                // first models and how many more (the log has them all).
                let mut parts: Vec<String> = set.iter().take(8).map(ModelPrice::summary).collect();
                if set.len() > 8 {
                    parts.push(format!("and {} more", set.len() - 8));
                }
                if !remove.is_empty() {
                    let names: Vec<&str> = remove.iter().take(8).map(String::as_str).collect();
                    parts.push(format!("remove {}{}", names.join(","), if remove.len() > 8 { ",…" } else { "" }));
                }
                format!("set prices: {}", parts.join("; "))
            }
            AdminOp::SetDiscount { basis_points } => {
                format!("set discount {}.{:02}%", basis_points / 100, basis_points % 100)
            }
        }
    }
}

/// A log entry's payload: commands stamped by the leader with its wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub time_ms: u64,
    pub cmds: Vec<Command>,
}

/// How openraft names an entry's payload in its logs.
impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} commands at {} ms", self.cmds.len(), self.time_ms)
    }
}

/// Stable error classes, mapped to gRPC codes at the API edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::FailedPrecondition => "failed_precondition",
        }
    }
}

/// A command the state machine refused; it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

/// What applying one command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Granted { expires_at_ms: u64 },
    Denied(Denial),
    Settled { charged: NanoUsd, duplicate: bool },
    Released,
    Extended { expires_at_ms: u64 },
    Done,
    Rejected(Rejection),
    Leased(super::LeaseGrant),
}

impl Outcome {
    pub(crate) fn reject(code: ErrorCode, message: impl Into<String>) -> Outcome {
        Outcome::Rejected(Rejection { code, message: message.into() })
    }
}
