//! The scaling rule, as a pure function of what the reconciler observed.
//!
//! - interactive load = the cluster queue's pending + in-flight requests; it needs
//!   `ceil(interactive / target_concurrency)` instances — at once, up or down;
//! - batch load = the same of the cluster's batch queue; on its own it needs
//!   `min(ceil(batch / target_concurrency), batch_instances)` instances (instances
//!   take batch work only with idle capacity, so the two needs do not add up);
//! - with load: the larger need, never below the warm count (below), never below
//!   `min`, never above `max`;
//! - without load: keep `max(min, 1)` running (or the pre-warm count) until the
//!   cluster has been idle for `timeout`, then `min` (zero unless the owner asked
//!   for more). Batch work counts as load for the idle clock only when
//!   `batch_instances > 0` ([`Policy::busy`]). Scaling down drains: an instance told
//!   to stop finishes and acks what it holds before it exits.

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
    /// Instances pending batch work alone may keep running (0: none — batch work only
    /// rides on instances kept for other reasons).
    pub batch_instances: u32,
}

/// What is waiting in a pool's queues: pending plus in-flight messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Interactive requests (served first).
    pub interactive: u64,
    /// Batch work (served with idle capacity).
    pub batch: u64,
}

impl Policy {
    /// Whether `load` keeps the pool from being idle (restarts the idle clock):
    /// interactive work always, batch work only when it may keep instances itself.
    pub fn busy(&self, load: Load) -> bool {
        load.interactive > 0 || (load.batch > 0 && self.batch_instances > 0)
    }
}

/// Instances `load` requests need at `per` requests each.
fn instances_for(load: u64, per: u32) -> u32 {
    u32::try_from(load.div_ceil(u64::from(per.max(1)))).unwrap_or(u32::MAX)
}

/// How many instances the cluster should have now.
///
/// `current` counts instances running or starting; `idle_for` is the time since the
/// cluster was last [`Policy::busy`] (or since its spec changed).
pub fn desired(p: &Policy, load: Load, current: u32, idle_for: Duration) -> u32 {
    let max = p.max.max(1);
    let min = p.min.min(max);
    let warm = if idle_for < p.timeout {
        let keep_one = u32::from(current > 0);
        min.max(p.prewarm).max(keep_one)
    } else {
        min
    };
    let interactive = instances_for(load.interactive, p.target_concurrency);
    let batch = instances_for(load.batch, p.target_concurrency).min(p.batch_instances);
    let needed = interactive.max(batch);
    let want = if needed > 0 { needed.max(warm) } else { warm };
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
            batch_instances: 1,
        }
    }

    fn interactive(n: u64) -> Load {
        Load {
            interactive: n,
            batch: 0,
        }
    }

    fn load(interactive: u64, batch: u64) -> Load {
        Load { interactive, batch }
    }

    #[test]
    fn one_instance_per_concurrent_request_up_to_max() {
        let p = policy(0, 4, 1);
        assert_eq!(desired(&p, interactive(0), 0, Duration::ZERO), 0);
        assert_eq!(desired(&p, interactive(1), 0, Duration::ZERO), 1);
        assert_eq!(desired(&p, interactive(3), 1, Duration::ZERO), 3);
        assert_eq!(desired(&p, interactive(9), 3, Duration::ZERO), 4);
        // Load falls: down at once, but one stays warm until the timeout.
        assert_eq!(desired(&p, interactive(1), 4, Duration::ZERO), 1);
        assert_eq!(desired(&p, interactive(0), 1, 9 * MIN), 1);
        assert_eq!(desired(&p, interactive(0), 1, 10 * MIN), 0);
    }

    #[test]
    fn target_concurrency_divides_and_min_and_prewarm_hold() {
        let p = policy(1, 8, 4);
        assert_eq!(
            desired(&p, interactive(0), 0, 99 * MIN),
            1,
            "never below min"
        );
        assert_eq!(desired(&p, interactive(5), 1, Duration::ZERO), 2);
        assert_eq!(desired(&p, interactive(16), 2, Duration::ZERO), 4);
        let warm = Policy {
            prewarm: 3,
            ..policy(0, 8, 1)
        };
        assert_eq!(
            desired(&warm, interactive(0), 0, Duration::ZERO),
            3,
            "pre-warmed"
        );
        assert_eq!(
            desired(&warm, interactive(0), 3, 10 * MIN),
            0,
            "until the timeout"
        );
    }

    #[test]
    fn batch_work_keeps_at_most_batch_instances_and_interactive_scales_as_before() {
        let p = policy(0, 4, 2);
        // Batch alone: ceil(9 / 2) = 5 would be wanted, batch_instances caps it at 1.
        assert_eq!(desired(&p, load(0, 9), 0, 99 * MIN), 1);
        assert_eq!(
            desired(
                &Policy {
                    batch_instances: 3,
                    ..p
                },
                load(0, 9),
                0,
                99 * MIN
            ),
            3
        );
        assert_eq!(
            desired(
                &Policy {
                    batch_instances: 64,
                    ..p
                },
                load(0, 99),
                0,
                99 * MIN
            ),
            4,
            "never above max"
        );
        // Interactive on top: the larger need, not the sum.
        assert_eq!(desired(&p, load(5, 9), 1, Duration::ZERO), 3);
        assert_eq!(desired(&p, load(1, 9), 1, Duration::ZERO), 1);
        // batch_instances 0: batch work starts and holds nothing.
        let none = Policy {
            batch_instances: 0,
            ..p
        };
        assert_eq!(desired(&none, load(0, 9), 0, Duration::ZERO), 0);
        assert_eq!(desired(&none, load(0, 9), 1, 10 * MIN), 0);
        assert_eq!(desired(&none, load(3, 9), 0, Duration::ZERO), 2);
        // … but it rides on what min keeps.
        let min_one = Policy { min: 1, ..none };
        assert_eq!(desired(&min_one, load(0, 9), 1, 99 * MIN), 1);
    }

    #[test]
    fn only_counted_batch_work_keeps_the_pool_busy() {
        let p = policy(0, 4, 1);
        assert!(!p.busy(load(0, 0)));
        assert!(p.busy(load(1, 0)));
        assert!(p.busy(load(0, 1)));
        let none = Policy {
            batch_instances: 0,
            ..p
        };
        assert!(!none.busy(load(0, 5)));
        assert!(none.busy(load(1, 5)));
    }

    proptest! {
        #[test]
        fn desired_stays_within_bounds_and_serves_pending_work(
            min in 0u32..8, extra in 0u32..8, tc in 1u32..16, prewarm in 0u32..20,
            batch_instances in 0u32..20,
            work in 0u64..10_000, batch in 0u64..10_000,
            current in 0u32..40, idle_s in 0u64..2_000, timeout_s in 1u64..1_200,
        ) {
            let p = Policy {
                min,
                max: (min + extra).max(1),
                target_concurrency: tc,
                timeout: Duration::from_secs(timeout_s),
                prewarm,
                batch_instances,
            };
            let idle = Duration::from_secs(idle_s);
            let at = |interactive, batch| desired(&p, Load { interactive, batch }, current, idle);
            let d = at(work, batch);
            let floor = p.min.min(p.max);
            prop_assert!(d >= floor && d <= p.max);
            if work > 0 {
                prop_assert!(d >= 1, "never zero with interactive work pending");
                prop_assert!(u64::from(d) * u64::from(tc) >= work.min(u64::from(p.max) * u64::from(tc)));
            }
            if batch > 0 && batch_instances > 0 {
                prop_assert!(d >= 1, "never zero with counted batch work pending");
            }
            if work == 0 && idle_s >= timeout_s {
                // Idle past the timeout: batch work alone keeps at most batch_instances.
                prop_assert!(d <= p.max.min(floor.max(batch_instances)));
                if batch == 0 || batch_instances == 0 {
                    prop_assert_eq!(d, floor);
                }
            }
            // Batch work alone adds at most batch_instances (within [min, max]) to what
            // the pool would keep anyway.
            prop_assert!(at(0, batch) <= at(0, 0).max(p.max.min(floor.max(batch_instances))));
            // Batch work never lowers the count, and with batch_instances 0 changes nothing.
            let without = at(work, 0);
            prop_assert!(d >= without);
            if batch_instances == 0 {
                prop_assert_eq!(d, without);
            }
            // Interactive load needing at least what batch work may keep: as before.
            let batch_need = u32::try_from(batch.div_ceil(u64::from(tc))).unwrap_or(u32::MAX).min(batch_instances);
            if u64::from(batch_need) * u64::from(tc) <= work {
                prop_assert_eq!(d, without);
            }
            // More work of either kind never means fewer instances.
            prop_assert!(at(work + 1, batch) >= d);
            prop_assert!(at(work, batch + 1) >= d);
        }
    }
}
