//! Prometheus metrics of the autoscaler.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

/// A pool's queue: `kind` is `interactive` or `batch`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub pool: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Instances running or starting, per pool.
    pub instances: Family<PoolLabels, Gauge>,
    /// Instances wanted, per pool.
    pub desired: Family<PoolLabels, Gauge>,
    /// Instances serving, per cluster: heartbeats in state `ready` (Kubernetes:
    /// `readyReplicas`); `instances − ready` are starting or draining.
    pub ready: Family<PoolLabels, Gauge>,
    /// Requests pending or in flight in the pool's queues, by kind (`interactive`,
    /// `batch`): `sum by (pool)` is the whole backlog.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Scale decisions carried out, `up` or `down`.
    pub decisions: Family<DirectionLabels, Counter>,
    /// From deciding to start the first instance of an idle pool to that instance pulling.
    pub cold_start: Histogram,
    /// Instances that exited, or fell silent, without being told to.
    pub crashes: Counter,
    /// Reconciliations that failed (NATS, KV, backend).
    pub errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("autoscaler");
        let m = Self {
            registry: Arc::new(Registry::default()),
            instances: Family::default(),
            desired: Family::default(),
            ready: Family::default(),
            queue_depth: Family::default(),
            decisions: Family::default(),
            cold_start: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            crashes: Counter::default(),
            errors: Counter::default(),
        };
        registry.register(
            "instances",
            "Instances running or starting, per pool",
            m.instances.clone(),
        );
        registry.register(
            "desired_instances",
            "Instances wanted, per pool",
            m.desired.clone(),
        );
        registry.register(
            "ready_instances",
            "Instances serving (ready), per cluster",
            m.ready.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests pending or in flight in the pool's queues, by kind (interactive, batch)",
            m.queue_depth.clone(),
        );
        registry.register(
            "scale_decisions",
            "Scale decisions carried out, by direction",
            m.decisions.clone(),
        );
        registry.register(
            "cold_start_seconds",
            "From starting the first instance of an idle pool to that instance pulling",
            m.cold_start.clone(),
        );
        registry.register(
            "crashes",
            "Instances that exited, or fell silent, without being told to",
            m.crashes.clone(),
        );
        registry.register("errors", "Reconciliations that failed", m.errors.clone());
        Self {
            registry: Arc::new(registry),
            ..m
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        switchyard_telemetry::metrics_text(&self.registry)
    }
}
