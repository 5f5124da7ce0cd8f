//! The edge's Prometheus metrics (`tollgate_types::prom` writes the text
//! format; label sets per family are capped, so a client cannot grow memory
//! by inventing model names).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tollgate_types::prom::{gauge, Counter, Histogram};

/// The edge's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Counter,
    admissions: Counter,
    spend: Counter,
    tokens: Counter,
    outbox_dropped: Counter,
    connections_refused: Counter,
    overhead: Histogram,
    upstream: Histogram,
    pub outbox_depth: AtomicI64,
    pub open_streams: AtomicI64,
    pub config_index: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &str, model: &str, status: u16) {
        self.requests.add(&[route, model, &status.to_string()], 1);
    }

    /// `result`: granted, denied or error.
    pub fn admission(&self, result: &str) {
        self.admissions.add(&[result], 1);
    }

    pub fn spend(&self, team: &str, model: &str, nano: u64) {
        self.spend.add(&[team, model], nano);
    }

    pub fn tokens(&self, model: &str, kind: &str, n: u64) {
        if n > 0 {
            self.tokens.add(&[model, kind], n);
        }
    }

    /// A client connection closed before any request: `per_ip_limit` or
    /// `tls_handshake`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.add(&[reason], 1);
    }

    pub fn outbox_dropped(&self, kind: &str) {
        self.outbox_dropped.add(&[kind], 1);
    }

    /// Time spent in Tollgate itself for one request (upstream time excluded).
    pub fn overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    /// Time from sending a request upstream to its response headers.
    pub fn upstream(&self, d: Duration) {
        self.upstream.observe(d);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        self.requests.render(
            &mut out,
            "tollgate_requests_total",
            "Requests by route, model and HTTP status.",
            &["route", "model", "status"],
        );
        self.admissions.render(
            &mut out,
            "tollgate_admissions_total",
            "Admission decisions: granted, denied (budget), error (ledger unreachable or refused), fail_open (admitted without the ledger).",
            &["result"],
        );
        self.spend.render(
            &mut out,
            "tollgate_spend_nano_usd_total",
            "Metered spend in nano-USD by team and model.",
            &["team", "model"],
        );
        self.tokens.render(
            &mut out,
            "tollgate_tokens_total",
            "Metered tokens by model and type (input, output, cache_write_5m, cache_write_1h, cache_read).",
            &["model", "type"],
        );
        self.outbox_dropped.render(
            &mut out,
            "tollgate_outbox_dropped_total",
            "Outbox records the ledger refused permanently (logged), by kind.",
            &["kind"],
        );
        self.connections_refused.render(
            &mut out,
            "tollgate_connections_refused_total",
            "Client connections closed before a request: per_ip_limit (too many open from one address), tls_handshake (failed or too slow).",
            &["reason"],
        );
        self.overhead.render(
            &mut out,
            "tollgate_gateway_overhead_seconds",
            "Time spent in Tollgate per request, upstream time excluded.",
        );
        self.upstream.render(
            &mut out,
            "tollgate_upstream_latency_seconds",
            "Time from forwarding a request to the upstream's response headers.",
        );
        let gauges = [
            ("tollgate_outbox_depth", "Settlements and releases written but not yet acknowledged by the ledger.", {
                self.outbox_depth.load(Ordering::Relaxed)
            }),
            ("tollgate_open_streams", "Streaming responses in progress.", self.open_streams.load(Ordering::Relaxed)),
            (
                "tollgate_config_index",
                "Ledger log index of the config (keys, policies) this edge holds.",
                self.config_index.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, help, v) in gauges {
            gauge(&mut out, name, help, v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_caps_series() {
        let m = Metrics::default();
        m.request("/v1/messages", "claude-\"x\"", 200);
        m.request("/v1/messages", "claude-\"x\"", 200);
        m.overhead(Duration::from_micros(700));
        m.overhead(Duration::from_millis(3));
        let text = m.render();
        assert!(text
            .contains("tollgate_requests_total{route=\"/v1/messages\",model=\"claude-\\\"x\\\"\",status=\"200\"} 2"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_count 2"));
        for i in 0..(tollgate_types::prom::MAX_SERIES + 10) {
            m.spend("t", &format!("m{i}"), 1);
        }
        let text = m.render();
        assert!(text.contains("tollgate_spend_nano_usd_total{team=\"other\",model=\"other\"} 10"), "{text}");
    }
}
