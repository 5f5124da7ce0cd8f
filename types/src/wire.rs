//! Wire conversions of the shared types, as `From` impls next to each
//! other (the ledger's own types convert in `tollgate_ledger::convert`).

use tollgate_proto::v1 as pb;

use crate::domain::ModelPrice;

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
