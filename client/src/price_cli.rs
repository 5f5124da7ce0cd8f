//! `tollgate admin price …`: the operator's replicated prices. Overrides
//! and the discount are ledger entries, so every edge prices a request
//! identically at the same config index and the audit log names who
//! changed a price.
//!
//! Prices on the command line and in files are USD per million tokens,
//! parsed as exact decimals; the ledger keeps pico-USD per token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tollgate_proto::v1 as pb;
use tollgate_types::domain::{ModelPrice, MAX_PRICE_OVERRIDES};
use tollgate_types::money::NanoUsd;

use crate::table::{self, Col};
use crate::AdminClient;

#[derive(Debug, Subcommand)]
pub enum PriceCmd {
    /// Sets (or replaces) one model's price on every edge.
    Set {
        /// The exact model id (or an alias the book lists: it prices the model).
        model: String,
        #[arg(long)]
        input_usd_per_mtok: String,
        #[arg(long)]
        output_usd_per_mtok: String,
        /// A cache rate left out keeps the book's ratio to the input rate
        /// (for a model the book does not list: 1.25x, 2x and 0.1x input).
        #[arg(long)]
        cache_write_5m: Option<String>,
        #[arg(long)]
        cache_write_1h: Option<String>,
        #[arg(long)]
        cache_read: Option<String>,
        /// anthropic or openai (which API's model list shows it; default: the book's, else both).
        #[arg(long)]
        provider: Option<String>,
    },
    /// Removes overrides: the models go back to the shipped list price.
    Remove {
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Every price edges meter with: the shipped book, the overrides, the discount.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Sets many prices in one ledger entry, from `price list --json` output
    /// or LiteLLM's `model_prices_and_context_window.json` (its anthropic
    /// and openai chat models).
    Import {
        file: PathBuf,
        /// Only models the shipped book does not list.
        #[arg(long)]
        only_unlisted: bool,
        /// Print what would be set and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The org-wide negotiated discount, taken off every cost (e.g. 12.5).
    Discount { percent: String },
}

/// One model as edges price it, for `price list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPrice {
    pub id: String,
    /// `anthropic`, `openai` or empty (either API).
    pub provider: String,
    pub display_name: String,
    /// Pico-USD per token: input, output, 5-min write, 1-h write, cache read.
    pub rates: [u64; 5],
    pub aliases: Vec<String>,
    pub source: String,
    pub overridden: bool,
}

/// The binary's price book with the given overrides applied (the edge's own
/// code, so the list shows exactly what edges charge).
pub type PriceLister = fn(&[ModelPrice], u32) -> Vec<ListedPrice>;

/// USD per million tokens, exact, to pico-USD per token.
pub fn parse_usd_per_mtok(s: &str) -> Result<u64, String> {
    let nano: NanoUsd = s.trim().parse().map_err(|e| format!("price {s:?}: {e}"))?;
    if !nano.0.is_multiple_of(1_000) {
        return Err(format!("price {s:?} has more than 6 decimals (USD per million tokens)"));
    }
    Ok(nano.0 / 1_000)
}

/// Pico-USD per token as USD per million tokens, without trailing zeros.
pub fn usd_per_mtok(p: u64) -> String {
    let (w, f) = (p / 1_000_000, p % 1_000_000);
    if f == 0 {
        return w.to_string();
    }
    format!("{w}.{}", format!("{f:06}").trim_end_matches('0'))
}

/// A JSON number of USD per token (`3e-06`, `0.000003`) to pico-USD per
/// token, from its decimal text (never through a float), rounded half up
/// to the pico-dollar.
pub fn json_usd_per_token_to_pico(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a non-negative number");
    let t = text.trim();
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && frac.is_empty() || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(format!("{text:?} has too many digits"));
    }
    let value: u128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| bad())? };
    // value × 10^(exp − frac.len()) USD = value × 10^(exp − frac.len() + 12) pico.
    let shift = exp.saturating_sub(frac.len() as i32).saturating_add(12);
    let pico = if shift >= 0 {
        10u128
            .checked_pow(shift as u32)
            .and_then(|p| value.checked_mul(p))
            .ok_or_else(|| format!("{text:?} is too large"))?
    } else {
        match 10u128.checked_pow(shift.unsigned_abs()) {
            Some(d) => (value + d / 2) / d,
            None => 0,
        }
    };
    u64::try_from(pico).map_err(|_| format!("{text:?} is too large"))
}

#[derive(Deserialize)]
struct LiteLlmEntry<'a> {
    #[serde(borrow, default)]
    input_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output_cost_per_token: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_creation_input_token_cost: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_creation_input_token_cost_above_1hr: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cache_read_input_token_cost: Option<&'a RawValue>,
    #[serde(default)]
    litellm_provider: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
struct ListFile {
    models: Vec<ListFileModel>,
}

#[derive(Deserialize)]
struct ListFileModel {
    id: String,
    #[serde(default)]
    provider: Option<String>,
    input_usd_per_mtok: String,
    output_usd_per_mtok: String,
    cache_write_5m_usd_per_mtok: Option<String>,
    cache_write_1h_usd_per_mtok: Option<String>,
    cache_read_usd_per_mtok: Option<String>,
}

/// What an import file holds: prices, and what was skipped with why.
pub struct Imported {
    pub prices: Vec<ModelPrice>,
    pub skipped: Vec<(String, String)>,
}

/// Reads `price list --json` output or LiteLLM's price JSON.
pub fn parse_import(text: &str) -> Result<Imported, String> {
    let top: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
    if top.contains_key("models") {
        let f: ListFile = serde_json::from_str(text).map_err(|e| format!("not `price list --json` output: {e}"))?;
        let prices = f
            .models
            .into_iter()
            .map(|m| {
                let opt = |v: Option<String>| v.map(|v| parse_usd_per_mtok(&v)).transpose();
                Ok(ModelPrice {
                    provider: m.provider.filter(|p| !p.is_empty()),
                    input: parse_usd_per_mtok(&m.input_usd_per_mtok)?,
                    output: parse_usd_per_mtok(&m.output_usd_per_mtok)?,
                    cache_write_5m: opt(m.cache_write_5m_usd_per_mtok)?,
                    cache_write_1h: opt(m.cache_write_1h_usd_per_mtok)?,
                    cache_read: opt(m.cache_read_usd_per_mtok)?,
                    model: m.id,
                })
            })
            .collect::<Result<_, String>>()?;
        return Ok(Imported { prices, skipped: vec![] });
    }
    let mut out = Imported { prices: vec![], skipped: vec![] };
    for (model, raw) in top {
        if model == "sample_spec" {
            continue;
        }
        let Ok(e) = serde_json::from_str::<LiteLlmEntry>(raw.get()) else {
            out.skipped.push((model, "not a price entry".into()));
            continue;
        };
        let provider = e.litellm_provider.clone().unwrap_or_default();
        if !matches!(provider.as_str(), "anthropic" | "openai") {
            out.skipped.push((model, format!("provider {provider:?} is not routed by Tollgate")));
            continue;
        }
        if e.mode.as_deref().is_some_and(|m| !matches!(m, "chat" | "responses" | "completion")) {
            out.skipped.push((model, format!("mode {:?} is not a chat model", e.mode.unwrap_or_default())));
            continue;
        }
        let rate = |r: Option<&RawValue>| r.map(|r| json_usd_per_token_to_pico(r.get())).transpose();
        let (input, output) = match (rate(e.input_cost_per_token), rate(e.output_cost_per_token)) {
            (Ok(Some(i)), Ok(Some(o))) => (i, o),
            (Err(m), _) | (_, Err(m)) => {
                out.skipped.push((model, m));
                continue;
            }
            _ => {
                out.skipped.push((model, "no input and output price".into()));
                continue;
            }
        };
        if input == 0 && output == 0 {
            out.skipped.push((model, "free (input and output both zero)".into()));
            continue;
        }
        let caches = (
            rate(e.cache_creation_input_token_cost),
            rate(e.cache_creation_input_token_cost_above_1hr),
            rate(e.cache_read_input_token_cost),
        );
        let (Ok(w5), Ok(w1), Ok(read)) = caches else {
            out.skipped.push((model, "a cache price is not a number".into()));
            continue;
        };
        out.prices.push(ModelPrice {
            model,
            provider: Some(provider),
            input,
            output,
            cache_write_5m: w5,
            cache_write_1h: w1,
            cache_read: read,
        });
    }
    Ok(out)
}

fn listed_json(p: &ListedPrice) -> Value {
    json!({
        "id": p.id,
        "provider": p.provider,
        "display_name": p.display_name,
        "aliases": p.aliases,
        "input_usd_per_mtok": usd_per_mtok(p.rates[0]),
        "output_usd_per_mtok": usd_per_mtok(p.rates[1]),
        "cache_write_5m_usd_per_mtok": usd_per_mtok(p.rates[2]),
        "cache_write_1h_usd_per_mtok": usd_per_mtok(p.rates[3]),
        "cache_read_usd_per_mtok": usd_per_mtok(p.rates[4]),
        "overridden": p.overridden,
        "source": p.source,
    })
}

async fn set_prices(client: &AdminClient, set: Vec<ModelPrice>, remove: Vec<String>) -> anyhow::Result<u64> {
    let msg = pb::SetPricesRequest { set: set.iter().map(pb::ModelPrice::from).collect(), remove };
    let r = client.call(msg, |mut c, r| async move { c.set_prices(r).await }).await.map_err(crate::cli::fail)?;
    Ok(r.index)
}

/// The book's id for `name` when it is one of its aliases (a dated
/// snapshot, a Bedrock id): an override is kept under the model's id, so
/// one model never has two.
fn canonical(book: &[ListedPrice], name: &str) -> String {
    book.iter().find(|b| b.aliases.iter().any(|a| a == name)).map_or_else(|| name.to_string(), |b| b.id.clone())
}

/// `price import FILE`: a `price list --json` or LiteLLM file, aliases
/// canonicalised, set in one change (or only shown with `--dry-run`).
async fn import(
    client: &AdminClient,
    book: &[ListedPrice],
    file: &std::path::Path,
    only_unlisted: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
    let mut imported = parse_import(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if only_unlisted {
        let listed = |m: &str| book.iter().any(|b| b.id == m || b.aliases.iter().any(|a| a == m));
        imported.prices.retain(|p| !listed(&p.model));
    }
    // Aliases become their model's id; of two entries for one model the last wins.
    let mut by_model: BTreeMap<String, ModelPrice> = BTreeMap::new();
    for mut p in imported.prices {
        p.model = canonical(book, &p.model);
        by_model.insert(p.model.clone(), p);
    }
    imported.prices = by_model.into_values().collect();
    if imported.prices.len() > MAX_PRICE_OVERRIDES {
        anyhow::bail!(
            "{} prices is more than the {MAX_PRICE_OVERRIDES} the ledger keeps; narrow the file",
            imported.prices.len()
        );
    }
    for p in &imported.prices {
        println!("{}{}", if dry_run { "would set " } else { "" }, p.summary());
    }
    let n = imported.prices.len();
    if dry_run || n == 0 {
        println!("{n} prices{}; {} entries skipped", if dry_run { " (dry run)" } else { "" }, imported.skipped.len());
        return Ok(());
    }
    let index = set_prices(client, imported.prices, vec![]).await?;
    println!("imported {n} prices (index {index}); {} entries skipped", imported.skipped.len());
    Ok(())
}

/// `price list [--json]`: the book under the ledger's overrides and discount.
async fn list(client: &AdminClient, lister: PriceLister, json: bool) -> anyhow::Result<()> {
    let cfg = client
        .call(pb::GetConfigRequest {}, |mut c, r| async move { c.get_config(r).await })
        .await
        .map_err(crate::cli::fail)?;
    let overrides: Vec<ModelPrice> = cfg.prices.iter().map(ModelPrice::from).collect();
    let rows = lister(&overrides, cfg.discount_bp);
    if json {
        let models: Vec<Value> = rows.iter().map(listed_json).collect();
        println!("{}", json!({"index": cfg.index, "discount_bp": cfg.discount_bp, "models": models}));
        return Ok(());
    }
    println!(
        "list prices, USD per million tokens; discount {}.{:02}% off every cost",
        cfg.discount_bp / 100,
        cfg.discount_bp % 100
    );
    let cols = [
        Col("MODEL", false),
        Col("PROVIDER", false),
        Col("INPUT", true),
        Col("OUTPUT", true),
        Col("WRITE5M", true),
        Col("WRITE1H", true),
        Col("READ", true),
        Col("SOURCE", false),
    ];
    table::print(
        &cols,
        rows.iter().map(|p| {
            let [input, output, w5, w1, read] = p.rates.map(usd_per_mtok);
            let provider = if p.provider.is_empty() { "any" } else { &p.provider };
            let source = if p.overridden { "override" } else { "book" };
            vec![p.id.clone(), provider.to_string(), input, output, w5, w1, read, source.to_string()]
        }),
    );
    Ok(())
}

pub async fn run(client: &AdminClient, cmd: PriceCmd, lister: PriceLister) -> anyhow::Result<()> {
    let book = lister(&[], 0);
    let arg = |v: &str| parse_usd_per_mtok(v).map_err(|e| anyhow::anyhow!(e));
    let opt = |v: &Option<String>| v.as_deref().map(parse_usd_per_mtok).transpose().map_err(|e| anyhow::anyhow!(e));
    match cmd {
        PriceCmd::Set {
            model,
            input_usd_per_mtok,
            output_usd_per_mtok,
            cache_write_5m,
            cache_write_1h,
            cache_read,
            provider,
        } => {
            let p = ModelPrice {
                model: canonical(&book, &model),
                provider,
                input: arg(&input_usd_per_mtok)?,
                output: arg(&output_usd_per_mtok)?,
                cache_write_5m: opt(&cache_write_5m)?,
                cache_write_1h: opt(&cache_write_1h)?,
                cache_read: opt(&cache_read)?,
            };
            let summary = p.summary();
            let index = set_prices(client, vec![p], vec![]).await?;
            println!("price set: {summary} per million tokens (index {index})");
        }
        PriceCmd::Remove { models } => {
            let models: Vec<String> = models.iter().map(|m| canonical(&book, m)).collect();
            let names = models.join(", ");
            let index = set_prices(client, vec![], models).await?;
            println!("price overrides removed: {names} (index {index})");
        }
        PriceCmd::Import { file, only_unlisted, dry_run } => {
            import(client, &book, &file, only_unlisted, dry_run).await?
        }
        PriceCmd::Discount { percent } => {
            // Percent with at most 2 decimals = basis points.
            let nano: NanoUsd = percent.trim().parse().map_err(|e| anyhow::anyhow!("discount {percent:?}: {e}"))?;
            if !nano.0.is_multiple_of(10_000_000) {
                anyhow::bail!("discount {percent:?} has more than 2 decimals");
            }
            let basis_points = u32::try_from(nano.0 / 10_000_000).map_err(|_| anyhow::anyhow!("discount too large"))?;
            let r = client
                .call(pb::SetDiscountRequest { basis_points }, |mut c, r| async move { c.set_discount(r).await })
                .await
                .map_err(crate::cli::fail)?;
            println!("discount: {percent}% off every cost (index {})", r.index);
        }
        PriceCmd::List { json } => list(client, lister, json).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly() {
        assert_eq!(parse_usd_per_mtok("4").unwrap(), 4_000_000);
        assert_eq!(parse_usd_per_mtok("0.20").unwrap(), 200_000);
        assert_eq!(parse_usd_per_mtok("0.000001").unwrap(), 1);
        assert!(parse_usd_per_mtok("0.0000001").is_err());
        assert!(parse_usd_per_mtok("-1").is_err());
        assert_eq!(usd_per_mtok(200_000), "0.2");
        assert_eq!(usd_per_mtok(4_000_000), "4");
        for (json, pico) in [
            ("3e-06", 3_000_000),
            ("3E-6", 3_000_000),
            ("0.000003", 3_000_000),
            ("1.5e-05", 15_000_000),
            ("3.75e-06", 3_750_000),
            ("1.25e-07", 125_000),
            ("0", 0),
            ("6.6666666e-08", 66_667),
            ("1e-13", 0),
            ("5e-13", 1),
        ] {
            assert_eq!(json_usd_per_token_to_pico(json).unwrap(), pico, "{json}");
        }
        for bad in ["-3e-06", "x", "", "1e999"] {
            assert!(json_usd_per_token_to_pico(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn litellm_files_import_their_anthropic_and_openai_chat_models() {
        let text = r#"{
          "sample_spec": {"input_cost_per_token": 0, "litellm_provider": "one of https://docs.litellm.ai/docs/providers"},
          "claude-opus-5-5": {"input_cost_per_token": 4e-06, "output_cost_per_token": 2e-05,
             "cache_creation_input_token_cost": 5e-06, "cache_creation_input_token_cost_above_1hr": 8e-06,
             "cache_read_input_token_cost": 2e-07, "litellm_provider": "anthropic", "mode": "chat",
             "max_output_tokens": 128000},
          "gpt-x": {"input_cost_per_token": 1.25e-06, "output_cost_per_token": 1e-05, "litellm_provider": "openai", "mode": "chat"},
          "text-embedding-3-small": {"input_cost_per_token": 2e-08, "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "embedding"},
          "bedrock/anthropic.claude-x": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05, "litellm_provider": "bedrock"},
          "claude-no-output": {"input_cost_per_token": 3e-06, "litellm_provider": "anthropic"}
        }"#;
        let i = parse_import(text).unwrap();
        assert_eq!(
            i.prices,
            vec![
                ModelPrice {
                    model: "claude-opus-5-5".into(),
                    provider: Some("anthropic".into()),
                    input: 4_000_000,
                    output: 20_000_000,
                    cache_write_5m: Some(5_000_000),
                    cache_write_1h: Some(8_000_000),
                    cache_read: Some(200_000),
                },
                ModelPrice {
                    model: "gpt-x".into(),
                    provider: Some("openai".into()),
                    input: 1_250_000,
                    output: 10_000_000,
                    cache_write_5m: None,
                    cache_write_1h: None,
                    cache_read: None,
                },
            ]
        );
        let skipped: Vec<&str> = i.skipped.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(skipped, ["bedrock/anthropic.claude-x", "claude-no-output", "text-embedding-3-small"]);
    }

    #[test]
    fn an_alias_is_kept_under_its_models_id() {
        let book = vec![ListedPrice {
            id: "claude-sonnet-4-5".into(),
            provider: "anthropic".into(),
            display_name: "Claude Sonnet 4.5".into(),
            rates: [3_000_000, 15_000_000, 0, 0, 0],
            aliases: vec!["claude-sonnet-4-5-20250929".into()],
            source: String::new(),
            overridden: false,
        }];
        assert_eq!(canonical(&book, "claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
        assert_eq!(canonical(&book, "claude-sonnet-4-5"), "claude-sonnet-4-5");
        assert_eq!(canonical(&book, "my-ft"), "my-ft");
    }

    #[test]
    fn list_output_imports_back() {
        let p = ListedPrice {
            id: "m".into(),
            provider: "openai".into(),
            display_name: "M".into(),
            rates: [1_250_000, 10_000_000, 0, 0, 125_000],
            aliases: vec![],
            source: "x".into(),
            overridden: false,
        };
        let text = json!({"index": 3, "discount_bp": 0, "models": [listed_json(&p)]}).to_string();
        let i = parse_import(&text).unwrap();
        assert_eq!(
            i.prices,
            vec![ModelPrice {
                model: "m".into(),
                provider: Some("openai".into()),
                input: 1_250_000,
                output: 10_000_000,
                cache_write_5m: Some(0),
                cache_write_1h: Some(0),
                cache_read: Some(125_000),
            }]
        );
    }
}
