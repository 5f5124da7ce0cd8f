//! A model priced in the edge's own config file (`[pricing.models."id"]`,
//! `[pricing.fallback]`): nano-USD per token, for a model only this edge
//! serves.

use serde::Deserialize;

use super::{Price, Rate, Rates, DEFAULT_WEB_SEARCH};

/// A price in nano-USD per token (per search for `web_search`). Cache
/// rates default to Anthropic's multiples of `input` (1.25×, 2×, 0.1×).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    pub input: u64,
    pub output: u64,
    pub cache_write_5m: Option<u64>,
    pub cache_write_1h: Option<u64>,
    pub cache_read: Option<u64>,
    pub web_search: Option<u64>,
    /// The most output tokens one request may ask for.
    pub max_output_tokens: Option<u64>,
}

impl PriceEntry {
    pub fn price(&self, id: &str) -> Price {
        let nano = Rate::from_nano_per_token;
        Price {
            id: id.to_string(),
            provider: None,
            display_name: id.to_string(),
            aliases: vec![],
            rates: Rates {
                input: nano(self.input),
                output: nano(self.output),
                cache_write_5m: nano(self.cache_write_5m.unwrap_or(self.input * 5 / 4)),
                cache_write_1h: nano(self.cache_write_1h.unwrap_or(self.input * 2)),
                cache_read: nano(self.cache_read.unwrap_or(self.input / 10)),
            },
            fast: None,
            flex: None,
            long_context: None,
            geo_us_percent: None,
            web_search: self.web_search.map_or(DEFAULT_WEB_SEARCH, |nano| nano.saturating_mul(1_000)),
            max_output_tokens: self.max_output_tokens,
            source: "the edge's config file".to_string(),
            discount_bp: 0,
        }
    }
}
