//! Spend limits: an account whose open-model spend this month (UTC) has reached its
//! limit gets no new open-model work — a 402 from the ingress, a `payment_required`
//! result from the batch router (running work finishes; closed models are not charged
//! and not affected).
//!
//! The hot path asks memory, never Postgres: a snapshot of the accounts over their
//! limit ([`crate::billing::over_limit`]) is loaded at start and refreshed every
//! few seconds (`INGRESS_SPEND_REFRESH_SECS`, `BATCH_SPEND_REFRESH_SECS`: 5 s). So a limit takes effect up to that long
//! after billing recorded the spend that reached it; if Postgres cannot answer, the
//! last snapshot stays (nobody is refused for an outage of the accounts database).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::NaiveDate;
use schemas::{ErrorBody, ErrorKind};
use tokio_util::sync::CancellationToken;

use crate::DatabaseConnection;
use crate::billing::{self, OverLimit};

#[derive(Debug, Default)]
struct Snapshot {
    /// The month it describes (its first day); `None` before the first load.
    month: Option<NaiveDate>,
    over: HashMap<String, OverLimit>,
}

/// Which accounts are over their monthly spend limit, as of the last refresh.
#[derive(Debug)]
pub struct SpendLimits {
    db: Option<DatabaseConnection>,
    every: Duration,
    snapshot: RwLock<Snapshot>,
}

impl SpendLimits {
    /// `db`: the accounts database, when configured (without it nobody has a limit).
    pub fn new(db: Option<DatabaseConnection>, every: Duration) -> Self {
        Self {
            db,
            every,
            snapshot: RwLock::new(Snapshot::default()),
        }
    }

    /// `payment_required` (402) when `account` has reached its limit this month.
    pub fn check(&self, account: &str) -> Result<(), ErrorBody> {
        let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        // A snapshot of last month says nothing about this one.
        if snapshot.month != Some(billing::current_month()) {
            return Ok(());
        }
        match snapshot.over.get(account) {
            None => Ok(()),
            Some(o) => Err(ErrorBody::new(
                ErrorKind::PaymentRequired,
                format!(
                    "spend limit reached: account '{account}' has spent {} USD on open models in {} (UTC), its monthly limit is {} USD; new open-model requests are refused until the limit is raised or the month ends (closed models are not affected)",
                    o.spent_usd.normalize(),
                    billing::current_month().format("%Y-%m"),
                    o.limit_usd.normalize()
                ),
            )),
        }
    }

    /// Loads the accounts over their limit this month.
    pub async fn refresh(&self) -> Result<(), crate::Error> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let month = billing::current_month();
        let over = billing::over_limit(db, month).await?;
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        snapshot.month = Some(month);
        snapshot.over = over.into_iter().map(|o| (o.account.clone(), o)).collect();
        Ok(())
    }

    /// [`SpendLimits::refresh`], logging a failure (the last snapshot stays).
    pub async fn refresh_or_keep(&self) {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "cannot refresh spend limits; keeping the last ones");
        }
    }

    /// Refreshes every interval until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.db.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.every) => self.refresh_or_keep().await,
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::Decimal;
    use std::str::FromStr;

    #[test]
    fn only_this_months_snapshot_refuses() {
        let limits = SpendLimits::new(None, Duration::from_secs(5));
        assert!(limits.check("acme").is_ok());
        let over = OverLimit {
            account: "acme".into(),
            limit_usd: Decimal::from_str("10.00").unwrap(),
            spent_usd: Decimal::from_str("10.0001").unwrap(),
        };
        {
            let mut s = limits.snapshot.write().unwrap();
            s.month = Some(billing::current_month());
            s.over.insert("acme".into(), over);
        }
        let err = limits.check("acme").unwrap_err();
        assert_eq!(err.kind, ErrorKind::PaymentRequired);
        assert!(err.message.contains("spend limit reached"));
        assert!(err.message.contains("10 USD"));
        assert!(limits.check("other").is_ok());
        limits.snapshot.write().unwrap().month = NaiveDate::from_ymd_opt(2000, 1, 1);
        assert!(limits.check("acme").is_ok());
    }
}
