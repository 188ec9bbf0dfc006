//! Prometheus metrics of the batch router. Labels come from small fixed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests queued for workers (`closed`, `open`) or skipped (`already_done`).
    pub routed: Family<KindLabels, Counter>,
    /// Requests answered with an error result (by error kind) or dead-lettered
    /// (`unaddressable`).
    pub rejected: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("batch");
        let routed = Family::<KindLabels, Counter>::default();
        let rejected = Family::<KindLabels, Counter>::default();
        registry.register(
            "routed",
            "Batch requests queued for workers (closed, open) or skipped because their result exists (already_done)",
            routed.clone(),
        );
        registry.register(
            "rejected",
            "Batch requests answered with an error result, by error kind, or dead-lettered (unaddressable)",
            rejected.clone(),
        );
        Self {
            registry,
            routed,
            rejected,
        }
    }
}

impl Metrics {
    pub fn routed(&self, kind: &str) {
        self.routed
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn rejected(&self, kind: &str) {
        self.rejected
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        switchyard_telemetry::metrics_text(&self.registry)
    }
}
