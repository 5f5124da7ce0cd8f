//! The price book's file format (`prices.toml`): parsed into [`Price`]s,
//! every decimal checked, derived tier rates computed once.

use serde::Deserialize;

use super::{Price, Provider, Rate, Rates};

/// Reads a price book.
pub(super) fn parse(text: &str) -> Result<Vec<Price>, String> {
    let book: BookFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if book.version != 1 {
        return Err(format!("price book version {} is not supported (this binary reads 1)", book.version));
    }
    book.model.iter().map(ModelEntry::price).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    version: u32,
    model: Vec<ModelEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesEntry {
    input: String,
    output: String,
    cache_write_5m: Option<String>,
    cache_write_1h: Option<String>,
    cache_read: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongEntry {
    above_prompt_tokens: u64,
    #[serde(flatten)]
    rates: RatesEntry,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    provider: Provider,
    display_name: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(flatten)]
    rates: RatesEntry,
    geo_us_percent: Option<u64>,
    web_search_per_1k: Option<String>,
    max_output_tokens: Option<u64>,
    source: String,
    fast: Option<RatesEntry>,
    flex: Option<RatesEntry>,
    long_context: Option<LongEntry>,
}

impl RatesEntry {
    /// Cache rates not given are free for a base tier (`base` is `None`:
    /// the provider charges nothing extra), or keep the base tier's ratio
    /// to the input rate for a derived tier.
    fn rates(&self, base: Option<&Rates>) -> Result<Rates, String> {
        let input: Rate = self.input.parse()?;
        let derived = |given: &Option<String>, pick: fn(&Rates) -> Rate| -> Result<Rate, String> {
            match (given, base) {
                (Some(v), _) => v.parse(),
                (None, Some(b)) => Ok(pick(b).scale(input.0, b.input.0)),
                (None, None) => Ok(Rate(0)),
            }
        };
        Ok(Rates {
            input,
            output: self.output.parse()?,
            cache_write_5m: derived(&self.cache_write_5m, |r| r.cache_write_5m)?,
            cache_write_1h: derived(&self.cache_write_1h, |r| r.cache_write_1h)?,
            cache_read: derived(&self.cache_read, |r| r.cache_read)?,
        })
    }
}

impl ModelEntry {
    fn price(&self) -> Result<Price, String> {
        let ctx = |e: String| format!("model {}: {e}", self.id);
        let rates = self.rates.rates(None).map_err(ctx)?;
        let tier = |t: &Option<RatesEntry>| t.as_ref().map(|t| t.rates(Some(&rates))).transpose().map_err(ctx);
        let long = match &self.long_context {
            Some(l) => Some((l.above_prompt_tokens, l.rates.rates(Some(&rates)).map_err(ctx)?)),
            None => None,
        };
        let web_search = match &self.web_search_per_1k {
            // USD per 1,000 searches = pico-USD per search × 1e-9.
            Some(v) => v.parse::<Rate>().map_err(ctx)?.0.saturating_mul(1_000),
            None => 0,
        };
        Ok(Price {
            id: self.id.clone(),
            provider: Some(self.provider),
            display_name: self.display_name.clone(),
            aliases: self.aliases.clone(),
            rates,
            fast: tier(&self.fast)?,
            flex: tier(&self.flex)?,
            long_context: long,
            geo_us_percent: self.geo_us_percent,
            web_search,
            max_output_tokens: self.max_output_tokens,
            source: self.source.clone(),
            discount_bp: 0,
        })
    }
}
