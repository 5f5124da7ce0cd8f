//! The price book: what one request costs, from list prices that are data
//! (`edge/prices.toml`, embedded in the binary; see its header for the
//! format and sources), not code. A model is priced only if its name is
//! exactly a listed id or alias: `claude-opus-4-1-evil` is not Opus 4.1.
//! What happens to other models is the operator's choice
//! ([`UnknownModel`]): refused by default.
//!
//! Rates are kept in pico-USD per token ($1 / MTok = 1,000,000), so every
//! published price, down to $0.000001 / MTok, is exact; a request's cost is
//! summed in pico-USD and rounded once, half up, to the nano-USD the ledger
//! counts in.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

mod book;
mod entry;
mod overrides;
pub use entry::PriceEntry;
pub use overrides::listing;
use tollgate_types::domain::Usage;
use tollgate_types::money::NanoUsd;

/// The price book shipped with this binary.
pub const BUILTIN: &str = include_str!("../../prices.toml");

/// $10 per 1,000 web searches, in pico-USD per search: what a model priced
/// outside the shipped book pays unless told otherwise.
pub const DEFAULT_WEB_SEARCH: u64 = 10_000_000_000;

/// Pico-USD per nano-USD.
const PICO_PER_NANO: u128 = 1_000;

/// A price per token, in pico-USD. Parsed from USD per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(pub u64);

impl Rate {
    /// From nano-USD per token (the unit of `[pricing.models]` in the edge's config file).
    pub const fn from_nano_per_token(nano: u64) -> Rate {
        Rate(nano.saturating_mul(1_000))
    }

    /// `self × num / den`, rounded up (a derived price is never cheaper).
    fn scale(self, num: u64, den: u64) -> Rate {
        if den == 0 {
            return self;
        }
        Rate(u64::try_from((u128::from(self.0) * u128::from(num)).div_ceil(u128::from(den))).unwrap_or(u64::MAX))
    }
}

impl FromStr for Rate {
    type Err = String;

    /// USD per million tokens, exact: `"3"`, `"0.30"`, `"0.000001"`.
    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let (whole, frac) = match t.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (t, None),
        };
        let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || frac.is_some_and(|f| !digits(f) || f.len() > 6) {
            return Err(format!("price {s:?} is not USD per million tokens with at most 6 decimals"));
        }
        let whole: u64 = whole.parse().map_err(|_| format!("price {s:?} is too large"))?;
        let frac: u64 =
            format!("{:0<6}", frac.unwrap_or("")).parse().map_err(|_| format!("price {s:?} is malformed"))?;
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac))
            .map(Rate)
            .ok_or(format!("price {s:?} is too large"))
    }
}

/// Per-token rates for each kind of token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: Rate,
    pub output: Rate,
    pub cache_write_5m: Rate,
    pub cache_write_1h: Rate,
    pub cache_read: Rate,
}

impl Rates {
    /// The dearest rate an input token can cost (strict admission: any
    /// input token may turn out to be a 1-hour cache write).
    fn dearest_input(&self) -> Rate {
        self.input.max(self.cache_write_5m).max(self.cache_write_1h).max(self.cache_read)
    }

    /// Each rate the greater of the two.
    fn max(self, o: Rates) -> Rates {
        Rates {
            input: self.input.max(o.input),
            output: self.output.max(o.output),
            cache_write_5m: self.cache_write_5m.max(o.cache_write_5m),
            cache_write_1h: self.cache_write_1h.max(o.cache_write_1h),
            cache_read: self.cache_read.max(o.cache_read),
        }
    }
}

/// Which API a model is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
}

/// One model's prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub id: String,
    /// `None` for a model the operator listed without saying (either API).
    pub provider: Option<Provider>,
    pub display_name: String,
    pub aliases: Vec<String>,
    pub rates: Rates,
    /// `speed: "fast"` (Anthropic), a `fast` / `priority` tier (OpenAI).
    pub fast: Option<Rates>,
    /// OpenAI's `flex` tier.
    pub flex: Option<Rates>,
    /// Above this many prompt tokens the whole request pays these rates.
    pub long_context: Option<(u64, Rates)>,
    /// Multiplier (percent) on every rate with `inference_geo: "us"`.
    pub geo_us_percent: Option<u64>,
    /// Pico-USD per server-side web search.
    pub web_search: u64,
    /// The most output tokens one request may ask for.
    pub max_output_tokens: Option<u64>,
    /// Where the figures came from.
    pub source: String,
    /// The org-wide negotiated discount in basis points, taken off the
    /// cost (and the reservation) before rounding.
    pub discount_bp: u32,
}

/// What a request ran with, beyond its model: from the response where it
/// says so, else from the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modifiers {
    pub fast: bool,
    pub flex: bool,
    pub geo_us: bool,
}

impl Price {
    /// The rates a request with `prompt` prompt tokens pays under `m`.
    fn rates_for(&self, prompt: u64, m: Modifiers) -> Rates {
        let long = self.long_context.filter(|(above, _)| prompt > *above).map(|(_, r)| r);
        let tier = if m.fast {
            self.fast
        } else if m.flex {
            self.flex
        } else {
            None
        };
        match (tier, long) {
            // A tier's rates scale like the long-context ones over the base.
            (Some(t), Some(l)) => Rates {
                input: t.input.scale(l.input.0, self.rates.input.0),
                output: t.output.scale(l.output.0, self.rates.output.0),
                cache_write_5m: t.cache_write_5m.scale(l.cache_write_5m.0, self.rates.cache_write_5m.0),
                cache_write_1h: t.cache_write_1h.scale(l.cache_write_1h.0, self.rates.cache_write_1h.0),
                cache_read: t.cache_read.scale(l.cache_read.0, self.rates.cache_read.0),
            },
            (Some(t), None) => t,
            (None, Some(l)) => l,
            (None, None) => self.rates,
        }
    }

    fn geo_percent(&self, m: Modifiers) -> u64 {
        match self.geo_us_percent {
            Some(p) if m.geo_us => p,
            _ => 100,
        }
    }

    /// The exact cost of `usage` (Anthropic's meaning of `input_tokens`:
    /// uncached input; an OpenAI meter takes cached and written tokens out
    /// of `prompt_tokens` first).
    pub fn cost(&self, usage: &Usage, m: Modifiers) -> NanoUsd {
        let prompt = usage
            .input_tokens
            .saturating_add(usage.cache_write_5m_tokens)
            .saturating_add(usage.cache_write_1h_tokens)
            .saturating_add(usage.cache_read_tokens);
        let r = self.rates_for(prompt, m);
        let pico: u128 = [
            (usage.input_tokens, r.input.0),
            (usage.output_tokens, r.output.0),
            (usage.cache_write_5m_tokens, r.cache_write_5m.0),
            (usage.cache_write_1h_tokens, r.cache_write_1h.0),
            (usage.cache_read_tokens, r.cache_read.0),
        ]
        .iter()
        .map(|(n, rate)| u128::from(*n) * u128::from(*rate))
        .sum();
        // Web search is not subject to the US-only multiplier.
        let searches = u128::from(usage.web_search_requests) * u128::from(self.web_search);
        self.rounded(pico * u128::from(self.geo_percent(m)) + searches * 100)
    }

    /// `scaled` (pico-USD × 100, the geo multiplier in percent applied) less
    /// the discount, as nano-USD: one division, rounded half up; saturating.
    fn rounded(&self, scaled: u128) -> NanoUsd {
        let keep = 10_000u128.saturating_sub(u128::from(self.discount_bp));
        // pico × 100 (percent) × 10,000 (basis points) per nano × 1,000.
        let den = 100 * 10_000 * PICO_PER_NANO;
        let n = scaled.saturating_mul(keep).saturating_add(den / 2) / den;
        NanoUsd(u64::try_from(n).unwrap_or(u64::MAX))
    }

    /// The amount to reserve before a request runs: `input` estimated input
    /// tokens and at most `output` output tokens. With `worst_case` every
    /// input token is priced at its dearest rate and the US-only multiplier
    /// applies whether or not the request asked for it (the workspace's
    /// default may say so), so the cost cannot exceed the reservation when
    /// `input` bounds the real input; otherwise input is priced at the plain
    /// input rate under the request's own modifiers.
    pub fn reserve(&self, input: u64, output: u64, worst_case: bool, m: Modifiers) -> NanoUsd {
        let m = Modifiers { geo_us: m.geo_us || (worst_case && self.geo_us_percent.is_some()), ..m };
        let r = self.rates_for(input, m);
        let input_rate = if worst_case { r.dearest_input() } else { r.input };
        let pico = u128::from(input) * u128::from(input_rate.0) + u128::from(output) * u128::from(r.output.0);
        self.rounded(pico * u128::from(self.geo_percent(m)))
    }
}

/// What the edge does with a model the price book does not list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownModel {
    /// Refuse it (400), naming the model and how to add a price.
    Deny,
    /// Price it at the dearest listed rates of its provider (each rate the
    /// highest of any listed model), never a cheaper one.
    Dearest,
    /// Price it at these rates (`[pricing.fallback]` in the config file).
    Fallback(Box<Price>),
}

/// The price book an edge meters with.
#[derive(Debug, Clone)]
pub struct PriceTable {
    models: Vec<Arc<Price>>,
    /// Every id and alias.
    by_name: HashMap<String, Arc<Price>>,
    unknown: UnknownModel,
    /// Each provider's dearest rates (for `unknown_model = "dearest"`),
    /// derived whenever the models change, not per request.
    dearest: HashMap<Provider, Price>,
    /// The org-wide discount every price here carries.
    discount_bp: u32,
    /// The ledger's config index whose overrides this table has (0: none).
    pub config_index: u64,
}

/// A model the book does not list, under [`UnknownModel::Deny`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {0:?} has no price in this gateway's price book")]
pub struct Unpriced(pub String);

/// Bedrock inference-profile prefixes, removed before a lookup.
const REGION_PREFIXES: [&str; 6] = ["us.", "eu.", "apac.", "au.", "jp.", "global."];

fn normalize(model: &str) -> &str {
    for p in REGION_PREFIXES {
        if let Some(rest) = model.strip_prefix(p) {
            if rest.starts_with("anthropic.") {
                return rest;
            }
        }
    }
    model
}

impl Default for PriceTable {
    /// The shipped book; unknown models refused.
    fn default() -> Self {
        PriceTable::builtin()
    }
}

impl PriceTable {
    /// The book shipped with the binary (a test parses it, so it cannot fail here).
    pub fn builtin() -> PriceTable {
        let models = Self::parse(BUILTIN).expect("the shipped price book parses");
        PriceTable::new(models, UnknownModel::Deny)
    }

    /// Reads a price book in the format of `prices.toml`.
    pub fn parse(text: &str) -> Result<Vec<Price>, String> {
        book::parse(text)
    }

    pub fn new(models: Vec<Price>, unknown: UnknownModel) -> PriceTable {
        let mut t = PriceTable {
            models: Vec::new(),
            by_name: HashMap::new(),
            unknown,
            dearest: HashMap::new(),
            discount_bp: 0,
            config_index: 0,
        };
        for m in models {
            t.set(m);
        }
        t
    }

    /// Adds or replaces one model's prices (by id; its aliases with it).
    pub fn set(&mut self, price: Price) {
        self.insert(price);
        self.derive();
    }

    fn insert(&mut self, price: Price) {
        if let Some(old) = self.models.iter().position(|m| m.id == price.id) {
            let old = self.models.remove(old);
            for name in std::iter::once(&old.id).chain(&old.aliases) {
                self.by_name.remove(name);
            }
        }
        let price = Arc::new(price);
        for name in std::iter::once(&price.id).chain(&price.aliases) {
            self.by_name.insert(name.clone(), price.clone());
        }
        self.models.push(price);
    }

    /// Re-derives what depends on every model (each provider's dearest rates).
    fn derive(&mut self) {
        self.dearest = [Provider::Anthropic, Provider::OpenAi]
            .into_iter()
            .filter_map(|p| Some((p, Price { discount_bp: self.discount_bp, ..self.dearest_of(p)? })))
            .collect();
    }

    pub fn set_unknown(&mut self, unknown: UnknownModel) {
        self.unknown = unknown;
    }

    pub fn unknown(&self) -> &UnknownModel {
        &self.unknown
    }

    /// The listed model `model` names (its id or an alias), if any.
    pub fn lookup(&self, model: &str) -> Option<&Arc<Price>> {
        self.by_name.get(normalize(model))
    }

    /// The prices `model` is charged at, following [`UnknownModel`] for a
    /// model the book does not list.
    pub fn resolve(&self, model: &str, provider: Provider) -> Result<Arc<Price>, Unpriced> {
        if let Some(p) = self.lookup(model) {
            return Ok(p.clone());
        }
        match &self.unknown {
            UnknownModel::Deny => Err(Unpriced(model.to_string())),
            UnknownModel::Fallback(p) => {
                Ok(Arc::new(Price { id: model.to_string(), discount_bp: self.discount_bp, ..(**p).clone() }))
            }
            UnknownModel::Dearest => match self.dearest.get(&provider) {
                Some(d) => Ok(Arc::new(Price { id: model.to_string(), display_name: model.to_string(), ..d.clone() })),
                None => Err(Unpriced(model.to_string())),
            },
        }
    }

    /// Each rate the highest any listed model of `provider` has (fast and
    /// long-context rates, and the US-only multiplier, included).
    fn dearest_of(&self, provider: Provider) -> Option<Price> {
        let of = self.models.iter().filter(|m| m.provider.is_none_or(|p| p == provider));
        let mut rates: Option<Rates> = None;
        let mut web_search = 0;
        for m in of {
            let all = [Some(m.rates), m.fast, m.flex, m.long_context.map(|(_, r)| r)];
            for r in all.into_iter().flatten() {
                let scaled = |rate: Rate| rate.scale(m.geo_us_percent.unwrap_or(100), 100);
                let r = Rates {
                    input: scaled(r.input),
                    output: scaled(r.output),
                    cache_write_5m: scaled(r.cache_write_5m),
                    cache_write_1h: scaled(r.cache_write_1h),
                    cache_read: scaled(r.cache_read),
                };
                rates = Some(rates.map_or(r, |acc| acc.max(r)));
            }
            web_search = web_search.max(m.web_search);
        }
        Some(Price {
            id: String::new(),
            provider: Some(provider),
            display_name: String::new(),
            aliases: vec![],
            rates: rates?,
            fast: None,
            flex: None,
            long_context: None,
            geo_us_percent: None,
            web_search,
            max_output_tokens: None,
            source: "the dearest listed rates of its provider (unknown_model = \"dearest\")".into(),
            discount_bp: 0,
        })
    }

    /// The label `model` gets on metrics: its listed id, else `other`, so
    /// clients cannot mint label values.
    pub fn label(&self, model: &str) -> &str {
        self.lookup(model).map_or("other", |p| p.id.as_str())
    }

    /// The most output tokens `model` accepts per request, if known.
    pub fn max_output_tokens(&self, model: &str) -> Option<u64> {
        self.lookup(model).and_then(|p| p.max_output_tokens)
    }

    /// Every listed model, in the book's order.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Price>> {
        self.models.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64) -> Usage {
        Usage { input_tokens: input, output_tokens: output, ..Default::default() }
    }

    fn price(t: &PriceTable, model: &str) -> Arc<Price> {
        t.lookup(model).unwrap_or_else(|| panic!("{model} is not in the book")).clone()
    }

    const PLAIN: Modifiers = Modifiers { fast: false, flex: false, geo_us: false };

    #[test]
    fn the_shipped_book_parses_and_names_each_model_once() {
        let t = PriceTable::builtin();
        let mut seen = std::collections::HashSet::new();
        for m in t.models() {
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                assert!(seen.insert(name.clone()), "{name} is listed twice");
            }
            assert!(m.rates.input.0 > 0 && m.rates.output.0 > 0, "{} has no price", m.id);
            assert!(!m.source.is_empty());
        }
        for want in [
            "claude-fable-5-1",
            "claude-fable-5",
            "claude-mythos-5-1",
            "claude-mythos-5",
            "claude-opus-5-5",
            "claude-opus-5",
            "claude-opus-4-8",
            "claude-opus-4-7",
            "claude-opus-4-6",
            "claude-opus-4-5",
            "claude-opus-4-1",
            "claude-opus-4",
            "claude-sonnet-5-5",
            "claude-sonnet-5",
            "claude-sonnet-4-6",
            "claude-sonnet-4-5",
            "claude-sonnet-4",
            "claude-haiku-5-5",
            "claude-haiku-4-5",
            "claude-3-5-haiku",
            "gpt-6.2-sol",
            "gpt-4o",
        ] {
            assert!(t.lookup(want).is_some(), "{want} missing");
        }
    }

    #[test]
    fn rates_parse_exactly_from_usd_per_million_tokens() {
        assert_eq!("3".parse::<Rate>(), Ok(Rate(3_000_000)));
        assert_eq!("0.30".parse::<Rate>(), Ok(Rate(300_000)));
        assert_eq!("0.000001".parse::<Rate>(), Ok(Rate(1)));
        for bad in ["", "-1", "1.", ".5", "1.0000001", "x", "1e3"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exact_ids_and_aliases_only() {
        let t = PriceTable::builtin();
        assert_eq!(t.lookup("claude-sonnet-4-5-20250929").unwrap().id, "claude-sonnet-4-5");
        assert_eq!(t.lookup("claude-sonnet-4-5@20250929").unwrap().id, "claude-sonnet-4-5");
        assert_eq!(t.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0").unwrap().id, "claude-sonnet-4-5");
        assert_eq!(t.lookup("gpt-4o-2024-11-20").unwrap().id, "gpt-4o");
        for not_listed in
            ["claude-opus-4-1-evil", "claude-opus-4-1-", "gpt-5.5-mini", "us.claude-opus-5-5", "CLAUDE-OPUS-5-5"]
        {
            assert!(t.lookup(not_listed).is_none(), "{not_listed}");
        }
        assert_eq!(
            t.resolve("claude-opus-4-1-evil", Provider::Anthropic),
            Err(Unpriced("claude-opus-4-1-evil".into()))
        );
        assert_eq!(t.label("claude-opus-4-1-evil"), "other");
        assert_eq!(t.label("claude-opus-4-1-20250805"), "claude-opus-4-1");
    }

    /// The review's "say hi" turn on Claude Code's default model: $0.0290,
    /// not the $0.1144 the Opus 4.1 fallback charged.
    #[test]
    fn opus_5_5_is_priced_at_its_list_price() {
        let t = PriceTable::builtin();
        let p = price(&t, "claude-opus-5-5");
        // $4 in, $20 out, $5 / $8 cache writes, $0.20 reads per MTok.
        let u = Usage {
            input_tokens: 1_000,
            output_tokens: 1_000,
            cache_write_5m_tokens: 1_000,
            cache_write_1h_tokens: 1_000,
            cache_read_tokens: 1_000,
            web_search_requests: 1,
        };
        // Nano-USD per token: 4,000 in, 20,000 out, 5,000 / 8,000 writes, 200 reads; $0.01 a search.
        let want = 1_000 * (4_000 + 20_000 + 5_000 + 8_000 + 200) + 10_000_000;
        assert_eq!(p.cost(&u, PLAIN), NanoUsd(want));
        assert_eq!(p.cost(&usage(2_000, 1_050), PLAIN), NanoUsd(2_000 * 4_000 + 1_050 * 20_000));
    }

    #[test]
    fn cache_reads_follow_each_models_multiplier() {
        let t = PriceTable::builtin();
        let read = |m: &str| price(&t, m).cost(&Usage { cache_read_tokens: 1_000_000, ..Default::default() }, PLAIN);
        assert_eq!(read("claude-opus-5-5"), NanoUsd(200_000_000)); // 0.05 × $4
        assert_eq!(read("claude-sonnet-5-5"), NanoUsd(100_000_000)); // 0.05 × $2
        assert_eq!(read("claude-fable-5-1"), NanoUsd(250_000_000)); // 0.025 × $10
        assert_eq!(read("claude-mythos-5-1"), NanoUsd(250_000_000));
        assert_eq!(read("claude-opus-4-8"), NanoUsd(500_000_000)); // 0.1 × $5
        assert_eq!(read("claude-haiku-4-5"), NanoUsd(100_000_000)); // 0.1 × $1
    }

    #[test]
    fn haiku_5_5_pays_its_higher_prices_above_100k_prompt_tokens() {
        let t = PriceTable::builtin();
        let p = price(&t, "claude-haiku-5-5");
        let at = Usage {
            input_tokens: 60_000,
            cache_read_tokens: 30_000,
            cache_write_5m_tokens: 10_000,
            output_tokens: 100,
            ..Default::default()
        };
        // Exactly 100,000 prompt tokens: the lower prices.
        assert_eq!(p.cost(&at, PLAIN), NanoUsd(60_000 * 100 + 30_000 * 10 + 10_000 * 125 + 100 * 500));
        let over = Usage { input_tokens: 60_001, ..at };
        assert_eq!(p.cost(&over, PLAIN), NanoUsd(60_001 * 500 + 30_000 * 50 + 10_000 * 625 + 100 * 2_500));
    }

    #[test]
    fn us_only_inference_costs_1_1x_on_claude_4_6_and_later_only() {
        let t = PriceTable::builtin();
        let us = Modifiers { geo_us: true, ..PLAIN };
        let u = Usage { input_tokens: 1_000, output_tokens: 100, cache_read_tokens: 500, ..Default::default() };
        // Sonnet 4.6: (1000×3000 + 100×15000 + 500×300) × 1.1.
        assert_eq!(price(&t, "claude-sonnet-4-6").cost(&u, us), NanoUsd((3_000_000 + 1_500_000 + 150_000) * 11 / 10));
        // Sonnet 4.5 predates it: no multiplier.
        assert_eq!(price(&t, "claude-sonnet-4-5").cost(&u, us), price(&t, "claude-sonnet-4-5").cost(&u, PLAIN));
    }

    #[test]
    fn fast_mode_has_its_own_rates_and_cache_multipliers_on_top() {
        let t = PriceTable::builtin();
        let fast = Modifiers { fast: true, ..PLAIN };
        let p = price(&t, "claude-opus-5-5");
        // $8 in, $40 out; cache read 0.05 × $8 = $0.40; 5m write 1.25 × $8 = $10.
        let u = Usage {
            input_tokens: 1_000,
            output_tokens: 1_000,
            cache_read_tokens: 1_000,
            cache_write_5m_tokens: 1_000,
            ..Default::default()
        };
        assert_eq!(p.cost(&u, fast), NanoUsd(1_000 * (8_000 + 40_000 + 400 + 10_000)));
        // With US-only inference on top: × 1.1.
        let us_fast = Modifiers { geo_us: true, ..fast };
        assert_eq!(p.cost(&u, us_fast), NanoUsd(1_000 * (8_000 + 40_000 + 400 + 10_000) * 11 / 10));
        assert_eq!(price(&t, "claude-opus-4-8").cost(&usage(1_000, 1_000), fast), NanoUsd(1_000 * (10_000 + 50_000)));
        // A model without fast rates is charged its standard ones.
        assert_eq!(price(&t, "claude-opus-4-7").cost(&usage(1_000, 1_000), fast), NanoUsd(1_000 * (5_000 + 25_000)));
    }

    #[test]
    fn openai_long_context_doubles_input_and_cache_and_1_5x_output_for_the_whole_request() {
        let t = PriceTable::builtin();
        let p = price(&t, "gpt-6.2-sol");
        let at = Usage { input_tokens: 200_000, cache_read_tokens: 72_000, output_tokens: 1_000, ..Default::default() };
        assert_eq!(p.cost(&at, PLAIN), NanoUsd(200_000 * 2_000 + 72_000 * 100 + 1_000 * 10_000));
        let over = Usage { input_tokens: 200_001, ..at };
        assert_eq!(p.cost(&over, PLAIN), NanoUsd(200_001 * 4_000 + 72_000 * 200 + 1_000 * 15_000));
        // Fast over the threshold: both (fast = 2× standard; long = 2× / 1.5×).
        let fast = Modifiers { fast: true, ..PLAIN };
        assert_eq!(p.cost(&over, fast), NanoUsd(200_001 * 8_000 + 72_000 * 400 + 1_000 * 30_000));
    }

    #[test]
    fn strict_reservations_cover_any_split_of_the_input_and_us_only_inference() {
        let t = PriceTable::builtin();
        let p = price(&t, "claude-sonnet-4-6");
        let worst = p.reserve(1_000, 100, true, PLAIN);
        // 1000 input tokens at the 1-hour write rate ($6) + 100 output at $15, × 1.1.
        assert_eq!(worst, NanoUsd((1_000 * 6_000 + 100 * 15_000) * 11 / 10));
        let us = Modifiers { geo_us: true, ..PLAIN };
        for split in [(1_000, 0, 0, 0), (0, 1_000, 0, 0), (0, 0, 1_000, 0), (0, 0, 0, 1_000), (250, 250, 250, 250)] {
            let u = Usage {
                input_tokens: split.0,
                cache_write_5m_tokens: split.1,
                cache_write_1h_tokens: split.2,
                cache_read_tokens: split.3,
                output_tokens: 100,
                ..Default::default()
            };
            assert!(p.cost(&u, us) <= worst, "{split:?}");
        }
        assert_eq!(p.reserve(1_000, 100, false, PLAIN), NanoUsd(1_000 * 3_000 + 100 * 15_000));
    }

    #[test]
    fn unknown_models_are_refused_or_priced_at_the_dearest_never_cheaper() {
        let mut t = PriceTable::builtin();
        assert!(t.resolve("mystery-9", Provider::Anthropic).is_err());
        t.set_unknown(UnknownModel::Dearest);
        let d = t.resolve("mystery-9", Provider::Anthropic).unwrap();
        for m in t.models().filter(|m| m.provider == Some(Provider::Anthropic)) {
            let u = Usage {
                input_tokens: 1_000,
                output_tokens: 1_000,
                cache_read_tokens: 1_000,
                cache_write_1h_tokens: 1_000,
                ..Default::default()
            };
            for mods in [PLAIN, Modifiers { fast: true, geo_us: true, ..PLAIN }] {
                assert!(d.cost(&u, PLAIN) >= m.cost(&u, mods), "{} is dearer than the dearest", m.id);
            }
        }
        // OpenAI's dearest is its own provider's.
        let o = t.resolve("gpt-99", Provider::OpenAi).unwrap();
        assert!(o.rates.output >= t.lookup("gpt-6-astra").unwrap().rates.output);
        // Huge counts saturate instead of wrapping.
        assert_eq!(d.cost(&usage(u64::MAX, u64::MAX), PLAIN), NanoUsd(u64::MAX));
    }
}
