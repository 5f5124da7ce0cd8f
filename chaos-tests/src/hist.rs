//! One histogram read from a Prometheus exposition (a process's
//! `/metrics`), and what was observed between two scrapes: how the benches
//! read the edges' and ledger nodes' own timings.

/// Buckets (upper bound in s, cumulative count), sum in s, count.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Hist {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Hist {
    /// Histogram `name` (unlabelled) of `text`; empty when absent.
    pub fn parse(text: &str, name: &str) -> Hist {
        let mut h = Hist::default();
        let bucket = format!("{name}_bucket{{le=\"");
        let (sum, count) = (format!("{name}_sum "), format!("{name}_count "));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let Some((le, n)) = rest.split_once("\"} ") else { continue };
                if let (Ok(le), Ok(n)) = (le.parse::<f64>(), n.trim().parse::<u64>()) {
                    h.buckets.push((le, n));
                }
            } else if let Some(v) = line.strip_prefix(&sum) {
                h.sum = v.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = line.strip_prefix(&count) {
                h.count = v.trim().parse().unwrap_or(0);
            }
        }
        h
    }

    /// What was observed between `before` and `self`.
    pub fn since(&self, before: &Hist) -> Hist {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let b = before.buckets.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
                (*le, n.saturating_sub(b))
            })
            .collect();
        Hist { buckets, sum: self.sum - before.sum, count: self.count.saturating_sub(before.count) }
    }

    /// The upper bound of the bucket that holds quantile `q`, in ms.
    pub fn bound_ms(&self, q: f64) -> String {
        let want = (self.count as f64 * q).ceil() as u64;
        match self.buckets.iter().find(|(_, n)| *n >= want.max(1)) {
            Some((le, _)) if le.is_finite() => format!("≤ {} ms", le * 1000.0),
            _ => "> largest bucket".into(),
        }
    }

    /// The mean observation in ms (0 with none).
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum * 1000.0 / self.count as f64
    }

    /// Count, mean, and the buckets holding p50 and p99.
    pub fn summary(&self) -> String {
        if self.count == 0 {
            return "no observations".into();
        }
        format!(
            "{} requests, mean {:.2} ms, p50 {}, p99 {}",
            self.count,
            self.mean_ms(),
            self.bound_ms(0.50),
            self.bound_ms(0.99)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE t_seconds histogram\n\
        t_seconds_bucket{le=\"0.001\"} 2\nt_seconds_bucket{le=\"0.01\"} 4\nt_seconds_bucket{le=\"+Inf\"} 4\n\
        t_seconds_sum 0.012\nt_seconds_count 4\nother_count 99\n";
    const AFTER: &str = "t_seconds_bucket{le=\"0.001\"} 3\nt_seconds_bucket{le=\"0.01\"} 12\n\
        t_seconds_bucket{le=\"+Inf\"} 14\nt_seconds_sum 0.212\nt_seconds_count 14\n";

    #[test]
    fn reads_one_histogram_and_what_changed_between_scrapes() {
        let before = Hist::parse(BEFORE, "t_seconds");
        assert_eq!(before.count, 4);
        assert_eq!(before.buckets, vec![(0.001, 2), (0.01, 4), (f64::INFINITY, 4)]);
        let d = Hist::parse(AFTER, "t_seconds").since(&before);
        assert_eq!(d.count, 10);
        assert_eq!(d.buckets, vec![(0.001, 1), (0.01, 8), (f64::INFINITY, 10)]);
        assert!((d.mean_ms() - 20.0).abs() < 1e-9, "{}", d.mean_ms());
        assert_eq!(d.bound_ms(0.5), "≤ 10 ms");
        // Two of ten past the last finite bucket.
        assert_eq!(d.bound_ms(0.99), "> largest bucket");
        assert_eq!(Hist::parse(AFTER, "absent"), Hist::default());
        assert_eq!(Hist::default().summary(), "no observations");
    }
}
