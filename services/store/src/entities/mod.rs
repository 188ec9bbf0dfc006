//! sea-orm entities, one module per table.
//!
//! Accounts and keys: [`accounts`], [`api_keys`]. Billing: [`usage_events`] (each
//! event once), [`instance_usage_daily`] and [`token_usage_daily`] (the aggregates),
//! [`account_monthly_spend`], [`spend_limits`], [`spend_alerts`].

pub mod account_monthly_spend;
pub mod accounts;
pub mod api_keys;
pub mod instance_usage_daily;
pub mod spend_alerts;
pub mod spend_limits;
pub mod token_usage_daily;
pub mod usage_events;
