//! Prometheus text exposition for the edge, without a metrics crate: labelled
//! counters and histograms behind short locks, with a cap on the number of
//! label sets per family so a client cannot grow memory by inventing model
//! names (overflow lands in a single `other` series).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Most label sets one family keeps before folding new ones into `other`.
const MAX_SERIES: usize = 1000;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

#[derive(Default)]
struct Counter {
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    fn add(&self, labels: &[&str], n: u64) {
        let mut s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        if let Some(v) = s.get_mut(&key) {
            *v += n;
            return;
        }
        let key = if s.len() >= MAX_SERIES { labels.iter().map(|_| "other".to_string()).collect() } else { key };
        *s.entry(key).or_insert(0) += n;
    }
}

struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Escapes a label value for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn render_counter(out: &mut String, c: &Counter, name: &str, help: &str, labels: &[&str]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    let s = c.series.lock().unwrap_or_else(|p| p.into_inner());
    for (values, n) in s.iter() {
        let pairs: Vec<String> = labels.iter().zip(values).map(|(l, v)| format!("{l}=\"{}\"", esc(v))).collect();
        let _ = writeln!(out, "{name}{{{}}} {n}", pairs.join(","));
    }
}

/// The edge's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Counter,
    admissions: Counter,
    spend: Counter,
    tokens: Counter,
    outbox_dropped: Counter,
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
        render_counter(
            &mut out,
            &self.requests,
            "tollgate_requests_total",
            "Requests by route, model and HTTP status.",
            &["route", "model", "status"],
        );
        render_counter(
            &mut out,
            &self.admissions,
            "tollgate_admissions_total",
            "Admission decisions: granted, denied (budget), error (ledger unreachable or refused).",
            &["result"],
        );
        render_counter(
            &mut out,
            &self.spend,
            "tollgate_spend_nano_usd_total",
            "Metered spend in nano-USD by team and model.",
            &["team", "model"],
        );
        render_counter(
            &mut out,
            &self.tokens,
            "tollgate_tokens_total",
            "Metered tokens by model and type (input, output, cache_write_5m, cache_write_1h, cache_read).",
            &["model", "type"],
        );
        render_counter(
            &mut out,
            &self.outbox_dropped,
            "tollgate_outbox_dropped_total",
            "Outbox records the ledger refused permanently (logged), by kind.",
            &["kind"],
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
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
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
        for i in 0..(MAX_SERIES + 10) {
            m.spend("t", &format!("m{i}"), 1);
        }
        let text = m.render();
        assert!(text.contains("tollgate_spend_nano_usd_total{team=\"other\",model=\"other\"} 10"), "{text}");
    }
}
