//! The operator's replicated prices (`tollgate admin price set|import`,
//! `price discount`) layered over this edge's book: every edge builds the
//! same table from the same ledger config index.

use tollgate_types::domain::ModelPrice;

use super::{Price, PriceTable, Provider, Rate, Rates, DEFAULT_WEB_SEARCH};

impl PriceTable {
    /// This table with the ledger's overrides and discount applied (a
    /// listed model keeps its aliases, limits and tiers; its tiers scale
    /// with its new rates), as of ledger config `index`.
    pub fn with_overrides(&self, overrides: &[ModelPrice], discount_bp: u32, index: u64) -> PriceTable {
        let mut t = PriceTable {
            models: Vec::with_capacity(self.models.len() + overrides.len()),
            by_name: Default::default(),
            unknown: self.unknown.clone(),
            dearest: Default::default(),
            discount_bp,
            config_index: index,
        };
        for m in &self.models {
            t.insert(Price { discount_bp, ..(**m).clone() });
        }
        for o in overrides {
            let base = self.lookup(&o.model).cloned();
            t.insert(overridden(base.as_deref(), o, discount_bp, index));
        }
        if let super::UnknownModel::Fallback(p) = &mut t.unknown {
            **p = Price { discount_bp, ..(**p).clone() };
        }
        t.derive();
        t
    }
}

/// The price `o` gives, over the listed `base` if the model has one.
fn overridden(base: Option<&Price>, o: &ModelPrice, discount_bp: u32, index: u64) -> Price {
    let (input, output) = (Rate(o.input), Rate(o.output));
    // A cache rate not given keeps the listed model's ratio to its input
    // rate, else Anthropic's multiples (1.25x, 2x, 0.1x).
    let ratio = |given: Option<u64>, listed: Option<Rate>, num: u64, den: u64| match (given, base) {
        (Some(r), _) => Rate(r),
        (None, Some(b)) => listed.unwrap_or_default().scale(input.0, b.rates.input.0),
        (None, None) => input.scale(num, den),
    };
    let rates = Rates {
        input,
        output,
        cache_write_5m: ratio(o.cache_write_5m, base.map(|b| b.rates.cache_write_5m), 5, 4),
        cache_write_1h: ratio(o.cache_write_1h, base.map(|b| b.rates.cache_write_1h), 2, 1),
        cache_read: ratio(o.cache_read, base.map(|b| b.rates.cache_read), 1, 10),
    };
    let source = format!("tollgate admin price set (ledger config index {index})");
    let provider = match o.provider.as_deref() {
        Some("anthropic") => Some(Provider::Anthropic),
        Some("openai") => Some(Provider::OpenAi),
        _ => base.and_then(|b| b.provider),
    };
    match base {
        Some(b) => {
            // Every tier moves by the same factor as the base rate it sits on.
            let scale = |t: Rates| Rates {
                input: t.input.scale(rates.input.0, b.rates.input.0),
                output: t.output.scale(rates.output.0, b.rates.output.0),
                cache_write_5m: t.cache_write_5m.scale(rates.cache_write_5m.0, b.rates.cache_write_5m.0),
                cache_write_1h: t.cache_write_1h.scale(rates.cache_write_1h.0, b.rates.cache_write_1h.0),
                cache_read: t.cache_read.scale(rates.cache_read.0, b.rates.cache_read.0),
            };
            Price {
                id: b.id.clone(),
                provider,
                rates,
                fast: b.fast.map(scale),
                flex: b.flex.map(scale),
                long_context: b.long_context.map(|(above, r)| (above, scale(r))),
                source,
                discount_bp,
                ..b.clone()
            }
        }
        None => Price {
            id: o.model.clone(),
            provider,
            display_name: o.model.clone(),
            aliases: vec![],
            rates,
            fast: None,
            flex: None,
            long_context: None,
            geo_us_percent: None,
            web_search: DEFAULT_WEB_SEARCH,
            max_output_tokens: None,
            source,
            discount_bp,
        },
    }
}

/// `tollgate admin price list`: the shipped book under `overrides` and
/// `discount_bp`, priced by the same code the edges run.
pub fn listing(overrides: &[ModelPrice], discount_bp: u32) -> Vec<tollgate_client::price_cli::ListedPrice> {
    let t = PriceTable::builtin().with_overrides(overrides, discount_bp, 0);
    t.models()
        .map(|p| tollgate_client::price_cli::ListedPrice {
            id: p.id.clone(),
            provider: match p.provider {
                Some(Provider::Anthropic) => "anthropic".into(),
                Some(Provider::OpenAi) => "openai".into(),
                None => String::new(),
            },
            display_name: p.display_name.clone(),
            rates: [
                p.rates.input.0,
                p.rates.output.0,
                p.rates.cache_write_5m.0,
                p.rates.cache_write_1h.0,
                p.rates.cache_read.0,
            ],
            aliases: p.aliases.clone(),
            source: p.source.clone(),
            overridden: overrides.iter().any(|o| o.model == p.id || p.aliases.contains(&o.model)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tollgate_types::domain::Usage;
    use tollgate_types::money::NanoUsd;

    use super::*;
    use crate::pricing::Modifiers;

    fn mp(model: &str, input: &str, output: &str) -> ModelPrice {
        let usd = |s: &str| s.parse::<Rate>().unwrap().0;
        ModelPrice {
            model: model.into(),
            provider: None,
            input: usd(input),
            output: usd(output),
            cache_write_5m: None,
            cache_write_1h: None,
            cache_read: None,
        }
    }

    const PLAIN: Modifiers = Modifiers { fast: false, flex: false, geo_us: false };

    #[test]
    fn an_override_of_a_listed_model_keeps_its_cache_ratios_and_scales_its_tiers() {
        let t = PriceTable::builtin().with_overrides(&[mp("claude-opus-5-5", "3.6", "18")], 0, 7);
        let p = t.lookup("claude-opus-5-5").unwrap();
        // 0.9x the list price: cache writes $4.5 and $7.2, reads $0.18.
        assert_eq!(
            p.rates,
            Rates {
                input: Rate(3_600_000),
                output: Rate(18_000_000),
                cache_write_5m: Rate(4_500_000),
                cache_write_1h: Rate(7_200_000),
                cache_read: Rate(180_000)
            }
        );
        // 1000 in, 2000 out, 100 + 100 written, 10,000 read:
        // 3,600 + 36,000 + 450 + 720 + 1,800 = $0.04257.
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 2000,
            cache_write_5m_tokens: 100,
            cache_write_1h_tokens: 100,
            cache_read_tokens: 10_000,
            web_search_requests: 0,
        };
        assert_eq!(p.cost(&u, PLAIN), NanoUsd(42_570_000));
        // Fast mode ($8 / $40 listed) moves by the same 0.9.
        let fast = p.fast.unwrap();
        assert_eq!((fast.input, fast.output), (Rate(7_200_000), Rate(36_000_000)));
        // Its aliases, limits and US-only multiplier stay.
        assert!(t.lookup("anthropic.claude-opus-5-5").is_some_and(|a| a.rates == p.rates));
        assert_eq!((p.max_output_tokens, p.geo_us_percent), (Some(128_000), Some(110)));
        assert_eq!(p.source, "tollgate admin price set (ledger config index 7)");
        assert_eq!(t.config_index, 7);
    }

    #[test]
    fn an_override_by_alias_prices_the_model_and_an_unlisted_model_gets_anthropics_cache_multiples() {
        let t = PriceTable::builtin().with_overrides(
            &[
                mp("claude-sonnet-4-5-20250929", "2", "10"),
                ModelPrice { cache_read: Some(50_000), ..mp("my-ft", "2", "8") },
            ],
            0,
            1,
        );
        assert_eq!(t.lookup("claude-sonnet-4-5").unwrap().rates.input, Rate(2_000_000));
        let ft = t.resolve("my-ft", Provider::OpenAi).unwrap();
        assert_eq!(
            ft.rates,
            Rates {
                input: Rate(2_000_000),
                output: Rate(8_000_000),
                cache_write_5m: Rate(2_500_000),
                cache_write_1h: Rate(4_000_000),
                cache_read: Rate(50_000)
            }
        );
        // Not a prefix match: the fine-tune's name alone.
        assert!(t.lookup("my-ft-2").is_none());
        let rows = listing(&[mp("claude-sonnet-4-5-20250929", "2", "10")], 0);
        let sonnet = rows.iter().find(|r| r.id == "claude-sonnet-4-5").unwrap();
        assert!(sonnet.overridden);
        assert_eq!(sonnet.rates[0], 2_000_000);
        assert!(!rows.iter().find(|r| r.id == "claude-opus-5-5").unwrap().overridden);
    }

    #[test]
    fn the_discount_comes_off_every_cost_and_reservation_before_rounding() {
        let t = PriceTable::builtin().with_overrides(&[], 1_250, 3);
        let p = t.lookup("claude-opus-5-5").unwrap();
        let u = Usage { input_tokens: 1000, output_tokens: 1000, ..Default::default() };
        // $0.024 list, 12.5% off.
        assert_eq!(p.cost(&u, PLAIN), NanoUsd(21_000_000));
        assert_eq!(p.reserve(1000, 1000, false, PLAIN), NanoUsd(21_000_000));
        // One input token of Haiku 3.5 ($0.80 / MTok = 800 nano-USD): 700.
        let h = t.lookup("claude-3-5-haiku").unwrap();
        assert_eq!(h.cost(&Usage { input_tokens: 1, ..Default::default() }, PLAIN), NanoUsd(700));
        // At $0.000001 / MTok (1 pico-USD a token), 1,500 tokens are 1,312.5
        // pico-USD after the discount: rounded once, to 1 nano-USD.
        let tiny = PriceTable::builtin().with_overrides(&[mp("tiny", "0.000001", "0.000001")], 1_250, 3);
        let tiny = tiny.lookup("tiny").unwrap();
        assert_eq!(tiny.cost(&Usage { input_tokens: 1_500, ..Default::default() }, PLAIN), NanoUsd(1));
        // The dearest fallback carries it too.
        let mut base = PriceTable::builtin();
        base.set_unknown(crate::pricing::UnknownModel::Dearest);
        let d = base.with_overrides(&[], 5_000, 1);
        assert_eq!(d.resolve("unknown-x", Provider::Anthropic).unwrap().discount_bp, 5_000);
    }
}
