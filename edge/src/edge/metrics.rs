//! The edge's metrics: names, help and handles on its own
//! [`Registry`] (`tollgate_types::prom`: label sets per family are capped,
//! so a client cannot grow memory by inventing model names).

use std::time::Duration;

use tollgate_types::prom::{Counters, Histogram, Registry};

/// The edge's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Counters<3>,
    admissions: Counters<1>,
    spend: Counters<2>,
    tokens: Counters<2>,
    outbox_dropped: Counters<1>,
    connections_refused: Counters<1>,
    overhead: Histogram,
    upstream: Histogram,
    pub open_streams: metrics::Gauge,
    pub config_index: metrics::Gauge,
    /// Lease room no request holds (set when scraped).
    pub lease_room: metrics::Gauge,
    /// Set when scraped, from the outbox and the fail-open allowance.
    outbox_depth: metrics::Gauge,
    fail_open_outstanding: metrics::Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        Metrics {
            requests: r.counters(
                "tollgate_requests_total",
                "Requests by route, model and HTTP status.",
                ["route", "model", "status"],
            ),
            admissions: r.counters(
                "tollgate_admissions_total",
                "Admission decisions: leased (admitted locally from this edge's budget leases), granted (a \
                 per-request hold), denied (budget), error (ledger unreachable or refused), fail_open (admitted \
                 without the ledger), clamped (max_tokens lowered to a budget's room).",
                ["result"],
            ),
            spend: r.counters(
                "tollgate_spend_nano_usd_total",
                "Metered spend in nano-USD by team and model.",
                ["team", "model"],
            ),
            tokens: r.counters(
                "tollgate_tokens_total",
                "Metered tokens by model and type (input, output, cache_write_5m, cache_write_1h, cache_read).",
                ["model", "type"],
            ),
            outbox_dropped: r.counters(
                "tollgate_outbox_dropped_total",
                "Outbox records the ledger refused permanently (logged), by kind.",
                ["kind"],
            ),
            connections_refused: r.counters(
                "tollgate_connections_refused_total",
                "Client connections closed before a request: per_ip_limit (too many open from one address), \
                 tls_handshake (failed or too slow).",
                ["reason"],
            ),
            overhead: r.histogram(
                "tollgate_gateway_overhead_seconds",
                "Time spent in Tollgate per request, upstream time excluded.",
            ),
            upstream: r.histogram(
                "tollgate_upstream_latency_seconds",
                "Time from forwarding a request to the upstream's response headers.",
            ),
            open_streams: r.gauge("tollgate_open_streams", "Streaming responses in progress."),
            config_index: r
                .gauge("tollgate_config_index", "Ledger log index of the config (keys, policies) this edge holds."),
            lease_room: r.gauge(
                "tollgate_lease_room_nano_usd",
                "Room in this edge's budget leases that no request in flight holds, over every budget.",
            ),
            outbox_depth: r.gauge(
                "tollgate_outbox_depth",
                "Settlements and releases written but not yet acknowledged by the ledger.",
            ),
            fail_open_outstanding: r.gauge(
                "tollgate_fail_open_outstanding_nano_usd",
                "Admitted without the ledger (fail_mode = open) and not yet acknowledged by it.",
            ),
            registry: r,
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, model: &str, status: u16) {
        self.requests.add([route, model, &status.to_string()], 1);
    }

    /// `result`: leased, granted, denied, error, fail_open or clamped.
    pub fn admission(&self, result: &str) {
        self.admissions.add([result], 1);
    }

    pub fn spend(&self, team: &str, model: &str, nano: u64) {
        self.spend.add([team, model], nano);
    }

    pub fn tokens(&self, model: &str, kind: &str, n: u64) {
        if n > 0 {
            self.tokens.add([model, kind], n);
        }
    }

    /// A client connection closed before any request: `per_ip_limit` or
    /// `tls_handshake`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.add([reason], 1);
    }

    pub fn outbox_dropped(&self, kind: &str) {
        self.outbox_dropped.add([kind], 1);
    }

    /// Time spent in Tollgate itself for one request (upstream time excluded).
    pub fn overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    /// Time from sending a request upstream to its response headers.
    pub fn upstream(&self, d: Duration) {
        self.upstream.observe(d);
    }

    /// The text exposition, with the outbox's depth and the fail-open
    /// allowance's outstanding amount as of now.
    pub fn render(&self, outbox_depth: usize, fail_open_outstanding: u64) -> String {
        self.outbox_depth.set(outbox_depth as f64);
        self.fail_open_outstanding.set(fail_open_outstanding as f64);
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_gauges_and_caps_series() {
        let m = Metrics::default();
        m.request("/v1/messages", "claude-\"x\"", 200);
        m.request("/v1/messages", "claude-\"x\"", 200);
        m.overhead(Duration::from_micros(700));
        m.overhead(Duration::from_millis(3));
        m.open_streams.increment(2.0);
        m.open_streams.decrement(1.0);
        let text = m.render(7, 1_500);
        assert!(text
            .contains("tollgate_requests_total{route=\"/v1/messages\",model=\"claude-\\\"x\\\"\",status=\"200\"} 2"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.001\"} 1"), "{text}");
        assert!(text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("tollgate_gateway_overhead_seconds_count 2"));
        assert!(text.contains("\ntollgate_open_streams 1\n"), "{text}");
        assert!(text.contains("\ntollgate_outbox_depth 7\n"), "{text}");
        assert!(text.contains("\ntollgate_fail_open_outstanding_nano_usd 1500\n"), "{text}");
        assert!(text.contains("\ntollgate_config_index 0\n"), "{text}");
        for i in 0..(tollgate_types::prom::MAX_SERIES + 10) {
            m.spend("t", &format!("m{i}"), 1);
        }
        let text = m.render(0, 0);
        assert!(text.contains("tollgate_spend_nano_usd_total{team=\"other\",model=\"other\"} 10"), "{text}");
    }
}
