//! The scaling rule, as a pure function of what the reconciler observed.
//!
//! - load = the cluster queue's pending + in-flight requests;
//! - with load: `ceil(load / target_concurrency)` instances — at once, up or down —
//!   never below `min`, never below one, never above `max`;
//! - without load: keep `max(min, 1)` running (or the pre-warm count) until the
//!   cluster has been idle for `timeout`, then `min` (zero unless the owner asked
//!   for more). Scaling down drains: an instance told to stop finishes and acks what
//!   it holds before it exits.

use std::time::Duration;

/// A cluster's (or pool's) limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Concurrent requests per instance (at least 1).
    pub target_concurrency: u32,
    /// Idle time before scaling to `min`.
    pub timeout: Duration,
    /// Instances to keep while not yet idle for `timeout` (the owner's `desired`).
    pub prewarm: u32,
}

/// How many instances the cluster should have now.
///
/// `current` counts instances running or starting; `idle_for` is the time since the
/// cluster last had load (or since its spec changed).
pub fn desired(p: &Policy, load: u64, current: u32, idle_for: Duration) -> u32 {
    let max = p.max.max(1);
    let min = p.min.min(max);
    let warm = if idle_for < p.timeout {
        let keep_one = u32::from(current > 0);
        min.max(p.prewarm).max(keep_one)
    } else {
        min
    };
    let want = if load > 0 {
        let per = u64::from(p.target_concurrency.max(1));
        let needed = u32::try_from(load.div_ceil(per)).unwrap_or(u32::MAX);
        needed.max(warm).max(1)
    } else {
        warm
    };
    want.clamp(min, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);

    fn policy(min: u32, max: u32, tc: u32) -> Policy {
        Policy {
            min,
            max,
            target_concurrency: tc,
            timeout: 10 * MIN,
            prewarm: 0,
        }
    }

    #[test]
    fn one_instance_per_concurrent_request_up_to_max() {
        let p = policy(0, 4, 1);
        assert_eq!(desired(&p, 0, 0, Duration::ZERO), 0);
        assert_eq!(desired(&p, 1, 0, Duration::ZERO), 1);
        assert_eq!(desired(&p, 3, 1, Duration::ZERO), 3);
        assert_eq!(desired(&p, 9, 3, Duration::ZERO), 4);
        // Load falls: down at once, but one stays warm until the timeout.
        assert_eq!(desired(&p, 1, 4, Duration::ZERO), 1);
        assert_eq!(desired(&p, 0, 1, 9 * MIN), 1);
        assert_eq!(desired(&p, 0, 1, 10 * MIN), 0);
    }

    #[test]
    fn target_concurrency_divides_and_min_and_prewarm_hold() {
        let p = policy(1, 8, 4);
        assert_eq!(desired(&p, 0, 0, 99 * MIN), 1, "never below min");
        assert_eq!(desired(&p, 5, 1, Duration::ZERO), 2);
        assert_eq!(desired(&p, 16, 2, Duration::ZERO), 4);
        let warm = Policy {
            prewarm: 3,
            ..policy(0, 8, 1)
        };
        assert_eq!(desired(&warm, 0, 0, Duration::ZERO), 3, "pre-warmed");
        assert_eq!(desired(&warm, 0, 3, 10 * MIN), 0, "until the timeout");
    }

    proptest! {
        #[test]
        fn desired_stays_within_bounds_and_serves_pending_work(
            min in 0u32..8, extra in 0u32..8, tc in 1u32..16, prewarm in 0u32..20,
            load in 0u64..10_000, current in 0u32..40, idle_s in 0u64..2_000, timeout_s in 1u64..1_200,
        ) {
            let p = Policy {
                min,
                max: (min + extra).max(1),
                target_concurrency: tc,
                timeout: Duration::from_secs(timeout_s),
                prewarm,
            };
            let d = desired(&p, load, current, Duration::from_secs(idle_s));
            prop_assert!(d >= p.min.min(p.max) && d <= p.max);
            if load > 0 {
                prop_assert!(d >= 1, "never zero with work pending");
                prop_assert!(u64::from(d) * u64::from(tc) >= load.min(u64::from(p.max) * u64::from(tc)));
            }
            if load == 0 && idle_s >= timeout_s {
                prop_assert_eq!(d, p.min.min(p.max));
            }
            // More load never means fewer instances.
            prop_assert!(desired(&p, load + 1, current, Duration::from_secs(idle_s)) >= d);
        }
    }
}
