//! Money as an integer count of nano-USD (1e-9 USD). Never floating point.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of money in nano-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NanoUsd(pub u64);

/// Nano-USD in one dollar.
pub const NANOS_PER_USD: u64 = 1_000_000_000;

impl NanoUsd {
    pub const ZERO: NanoUsd = NanoUsd(0);

    pub fn saturating_add(self, other: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_sub(other.0))
    }

    pub fn checked_add(self, other: NanoUsd) -> Option<NanoUsd> {
        self.0.checked_add(other.0).map(NanoUsd)
    }
}

impl fmt::Display for NanoUsd {
    /// Exact decimal dollars: `$12.5`, `$0.000000003`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANOS_PER_USD;
        let frac = self.0 % NANOS_PER_USD;
        if frac == 0 {
            return write!(f, "${whole}.00");
        }
        let digits = format!("{frac:09}");
        let trimmed = digits.trim_end_matches('0');
        let shown = if trimmed.len() < 2 { &digits[..2] } else { trimmed };
        write!(f, "${whole}.{shown}")
    }
}

/// Why a dollar amount could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseMoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is negative: amounts must be zero or more")]
    Negative(String),
    #[error("amount {0:?} is not a decimal number of dollars like 12.50")]
    Malformed(String),
    #[error("amount {0:?} has more than 9 fractional digits (the unit is one nano-dollar)")]
    TooPrecise(String),
    #[error("amount {0:?} is too large")]
    TooLarge(String),
}

impl FromStr for NanoUsd {
    type Err = ParseMoneyError;

    /// Parses decimal dollars (`"12"`, `"12.50"`, `"$0.000000001"`) exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        if t.is_empty() {
            return Err(ParseMoneyError::Empty);
        }
        if t.starts_with('-') {
            return Err(ParseMoneyError::Negative(s.to_string()));
        }
        let (whole, frac) = match t.split_once('.') {
            Some((w, f)) => (w, f),
            None => (t, ""),
        };
        let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(ParseMoneyError::Malformed(s.to_string()));
        }
        if frac.len() > 9 {
            return Err(ParseMoneyError::TooPrecise(s.to_string()));
        }
        let too_large = || ParseMoneyError::TooLarge(s.to_string());
        let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_large())? };
        let frac_nanos: u64 =
            if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| too_large())? };
        whole.checked_mul(NANOS_PER_USD).and_then(|n| n.checked_add(frac_nanos)).map(NanoUsd).ok_or_else(too_large)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!("12.50".parse::<NanoUsd>(), Ok(NanoUsd(12_500_000_000)));
        assert_eq!("$0.000000001".parse::<NanoUsd>(), Ok(NanoUsd(1)));
        assert_eq!("3".parse::<NanoUsd>(), Ok(NanoUsd(3_000_000_000)));
        assert_eq!(".5".parse::<NanoUsd>(), Ok(NanoUsd(500_000_000)));
    }

    #[test]
    fn rejects_bad_amounts() {
        assert!(matches!("-1".parse::<NanoUsd>(), Err(ParseMoneyError::Negative(_))));
        assert!(matches!("1.2.3".parse::<NanoUsd>(), Err(ParseMoneyError::Malformed(_))));
        assert!(matches!("abc".parse::<NanoUsd>(), Err(ParseMoneyError::Malformed(_))));
        assert!(matches!("1e5".parse::<NanoUsd>(), Err(ParseMoneyError::Malformed(_))));
        assert!(matches!("0.0000000001".parse::<NanoUsd>(), Err(ParseMoneyError::TooPrecise(_))));
        assert!(matches!("99999999999999999999".parse::<NanoUsd>(), Err(ParseMoneyError::TooLarge(_))));
        assert_eq!("".parse::<NanoUsd>(), Err(ParseMoneyError::Empty));
    }

    #[test]
    fn displays_exact_dollars() {
        assert_eq!(NanoUsd(12_500_000_000).to_string(), "$12.50");
        assert_eq!(NanoUsd(1).to_string(), "$0.000000001");
        assert_eq!(NanoUsd(0).to_string(), "$0.00");
        assert_eq!(NanoUsd(1_230_000_000).to_string(), "$1.23");
    }
}
