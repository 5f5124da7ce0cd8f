//! Settlement: once admission granted a hold (see `proxy`), what the
//! request cost is metered from the response, JSON or streamed, and
//! charged exactly once through the durable outbox, or the hold is
//! released when the provider billed nothing. A stream is relayed frame by
//! frame while its hold is extended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::mpsc;
use tollgate_proto::v1 as pb;
use tollgate_types::domain::Usage;
use tollgate_types::money::NanoUsd;

use super::lease::Ticket;
use super::outbox::Record;
use super::watch::Principal;
use super::{KeySlot, Shared};
use crate::errors::Api;
use crate::meter::{Reported, SseParser, StreamMeter};
use crate::pricing::{Modifiers, Price};

/// What the coding agent says a request is for, recorded on its settle
/// (empty: not sent): Claude Code's `x-claude-code-*` headers, else
/// Codex's (`session-id`, `thread-id` as the agent, its parent thread, the
/// subagent kind as the request class, and the turn as the prompt).
#[derive(Debug, Default)]
pub(super) struct Attribution {
    pub(super) session: String,
    pub(super) agent: String,
    pub(super) parent_agent: String,
    pub(super) request_class: String,
    pub(super) prompt: String,
}

/// The longest attribution id recorded (the ledger takes up to 256 bytes).
const MAX_ATTRIBUTION_ID: usize = 200;

impl Attribution {
    /// Read from the request's headers; each value cut to 200 characters,
    /// values that are not visible ASCII ignored.
    pub(super) fn from_headers(h: &hyper::HeaderMap) -> Attribution {
        let get = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.bytes().all(|b| b.is_ascii_graphic()))
                .map(|v| v.chars().take(MAX_ATTRIBUTION_ID).collect())
                .unwrap_or_default()
        };
        let first = |names: &[&str]| names.iter().map(|n| get(n)).find(|v: &String| !v.is_empty()).unwrap_or_default();
        let mut prompt = get("x-claude-code-prompt-id");
        if prompt.is_empty() {
            prompt = codex_turn(h).unwrap_or_default();
        }
        Attribution {
            session: first(&["x-claude-code-session-id", "session-id", "session_id"]),
            agent: first(&["x-claude-code-agent-id", "thread-id"]),
            parent_agent: first(&["x-claude-code-parent-agent-id", "x-codex-parent-thread-id"]),
            request_class: first(&["x-claude-code-request-class", "x-openai-subagent"]),
            prompt,
        }
    }
}

/// The turn id in Codex's `x-codex-turn-metadata` (JSON; at most 16 KiB
/// is read). Nothing else of it is kept: it also carries workspace paths
/// and commit hashes.
fn codex_turn(h: &hyper::HeaderMap) -> Option<String> {
    let v = h.get("x-codex-turn-metadata")?.as_bytes();
    if v.len() > 16 * 1024 {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Turn {
        #[serde(alias = "turnId")]
        turn_id: Option<String>,
    }
    let id = serde_json::from_slice::<Turn>(v).ok()?.turn_id?;
    let id: String = id.chars().take(MAX_ATTRIBUTION_ID).collect();
    id.bytes().all(|b| b.is_ascii_graphic()).then_some(id)
}

/// What admission decided.
pub(super) struct Admitted {
    pub(super) hold: pb::HoldId,
    pub(super) principal: Principal,
    pub(super) model: String,
    /// The prices the request is charged at, resolved once at admission.
    pub(super) price: Arc<Price>,
    /// What the request asked for that changes its price.
    pub(super) asked: Modifiers,
    pub(super) input_estimate: u64,
    /// What the hold reserved.
    pub(super) reserved: NanoUsd,
    /// The output tokens that reservation counts (all choices).
    pub(super) reserved_output: u64,
    /// The output limit `clamp_max_tokens` lowered the request to.
    pub(super) clamped: Option<u64>,
    /// The model's label on metrics: its listed id, else `other`.
    pub(super) label: String,
    /// What Claude Code says the request is for.
    pub(super) attribution: Attribution,
    /// Admitted without the ledger (`fail_mode = open`): the reservation
    /// taken from this edge's allowance. Its settle charges the key directly.
    pub(super) fail_open: Option<NanoUsd>,
    /// Admitted from this edge's leases: no hold exists; its settle names
    /// the lease holder and its cost comes out of the leases.
    pub(super) lease: Option<Ticket>,
}

/// Settles one admitted request, once.
pub(super) struct Settler {
    pub(super) s: Arc<Shared>,
    pub(super) adm: Admitted,
    pub(super) api: Api,
    /// Released or settled. A Settler dropped before that (the client hung
    /// up while the edge waited for the upstream, or shutdown's grace ran
    /// out) is handled in `Drop`.
    pub(super) done: bool,
    /// The request's place in its key's concurrency limit, held to the end.
    pub(super) _slot: Option<KeySlot>,
}

impl Drop for Settler {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.adm.fail_open.or(self.adm.lease.as_ref().map(|_| self.adm.reserved)) {
            // No hold may exist to expire: charge the reservation, the most
            // the request can have cost, marked estimated.
            Some(amount) => {
                let usage = Usage { input_tokens: self.adm.input_estimate, ..Default::default() };
                self.charge(usage, amount, true);
            }
            // The hold expires and its reservation is charged in full, the
            // most the request can have cost (it may have reached the provider).
            None => tracing::debug!("request for {} dropped before it settled; its hold will expire", self.adm.model),
        }
    }
}

impl Settler {
    pub(super) fn release(mut self) {
        self.done = true;
        if let Some(amount) = self.adm.fail_open {
            // Nothing was billed: the allowance is free again.
            self.s.fail_open.give_back(amount);
        }
        if let (Some(t), Some(leases)) = (&self.adm.lease, &self.s.leases) {
            // No hold to release: the reservation is lease room again, and
            // the ledger counts the request at no cost (as it counts a
            // released hold's).
            leases.finish(t, 0);
            self.write(Usage::default(), NanoUsd::ZERO, false);
            return;
        }
        let outbox = self.s.outbox.clone();
        let guard = self.s.pending.token();
        let hold = self.adm.hold.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = outbox.push(Record::Release(hold)).await {
                tracing::error!("outbox: {e}");
            }
        });
    }

    /// Charges `usage` (computing its cost, with the modifiers the
    /// response reported over those the request asked for) through the outbox.
    pub(super) fn settle(mut self, usage: Usage, reported: Reported, estimated: bool) {
        let cost = self.adm.price.cost(&usage, reported.over(self.adm.asked));
        self.charge(usage, cost, estimated);
    }

    /// Writes the settle record (for a fail-open admission, one the ledger
    /// applies even without a hold) on a spawned task. Exactly once.
    fn charge(&mut self, usage: Usage, cost: NanoUsd, estimated: bool) {
        self.done = true;
        let s = &self.s;
        if let Some(amount) = self.adm.fail_open {
            s.fail_open.settled(amount, cost);
        }
        if let (Some(t), Some(leases)) = (&self.adm.lease, &s.leases) {
            leases.finish(t, cost.0);
        }
        if !estimated {
            s.output_history.observe(&self.adm.principal.user, &self.adm.label, usage.output_tokens);
        }
        let m = self.adm.label.as_str();
        s.metrics.spend(&self.adm.principal.team, m, cost.0);
        s.metrics.tokens(m, "input", usage.input_tokens);
        s.metrics.tokens(m, "output", usage.output_tokens);
        s.metrics.tokens(m, "cache_write_5m", usage.cache_write_5m_tokens);
        s.metrics.tokens(m, "cache_write_1h", usage.cache_write_1h_tokens);
        s.metrics.tokens(m, "cache_read", usage.cache_read_tokens);
        self.write(usage, cost, estimated);
    }

    /// Writes the settle record through the outbox, on a spawned task.
    fn write(&mut self, usage: Usage, cost: NanoUsd, estimated: bool) {
        let s = &self.s;
        // Admitted with no hold (fail-open, or from leases): the ledger is
        // told the key and model, which a hold would have recorded.
        let open = self.adm.fail_open.is_some() || self.adm.lease.is_some();
        let lease_holder = match (&self.adm.lease, &s.leases) {
            (Some(_), Some(leases)) => leases.holder().to_string(),
            _ => String::new(),
        };
        let record = Record::Settle(Box::new(pb::SettleRequest {
            hold_id: Some(self.adm.hold.clone()),
            cost_nano_usd: cost.0,
            usage: Some(pb::Usage::from(&usage)),
            estimated,
            session_id: std::mem::take(&mut self.adm.attribution.session),
            agent_id: std::mem::take(&mut self.adm.attribution.agent),
            parent_agent_id: std::mem::take(&mut self.adm.attribution.parent_agent),
            request_class: std::mem::take(&mut self.adm.attribution.request_class),
            prompt_id: std::mem::take(&mut self.adm.attribution.prompt),
            fail_open_key_id: if open { self.adm.principal.key_id.clone() } else { String::new() },
            model: if open { self.adm.model.clone() } else { String::new() },
            ttl_ms: if open { s.settings.hold_ttl.as_millis() as u64 } else { 0 },
            reserved_nano_usd: if lease_holder.is_empty() { 0 } else { self.adm.reserved.0 },
            lease_holder,
        }));
        let outbox = s.outbox.clone();
        let guard = s.pending.token();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no runtime to write a settle record on; {cost} for {} is not recorded", self.adm.model);
            return;
        };
        rt.spawn(async move {
            let _guard = guard;
            if let Err(e) = outbox.push(record).await {
                if open {
                    tracing::error!("outbox: {e}; a fail-open charge of {cost} is lost");
                } else {
                    tracing::error!("outbox: {e}; the hold will expire and be charged in full");
                }
            }
        });
    }

    /// No usage known: charge the input estimate (the provider read the
    /// prompt), marked estimated.
    pub(super) fn settle_estimate(self) {
        let usage = Usage { input_tokens: self.adm.input_estimate, ..Default::default() };
        self.settle(usage, Reported::default(), true);
    }

    pub(super) fn settle_json(self, body: &[u8]) {
        match self.api.json_usage(body) {
            Some((usage, reported)) => self.settle(usage, reported, false),
            None => self.settle_estimate(),
        }
    }

    /// Extends the hold by `ttl` in the background, through the `n`th
    /// ledger node (any node will do; a different one each time).
    fn extend_hold(&self, n: usize, ttl: Duration) {
        let mut ledger = self.s.nodes.at(n);
        let hold = self.adm.hold.clone();
        let req = pb::ExtendBatch {
            requests: vec![pb::ExtendRequest { hold_id: Some(hold), ttl_ms: ttl.as_millis() as u64 }],
        };
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), ledger.extend(req)).await {
                Ok(Ok(_)) => {}
                Ok(Err(st)) => tracing::warn!("extending a streaming request's hold: {}", st.message()),
                Err(_) => tracing::warn!("extending a streaming request's hold: no answer in 10 s"),
            }
        });
    }

    /// Streams the upstream body to the client frame by frame, metering as
    /// it goes; extends the hold while the stream runs; settles at the end.
    pub(super) async fn pump(
        self,
        mut body: Incoming,
        tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
        strip_usage: bool,
        idle: Duration,
    ) {
        let s = self.s.clone();
        s.metrics.open_streams.increment(1.0);
        let mut parser = SseParser::default();
        let mut meter = StreamMeter::default();
        let ttl = s.settings.hold_ttl;
        let mut extend = tokio::time::interval_at(tokio::time::Instant::now() + ttl / 2, ttl / 2);
        let api = self.api;
        let mut extends = 0usize;
        let ended_by = loop {
            tokio::select! {
                frame = tokio::time::timeout(idle, body.frame()) => match frame {
                    Err(_) => break StreamEnd::UpstreamSilent,
                    Ok(None) => break StreamEnd::UpstreamClosed,
                    Ok(Some(Err(_))) => break StreamEnd::UpstreamFailed,
                    Ok(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else { continue };
                        let on_event = |name: &str, d: &str| api.meter_event(&mut meter, name, d);
                        let out = if strip_usage {
                            parser.feed_filtered(&data, on_event, |_, d| !is_usage_chunk(d))
                        } else {
                            parser.feed(&data, on_event);
                            data
                        };
                        if out.is_empty() {
                            continue;
                        }
                        match tokio::time::timeout(idle, tx.send(Ok(Frame::data(out)))).await {
                            Ok(Ok(())) => {}
                            _ => break StreamEnd::ClientGone,
                        }
                    }
                },
                // A leased request has no hold to extend.
                _ = extend.tick(), if self.adm.lease.is_none() => {
                    extends += 1;
                    self.extend_hold(extends, ttl);
                }
                _ = tx.closed() => break StreamEnd::ClientGone,
            }
        };
        let held = parser.take_held();
        if strip_usage && !held.is_empty() && ended_by == StreamEnd::UpstreamClosed {
            let _ = tx.send(Ok(Frame::data(held))).await;
        }
        let complete = meter.finished || (meter.errored && meter.saw_usage);
        if !complete {
            let why = ended_by.why();
            tracing::info!(
                "stream for {} ended before completion ({why}); charging what is known, estimated",
                self.adm.model
            );
            // The client already has the provider's own error event, if it sent one.
            if ended_by != StreamEnd::ClientGone && !meter.errored {
                let _ = tx.send(Ok(Frame::data(stream_error_event(api, why)))).await;
            }
        }
        s.metrics.open_streams.decrement(1.0);
        // Settle (which registers with shutdown's pending count) before the
        // client's body ends, so a shutdown cannot slip in between.
        if complete {
            let usage = meter.usage;
            self.settle(usage, meter.reported, false);
        } else {
            let mut usage = meter.usage;
            usage.output_tokens = meter.output_estimate();
            if api == Api::OpenAiResponses {
                // Reasoning is never streamed, only billed: what the visible
                // text suggests is far too little; charge the reserved output.
                usage.output_tokens = usage.output_tokens.max(self.adm.reserved_output);
            }
            if !meter.saw_usage {
                usage.input_tokens = self.adm.input_estimate;
            }
            self.settle(usage, meter.reported, true);
        }
        drop(tx);
    }
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// The upstream ended the body (complete, or early if no final event came).
    UpstreamClosed,
    /// Nothing from the upstream for the idle timeout.
    UpstreamSilent,
    /// The upstream connection broke.
    UpstreamFailed,
    /// The client hung up (or stopped reading for the idle timeout).
    ClientGone,
}

impl StreamEnd {
    /// Why an incomplete stream ended, for the log and the client's error event.
    fn why(self) -> &'static str {
        match self {
            StreamEnd::UpstreamClosed => "the upstream closed the stream early",
            StreamEnd::UpstreamSilent => "the upstream stream went silent",
            StreamEnd::UpstreamFailed => "the upstream connection failed mid-stream",
            StreamEnd::ClientGone => "client gone",
        }
    }
}

/// An SSE error event in the client's protocol, for a stream the edge ends.
fn stream_error_event(api: Api, why: &str) -> Bytes {
    api.stream_error_event(&format!("Tollgate: {why}"))
}

/// OpenAI's usage-only chunk (`choices: []` with `usage` set), which the
/// edge asked for on the client's behalf and so drops from its stream.
fn is_usage_chunk(data: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(data) else { return false };
    v.get("choices").and_then(Value::as_array).is_some_and(|c| c.is_empty())
        && v.get("usage").is_some_and(|u| u.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_is_stripped_at_any_split() {
        let stream = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n"
        );
        let want = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: [DONE]\n\n"
        );
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let (mut out, mut events) = (Vec::new(), 0);
            for part in [&stream.as_bytes()[..split], &stream.as_bytes()[split..]] {
                out.extend_from_slice(&parser.feed_filtered(part, |_, _| events += 1, |_, d| !is_usage_chunk(d)));
            }
            assert_eq!(String::from_utf8(out).unwrap(), want, "split at {split}");
            assert_eq!(events, 3, "every event is still metered");
            assert!(parser.take_held().is_empty());
        }
        // A partial event is held back, and handed over at the end.
        let mut parser = SseParser::default();
        assert!(parser.feed_filtered(b"data: {\"partial\"", |_, _| {}, |_, _| true).is_empty());
        assert_eq!(&parser.take_held()[..], b"data: {\"partial\"");
    }
}
