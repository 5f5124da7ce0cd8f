//! Metering: token usage read from provider responses, JSON or streamed.
//!
//! Anthropic: usage is `input_tokens`, cache writes (5m/1h split when
//! given), `cache_read_input_tokens`, `output_tokens` and web searches. In a
//! stream, `message_start` carries input and cache counts and an initial
//! output count; each `message_delta` carries **cumulative** counts, so the
//! last one wins and nothing is summed. OpenAI: `prompt_tokens` already
//! includes `cached_tokens`, so uncached input is the difference; in a stream
//! usage arrives in one chunk when `stream_options.include_usage` is set.
//!
//! The SSE parser is incremental and bounded: feed it whatever byte chunks
//! arrive, split anywhere, and it yields whole events.

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tollgate_types::domain::Usage;

use crate::pricing::Modifiers;

/// Price modifiers a response reports; `None` where it says nothing.
/// Anthropic: `usage.speed` (`fast` / `standard`) and `usage.inference_geo`;
/// OpenAI: the top-level `service_tier` that actually served the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub fast: Option<bool>,
    pub flex: Option<bool>,
    pub geo_us: Option<bool>,
}

impl Reported {
    /// The response's word where it gives one, else what the request asked.
    pub fn over(self, asked: Modifiers) -> Modifiers {
        Modifiers {
            fast: self.fast.unwrap_or(asked.fast),
            flex: self.flex.unwrap_or(asked.flex),
            geo_us: self.geo_us.unwrap_or(asked.geo_us),
        }
    }

    /// From an Anthropic `usage` object.
    pub fn read_anthropic(&mut self, usage: &Value) {
        if let Some(speed) = usage.get("speed").and_then(Value::as_str) {
            self.fast = Some(speed == "fast");
        }
        if let Some(geo) = usage.get("inference_geo").and_then(Value::as_str) {
            self.geo_us = Some(geo == "us");
        }
    }

    /// From an OpenAI response or chunk (its top level).
    pub fn read_openai(&mut self, response: &Value) {
        if let Some(tier) = response.get("service_tier").and_then(Value::as_str) {
            self.read_openai_tier(tier);
        }
    }

    /// From the `service_tier` that served an OpenAI request.
    pub fn read_openai_tier(&mut self, tier: &str) {
        self.fast = Some(tier == "fast" || tier == "priority");
        self.flex = Some(tier == "flex");
    }
}

/// The most one SSE event may buffer before it is dropped as malformed.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// An incremental `text/event-stream` parser: the one SSE scanner of the
/// edge. It meters events (`feed`) and, where the edge must drop some
/// events from what the client gets, also passes on whole events
/// (`feed_filtered`).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
    /// Set when an event outgrew [`MAX_EVENT_BYTES`]; it is skipped.
    oversized: bool,
    /// With `feed_filtered`: the current event's bytes, held until its end.
    raw: Vec<u8>,
    /// The current event outgrew [`MAX_EVENT_BYTES`] while held: the rest
    /// of it is passed on as it comes (not SSE as expected).
    raw_passing: bool,
}

impl SseParser {
    /// Feeds bytes; calls `on_event(name, data)` for every complete event
    /// (name `message` when the event had no `event:` line).
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&str, &str)) {
        self.scan(chunk, None, |name, data| {
            on_event(name, data);
            true
        });
    }

    /// As [`SseParser::feed`], and returns what to pass on: each whole
    /// event (with its blank line) for which `keep(name, data)` holds. A
    /// partial event is held back until it ends ([`SseParser::take_held`]
    /// at the end of the stream), at most [`MAX_EVENT_BYTES`] of it.
    pub fn feed_filtered(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(&str, &str),
        keep: impl Fn(&str, &str) -> bool,
    ) -> Bytes {
        let mut out = BytesMut::new();
        self.scan(chunk, Some(&mut out), |name, data| {
            on_event(name, data);
            keep(name, data)
        });
        out.freeze()
    }

    /// The partial event `feed_filtered` holds back (at the end of a stream).
    pub fn take_held(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.raw))
    }

    fn scan(&mut self, chunk: &[u8], mut out: Option<&mut BytesMut>, mut on_event: impl FnMut(&str, &str) -> bool) {
        for &b in chunk {
            if let Some(out) = out.as_deref_mut() {
                if self.raw_passing {
                    out.extend_from_slice(&[b]);
                } else {
                    self.raw.push(b);
                    if self.raw.len() > MAX_EVENT_BYTES {
                        out.extend_from_slice(&std::mem::take(&mut self.raw));
                        self.raw_passing = true;
                    }
                }
            }
            if b != b'\n' {
                if self.line.len() + self.data.len() < MAX_EVENT_BYTES {
                    self.line.push(b);
                } else {
                    self.oversized = true;
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                let mut keep = true;
                if !self.oversized && (!self.data.is_empty() || !self.event.is_empty()) {
                    let name = if self.event.is_empty() { "message" } else { self.event.as_str() };
                    keep = on_event(name, &self.data);
                }
                if let Some(out) = out.as_deref_mut() {
                    let raw = std::mem::take(&mut self.raw);
                    if keep && !self.raw_passing {
                        out.extend_from_slice(&raw);
                    }
                    self.raw_passing = false;
                }
                self.event.clear();
                self.data.clear();
                self.oversized = false;
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let (field, value) = match text.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (text.as_ref(), ""),
            };
            match field {
                "event" => self.event = value.to_string(),
                "data" => {
                    if !self.data.is_empty() {
                        self.data.push('\n');
                    }
                    self.data.push_str(value);
                }
                _ => {} // comments (":…"), id, retry
            }
        }
    }
}

fn u(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// Reads an Anthropic `usage` object into `into`, overwriting only the
/// fields it carries (a `message_delta` may carry just `output_tokens`).
pub fn read_anthropic_usage(usage: &Value, into: &mut Usage) {
    if let Some(n) = u(usage, "/input_tokens") {
        into.input_tokens = n;
    }
    if let Some(n) = u(usage, "/output_tokens") {
        into.output_tokens = n;
    }
    if let Some(n) = u(usage, "/cache_read_input_tokens") {
        into.cache_read_tokens = n;
    }
    let split =
        (u(usage, "/cache_creation/ephemeral_5m_input_tokens"), u(usage, "/cache_creation/ephemeral_1h_input_tokens"));
    match (split, u(usage, "/cache_creation_input_tokens")) {
        ((Some(m5), Some(h1)), _) => {
            into.cache_write_5m_tokens = m5;
            into.cache_write_1h_tokens = h1;
        }
        // No split given: the default cache lifetime is 5 minutes.
        (_, Some(total)) => {
            into.cache_write_5m_tokens = total;
            into.cache_write_1h_tokens = 0;
        }
        _ => {}
    }
    if let Some(n) = u(usage, "/server_tool_use/web_search_requests") {
        into.web_search_requests = n;
    }
}

/// Reads an OpenAI `usage` object. `prompt_tokens` includes the cached
/// tokens and those written to the cache, which have their own rates.
pub fn read_openai_usage(usage: &Value) -> Usage {
    read_openai_shaped(usage, "prompt_tokens", "completion_tokens")
}

/// OpenAI's usage: `input` (named so) includes its `_details`' cached and
/// written tokens, which are split out at their own rates.
fn read_openai_shaped(usage: &Value, input: &str, output: &str) -> Usage {
    let total = u(usage, &format!("/{input}")).unwrap_or(0);
    let cached = u(usage, &format!("/{input}_details/cached_tokens")).unwrap_or(0).min(total);
    let written = u(usage, &format!("/{input}_details/cache_write_tokens")).unwrap_or(0).min(total - cached);
    Usage {
        input_tokens: total - cached - written,
        cache_read_tokens: cached,
        cache_write_5m_tokens: written,
        output_tokens: u(usage, &format!("/{output}")).unwrap_or(0),
        ..Default::default()
    }
}

/// Reads a Responses API `usage` object: `input_tokens` includes the
/// cached tokens and those written to the cache (each has its own rate),
/// and `output_tokens` includes the reasoning tokens (billed as output,
/// never counted twice).
pub fn read_responses_usage(usage: &Value) -> Usage {
    read_openai_shaped(usage, "input_tokens", "output_tokens")
}

/// What a stream reported so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamMeter {
    pub usage: Usage,
    /// A usage report was seen (`message_start`, or OpenAI's usage chunk).
    pub saw_usage: bool,
    /// The stream ended normally (`message_stop` / `[DONE]`).
    pub finished: bool,
    /// The provider sent an `error` event.
    pub errored: bool,
    /// Bytes of generated text seen, to estimate output if the stream is cut.
    pub text_bytes: u64,
    /// Price modifiers the stream reported.
    pub reported: Reported,
}

impl StreamMeter {
    /// Folds one Anthropic SSE event in.
    pub fn anthropic_event(&mut self, name: &str, data: &str) {
        let Ok(v) = serde_json::from_str::<Value>(data) else { return };
        match name {
            "message_start" => {
                if let Some(usage) = v.pointer("/message/usage") {
                    read_anthropic_usage(usage, &mut self.usage);
                    self.reported.read_anthropic(usage);
                    self.saw_usage = true;
                }
            }
            "message_delta" => {
                if let Some(usage) = v.get("usage") {
                    read_anthropic_usage(usage, &mut self.usage);
                    self.reported.read_anthropic(usage);
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(s) = d.get(key).and_then(Value::as_str) {
                        self.text_bytes += s.len() as u64;
                    }
                }
            }
            "message_stop" => self.finished = true,
            "error" => self.errored = true,
            _ => {}
        }
    }

    /// Folds one OpenAI SSE event (`data:` payload) in.
    pub fn openai_event(&mut self, data: &str) {
        if data.trim() == "[DONE]" {
            self.finished = true;
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else { return };
        self.reported.read_openai(&v);
        if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = read_openai_usage(usage);
            self.saw_usage = true;
        }
        if let Some(choices) = v.get("choices").and_then(Value::as_array) {
            for c in choices {
                if let Some(s) = c.pointer("/delta/content").and_then(Value::as_str) {
                    self.text_bytes += s.len() as u64;
                }
            }
        }
    }

    /// Folds one Responses API event in: usage and the tier come with the
    /// terminal event. A completed or incomplete response that reports
    /// usage is whole (an incomplete one is billed for what it used); a
    /// failed one, or one whose terminal event has no usage, is charged as
    /// a stream cut short.
    pub fn responses_event(&mut self, name: &str, data: &str) {
        let Ok(v) = serde_json::from_str::<Value>(data) else { return };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or(name);
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                let response = &v["response"];
                self.reported.read_openai(response);
                let usage = response.get("usage").filter(|u| u.is_object());
                if let Some(usage) = usage {
                    self.usage = read_responses_usage(usage);
                    self.saw_usage = true;
                }
                if kind == "response.failed" {
                    self.errored = true;
                } else if usage.is_some() {
                    self.finished = true;
                }
            }
            "error" => self.errored = true,
            k if k.ends_with(".delta") => {
                if let Some(s) = v.get("delta").and_then(Value::as_str) {
                    self.text_bytes += s.len() as u64;
                }
            }
            _ => {}
        }
    }

    /// Output tokens for a stream cut short: the last cumulative count, or
    /// an estimate from the text seen (~4 bytes per token), whichever is more.
    pub fn output_estimate(&self) -> u64 {
        self.usage.output_tokens.max(self.text_bytes.div_ceil(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_modifiers_come_from_the_response_else_the_request() {
        let asked = Modifiers { fast: true, flex: false, geo_us: true };
        // Nothing reported: the request's word stands.
        assert_eq!(Reported::default().over(asked), asked);
        let mut r = Reported::default();
        r.read_anthropic(&serde_json::json!({"input_tokens": 1, "speed": "standard", "inference_geo": "global"}));
        assert_eq!(r.over(asked), Modifiers::default());
        r.read_anthropic(&serde_json::json!({"speed": "fast", "inference_geo": "us"}));
        assert_eq!(r.over(Modifiers::default()), Modifiers { fast: true, flex: false, geo_us: true });
        let mut r = Reported::default();
        r.read_openai(&serde_json::json!({"service_tier": "priority"}));
        assert!(r.over(Modifiers::default()).fast);
        r.read_openai(&serde_json::json!({"service_tier": "flex"}));
        assert_eq!(r.over(asked), Modifiers { fast: false, flex: true, geo_us: true });
        // A stream's chunks report it too.
        let mut m = StreamMeter::default();
        m.openai_event(r#"{"id":"c","service_tier":"default","choices":[]}"#);
        assert_eq!(m.reported.fast, Some(false));
    }

    #[test]
    fn openai_cached_and_written_tokens_come_out_of_the_prompt_once() {
        let u = read_openai_usage(&serde_json::json!({
            "prompt_tokens": 1000, "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300}
        }));
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens, u.output_tokens),
            (100, 600, 300, 20)
        );
        // Inconsistent counts never underflow.
        let u = read_openai_usage(&serde_json::json!({
            "prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 5}
        }));
        assert_eq!((u.input_tokens, u.cache_read_tokens, u.cache_write_5m_tokens), (0, 8, 2));
    }

    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":300,\"cache_read_input_tokens\":4000,\"cache_creation\":{\"ephemeral_5m_input_tokens\":100,\"ephemeral_1h_input_tokens\":200},\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: future_event_type\n",
        "data: {\"type\":\"future_event_type\",\"usage\":{\"output_tokens\":999999}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":10}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15,\"server_tool_use\":{\"web_search_requests\":1}}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn meter_anthropic(chunks: &[&[u8]]) -> StreamMeter {
        let mut p = SseParser::default();
        let mut m = StreamMeter::default();
        for c in chunks {
            p.feed(c, |name, data| m.anthropic_event(name, data));
        }
        m
    }

    #[test]
    fn anthropic_stream_takes_message_start_and_the_last_cumulative_delta() {
        let m = meter_anthropic(&[ANTHROPIC_STREAM.as_bytes()]);
        let want = Usage {
            input_tokens: 25,
            output_tokens: 15,
            cache_write_5m_tokens: 100,
            cache_write_1h_tokens: 200,
            cache_read_tokens: 4000,
            web_search_requests: 1,
        };
        assert_eq!(m.usage, want);
        assert!(m.finished && m.saw_usage && !m.errored);
        assert_eq!(m.text_bytes, 5);
    }

    #[test]
    fn any_split_of_the_bytes_gives_the_same_result() {
        let whole = meter_anthropic(&[ANTHROPIC_STREAM.as_bytes()]);
        let bytes = ANTHROPIC_STREAM.as_bytes();
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(meter_anthropic(&one_by_one), whole);
        for size in [2, 3, 7, 64, 100] {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            assert_eq!(meter_anthropic(&chunks), whole, "chunks of {size}");
        }
        let crlf = ANTHROPIC_STREAM.replace('\n', "\r\n");
        assert_eq!(meter_anthropic(&[crlf.as_bytes()]), whole);
    }

    #[test]
    fn a_cut_stream_keeps_what_was_reported_and_estimates_output() {
        let cut = ANTHROPIC_STREAM.find("event: content_block_stop").unwrap();
        let m = meter_anthropic(&[&ANTHROPIC_STREAM.as_bytes()[..cut]]);
        assert!(!m.finished);
        assert_eq!((m.usage.input_tokens, m.usage.cache_read_tokens, m.usage.output_tokens), (25, 4000, 1));
        assert_eq!(m.output_estimate(), 2); // "Hello" = 5 bytes ≈ 2 tokens > 1 reported
        let mut p = SseParser::default();
        let mut e = StreamMeter::default();
        p.feed(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n", |n, d| {
            e.anthropic_event(n, d)
        });
        assert!(e.errored);
    }

    #[test]
    fn json_usage_without_a_split_counts_cache_writes_as_5_minutes() {
        let mut usage = Usage::default();
        let v: Value = serde_json::from_str(
            r#"{"input_tokens":3,"cache_creation_input_tokens":40,"cache_read_input_tokens":5,"output_tokens":7}"#,
        )
        .unwrap();
        read_anthropic_usage(&v, &mut usage);
        assert_eq!(
            usage,
            Usage {
                input_tokens: 3,
                output_tokens: 7,
                cache_write_5m_tokens: 40,
                cache_read_tokens: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn openai_prompt_tokens_include_cached_ones() {
        let stream = concat!(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n",
            "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":30,\"total_tokens\":1230,\"prompt_tokens_details\":{\"cached_tokens\":1000}}}\n\n",
            "data: [DONE]\n\n",
        );
        let mut p = SseParser::default();
        let mut m = StreamMeter::default();
        p.feed(stream.as_bytes(), |_, d| m.openai_event(d));
        assert_eq!(
            m.usage,
            Usage { input_tokens: 200, cache_read_tokens: 1000, output_tokens: 30, ..Default::default() }
        );
        assert!(m.finished && m.saw_usage);
        assert_eq!(m.text_bytes, 2);
    }

    #[test]
    fn responses_usage_comes_with_the_terminal_event_and_counts_nothing_twice() {
        let ev = |kind: &str, json: &str| format!("event: {kind}\ndata: {json}\n\n");
        let head = [
            ev("response.created", r#"{"type":"response.created","sequence_number":0,"response":{"id":"r1","status":"in_progress","usage":null}}"#),
            ev("response.reasoning_summary_text.delta", r#"{"type":"response.reasoning_summary_text.delta","sequence_number":1,"delta":"Plan"}"#),
            ev("response.output_text.delta", r#"{"type":"response.output_text.delta","sequence_number":2,"delta":"Hello"}"#),
        ]
        .concat();
        let usage = r#"{"input_tokens":5000,"input_tokens_details":{"cached_tokens":4000,"cache_write_tokens":500},"output_tokens":300,"output_tokens_details":{"reasoning_tokens":256},"total_tokens":5300}"#;
        let want = Usage {
            input_tokens: 500,
            cache_read_tokens: 4000,
            cache_write_5m_tokens: 500,
            output_tokens: 300,
            ..Default::default()
        };
        for (terminal, finished, errored) in [
            ("response.completed", true, false),
            ("response.incomplete", true, false),
            ("response.failed", false, true),
        ] {
            let end = ev(
                terminal,
                &format!(
                    r#"{{"type":"{terminal}","sequence_number":3,"response":{{"id":"r1","service_tier":"flex","usage":{usage}}}}}"#
                ),
            );
            let mut p = SseParser::default();
            let mut m = StreamMeter::default();
            p.feed(format!("{head}{end}").as_bytes(), |n, d| m.responses_event(n, d));
            assert_eq!(m.usage, want, "{terminal}");
            assert_eq!((m.saw_usage, m.finished, m.errored), (true, finished, errored), "{terminal}");
            assert_eq!(m.text_bytes, 9);
            assert!(m.reported.over(Modifiers::default()).flex);
        }
        // A stream cut before its terminal event has no usage; nor does a
        // terminal event without it make the account whole.
        let mut p = SseParser::default();
        let mut m = StreamMeter::default();
        p.feed(head.as_bytes(), |n, d| m.responses_event(n, d));
        assert!(!m.saw_usage && !m.finished && !m.errored);
        for terminal in ["response.completed", "response.incomplete", "response.failed"] {
            let end = ev(
                terminal,
                &format!(r#"{{"type":"{terminal}","sequence_number":3,"response":{{"id":"r1","usage":null}}}}"#),
            );
            let mut m = StreamMeter::default();
            SseParser::default().feed(format!("{head}{end}").as_bytes(), |n, d| m.responses_event(n, d));
            assert!(!m.saw_usage && !m.finished, "{terminal}");
        }
    }

    #[test]
    fn an_oversized_event_is_dropped_and_parsing_goes_on() {
        let mut p = SseParser::default();
        let mut seen = Vec::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        p.feed(b"event: message_delta\ndata: ", |n, _| seen.push(n.to_string()));
        p.feed(&big, |n, _| seen.push(n.to_string()));
        p.feed(b"\n\nevent: message_stop\ndata: {}\n\n", |n, _| seen.push(n.to_string()));
        assert_eq!(seen, vec!["message_stop".to_string()]);
    }
}
