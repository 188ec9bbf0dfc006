//! Who is calling, and may they: the dev key, accounts' API keys from Postgres (with a
//! small cache of keys that verified), and a token bucket per key.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use schemas::{ErrorBody, ErrorKind};
use subtle::ConstantTimeEq;
use switchyard_store::DatabaseConnection;
use switchyard_store::keys;

use crate::config::AuthArgs;
use crate::error::ApiError;

/// The account of the dev key (`SWITCHYARD_DEV_API_KEY`).
pub const DEV_ACCOUNT: &str = "dev";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Goes into the request envelope.
    pub account: String,
    /// What the rate limit counts by: the key's id (`dev` for the dev key).
    pub key: String,
}

/// Checks presented keys and rate-limits the callers.
pub struct Auth {
    dev_key: String,
    db: Option<DatabaseConnection>,
    ttl: Duration,
    max_cached: usize,
    /// SHA-256 of a key that verified → its caller and when it did. Hashes, so the
    /// keys themselves are not kept in memory longer than a request.
    cache: Mutex<HashMap<Vec<u8>, (Caller, Instant)>>,
    limiter: Option<RateLimiter>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("database", &self.db.is_some())
            .field("ttl", &self.ttl)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `db`: the accounts database, when configured.
    pub fn new(dev_key: String, db: Option<DatabaseConnection>, args: &AuthArgs) -> Self {
        Self {
            dev_key,
            db,
            ttl: Duration::from_secs(args.auth_cache_ttl_secs),
            max_cached: args.auth_cache_size.max(1),
            cache: Mutex::new(HashMap::new()),
            limiter: RateLimiter::new(args.rate_limit_rps, args.rate_limit_burst),
        }
    }

    /// The caller a presented key belongs to: 401 when it is wrong or revoked, 503 when
    /// the accounts database cannot answer.
    pub async fn check(&self, presented: &str) -> Result<Caller, ApiError> {
        let invalid = || ApiError::new(ErrorKind::Authentication, "invalid Switchyard API key");
        if presented.is_empty() {
            return Err(invalid());
        }
        if bool::from(presented.as_bytes().ct_eq(self.dev_key.as_bytes())) {
            return Ok(Caller {
                account: DEV_ACCOUNT.into(),
                key: DEV_ACCOUNT.into(),
            });
        }
        let Some(db) = &self.db else {
            return Err(invalid());
        };
        if keys::parse_prefix(presented).is_none() {
            return Err(invalid());
        }
        let hash = keys::hash(presented);
        if let Some(caller) = self.cached(&hash) {
            return Ok(caller);
        }
        match keys::verify(db, presented).await {
            Ok(Some(v)) => {
                let caller = Caller {
                    account: v.account,
                    key: v.key_id.to_string(),
                };
                self.remember(hash, caller.clone());
                Ok(caller)
            }
            Ok(None) => Err(ApiError::new(
                ErrorKind::Authentication,
                "invalid or revoked Switchyard API key",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "cannot verify an API key: accounts database unavailable");
                let mut body = ErrorBody::new(
                    ErrorKind::Unavailable,
                    "cannot check the API key right now (accounts database unavailable); retry shortly",
                );
                body.retry_after_ms = Some(1000);
                Err(ApiError::from(body))
            }
        }
    }

    /// Takes one request from the caller's bucket: 429 with `Retry-After` when empty.
    pub fn limit(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        match limiter.take(&caller.key, Instant::now()) {
            Ok(()) => Ok(()),
            Err(wait) => {
                let mut body = ErrorBody::new(
                    ErrorKind::RateLimited,
                    format!(
                        "rate limit exceeded for this API key: {} requests per second, bursts of {}",
                        limiter.rps, limiter.burst
                    ),
                );
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                body.retry_after_ms = Some(ms);
                Err(ApiError::from(body))
            }
        }
    }

    /// Drops a revoked key from the cache (every key, when announcements may have
    /// been missed), so the next request with it asks Postgres.
    pub fn forget(&self, revoked: switchyard_store::keys::Revoked) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match revoked {
            switchyard_store::keys::Revoked::Key(id) => {
                let id = id.to_string();
                cache.retain(|_, (caller, _)| caller.key != id);
            }
            switchyard_store::keys::Revoked::Unknown => cache.clear(),
        }
    }

    fn cached(&self, hash: &[u8]) -> Option<Caller> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(caller, _)| caller.clone())
    }

    fn remember(&self, hash: Vec<u8>, caller: Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= self.max_cached {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= self.max_cached {
                // Still full of live entries: start over rather than track recency; the
                // cost is one Postgres lookup per active key.
                cache.clear();
            }
        }
        cache.insert(hash, (caller, Instant::now()));
    }
}

/// A token bucket per key: `rps` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `None` when `rps` is 0 (no limit). A `burst` of 0 means `rps` (at least 1).
    pub fn new(rps: f64, burst: u32) -> Option<Self> {
        if rps <= 0.0 || !rps.is_finite() {
            return None;
        }
        let burst = if burst == 0 {
            rps.ceil().max(1.0)
        } else {
            f64::from(burst)
        };
        Some(Self {
            rps,
            burst,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `key` at `now`; else how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (rps, burst) = (self.rps, self.burst);
            buckets.retain(|_, b| b.refilled(now, rps, burst) < burst);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = bucket.refilled(now, self.rps, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rps))
        }
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rps: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rps).min(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_the_rate() {
        let limiter = RateLimiter::new(2.0, 3).unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take("k", t0).is_ok());
        }
        let wait = limiter.take("k", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(limiter.take("other", t0).is_ok());
        // Half a second later one token is back, not two.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.take("k", t1).is_ok());
        assert!(limiter.take("k", t1).is_err());
        // Idle for long: the bucket holds at most the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.take("k", t2).is_ok());
        }
        assert!(limiter.take("k", t2).is_err());
    }

    #[test]
    fn zero_rate_is_no_limit_and_zero_burst_is_the_rate() {
        assert!(RateLimiter::new(0.0, 10).is_none());
        let limiter = RateLimiter::new(0.5, 0).unwrap();
        let t0 = Instant::now();
        assert!(limiter.take("k", t0).is_ok());
        assert_eq!(limiter.take("k", t0).unwrap_err(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn dev_key_without_database() {
        let auth = Auth::new("sy-dev-x".into(), None, &AuthArgs::default());
        let caller = auth.check("sy-dev-x").await.unwrap();
        assert_eq!(caller.account, DEV_ACCOUNT);
        assert_eq!(auth.check("sy-dev-y").await.unwrap_err().status(), 401);
        assert_eq!(auth.check("").await.unwrap_err().status(), 401);
        let key = keys::generate();
        assert_eq!(auth.check(key.expose()).await.unwrap_err().status(), 401);
    }

    #[tokio::test]
    async fn rate_limited_error_has_retry_after() {
        let args = AuthArgs {
            rate_limit_rps: 1.0,
            rate_limit_burst: 1,
            ..AuthArgs::default()
        };
        let auth = Auth::new("k".into(), None, &args);
        let caller = auth.check("k").await.unwrap();
        auth.limit(&caller).unwrap();
        let err = auth.limit(&caller).unwrap_err();
        assert_eq!(err.status(), 429);
        assert!(err.0.retry_after_ms.unwrap() > 900);
    }
}
