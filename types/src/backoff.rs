//! The one backoff every retry and reconnect loop paces itself with
//! (`backon`'s exponential builder, not a loop of our own): a first pause,
//! doubling up to a longest one, each with up to as much again of jitter
//! so processes that failed together do not retry in step, and no limit
//! on attempts: a caller bounds the loop by count or total delay
//! (`with_max_times`, `with_total_delay`) where it must stop.

use std::time::Duration;

pub use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

/// Pauses from `first`, doubling to `longest`, jittered, unbounded.
pub fn pauses(first: Duration, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new().with_min_delay(first).with_max_delay(longest).with_jitter().without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest_with_at_most_as_much_again_of_jitter() {
        let ms = Duration::from_millis;
        let got: Vec<Duration> = pauses(ms(100), ms(800)).build().take(7).collect();
        let base = [100, 200, 400, 800, 800, 800, 800].map(ms);
        for (p, b) in got.iter().zip(base) {
            assert!(*p >= b && *p <= b * 2, "{got:?}");
        }
        // Bounded where a caller says so.
        assert_eq!(pauses(ms(1), ms(2)).with_max_times(3).build().count(), 3);
        let total: Duration = pauses(ms(10), ms(10)).with_total_delay(Some(ms(100))).build().sum();
        assert!(total <= ms(100), "{total:?}");
    }
}
