//! Wire conversions of the shared types, as `From` impls next to each
//! other (the ledger's own types convert in `tollgate_ledger::convert`).

use tollgate_proto::v1 as pb;

use crate::domain::{Denial, ModelPrice, Scope, Usage};
use crate::money::NanoUsd;
use crate::period::Period;

impl From<&Usage> for pb::Usage {
    fn from(u: &Usage) -> Self {
        pb::Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_write_5m_tokens: u.cache_write_5m_tokens,
            cache_write_1h_tokens: u.cache_write_1h_tokens,
            cache_read_tokens: u.cache_read_tokens,
            web_search_requests: u.web_search_requests,
        }
    }
}

impl From<&pb::Usage> for Usage {
    fn from(u: &pb::Usage) -> Self {
        Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_write_5m_tokens: u.cache_write_5m_tokens,
            cache_write_1h_tokens: u.cache_write_1h_tokens,
            cache_read_tokens: u.cache_read_tokens,
            web_search_requests: u.web_search_requests,
        }
    }
}

impl From<&Denial> for pb::Denial {
    fn from(d: &Denial) -> Self {
        pb::Denial {
            scope: d.scope.to_string(),
            model: d.model.clone().unwrap_or_default(),
            limit_nano_usd: d.limit.0,
            spent_nano_usd: d.spent.0,
            held_nano_usd: d.held.0,
            requested_nano_usd: d.requested.0,
            period: d.period.as_str().to_string(),
            resets_at_ms: d.resets_at_ms.unwrap_or(0),
            leased_nano_usd: d.leased.0,
        }
    }
}

/// For showing a denial: a scope or period this version cannot read (from
/// a newer ledger) is shown as `org` / `total` rather than dropped.
impl From<&pb::Denial> for Denial {
    fn from(d: &pb::Denial) -> Self {
        Denial {
            scope: Scope::parse(&d.scope).unwrap_or(Scope::Org),
            model: (!d.model.is_empty()).then(|| d.model.clone()),
            limit: NanoUsd(d.limit_nano_usd),
            spent: NanoUsd(d.spent_nano_usd),
            held: NanoUsd(d.held_nano_usd),
            requested: NanoUsd(d.requested_nano_usd),
            period: Period::parse(&d.period).unwrap_or(Period::Total),
            resets_at_ms: (d.resets_at_ms != 0).then_some(d.resets_at_ms),
            leased: NanoUsd(d.leased_nano_usd),
        }
    }
}

impl From<&ModelPrice> for pb::ModelPrice {
    fn from(p: &ModelPrice) -> Self {
        pb::ModelPrice {
            model: p.model.clone(),
            provider: p.provider.clone().unwrap_or_default(),
            input_pico_usd: p.input,
            output_pico_usd: p.output,
            cache_write_5m_pico_usd: p.cache_write_5m,
            cache_write_1h_pico_usd: p.cache_write_1h,
            cache_read_pico_usd: p.cache_read,
        }
    }
}

/// Unchecked: the state machine checks every field again (`SetPrices`).
impl From<&pb::ModelPrice> for ModelPrice {
    fn from(p: &pb::ModelPrice) -> Self {
        ModelPrice {
            model: p.model.clone(),
            provider: (!p.provider.is_empty()).then(|| p.provider.clone()),
            input: p.input_pico_usd,
            output: p.output_pico_usd,
            cache_write_5m: p.cache_write_5m_pico_usd,
            cache_write_1h: p.cache_write_1h_pico_usd,
            cache_read: p.cache_read_pico_usd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_and_denials_round_trip() {
        let u = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cache_write_5m_tokens: 3,
            cache_write_1h_tokens: 4,
            cache_read_tokens: 5,
            web_search_requests: 6,
        };
        assert_eq!(Usage::from(&pb::Usage::from(&u)), u);
        let d = Denial {
            scope: Scope::Team("eng".into()),
            model: Some("m".into()),
            limit: NanoUsd(10),
            spent: NanoUsd(7),
            held: NanoUsd(2),
            requested: NanoUsd(3),
            period: Period::Monthly,
            resets_at_ms: Some(99),
            leased: NanoUsd(1),
        };
        assert_eq!(Denial::from(&pb::Denial::from(&d)), d);
        let unreadable = pb::Denial { scope: "galaxy:x".into(), period: "fortnightly".into(), ..Default::default() };
        let shown = Denial::from(&unreadable);
        assert_eq!((shown.scope, shown.period, shown.resets_at_ms), (Scope::Org, Period::Total, None));
    }

    #[test]
    fn a_model_price_round_trips_and_an_empty_provider_means_either() {
        let p = ModelPrice {
            model: "m".into(),
            provider: None,
            input: 1,
            output: 2,
            cache_write_5m: Some(3),
            cache_write_1h: None,
            cache_read: Some(0),
        };
        let w = pb::ModelPrice::from(&p);
        assert_eq!(w.provider, "");
        assert_eq!(ModelPrice::from(&w), p);
    }
}
