//! The vocabulary every part of Tollgate shares: who a request is charged
//! to ([`Scope`]), how a budget behaves ([`Mode`]), what a response used
//! ([`Usage`]), why a reserve was refused ([`Denial`]) and an operator's
//! price for a model ([`ModelPrice`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::money::NanoUsd;
use crate::period::Period;

/// Where a budget or policy attaches on the chain org → team → user → key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Org,
    Team(String),
    User(String),
    Key(String),
}

impl Scope {
    /// Parses `org`, `team:NAME`, `user:EMAIL` or `key:ID`.
    pub fn parse(s: &str) -> Result<Scope, String> {
        if s == "org" {
            return Ok(Scope::Org);
        }
        let bad = || format!("scope {s:?} is not one of org, team:NAME, user:EMAIL, key:ID");
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "team" => Ok(Scope::Team(name.to_string())),
            "user" => Ok(Scope::User(name.to_string())),
            "key" => Ok(Scope::Key(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Org => f.write_str("org"),
            Scope::Team(n) => write!(f, "team:{n}"),
            Scope::User(n) => write!(f, "user:{n}"),
            Scope::Key(n) => write!(f, "key:{n}"),
        }
    }
}

/// Whether a budget refuses admission (`hard`) or only reports (`soft`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hard,
    Soft,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "hard" => Some(Mode::Hard),
            "soft" => Some(Mode::Soft),
            _ => None,
        }
    }
}

/// Token counts of one response, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_5m_tokens: u64,
    pub cache_write_1h_tokens: u64,
    pub cache_read_tokens: u64,
    pub web_search_requests: u64,
}

/// An operator's price for one model, in pico-USD per token ($1 / MTok =
/// 1,000,000). A cache rate left out keeps the shipped book's ratio to the
/// input rate (Anthropic's multiples for a model the book does not list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub model: String,
    /// `anthropic`, `openai`, or `None` (either API).
    pub provider: Option<String>,
    pub input: u64,
    pub output: u64,
    pub cache_write_5m: Option<u64>,
    pub cache_write_1h: Option<u64>,
    pub cache_read: Option<u64>,
}

/// The most price overrides the ledger keeps, and one command may set.
pub const MAX_PRICE_OVERRIDES: usize = 4_096;
/// The dearest rate an override may give: $100,000 per million tokens.
pub const MAX_PRICE_PICO_PER_TOKEN: u64 = 100_000_000_000;
/// The largest org-wide discount: 99% (in basis points).
pub const MAX_DISCOUNT_BP: u32 = 9_900;

impl ModelPrice {
    /// `MODEL in $X out $Y [w5m $… w1h $… read $…]` per million tokens.
    pub fn summary(&self) -> String {
        let usd = |p: u64| {
            let (w, f) = (p / 1_000_000, p % 1_000_000);
            if f == 0 {
                format!("${w}")
            } else {
                format!("${w}.{}", format!("{f:06}").trim_end_matches('0'))
            }
        };
        let mut s = format!("{} in {} out {}", self.model, usd(self.input), usd(self.output));
        for (name, r) in [("w5m", self.cache_write_5m), ("w1h", self.cache_write_1h), ("read", self.cache_read)] {
            if let Some(r) = r {
                s.push_str(&format!(" {name} {}", usd(r)));
            }
        }
        s
    }
}

/// Why a Reserve was refused by a budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub scope: Scope,
    pub model: Option<String>,
    pub limit: NanoUsd,
    pub spent: NanoUsd,
    /// Held by holds and leases.
    pub held: NanoUsd,
    pub requested: NanoUsd,
    pub period: Period,
    /// When the period resets; `None` for a `total` budget.
    pub resets_at_ms: Option<u64>,
    /// The part of `held` leased to edges: room that comes back within a
    /// lease renewal once a denial pauses the budget's leases.
    pub leased: NanoUsd,
}
