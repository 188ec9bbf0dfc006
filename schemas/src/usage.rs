//! Usage events: what billing counts (stream USAGE, subjects `usage.<kind>.<account-token>`).
//!
//! Open models are billed by instance-seconds: every running instance reports
//! [`UsageBody::InstancePeriod`]s — consecutive, non-overlapping `[start_ms, end_ms)`
//! periods — while it runs, so billing loses at most one period if a process dies, and
//! [`UsageBody::Lifecycle`] events when it changes state (recorded, not billed by
//! themselves). Every request's tokens are reported as [`UsageBody::Tokens`]: shown to
//! the account, charged for no closed model.
//!
//! Every event has a deterministic [`UsageEvent::event_id`] (also its `Nats-Msg-Id`):
//! the same fact published twice, or delivered twice, carries the same id, and billing
//! counts it once.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One usage fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageEvent {
    /// Schema version the writer used ([`crate::SCHEMA_VERSION`]).
    pub schema_version: u16,
    /// Deterministic id; see [`UsageEvent::period_id`], [`UsageEvent::lifecycle_id`],
    /// [`UsageEvent::tokens_id`].
    pub event_id: String,
    /// The account billed.
    pub account: String,
    /// When the event was written (not what is billed: periods carry their own times).
    pub emitted_at: DateTime<Utc>,
    pub body: UsageBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UsageBody {
    /// Instance `instance_id` ran for `[start_ms, end_ms)` (Unix milliseconds): billed
    /// as `(end_ms - start_ms) / 1000` instance-seconds of `instance_type`.
    InstancePeriod {
        /// The cluster: its model id, unique within the account.
        cluster: String,
        model: String,
        instance_type: String,
        instance_id: String,
        start_ms: i64,
        end_ms: i64,
    },
    /// Instance `instance_id` entered `state` at `at_ms`.
    Lifecycle {
        cluster: String,
        model: String,
        instance_type: String,
        instance_id: String,
        state: InstanceState,
        at_ms: i64,
    },
    /// The tokens of request `request_id` (a closed model's are recorded, not charged).
    Tokens {
        request_id: Uuid,
        /// `openai`, `anthropic`, `google`, or `switchyard` for open models.
        provider: String,
        model: String,
        input_tokens: u64,
        output_tokens: u64,
        #[serde(default)]
        cached_input_tokens: u64,
        at_ms: i64,
    },
}

/// An instance's life: started → ready → draining → stopped (or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Started,
    Ready,
    Draining,
    Stopped,
    /// Died or was found dead (missed heartbeats, exited unasked).
    Failed,
    /// A state a newer peer knows and this build does not.
    #[serde(other)]
    Other,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Started => "started",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
            InstanceState::Other => "other",
        }
    }
}

impl UsageEvent {
    /// `period:<instance>:<start_ms>`: an instance reports each start once.
    pub fn period_id(instance_id: &str, start_ms: i64) -> String {
        format!("period:{instance_id}:{start_ms}")
    }

    /// The period `[start_ms, end_ms)` of instance `instance_id` of `account`'s cluster
    /// of `model`, under its deterministic id ([`Self::period_id`]): whoever publishes
    /// the same period (the instance, or the autoscaler billing a dead one's tail)
    /// publishes the same event.
    pub fn instance_period(
        account: &str,
        model: &str,
        instance_type: &str,
        instance_id: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            event_id: Self::period_id(instance_id, start_ms),
            account: account.to_string(),
            emitted_at: chrono::Utc::now(),
            body: UsageBody::InstancePeriod {
                cluster: model.to_string(),
                model: model.to_string(),
                instance_type: instance_type.to_string(),
                instance_id: instance_id.to_string(),
                start_ms,
                end_ms,
            },
        }
    }

    /// `lifecycle:<instance>:<state>`: an instance enters each state once.
    pub fn lifecycle_id(instance_id: &str, state: InstanceState) -> String {
        format!("lifecycle:{instance_id}:{}", state.as_str())
    }

    /// `tokens:<request>`: a request is answered once.
    pub fn tokens_id(request_id: Uuid) -> String {
        format!("tokens:{}", request_id.simple())
    }

    /// The subject this event is published on: `usage.<kind>.<account-token>`.
    pub fn subject(&self) -> Result<String, crate::subjects::ModelIdError> {
        let kind = match self.body {
            UsageBody::InstancePeriod { .. } => "instance",
            UsageBody::Lifecycle { .. } => "lifecycle",
            UsageBody::Tokens { .. } => "tokens",
        };
        Ok(format!(
            "usage.{kind}.{}",
            crate::subjects::model_token(&self.account)?
        ))
    }
}

/// A spend alert: an account's open-model spend this month (UTC) reached
/// `threshold_percent` (80 or 100) of its monthly limit. Published by billing on
/// `usage.alert.<account-token>` (stream USAGE), once per account, month and threshold;
/// [`SpendAlert::id`] is its `event_id` and `Nats-Msg-Id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpendAlert {
    /// Schema version the writer used ([`crate::SCHEMA_VERSION`]).
    pub schema_version: u16,
    /// `alert:<account>:<YYYY-MM>:<percent>`.
    pub event_id: String,
    pub account: String,
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// 80 or 100.
    pub threshold_percent: u8,
    /// The monthly limit, USD, as an exact decimal string (`"250"`).
    pub limit_usd: String,
    /// The month's open-model spend when the threshold was found reached, USD, exact.
    pub spent_usd: String,
    pub emitted_at: DateTime<Utc>,
}

impl SpendAlert {
    /// `alert:<account>:<YYYY-MM>:<percent>`: each threshold is raised once a month.
    pub fn id(account: &str, month: &str, threshold_percent: u8) -> String {
        format!("alert:{account}:{month}:{threshold_percent}")
    }

    /// `usage.alert.<account-token>`.
    pub fn subject(&self) -> Result<String, crate::subjects::ModelIdError> {
        Ok(format!(
            "usage.alert.{}",
            crate::subjects::model_token(&self.account)?
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_name_their_subject() {
        let e = UsageEvent {
            schema_version: crate::SCHEMA_VERSION,
            event_id: UsageEvent::period_id("i-1", 1_000),
            account: "acme".into(),
            emitted_at: Utc::now(),
            body: UsageBody::InstancePeriod {
                cluster: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                instance_type: "cpu".into(),
                instance_id: "i-1".into(),
                start_ms: 1_000,
                end_ms: 11_000,
            },
        };
        let back: UsageEvent = crate::decode(&crate::encode(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.subject().unwrap(), "usage.instance.acme");
        assert_eq!(e.event_id, "period:i-1:1000");
        assert_eq!(
            UsageEvent::lifecycle_id("i-1", InstanceState::Draining),
            "lifecycle:i-1:draining"
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["body"]["kind"], "instance_period");
    }

    #[test]
    fn spend_alerts_name_their_subject_and_id() {
        let a = SpendAlert {
            schema_version: crate::SCHEMA_VERSION,
            event_id: SpendAlert::id("acme", "2026-11", 80),
            account: "acme".into(),
            month: "2026-11".into(),
            threshold_percent: 80,
            limit_usd: "10".into(),
            spent_usd: "8.00001".into(),
            emitted_at: Utc::now(),
        };
        assert_eq!(a.event_id, "alert:acme:2026-11:80");
        assert_eq!(a.subject().unwrap(), "usage.alert.acme");
        let back: SpendAlert = crate::decode(&crate::encode(&a).unwrap()).unwrap();
        assert_eq!(back, a);
    }
}
