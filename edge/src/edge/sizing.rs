//! How many output tokens `estimate` mode reserves for a request: a high
//! percentile of what this user's recent requests for this model really
//! produced, capped by the request's own `max_tokens`. Coding agents ask for
//! 32K–128K output tokens on every turn and use a few hundred; reserving
//! `max_tokens` pins a budget at its cap while almost nothing is spent.
//!
//! Kept on the edge (each edge learns from the requests it settles), in a
//! bounded LRU map of (user, model) → the last [`WINDOW`] outputs. Until a
//! pair has [`MIN_SAMPLES`] outputs the seed is reserved, which is
//! deliberately high. A request that produces more than was reserved is
//! still charged in full: the ledger records the difference as excess.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// Outputs remembered per (user, model).
pub const WINDOW: usize = 64;
/// Outputs seen before the percentile replaces the seed.
pub const MIN_SAMPLES: usize = 8;
/// (user, model) pairs remembered; the least recently used is forgotten.
pub const MAX_PAIRS: usize = 50_000;

/// The sizing settings (`[edge] output_percentile`, `output_seed_tokens`,
/// `output_floor_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub percentile: u64,
    pub seed_tokens: u64,
    pub floor_tokens: u64,
}

impl Default for Sizing {
    fn default() -> Self {
        Sizing { percentile: 95, seed_tokens: 8_192, floor_tokens: 1_024 }
    }
}

/// Recent output tokens per (user, model).
pub struct OutputHistory {
    sizing: Sizing,
    pairs: Mutex<LruCache<(String, String), VecDeque<u64>>>,
}

impl OutputHistory {
    pub fn new(sizing: Sizing) -> OutputHistory {
        OutputHistory::with_capacity(sizing, MAX_PAIRS)
    }

    pub fn with_capacity(sizing: Sizing, pairs: usize) -> OutputHistory {
        let cap = NonZeroUsize::new(pairs.max(1)).expect("at least one");
        OutputHistory { sizing, pairs: Mutex::new(LruCache::new(cap)) }
    }

    /// Records what a settled request of `user` for `model` produced.
    pub fn observe(&self, user: &str, model: &str, output_tokens: u64) {
        let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_string(), model.to_string());
        let window = pairs.get_or_insert_mut(key, || VecDeque::with_capacity(WINDOW));
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(output_tokens);
    }

    /// The output tokens to reserve for a request asking for at most
    /// `max_tokens`: the percentile of the recent outputs (the seed before
    /// there are enough), at least the floor, at most `max_tokens`.
    pub fn reserve(&self, user: &str, model: &str, max_tokens: u64) -> u64 {
        let learned = {
            let mut pairs = self.pairs.lock().unwrap_or_else(|p| p.into_inner());
            pairs.get(&(user.to_string(), model.to_string())).filter(|w| w.len() >= MIN_SAMPLES).map(|w| {
                let mut v: Vec<u64> = w.iter().copied().collect();
                v.sort_unstable();
                // Nearest rank: the smallest value with at least p% of the
                // window at or below it.
                let rank = (v.len() as u64 * self.sizing.percentile).div_ceil(100).max(1) as usize;
                v[rank - 1]
            })
        };
        learned.unwrap_or(self.sizing.seed_tokens).max(self.sizing.floor_tokens).min(max_tokens)
    }

    /// Pairs remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_until_enough_outputs_then_the_percentile_within_floor_and_max_tokens() {
        let h = OutputHistory::new(Sizing::default());
        assert_eq!(h.reserve("a@x", "m", 32_000), 8_192, "seed");
        assert_eq!(h.reserve("a@x", "m", 4_000), 4_000, "never above max_tokens");
        for n in 1..=7u64 {
            h.observe("a@x", "m", n * 100);
        }
        assert_eq!(h.reserve("a@x", "m", 32_000), 8_192, "7 outputs are not enough");
        // 20 outputs 100..=2000: the 95th percentile by nearest rank is the
        // 19th smallest, 1900.
        for n in 8..=20u64 {
            h.observe("a@x", "m", n * 100);
        }
        assert_eq!(h.reserve("a@x", "m", 32_000), 1_900);
        assert_eq!(h.reserve("a@x", "m", 1_500), 1_500);
        assert_eq!(h.reserve("b@x", "m", 32_000), 8_192, "another user has their own history");
        assert_eq!(h.reserve("a@x", "other", 32_000), 8_192, "and another model");
        // Small outputs are reserved at the floor.
        for _ in 0..WINDOW {
            h.observe("a@x", "m", 10);
        }
        assert_eq!(h.reserve("a@x", "m", 32_000), 1_024, "the window forgot the older outputs; floor");
        assert_eq!(h.reserve("a@x", "m", 500), 500, "max_tokens below the floor wins");
    }

    #[test]
    fn the_map_is_bounded_and_forgets_the_least_recently_used_pair() {
        let h = OutputHistory::with_capacity(Sizing::default(), 3);
        for u in ["a", "b", "c", "d"] {
            for _ in 0..MIN_SAMPLES {
                h.observe(u, "m", 2_000);
            }
        }
        assert_eq!(h.len(), 3);
        assert_eq!(h.reserve("a", "m", 32_000), 8_192, "a was forgotten");
        assert_eq!(h.reserve("d", "m", 32_000), 2_000);
    }
}
