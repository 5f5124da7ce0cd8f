//! Metrics through the `metrics` crate, rendered in the Prometheus text
//! format by `metrics-exporter-prometheus`. Each edge and each ledger node
//! owns a [`Registry`] (a recorder of its own, not the process-global one:
//! `tollgate up` and the tests run several in one process) and holds
//! handles registered on it.
//!
//! What is this product's own, and so written here: a cap on the label
//! sets of a labelled family ([`Counters`], [`Registry::gauges`]), so no
//! caller grows memory or the scrape by inventing label values (a counter's
//! overflow lands in one `other` series), and histograms that drain their
//! samples every [`UPKEEP_EVERY`] observations, so memory stays bounded
//! when nobody scrapes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// Most label sets one family keeps before folding new ones into `other`.
pub const MAX_SERIES: usize = 1000;

/// Histogram bucket upper bounds, in seconds.
pub const BUCKETS: [f64; 18] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Observations a histogram takes before its samples are folded into the
/// buckets (the exporter keeps them raw until then).
pub const UPKEEP_EVERY: u32 = 4096;

static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

/// One recorder and what it renders.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let recorder =
            PrometheusBuilder::new().set_buckets(&BUCKETS).expect("the bucket list is not empty").build_recorder();
        Registry { recorder: Arc::new(recorder) }
    }

    /// An unlabelled counter, rendered from the start (at 0).
    pub fn counter(&self, name: &'static str, help: &'static str) -> metrics::Counter {
        self.recorder.describe_counter(name.into(), None, help.into());
        self.recorder.register_counter(&Key::from_static_name(name), &METADATA)
    }

    /// An unlabelled gauge, rendered from the start (at 0).
    pub fn gauge(&self, name: &'static str, help: &'static str) -> metrics::Gauge {
        self.recorder.describe_gauge(name.into(), None, help.into());
        self.recorder.register_gauge(&Key::from_static_name(name), &METADATA)
    }

    /// A latency histogram over [`BUCKETS`].
    pub fn histogram(&self, name: &'static str, help: &'static str) -> Histogram {
        self.recorder.describe_histogram(name.into(), None, help.into());
        let h = self.recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        Histogram { h, since_upkeep: AtomicU32::new(0), registry: self.clone() }
    }

    /// A counter family with label names `labels`.
    pub fn counters<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
    ) -> Counters<N> {
        self.recorder.describe_counter(name.into(), None, help.into());
        Counters { registry: self.clone(), name, labels, series: RwLock::default() }
    }

    /// Sets a gauge family to `series` (label values and value), at most
    /// [`MAX_SERIES`] of them; returns how many were left out. Meant for a
    /// registry built for one scrape, so what is gone is not rendered.
    pub fn gauges<const N: usize, S: AsRef<str>>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: [&'static str; N],
        series: impl IntoIterator<Item = ([S; N], f64)>,
    ) -> usize {
        self.recorder.describe_gauge(name.into(), None, help.into());
        let mut left_out = 0;
        for (i, (values, v)) in series.into_iter().enumerate() {
            if i >= MAX_SERIES {
                left_out += 1;
                continue;
            }
            self.recorder.register_gauge(&key(name, &labels, values.each_ref().map(AsRef::as_ref)), &METADATA).set(v);
        }
        left_out
    }

    /// The text exposition of everything registered.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }
}

fn key<const N: usize>(name: &'static str, labels: &[&'static str; N], values: [&str; N]) -> Key {
    let labels: Vec<Label> = labels.iter().zip(values).map(|(l, v)| Label::new(*l, v.to_string())).collect();
    Key::from_parts(name, labels)
}

/// A counter family whose label sets are capped at [`MAX_SERIES`]; the
/// handles are kept, so an increment of a known series is one shared lock.
pub struct Counters<const N: usize> {
    registry: Registry,
    name: &'static str,
    labels: [&'static str; N],
    series: RwLock<HashMap<Key, metrics::Counter>>,
}

impl<const N: usize> Counters<N> {
    pub fn add(&self, values: [&str; N], n: u64) {
        let k = key(self.name, &self.labels, values);
        if let Some(c) = self.series.read().unwrap_or_else(|p| p.into_inner()).get(&k) {
            return c.increment(n);
        }
        let mut series = self.series.write().unwrap_or_else(|p| p.into_inner());
        let k = if series.len() >= MAX_SERIES && !series.contains_key(&k) {
            key(self.name, &self.labels, [(); N].map(|_| "other"))
        } else {
            k
        };
        let recorder = &self.registry.recorder;
        series.entry(k).or_insert_with_key(|k| recorder.register_counter(k, &METADATA)).increment(n);
    }
}

/// A latency histogram, in seconds.
pub struct Histogram {
    h: metrics::Histogram,
    since_upkeep: AtomicU32,
    registry: Registry,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.h.record(d.as_secs_f64());
        if self.since_upkeep.fetch_add(1, Ordering::Relaxed) + 1 >= UPKEEP_EVERY {
            self.since_upkeep.store(0, Ordering::Relaxed);
            self.registry.recorder.handle().run_upkeep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_gauges_and_caps_series() {
        let r = Registry::new();
        let c = r.counters("x_total", "help", ["model"]);
        c.add(["a\"b"], 2);
        c.add(["a\"b"], 3);
        for i in 0..(MAX_SERIES + 4) {
            c.add([&format!("m{i}")], 1);
        }
        let plain = r.counter("y_total", "help y");
        let h = r.histogram("lat_seconds", "help");
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(500));
        let out = r.render();
        assert!(out.contains("x_total{model=\"a\\\"b\"} 5\n"), "{out}");
        // 999 series were free after a"b; the 5 after them share `other`.
        assert!(out.contains("x_total{model=\"m998\"} 1\n"), "{out}");
        assert!(out.contains("x_total{model=\"other\"} 5\n"), "{out}");
        assert!(!out.contains("x_total{model=\"m999\"}"), "{out}");
        assert!(out.contains("# HELP y_total help y\n# TYPE y_total counter\ny_total 0\n"), "{out}");
        plain.increment(3);
        assert!(r.render().contains("\ny_total 3\n"));
        assert!(out.contains("lat_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"120\"} 2\n"), "{out}");
        assert!(out.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("lat_seconds_count 3\n"), "{out}");

        let scrape = Registry::new();
        let left = scrape.gauges("g", "help", ["scope"], (0..MAX_SERIES + 2).map(|i| ([format!("s{i}")], i as f64)));
        assert_eq!(left, 2);
        let out = scrape.render();
        assert!(out.contains("g{scope=\"s0\"} 0\n"), "{out}");
        assert!(out.contains("g{scope=\"s999\"} 999\n"), "{out}");
        assert!(!out.contains(&format!("s{MAX_SERIES}\"")));
    }
}
