//! When to try a provider call again. The one place that uses the `backoff` crate
//! (unmaintained, RUSTSEC-2025-0012), so it can be swapped here alone.
//!
//! A call is retried only before the first byte reached the caller (the worker checks
//! that), only for failures a retry can cure — connect errors and timeouts, 429, 5xx —
//! and at most `max_attempts` times in all. A provider's `Retry-After` is honoured when
//! it is within `max_delay`; a longer one is passed on to the caller instead of waited out.

use std::time::Duration;

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use schemas::{ErrorBody, ErrorKind};

/// How hard to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles (with jitter) after that.
    pub initial_delay: Duration,
    /// The longest single wait, computed or asked for by the provider.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// The retry state of one request.
#[derive(Debug)]
pub struct Retries {
    policy: RetryPolicy,
    attempts: u32,
    backoff: ExponentialBackoff,
}

/// Whether a failure is worth another attempt.
pub fn retryable(error: &ErrorBody) -> bool {
    matches!(
        error.kind,
        ErrorKind::RateLimited | ErrorKind::Upstream | ErrorKind::Unavailable | ErrorKind::Timeout
    )
}

impl Retries {
    pub fn new(policy: RetryPolicy) -> Self {
        let backoff = ExponentialBackoff {
            current_interval: policy.initial_delay,
            initial_interval: policy.initial_delay,
            max_interval: policy.max_delay,
            multiplier: 2.0,
            randomization_factor: 0.2,
            // The request's own deadline bounds the total; attempts bound the count.
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Self {
            policy,
            attempts: 1,
            backoff,
        }
    }

    /// The wait before the next attempt after `error`, or `None` to give up and report it.
    pub fn next_delay(&mut self, error: &ErrorBody) -> Option<Duration> {
        if !retryable(error) || self.attempts >= self.policy.max_attempts {
            return None;
        }
        let computed = self.backoff.next_backoff()?;
        let delay = match error.retry_after_ms {
            Some(ms) => Duration::from_millis(ms),
            None => computed,
        };
        if delay > self.policy.max_delay {
            return None;
        }
        self.attempts += 1;
        Some(delay)
    }

    /// Attempts made so far (1 before any retry).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind, retry_after_ms: Option<u64>) -> ErrorBody {
        ErrorBody {
            retry_after_ms,
            ..ErrorBody::new(kind, "x")
        }
    }

    #[test]
    fn retries_curable_failures_up_to_the_limit_with_growing_delays() {
        let mut r = Retries::new(RetryPolicy::default());
        let first = r.next_delay(&error(ErrorKind::Upstream, None)).unwrap();
        let second = r.next_delay(&error(ErrorKind::Unavailable, None)).unwrap();
        // 200 ms ± 20 %, then 400 ms ± 20 %.
        assert!((160..=240).contains(&first.as_millis()), "{first:?}");
        assert!((320..=480).contains(&second.as_millis()), "{second:?}");
        assert_eq!(r.attempts(), 3);
        assert_eq!(
            r.next_delay(&error(ErrorKind::Upstream, None)),
            None,
            "3 attempts in all"
        );
    }

    #[test]
    fn honours_retry_after_within_the_cap() {
        let mut r = Retries::new(RetryPolicy::default());
        assert_eq!(
            r.next_delay(&error(ErrorKind::RateLimited, Some(1000))),
            Some(Duration::from_millis(1000))
        );
        let mut r = Retries::new(RetryPolicy::default());
        assert_eq!(
            r.next_delay(&error(ErrorKind::RateLimited, Some(60_000))),
            None
        );
    }

    #[test]
    fn client_errors_are_never_retried() {
        let mut r = Retries::new(RetryPolicy::default());
        for kind in [
            ErrorKind::InvalidRequest,
            ErrorKind::Authentication,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::PayloadTooLarge,
        ] {
            assert_eq!(r.next_delay(&error(kind, None)), None, "{kind:?}");
        }
        let mut once = Retries::new(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        });
        assert_eq!(once.next_delay(&error(ErrorKind::Upstream, None)), None);
    }
}
