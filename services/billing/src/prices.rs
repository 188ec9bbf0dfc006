//! Prices per instance type per second, from a JSON file (`services/billing/prices.json`
//! is compiled in as the default; `BILLING_PRICES_FILE` replaces it).
//!
//! Prices are strings in the file (`"0.00001"`) and [`Decimal`]s here: a JSON number
//! would pass through a float on the way in, so numbers are refused.

use std::collections::BTreeMap;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;

/// The prices file shipped with the service.
pub const DEFAULT_PRICES: &str = include_str!("../prices.json");

/// Most decimal places a price may have: a period's cost (`ms × price / 1000`) then
/// has at most 23, well inside what `Decimal` (28) and `NUMERIC` hold exactly.
pub const MAX_PRICE_SCALE: u32 = 20;

/// A prices file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    #[error("cannot read the prices file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the prices file is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error(
        "price of '{instance_type}' must be a decimal string such as \"0.00001\" (a JSON number would pass through a float)"
    )]
    NotAString { instance_type: String },
    #[error(
        "price of '{instance_type}' ({text}) is not a non-negative decimal with at most {MAX_PRICE_SCALE} places"
    )]
    BadPrice { instance_type: String, text: String },
    #[error("only USD prices are supported, not '{0}'")]
    Currency(String),
    #[error("the prices file lists no instance type")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    /// For people reading the file.
    #[serde(default, rename = "description")]
    _description: String,
    currency: String,
    per_second: BTreeMap<String, serde_json::Value>,
}

/// USD per instance-second, by instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices {
    per_second: BTreeMap<String, Decimal>,
}

impl Prices {
    /// Parses a prices file's text.
    pub fn parse(text: &str) -> Result<Self, PricesError> {
        let file: PricesFile = serde_json::from_str(text)?;
        if file.currency != "USD" {
            return Err(PricesError::Currency(file.currency));
        }
        let mut per_second = BTreeMap::new();
        for (instance_type, value) in file.per_second {
            let serde_json::Value::String(text) = value else {
                return Err(PricesError::NotAString { instance_type });
            };
            let price = Decimal::from_str_exact(text.trim())
                .ok()
                .filter(|p| !p.is_sign_negative() && p.scale() <= MAX_PRICE_SCALE)
                .ok_or_else(|| PricesError::BadPrice {
                    instance_type: instance_type.clone(),
                    text: text.clone(),
                })?;
            per_second.insert(instance_type, price.normalize());
        }
        if per_second.is_empty() {
            return Err(PricesError::Empty);
        }
        Ok(Self { per_second })
    }

    /// The prices compiled in (`services/billing/prices.json`).
    pub fn embedded() -> Result<Self, PricesError> {
        Self::parse(DEFAULT_PRICES)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, PricesError> {
        let text = std::fs::read_to_string(path).map_err(|source| PricesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// USD per second of `instance_type`; `None` when it has no price.
    pub fn per_second(&self, instance_type: &str) -> Option<Decimal> {
        self.per_second.get(instance_type).copied()
    }

    /// Every priced instance type and its price.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Decimal)> {
        self.per_second.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn shipped_prices_follow_the_rules() {
        let prices = Prices::embedded().unwrap();
        assert_eq!(
            prices.per_second("cpu"),
            Some(Decimal::from_str("0.00001").unwrap())
        );
        assert_eq!(
            prices.per_second("gpu-a100-40gb"),
            Some(Decimal::from_str("0.00018").unwrap())
        );
        // Every GPU type is priced by its VRAM at 0.0000045 USD per GB-second.
        let per_gb = Decimal::from_str("0.0000045").unwrap();
        let mut gpus = 0;
        for (name, price) in prices.iter() {
            if let Some(rest) = name.strip_prefix("gpu-") {
                let gb: u32 = rest
                    .rsplit('-')
                    .next()
                    .and_then(|s| s.strip_suffix("gb"))
                    .and_then(|s| s.parse().ok())
                    .unwrap();
                assert_eq!(price, per_gb * Decimal::from(gb), "{name}");
                gpus += 1;
            }
        }
        assert!(gpus >= 3);
        assert_eq!(prices.per_second("tpu"), None);
    }

    #[test]
    fn bad_files_are_refused() {
        let number = r#"{"currency": "USD", "per_second": {"cpu": 0.00001}}"#;
        assert!(matches!(
            Prices::parse(number),
            Err(PricesError::NotAString { .. })
        ));
        let negative = r#"{"currency": "USD", "per_second": {"cpu": "-1"}}"#;
        assert!(matches!(
            Prices::parse(negative),
            Err(PricesError::BadPrice { .. })
        ));
        let euro = r#"{"currency": "EUR", "per_second": {"cpu": "1"}}"#;
        assert!(matches!(Prices::parse(euro), Err(PricesError::Currency(_))));
        let unknown = r#"{"currency": "USD", "per_second": {}, "tax": 1}"#;
        assert!(matches!(Prices::parse(unknown), Err(PricesError::Parse(_))));
        let empty = r#"{"currency": "USD", "per_second": {}}"#;
        assert!(matches!(Prices::parse(empty), Err(PricesError::Empty)));
    }
}
