//! One usage event checked and turned into what the ledger records, or refused as
//! poison (with the reason that goes to the dead-letter stream).
//!
//! The rounding rule lives here: a period's cost is `ms × price_per_second / 1000`,
//! exact (no rounding at all); a period crossing UTC midnight is split there, each
//! piece costed the same way (the pieces add up to the whole exactly).

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use schemas::{UsageBody, UsageEvent};

use crate::prices::Prices;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// An event that can never be recorded; the reason says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Poison {
    /// A short, stable cause first (`undecodable`, `newer schema version`, …), then
    /// details after a `:`; the metric label is the part before the `:`.
    pub reason: String,
    /// The event's id, when it could be read.
    pub event_id: Option<String>,
    /// The event's kind (see [`kind_of`]), `unknown` when it could not be read.
    pub kind: &'static str,
}

fn poison(event: &UsageEvent, reason: String) -> Poison {
    Poison {
        reason,
        event_id: Some(event.event_id.clone()),
        kind: kind_of(&event.body),
    }
}

/// Part of an instance period that fell on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub day: NaiveDate,
    pub ms: i64,
    /// `ms × price / 1000`, exact.
    pub cost: Decimal,
}

/// What an event adds to the books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// Instance time, billed.
    Period {
        cluster: String,
        model: String,
        instance_type: String,
        price_per_second: Decimal,
        pieces: Vec<Piece>,
    },
    /// A lifecycle change: recorded, not billed.
    Lifecycle,
    /// A request's tokens: recorded, not charged.
    Tokens {
        day: NaiveDate,
        provider: String,
        model: String,
        input_tokens: i64,
        output_tokens: i64,
        cached_input_tokens: i64,
    },
}

/// An event that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub event_id: String,
    pub account: String,
    /// `instance_period`, `lifecycle` or `tokens`.
    pub kind: &'static str,
    pub emitted_at: DateTime<Utc>,
    /// The whole event, as stored in `usage_events.body`.
    pub body: serde_json::Value,
    pub fact: Fact,
}

/// The rules an event is checked against.
#[derive(Debug, Clone)]
pub struct Rules {
    pub prices: Prices,
    /// Longest instance period accepted, in ms: a longer one is a publisher's bug.
    pub max_period_ms: i64,
}

/// The kind label of an event body.
pub fn kind_of(body: &UsageBody) -> &'static str {
    match body {
        UsageBody::InstancePeriod { .. } => "instance_period",
        UsageBody::Lifecycle { .. } => "lifecycle",
        UsageBody::Tokens { .. } => "tokens",
    }
}

/// Decodes and checks one message payload.
pub fn check_payload(payload: &[u8], rules: &Rules) -> Result<Checked, Poison> {
    let event: UsageEvent = schemas::decode(payload).map_err(|e| Poison {
        reason: format!("undecodable: {e}"),
        event_id: None,
        kind: "unknown",
    })?;
    check(event, rules)
}

/// Checks a decoded event: schema version, ids, times, the instance type's price.
pub fn check(event: UsageEvent, rules: &Rules) -> Result<Checked, Poison> {
    if event.schema_version > schemas::SCHEMA_VERSION {
        return Err(poison(
            &event,
            format!(
                "newer schema version: {} is newer than this billing's {}",
                event.schema_version,
                schemas::SCHEMA_VERSION
            ),
        ));
    }
    if event.event_id.is_empty() || event.event_id.len() > 512 {
        return Err(poison(
            &event,
            "bad event id: empty or over 512 bytes".into(),
        ));
    }
    if event.account.is_empty() || event.account.len() > 256 {
        return Err(poison(
            &event,
            "bad account: empty or over 256 bytes".into(),
        ));
    }
    let fact = match &event.body {
        UsageBody::InstancePeriod {
            cluster,
            model,
            instance_type,
            start_ms,
            end_ms,
            ..
        } => {
            if cluster.is_empty() || model.is_empty() {
                return Err(poison(&event, "bad period: no cluster or model".into()));
            }
            let Some(price) = rules.prices.per_second(instance_type) else {
                return Err(poison(
                    &event,
                    format!(
                        "unknown instance type: '{instance_type}' has no price (add it to the prices file); not billed at 0"
                    ),
                ));
            };
            let length = end_ms.checked_sub(*start_ms).unwrap_or(-1);
            if length < 0 {
                return Err(poison(
                    &event,
                    format!("negative period: ends at {end_ms} before it starts at {start_ms}"),
                ));
            }
            if length > rules.max_period_ms {
                return Err(poison(
                    &event,
                    format!(
                        "overlong period: {length} ms, more than the {} ms accepted",
                        rules.max_period_ms
                    ),
                ));
            }
            let pieces = split(*start_ms, *end_ms, price)
                .ok_or_else(|| poison(&event, "bad period: times out of range".into()))?;
            Fact::Period {
                cluster: cluster.clone(),
                model: model.clone(),
                instance_type: instance_type.clone(),
                price_per_second: price,
                pieces,
            }
        }
        UsageBody::Lifecycle { .. } => Fact::Lifecycle,
        UsageBody::Tokens {
            provider,
            model,
            input_tokens,
            output_tokens,
            cached_input_tokens,
            at_ms,
            ..
        } => {
            let day = day_of(*at_ms)
                .ok_or_else(|| poison(&event, "bad tokens: time out of range".into()))?;
            let count = |n: u64| {
                i64::try_from(n)
                    .map_err(|_| poison(&event, "bad tokens: count out of range".into()))
            };
            Fact::Tokens {
                day,
                provider: provider.clone(),
                model: model.clone(),
                input_tokens: count(*input_tokens)?,
                output_tokens: count(*output_tokens)?,
                cached_input_tokens: count(*cached_input_tokens)?,
            }
        }
    };
    let body =
        serde_json::to_value(&event).map_err(|e| poison(&event, format!("unencodable: {e}")))?;
    Ok(Checked {
        kind: kind_of(&event.body),
        event_id: event.event_id,
        account: event.account,
        emitted_at: event.emitted_at,
        body,
        fact,
    })
}

/// The UTC day of a Unix-millisecond time.
pub fn day_of(ms: i64) -> Option<NaiveDate> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// The cost of `ms` milliseconds at `price` per second: `ms × price / 1000`, exact.
pub fn cost(ms: i64, price: Decimal) -> Option<Decimal> {
    Decimal::from(ms)
        .checked_mul(price)?
        .checked_div(Decimal::ONE_THOUSAND)
}

/// `[start_ms, end_ms)` cut at each UTC midnight, each piece costed. An empty period
/// is one empty piece on its start's day.
pub fn split(start_ms: i64, end_ms: i64, price: Decimal) -> Option<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut at = start_ms;
    loop {
        let day = day_of(at)?;
        let next_midnight = at.div_euclid(DAY_MS).checked_add(1)?.checked_mul(DAY_MS)?;
        let until = end_ms.min(next_midnight);
        let ms = until - at;
        pieces.push(Piece {
            day,
            ms,
            cost: cost(ms, price)?,
        });
        if until >= end_ms {
            return Some(pieces);
        }
        at = until;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn rules() -> Rules {
        Rules {
            prices: Prices::embedded().unwrap(),
            max_period_ms: 3_600_000,
        }
    }

    fn period(start_ms: i64, end_ms: i64, instance_type: &str) -> UsageEvent {
        UsageEvent {
            schema_version: schemas::SCHEMA_VERSION,
            event_id: UsageEvent::period_id("i-1", start_ms),
            account: "acme".into(),
            emitted_at: Utc::now(),
            body: UsageBody::InstancePeriod {
                cluster: "m".into(),
                model: "m".into(),
                instance_type: instance_type.into(),
                instance_id: "i-1".into(),
                start_ms,
                end_ms,
            },
        }
    }

    #[test]
    fn costs_are_exact() {
        assert_eq!(cost(1, d("0.00001")).unwrap(), d("0.00000001"));
        assert_eq!(cost(3_600_000, d("0.00018")).unwrap(), d("0.648"));
        assert_eq!(cost(1_234, d("0.0000045")).unwrap(), d("0.000005553"));
    }

    #[test]
    fn periods_split_at_utc_midnight() {
        let midnight = 1_764_547_200_000; // 2025-12-01T00:00:00Z
        let pieces = split(midnight - 1_500, midnight + 2_500, d("0.00001")).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(
            pieces[0].day,
            NaiveDate::from_ymd_opt(2025, 11, 30).unwrap()
        );
        assert_eq!(pieces[0].ms, 1_500);
        assert_eq!(pieces[1].day, NaiveDate::from_ymd_opt(2025, 12, 1).unwrap());
        assert_eq!(pieces[1].ms, 2_500);
        assert_eq!(
            pieces[0].cost + pieces[1].cost,
            cost(4_000, d("0.00001")).unwrap()
        );
        // Ending exactly at midnight stays on the day before.
        let pieces = split(midnight - 10, midnight, d("1")).unwrap();
        assert_eq!(pieces.len(), 1);
        // Empty and several-day periods.
        assert_eq!(split(midnight, midnight, d("1")).unwrap()[0].ms, 0);
        assert_eq!(
            split(midnight - 1, midnight + 2 * DAY_MS, d("1"))
                .unwrap()
                .len(),
            3
        );
        // Before 1970 too.
        assert_eq!(split(-1_000, 1_000, d("1")).unwrap().len(), 2);
    }

    #[test]
    fn poison_is_named() {
        let r = rules();
        assert!(check(period(0, 10_000, "cpu"), &r).is_ok());
        let reason = |e: UsageEvent| check(e, &r).unwrap_err().reason;
        assert!(reason(period(10, 0, "cpu")).starts_with("negative period"));
        assert!(reason(period(0, 3_600_001, "cpu")).starts_with("overlong period"));
        assert!(reason(period(0, 1, "tpu-v9")).starts_with("unknown instance type"));
        let mut newer = period(0, 1, "cpu");
        newer.schema_version = schemas::SCHEMA_VERSION + 1;
        assert!(reason(newer).starts_with("newer schema version"));
        let err = check_payload(b"\x01garbage", &r).unwrap_err();
        assert!(err.reason.starts_with("undecodable"));
        assert_eq!(err.event_id, None);
    }
}
