//! Admission: what a request may cost before it is forwarded. Parse the
//! fields admission needs, price the model, check its output limit and the
//! policies, size the reservation (`strict`: the worst case; `estimate`:
//! the input estimate and recent outputs, `sizing`), reserve it on the
//! ledger (lowering `max_tokens` to a hard budget's room under
//! `clamp_max_tokens`), and decide on the ledger's answer (`fail_mode`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tollgate_client::retryable;
use tollgate_proto::v1 as pb;
use tollgate_types::backoff::{self, Retryable};
use tollgate_types::domain::Denial;
use tollgate_types::money::NanoUsd;

use super::lease::Ticket;
use super::outbox::Record;
use super::proxy::{invalid_model_message, Ctx};
use super::request::{valid_model_id, BodyError, Head};
use super::settle::{Admitted, Attribution};
use super::watch::{ConfigView, Principal};
use crate::config::{EstimateMode, FailMode};
use crate::errors::EdgeError;
use crate::pricing::Price;
use crate::provider::OutputLimit;

/// How long a reserve denied because of leased room waits for the leases to
/// give it back (they renew at least every second), or for this edge's own
/// settlements to land, asking again every `LEASE_DRAIN_PAUSE`.
const LEASE_DRAIN: Duration = Duration::from_millis(3_000);
const LEASE_DRAIN_PAUSE: Duration = Duration::from_millis(250);

/// A request priced and sized, before the ledger is asked.
struct Sized {
    model: String,
    price: Arc<Price>,
    /// The model's label on metrics and in the output history.
    label: String,
    limit: OutputLimit,
    strict: bool,
    input_estimate: u64,
    /// Output tokens per choice the reservation counts.
    reserved_output: u64,
}

impl Sized {
    /// The reservation for at most `out_per_choice` output tokens a choice.
    fn cost(&self, head: &Head, out_per_choice: u64) -> NanoUsd {
        let out = out_per_choice.min(self.reserved_output).saturating_mul(head.n);
        self.price.reserve(self.input_estimate, out, self.strict, head.modifiers)
    }
}

/// What reserving came to.
struct Reservation {
    hold: pb::HoldId,
    amount: NanoUsd,
    /// The output limit `clamp_max_tokens` lowered the request to, and the body saying so.
    clamped: Option<(u64, Bytes)>,
    outcome: Result<pb::ReserveResult, String>,
}

fn hold_id() -> pb::HoldId {
    let mut id = vec![0u8; 16];
    getrandom::fill(&mut id).expect("the OS random source failed");
    pb::HoldId { id }
}

/// The largest `n` in `lo..=hi` with `fits(n)`, for a `fits` that holds
/// up to some point and not after (a cost that grows with `n`).
fn largest_within(lo: u64, hi: u64, fits: impl Fn(u64) -> bool) -> Option<u64> {
    if lo > hi || !fits(lo) {
        return None;
    }
    let (mut ok, mut bad) = (lo, hi.saturating_add(1));
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if fits(mid) {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    Some(ok)
}

impl Ctx {
    /// Admission: parse, price, policy, size, reserve. Returns the body to
    /// forward instead of the client's when `clamp_max_tokens` lowered its
    /// output limit.
    pub(super) async fn admit<'b>(
        &mut self,
        parts: &hyper::http::request::Parts,
        body: &'b Bytes,
        principal: Principal,
    ) -> Result<(Admitted, Head<'b>, Option<Bytes>), EdgeError> {
        let head = Head::parse(body).map_err(|e| match e {
            BodyError::Json(_) | BodyError::NotObject => EdgeError::BadRequest(format!("Tollgate: {e}")),
            BodyError::Field { .. } => EdgeError::BadRequest(e.to_string()),
        })?;
        let view = self.s.config.current();
        let sized = self.size(&head, body, &principal, &view)?;
        let amount = sized.cost(&head, sized.limit.per_choice);
        let ledger_max = NanoUsd(view.max_request_nano_usd);
        if ledger_max != NanoUsd::ZERO && amount > ledger_max {
            return Err(EdgeError::BadRequest(format!(
                "Tollgate: this request could cost up to {amount}, above the per-request maximum of {ledger_max}; \
                 lower max_tokens or send less input"
            )));
        }
        let (r, fail_open, lease) = match self.admit_leased(&view, &principal, &sized.model, amount) {
            Some(ticket) => {
                self.s.metrics.admission("leased");
                let r = Reservation { hold: hold_id(), amount, clamped: None, outcome: Err(String::new()) };
                (r, None, Some(ticket))
            }
            None => {
                let mut r = self.reserve_with_clamp(&head, &sized, &principal, amount).await;
                let outcome = std::mem::replace(&mut r.outcome, Err(String::new()));
                let fail_open = self.decide(outcome, &r.hold, r.amount, &principal, &sized.model)?;
                (r, fail_open, None)
            }
        };
        if r.clamped.is_some() {
            self.s.metrics.admission("clamped");
        }
        let (clamped, body) = r.clamped.map_or((None, None), |(n, b)| (Some(n), Some(b)));
        let adm = Admitted {
            hold: r.hold,
            principal,
            model: sized.model,
            price: sized.price,
            asked: head.modifiers,
            input_estimate: sized.input_estimate,
            reserved: r.amount,
            reserved_output: clamped
                .map_or(sized.reserved_output, |n| n.min(sized.reserved_output))
                .saturating_mul(head.n),
            clamped,
            label: sized.label,
            attribution: Attribution::from_headers(&parts.headers),
            fail_open,
            lease,
        };
        Ok((adm, head, body))
    }

    /// Reserves `amount` from this edge's leases on every hard budget of the
    /// request's chain, if they have the room (`lease`). A chain with no hard
    /// budget needs no lease, but only while the config is current: a hard
    /// budget set meanwhile would not be seen.
    fn admit_leased(&self, view: &ConfigView, p: &Principal, model: &str, amount: NanoUsd) -> Option<Ticket> {
        let leases = self.s.leases.as_ref()?;
        let chain = view.hard_chain(p, model)?;
        if chain.is_empty() && !self.s.config.is_live() {
            return None;
        }
        leases.try_admit(&chain, amount.0)
    }

    /// Prices the model, checks its output limit, the policies and the
    /// settlement backlog, and sizes the reservation.
    fn size(
        &mut self,
        head: &Head,
        body: &Bytes,
        principal: &Principal,
        view: &ConfigView,
    ) -> Result<Sized, EdgeError> {
        let Some(model) = head.model.as_deref().map(str::to_string) else {
            return Err(EdgeError::BadRequest("model: Field required (a string)".into()));
        };
        if !valid_model_id(&model) {
            return Err(EdgeError::BadRequest(invalid_model_message(&model)));
        }
        self.model = model.clone();
        let price = view.prices.resolve(&model, self.api.provider()).map_err(|_| {
            EdgeError::BadRequest(format!(
                "Tollgate: model {model} has no price in this gateway's price book, so it is not admitted; an \
                 operator can add one with `tollgate admin price set {model} --input-usd-per-mtok … \
                 --output-usd-per-mtok …` (or set unknown_model = \"dearest\")"
            ))
        })?;
        let settings = &self.s.settings;
        let strict = settings.estimate == EstimateMode::Strict;
        let max = price.max_output_tokens;
        // Where the API allows no limit (OpenAI), estimate mode reserves a
        // default, no more than the model's own maximum.
        let default = max.map_or(settings.openai_default_max_tokens, |l| l.min(settings.openai_default_max_tokens));
        self.api.refuse(head, strict)?;
        let limit = self.api.output_limit(head, strict, default, max)?;
        if let Some(max) = max.filter(|max| limit.per_choice > *max) {
            return Err(EdgeError::BadRequest(format!(
                "{}: {} is above the maximum of {max} output tokens for {model}",
                limit.field, limit.per_choice
            )));
        }
        // The resolved price names the listed model (an unlisted one priced
        // by `unknown_model` carries the request's own name).
        if let Err(scope) = view.check_policy(principal, &model, Some(price.id.as_str())) {
            return Err(EdgeError::Forbidden(format!(
                "Tollgate: model {model} is not allowed by the policy of {scope}"
            )));
        }
        if self.s.outbox.depth() >= settings.max_outbox {
            return Err(EdgeError::Unavailable(
                "Tollgate: too many settlements are waiting for the ledger; try again shortly".into(),
            ));
        }
        let input_estimate = if strict {
            body.len() as u64
        } else {
            let chars = std::str::from_utf8(body).map(|t| t.chars().count()).unwrap_or(body.len()) as u64;
            (chars * 2).div_ceil(7)
        };
        let label = view.prices.label(&model).to_string();
        // Output: strict reserves every token asked for; estimate a high
        // percentile of what this user's requests for this model produced.
        let reserved_output = if strict {
            limit.per_choice
        } else {
            self.s.output_history.reserve(&principal.user, &label, limit.per_choice)
        };
        Ok(Sized { model, price, label, limit, strict, input_estimate, reserved_output })
    }

    /// Reserves `amount`; under `clamp_max_tokens`, a hard budget with room
    /// but less than the reservation gets the request with a lower output
    /// limit instead of a 402 (at most twice: another budget of the chain
    /// may be the tighter one).
    async fn reserve_with_clamp(
        &self,
        head: &Head<'_>,
        sized: &Sized,
        principal: &Principal,
        amount: NanoUsd,
    ) -> Reservation {
        let mut r = Reservation { hold: hold_id(), amount, clamped: None, outcome: Err(String::new()) };
        let ttl_ms = self.s.settings.hold_ttl.as_millis() as u64;
        for clamps in 0.. {
            let req = pb::ReserveRequest {
                hold_id: Some(r.hold.clone()),
                key_id: principal.key_id.clone(),
                model: sized.model.clone(),
                amount_nano_usd: r.amount.0,
                ttl_ms,
            };
            r.outcome = self.reserve_once(&req).await;
            let mut waited = Duration::ZERO;
            while let Ok(pb::ReserveResult { outcome: Some(pb::reserve_result::Outcome::Denied(d)) }) = &r.outcome {
                // Leased room (another edge's, or this one's) would make
                // room (or, under clamp, more room): the denial paused the
                // budget's leases, which give their room back at their next
                // renewal. Ask again till then.
                let unleased = d.spent_nano_usd.saturating_add(d.held_nano_usd.saturating_sub(d.leased_nano_usd));
                let fits = unleased.saturating_add(r.amount.0) <= d.limit_nano_usd;
                let clamp = self.s.settings.clamp_max_tokens && unleased < d.limit_nano_usd;
                let leases_help = d.leased_nano_usd > 0 && (fits || clamp);
                // So do this edge's own settlements not yet landed (a hold
                // still counts its whole reservation until its settle does).
                let own_settles = self.s.outbox.depth() > 0;
                if !(leases_help || own_settles) || waited >= LEASE_DRAIN {
                    break;
                }
                let t = tokio::time::Instant::now();
                if leases_help {
                    tokio::time::sleep(LEASE_DRAIN_PAUSE).await;
                } else {
                    self.s.outbox.flush(LEASE_DRAIN_PAUSE).await;
                }
                waited += t.elapsed().max(Duration::from_millis(20));
                r.outcome = self.reserve_once(&req).await;
            }
            let Ok(pb::ReserveResult { outcome: Some(pb::reserve_result::Outcome::Denied(d)) }) = &r.outcome else {
                break;
            };
            if !self.s.settings.clamp_max_tokens || head.n != 1 || clamps == 2 {
                break;
            }
            let room = NanoUsd(d.limit_nano_usd.saturating_sub(d.spent_nano_usd).saturating_sub(d.held_nano_usd));
            let thinking = head.thinking_budget.map_or(0, |b| b.saturating_add(1));
            let floor = self.s.settings.sizing.floor_tokens.max(thinking);
            let below = r.clamped.as_ref().map_or(sized.limit.per_choice, |(n, _)| *n).saturating_sub(1);
            let Some(n) = largest_within(floor, below, |n| sized.cost(head, n) <= room) else {
                break;
            };
            // Only a request that states its output limit can have it
            // lowered (an OpenAI request without one is reserved at the
            // default, which nothing upstream would enforce).
            let Some(lowered) = head.with_output_limit(n, sized.limit.field) else {
                break;
            };
            r.clamped = Some((n, lowered));
            r.amount = sized.cost(head, n);
            // A denied reserve holds nothing; the new amount gets a new id.
            r.hold = hold_id();
        }
        r
    }

    /// One Reserve, retried while the ledger is certainly not reached, for
    /// at most the admission timeout.
    async fn reserve_once(&self, req: &pb::ReserveRequest) -> Result<pb::ReserveResult, String> {
        // The whole timeout even while the ledger is known to be out of
        // reach: a shorter probe would let a slow but working ledger (whose
        // acknowledgements refill the allowance) be bypassed without bound.
        let timeout = self.s.settings.admission_timeout;
        let pauses =
            backoff::pauses(Duration::from_millis(20), Duration::from_millis(500)).with_total_delay(Some(timeout));
        let reserve = (|| self.s.ledger.reserve(req.clone())).retry(pauses).sleep(tokio::time::sleep).when(retryable);
        match tokio::time::timeout(timeout, reserve).await {
            Ok(r) => r.map_err(|st| st.message().to_string()),
            Err(_) => Err("no answer in time".to_string()),
        }
    }

    /// Decides on the ledger's answer: granted, denied (402), refused, or
    /// out of reach (`fail_mode`). Returns the fail-open reservation when
    /// the request goes ahead without the ledger.
    fn decide(
        &self,
        outcome: Result<pb::ReserveResult, String>,
        hold: &pb::HoldId,
        amount: NanoUsd,
        principal: &Principal,
        model: &str,
    ) -> Result<Option<NanoUsd>, EdgeError> {
        use pb::reserve_result::Outcome;
        let why = match outcome {
            Ok(pb::ReserveResult { outcome: Some(Outcome::GrantedExpiresAtMs(_)) }) => {
                self.s.fail_open.ledger_answered();
                self.s.metrics.admission("granted");
                return Ok(None);
            }
            Ok(pb::ReserveResult { outcome: Some(Outcome::Denied(d)) }) => {
                self.s.fail_open.ledger_answered();
                self.s.metrics.admission("denied");
                return Err(EdgeError::BudgetDenied(Box::new(Denial::from(&d))));
            }
            Ok(pb::ReserveResult { outcome: Some(Outcome::Error(e)) }) => {
                self.s.metrics.admission("error");
                return Err(match e.code.as_str() {
                    // The edge's copy of the keys is behind the ledger's.
                    "not_found" | "failed_precondition" => {
                        EdgeError::Unauthorized(format!("Tollgate: this API key is not valid ({})", e.message))
                    }
                    _ => EdgeError::Internal(format!(
                        "Tollgate: the ledger refused the reservation ({}): {}",
                        e.code, e.message
                    )),
                });
            }
            Ok(pb::ReserveResult { outcome: None }) => "an empty answer".to_string(),
            Err(why) => why,
        };
        self.s.fail_open.ledger_unreachable();
        if self.s.settings.fail_mode == FailMode::Open && self.s.fail_open.take(amount) {
            // The reserve may still have landed: no release is sent; the
            // settle (a Charge) settles that hold, or charges the key.
            self.s.metrics.admission("fail_open");
            tracing::warn!(
                key = %principal.key_id, model = %model, amount = %amount,
                "admitted without the ledger (fail_mode = open): {why}"
            );
            return Ok(Some(amount));
        }
        Err(self.unreachable(why, hold))
    }

    /// The 503 for a ledger out of reach; the reserve may still commit, so
    /// its id is released through the outbox first (it cannot hold budget).
    fn unreachable(&self, why: String, hold: &pb::HoldId) -> EdgeError {
        self.s.metrics.admission("error");
        let refusal = match self.s.settings.fail_mode {
            FailMode::Closed => "so it refuses requests (fail_mode = closed)".to_string(),
            FailMode::Open => format!(
                "and this edge has admitted its whole fail-open allowance ({}) without it; it refuses requests \
                 until the ledger is back",
                self.s.settings.fail_open_allowance
            ),
        };
        let (hold, outbox, guard) = (hold.clone(), self.s.outbox.clone(), self.s.pending.token());
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = outbox.push(Record::Release(hold)).await {
                tracing::error!("outbox: {e}");
            }
        });
        EdgeError::Unavailable(format!("Tollgate cannot reach its budget ledger, {refusal}: {why}"))
    }
}

#[cfg(test)]
mod tests;
