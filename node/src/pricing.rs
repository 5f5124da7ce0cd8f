//! Prices: nano-USD per token (and per web search), by model, from a table
//! shipped with the binary. Models match by the longest listed prefix that
//! ends at a `-` boundary, so dated ids (`claude-sonnet-4-5-20250929`) find
//! their family while an unlisted newer model (`gpt-5.5`) does not inherit an
//! older one's price. A model that matches nothing is priced by the
//! fallback, never at $0.
//!
//! List prices as published by Anthropic and OpenAI (USD per million tokens,
//! which is nano-USD per 1,000 tokens: $3 / MTok = 3,000 nano-USD per token).
//! Cache writes are 1.25× input (5 minutes) or 2× (1 hour); cache reads 0.1×.
//! Sonnet 4 and 4.5 charge a long-context tier when a request's total input
//! (uncached + cache writes + cache reads) exceeds 200,000 tokens.

use tollgate_ledger::money::NanoUsd;
use tollgate_ledger::state::Usage;

/// Nano-USD per token for each kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub cache_read: u64,
}

impl Rates {
    /// Anthropic's rule: cache writes 1.25× / 2× input, reads 0.1× input.
    pub const fn anthropic(input: u64, output: u64) -> Rates {
        Rates { input, output, cache_write_5m: input * 5 / 4, cache_write_1h: input * 2, cache_read: input / 10 }
    }

    /// OpenAI: cached input has its own rate; there are no cache writes.
    pub const fn openai(input: u64, cached: u64, output: u64) -> Rates {
        Rates { input, output, cache_write_5m: input, cache_write_1h: input, cache_read: cached }
    }
}

/// The price of one model family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub rates: Rates,
    /// Above this many input tokens in one request, `long` applies instead.
    pub long_context: Option<(u64, Rates)>,
    /// Nano-USD per server-side web search.
    pub web_search: u64,
    /// The most output tokens one request may ask for (`max_tokens`), as
    /// the provider documents it; `None` when not known (no check).
    pub max_output_tokens: Option<u64>,
}

impl Price {
    const fn max_output(self, tokens: u64) -> Price {
        Price { max_output_tokens: Some(tokens), ..self }
    }
}

/// $10 per 1,000 searches.
pub const WEB_SEARCH_NANO: u64 = 10_000_000;

const fn anthropic(input: u64, output: u64) -> Price {
    Price {
        rates: Rates::anthropic(input, output),
        long_context: None,
        web_search: WEB_SEARCH_NANO,
        max_output_tokens: None,
    }
}

const fn openai(input: u64, cached: u64, output: u64) -> Price {
    Price { rates: Rates::openai(input, cached, output), long_context: None, web_search: 0, max_output_tokens: None }
}

/// The table shipped with the binary: (model id prefix, price).
pub fn builtin() -> Vec<(String, Price)> {
    let sonnet_long = Some((200_000, Rates::anthropic(6_000, 22_500)));
    // Max output tokens as each provider documents them (platform.claude.com
    // model pages; OpenAI's model pages, or gateways citing them): a
    // request asking for more is refused at the edge with the maximum named.
    // Sonnet 3.7 takes 128k with its `output-128k-2025-02-19` beta header.
    // o3-mini's is not published where we could check: unchecked.
    let mut t: Vec<(&str, Price)> = vec![
        ("claude-opus-4-6", anthropic(5_000, 25_000).max_output(128_000)),
        ("claude-opus-4-5", anthropic(5_000, 25_000).max_output(64_000)),
        ("claude-opus-4-1", anthropic(15_000, 75_000).max_output(32_000)),
        ("claude-opus-4", anthropic(15_000, 75_000).max_output(32_000)),
        ("claude-sonnet-4-6", anthropic(3_000, 15_000).max_output(128_000)),
        ("claude-sonnet-4-5", Price { long_context: sonnet_long, ..anthropic(3_000, 15_000) }.max_output(64_000)),
        ("claude-sonnet-4", Price { long_context: sonnet_long, ..anthropic(3_000, 15_000) }.max_output(64_000)),
        ("claude-3-7-sonnet", anthropic(3_000, 15_000).max_output(128_000)),
        ("claude-haiku-4-5", anthropic(1_000, 5_000).max_output(64_000)),
        ("claude-3-5-haiku", anthropic(800, 4_000).max_output(8_192)),
        ("claude-3-haiku", anthropic(250, 1_250).max_output(4_096)),
        ("gpt-5-nano", openai(50, 5, 400).max_output(128_000)),
        ("gpt-5-mini", openai(250, 25, 2_000).max_output(128_000)),
        ("gpt-5.2", openai(1_750, 175, 14_000).max_output(128_000)),
        ("gpt-5.1", openai(1_250, 125, 10_000).max_output(128_000)),
        ("gpt-5", openai(1_250, 125, 10_000).max_output(128_000)),
        ("gpt-4.1-nano", openai(100, 25, 400).max_output(32_768)),
        ("gpt-4.1-mini", openai(400, 100, 1_600).max_output(32_768)),
        ("gpt-4.1", openai(2_000, 500, 8_000).max_output(32_768)),
        ("gpt-4o-mini", openai(150, 75, 600).max_output(16_384)),
        ("gpt-4o", openai(2_500, 1_250, 10_000).max_output(16_384)),
        ("o4-mini", openai(1_100, 275, 4_400).max_output(100_000)),
        ("o3-mini", openai(1_100, 550, 4_400)),
        ("o3", openai(2_000, 500, 8_000).max_output(100_000)),
    ];
    // Longest prefix first, so `gpt-5-mini` wins over `gpt-5`.
    t.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    t.into_iter().map(|(p, price)| (p.to_string(), price)).collect()
}

/// A price table with its fallback for unknown models.
#[derive(Debug, Clone)]
pub struct PriceTable {
    entries: Vec<(String, Price)>,
    fallback: Price,
}

impl Default for PriceTable {
    /// The built-in table; unknown models are priced like the most expensive
    /// model listed (Opus 4.1), so an unknown model can only over-reserve.
    fn default() -> Self {
        PriceTable { entries: builtin(), fallback: anthropic(15_000, 75_000) }
    }
}

impl PriceTable {
    pub fn new(mut entries: Vec<(String, Price)>, fallback: Price) -> PriceTable {
        entries.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        PriceTable { entries, fallback }
    }

    /// Adds or replaces the price of a model prefix (config overrides).
    pub fn set(&mut self, prefix: &str, price: Price) {
        self.entries.retain(|(p, _)| p != prefix);
        self.entries.push((prefix.to_string(), price));
        self.entries.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    /// Replaces the price used for models no prefix matches.
    pub fn set_fallback(&mut self, price: Price) {
        self.fallback = price;
    }

    /// The amount to reserve before a request of `model` runs: `input`
    /// estimated input tokens and at most `output` output tokens. With
    /// `worst_case`, every input token is priced at its dearest rate (an
    /// input token may turn out to be a 1-hour cache write), so the actual
    /// cost can never exceed the reservation when `input` bounds the real
    /// input; otherwise input is priced at the plain input rate.
    pub fn reserve_amount(&self, model: &str, input: u64, output: u64, worst_case: bool) -> NanoUsd {
        let (price, _) = self.price(model);
        let rates = match price.long_context {
            Some((threshold, long)) if input > threshold => long,
            _ => price.rates,
        };
        let input_rate = if worst_case {
            rates.input.max(rates.cache_write_5m).max(rates.cache_write_1h).max(rates.cache_read)
        } else {
            rates.input
        };
        let sum = u128::from(input) * u128::from(input_rate) + u128::from(output) * u128::from(rates.output);
        NanoUsd(u64::try_from(sum).unwrap_or(u64::MAX))
    }

    /// The price of `model`, and whether it came from the fallback.
    pub fn price(&self, model: &str) -> (&Price, bool) {
        match self.entry(model) {
            Some((_, price)) => (price, false),
            None => (&self.fallback, true),
        }
    }

    /// The listed entry for `model`. A prefix matches at a `-` boundary only,
    /// so `gpt-5-mini-2025-08-07` finds `gpt-5-mini`, but a newer `gpt-5.5`
    /// does not silently take `gpt-5`'s (lower) price: it gets the fallback
    /// until it is listed.
    fn entry(&self, model: &str) -> Option<&(String, Price)> {
        let matches = |p: &str| model.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
        self.entries.iter().find(|(p, _)| matches(p))
    }

    /// The label `model` gets on metrics: the listed family it belongs to,
    /// else `other`, so clients cannot mint label values.
    pub fn label(&self, model: &str) -> &str {
        self.entry(model).map_or("other", |(p, _)| p.as_str())
    }

    /// The most output tokens `model` accepts per request, if known.
    pub fn max_output_tokens(&self, model: &str) -> Option<u64> {
        self.entry(model).and_then(|(_, p)| p.max_output_tokens)
    }

    /// The exact cost of `usage` on `model`. `input_tokens` are uncached
    /// input (Anthropic's meaning; an OpenAI meter subtracts cached tokens
    /// from `prompt_tokens` first).
    pub fn cost(&self, model: &str, usage: &Usage) -> NanoUsd {
        let (price, _) = self.price(model);
        let total_input = usage
            .input_tokens
            .saturating_add(usage.cache_write_5m_tokens)
            .saturating_add(usage.cache_write_1h_tokens)
            .saturating_add(usage.cache_read_tokens);
        let rates = match price.long_context {
            Some((threshold, long)) if total_input > threshold => long,
            _ => price.rates,
        };
        let sum: u128 = [
            (usage.input_tokens, rates.input),
            (usage.output_tokens, rates.output),
            (usage.cache_write_5m_tokens, rates.cache_write_5m),
            (usage.cache_write_1h_tokens, rates.cache_write_1h),
            (usage.cache_read_tokens, rates.cache_read),
            (usage.web_search_requests, price.web_search),
        ]
        .iter()
        .map(|(n, rate)| u128::from(*n) * u128::from(*rate))
        .sum();
        NanoUsd(u64::try_from(sum).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage { input_tokens: input, output_tokens: output, ..Default::default() }
    }

    #[test]
    fn dated_ids_find_their_family_and_longest_prefix_wins() {
        let t = PriceTable::default();
        // Sonnet 4.5: $3 in, $15 out per MTok (below the long-context tier).
        assert_eq!(t.cost("claude-sonnet-4-5-20250929", &usage(100_000, 0)), NanoUsd(300_000_000));
        assert_eq!(t.cost("claude-sonnet-4-5-20250929", &usage(0, 1_000_000)), NanoUsd(15_000_000_000));
        // gpt-5-mini is not priced as gpt-5.
        assert_eq!(t.cost("gpt-5-mini-2025-08-07", &usage(1_000_000, 0)), NanoUsd(250_000_000));
        assert_eq!(t.cost("gpt-5", &usage(1_000_000, 0)), NanoUsd(1_250_000_000));
        // Opus 4.5 is not priced as Opus 4.
        assert_eq!(t.cost("claude-opus-4-5-20251101", &usage(1_000_000, 0)), NanoUsd(5_000_000_000));
        assert_eq!(t.cost("claude-opus-4-20250514", &usage(1_000_000, 0)), NanoUsd(15_000_000_000));
    }

    #[test]
    fn cache_tokens_have_their_own_rates() {
        let t = PriceTable::default();
        let u = Usage {
            input_tokens: 100,
            output_tokens: 10,
            cache_write_5m_tokens: 1_000,
            cache_write_1h_tokens: 2_000,
            cache_read_tokens: 50_000,
            web_search_requests: 2,
        };
        // Sonnet 4.5: 100×3000 + 10×15000 + 1000×3750 + 2000×6000 + 50000×300 + 2×10,000,000.
        let want = 300_000 + 150_000 + 3_750_000 + 12_000_000 + 15_000_000 + 20_000_000;
        assert_eq!(t.cost("claude-sonnet-4-5", &u), NanoUsd(want));
        // Cache reads are not priced as input.
        assert!(t.cost("claude-sonnet-4-5", &Usage { cache_read_tokens: 1000, ..Default::default() }).0 < 3_000_000);
        // OpenAI cached input: gpt-4o $1.25 / MTok.
        assert_eq!(
            t.cost("gpt-4o", &Usage { cache_read_tokens: 1_000_000, ..Default::default() }),
            NanoUsd(1_250_000_000)
        );
    }

    #[test]
    fn long_context_tier_applies_above_200k_input_tokens() {
        let t = PriceTable::default();
        let at = Usage { input_tokens: 150_000, cache_read_tokens: 50_000, output_tokens: 1_000, ..Default::default() };
        let over = Usage { input_tokens: 150_001, ..at };
        assert_eq!(t.cost("claude-sonnet-4-5", &at), NanoUsd(150_000 * 3_000 + 50_000 * 300 + 1_000 * 15_000));
        assert_eq!(t.cost("claude-sonnet-4-5", &over), NanoUsd(150_001 * 6_000 + 50_000 * 600 + 1_000 * 22_500));
        // Sonnet 4.6 has no long-context surcharge.
        assert_eq!(t.cost("claude-sonnet-4-6", &over), NanoUsd(150_001 * 3_000 + 50_000 * 300 + 1_000 * 15_000));
    }

    #[test]
    fn worst_case_reservation_covers_any_split_of_the_input() {
        let t = PriceTable::default();
        let worst = t.reserve_amount("claude-sonnet-4-5", 1_000, 100, true);
        // 1000 input tokens at the 1-hour cache write rate (2 × $3) + 100 output at $15.
        assert_eq!(worst, NanoUsd(1_000 * 6_000 + 100 * 15_000));
        for split in [(1_000, 0, 0, 0), (0, 1_000, 0, 0), (0, 0, 1_000, 0), (0, 0, 0, 1_000), (250, 250, 250, 250)] {
            let u = Usage {
                input_tokens: split.0,
                cache_write_5m_tokens: split.1,
                cache_write_1h_tokens: split.2,
                cache_read_tokens: split.3,
                output_tokens: 100,
                ..Default::default()
            };
            assert!(t.cost("claude-sonnet-4-5", &u) <= worst, "{split:?}");
        }
        assert_eq!(t.reserve_amount("claude-sonnet-4-5", 1_000, 100, false), NanoUsd(1_000 * 3_000 + 100 * 15_000));
        // Above the long-context threshold the dearer tier is reserved.
        assert_eq!(t.reserve_amount("claude-sonnet-4-5", 300_000, 0, false), NanoUsd(300_000 * 6_000));
    }

    #[test]
    fn unknown_models_use_the_fallback_never_zero() {
        let mut t = PriceTable::default();
        let (_, fallback) = t.price("mystery-model-9");
        assert!(fallback);
        // A newer model is not priced as the older family it extends.
        assert!(t.price("gpt-5.5").1 && t.price("gpt-4.5-preview").1);
        assert!(!t.price("gpt-5.2-2025-12-11").1);
        assert_eq!(t.cost("mystery-model-9", &usage(1_000, 1_000)), NanoUsd(1_000 * 15_000 + 1_000 * 75_000));
        t.set("mystery-model", anthropic(1, 2));
        assert!(t.price("mystery-models").1, "prefixes match at '-' boundaries only");
        assert_eq!(t.price("mystery-model-9"), (&anthropic(1, 2), false));
        assert_eq!(t.cost("mystery-model-9", &usage(1_000, 1_000)), NanoUsd(3_000));
        // Huge counts saturate instead of wrapping.
        assert_eq!(t.cost("claude-opus-4-1", &usage(u64::MAX, u64::MAX)), NanoUsd(u64::MAX));
    }
}
