//! Prometheus text exposition without a metrics crate: labelled counters and
//! histograms behind short locks, with a cap on the label sets per family so
//! no caller can grow memory by inventing label values (overflow lands in a
//! single `other` series). Used by the ledger's and the edge's `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Most label sets one family keeps before folding new ones into `other`.
pub const MAX_SERIES: usize = 1000;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// A counter family keyed by label values.
#[derive(Default)]
pub struct Counter {
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    pub fn add(&self, labels: &[&str], n: u64) {
        let mut s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let key: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        if let Some(v) = s.get_mut(&key) {
            *v += n;
            return;
        }
        let key = if s.len() >= MAX_SERIES { labels.iter().map(|_| "other".to_string()).collect() } else { key };
        *s.entry(key).or_insert(0) += n;
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str, labels: &[&str]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if labels.is_empty() && s.is_empty() {
            // An unlabelled counter is there from the start, at 0.
            let _ = writeln!(out, "{name} 0");
        }
        for (values, n) in s.iter() {
            let _ = writeln!(out, "{name}{} {n}", label_set(labels, values));
        }
    }
}

/// A latency histogram with fixed buckets.
pub struct Histogram {
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
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
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
pub fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// `{a="x",b="y"}`, or nothing without labels.
pub fn label_set<S: AsRef<str>>(names: &[&str], values: &[S]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = names.iter().zip(values).map(|(l, v)| format!("{l}=\"{}\"", esc(v.as_ref()))).collect();
    format!("{{{}}}", pairs.join(","))
}

/// One unlabelled gauge, with its help and type lines.
pub fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

/// A gauge family: help and type once, then one line per label set (at most
/// `MAX_SERIES`; the rest are left out and counted in a comment).
pub fn gauge_family<S: AsRef<str>>(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[&str],
    series: impl IntoIterator<Item = (Vec<S>, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    let mut left_out = 0usize;
    for (i, (values, v)) in series.into_iter().enumerate() {
        if i >= MAX_SERIES {
            left_out += 1;
            continue;
        }
        let _ = writeln!(out, "{name}{} {v}", label_set(labels, &values));
    }
    if left_out > 0 {
        let _ = writeln!(out, "# {left_out} more {name} series left out (limit {MAX_SERIES})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_gauges_and_caps_series() {
        let c = Counter::default();
        c.add(&["a\"b"], 2);
        c.add(&["a\"b"], 3);
        for i in 0..(MAX_SERIES + 4) {
            c.add(&[&format!("m{i}")], 1);
        }
        let mut out = String::new();
        c.render(&mut out, "x_total", "help", &["model"]);
        assert!(out.contains("x_total{model=\"a\\\"b\"} 5"), "{out}");
        assert!(out.contains("x_total{model=\"other\"} 5"), "{out}");

        let plain = Counter::default();
        let mut out = String::new();
        plain.render(&mut out, "y_total", "help", &[]);
        assert!(out.ends_with("\ny_total 0\n"), "{out}");
        plain.add(&[], 3);
        let mut out = String::new();
        plain.render(&mut out, "y_total", "help", &[]);
        assert!(out.ends_with("\ny_total 3\n"), "{out}");

        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500));
        let mut out = String::new();
        h.render(&mut out, "lat_seconds", "help");
        assert!(out.contains("lat_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"120\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("lat_seconds_count 3\n"), "{out}");

        let mut out = String::new();
        gauge_family(&mut out, "g", "help", &["scope"], (0..MAX_SERIES + 2).map(|i| (vec![format!("s{i}")], i as u64)));
        assert!(out.contains("g{scope=\"s0\"} 0\n"));
        assert!(!out.contains(&format!("s{MAX_SERIES}\"")));
        assert!(out.contains("# 2 more g series left out"));
    }
}
