//! Pricing: what a request's tokens cost, from the `[gateway.prices."<model>"]` table
//! (US dollars per million tokens). A model is priced by the longest table entry its
//! name starts with, so `claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929` too. A
//! model the table does not know costs nothing and is reported as unpriced.

use std::collections::BTreeMap;

use super::config::Price;
use super::metering::Usage;

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    pub fn new(prices: BTreeMap<String, Price>) -> PriceTable {
        PriceTable { prices }
    }

    /// The price of `model`, if the table has one.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.prices
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| *p)
    }

    /// The cost of `usage` on `model` in US dollars; `None` when the model is unpriced.
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        let p = self.price(model)?;
        let per = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
        Some(
            per(usage.input, p.input)
                + per(usage.output, p.output)
                + per(usage.cache_read, p.cache_read)
                + per(usage.cache_write, p.cache_write),
        )
    }

    /// What `input_tokens` of input would cost on `model` (the reservation made before a
    /// request is sent; its output is not known yet).
    pub fn input_cost(&self, model: &str, input_tokens: u64) -> f64 {
        self.price(model)
            .map_or(0.0, |p| input_tokens as f64 * p.input / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        let mut prices = BTreeMap::new();
        prices.insert(
            "claude-sonnet-4".into(),
            Price {
                input: 3.0,
                output: 15.0,
                cache_read: 0.3,
                cache_write: 3.75,
            },
        );
        prices.insert(
            "claude-sonnet-4-5".into(),
            Price {
                input: 4.0,
                output: 20.0,
                cache_read: 0.0,
                cache_write: 0.0,
            },
        );
        PriceTable::new(prices)
    }

    #[test]
    fn the_longest_matching_entry_prices_a_model() {
        let t = table();
        assert_eq!(t.price("claude-sonnet-4-5-20250929").unwrap().input, 4.0);
        assert_eq!(t.price("claude-sonnet-4-20250514").unwrap().input, 3.0);
        assert!(t.price("gpt-4.1").is_none());
    }

    #[test]
    fn cost_sums_every_kind_of_token() {
        let usage = Usage {
            input: 1_000_000,
            output: 100_000,
            cache_read: 1_000_000,
            cache_write: 1_000_000,
        };
        let cost = table().cost("claude-sonnet-4-x", &usage).unwrap();
        assert!((cost - (3.0 + 1.5 + 0.3 + 3.75)).abs() < 1e-9, "{cost}");
        assert_eq!(table().cost("unknown", &usage), None);
    }
}
