//! Prometheus metrics of the translator. Labels come from small fixed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub provider: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

pub use switchyard_worker::ReasonLabels;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests finished, by provider and outcome (`ok` or an error kind).
    pub requests: Family<OutcomeLabels, Counter>,
    /// Time from pulling a request to the provider's first byte.
    pub upstream_first_byte: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    /// Fallback models tried, by the provider of the fallback.
    pub fallbacks: Family<ProviderLabels, Counter>,
    /// Provider calls tried again, by provider.
    pub retries: Family<ProviderLabels, Counter>,
    /// Messages terminated and dead-lettered, by reason.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// Requests dropped because their deadline had passed.
    pub expired: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("translator");
        let requests = Family::<OutcomeLabels, Counter>::default();
        let upstream_first_byte =
            Family::<ProviderLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        let retries = Family::<ProviderLabels, Counter>::default();
        let fallbacks = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "fallbacks",
            "Fallback models tried after the previous one failed before the first byte",
            fallbacks.clone(),
        );
        registry.register(
            "retries",
            "Provider calls tried again before the first byte reached the caller",
            retries.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "requests",
            "Requests finished, by provider and outcome",
            requests.clone(),
        );
        registry.register(
            "upstream_first_byte_seconds",
            "Time from pulling a request to the provider's first response byte",
            upstream_first_byte.clone(),
        );
        registry.register(
            "dead_letters",
            "Messages terminated and dead-lettered",
            dead_letters.clone(),
        );
        registry.register(
            "expired",
            "Requests dropped because their deadline had passed",
            expired.clone(),
        );
        Self {
            registry,
            requests,
            upstream_first_byte,
            retries,
            fallbacks,
            dead_letters,
            expired,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        switchyard_telemetry::metrics_text(&self.registry)
    }
}
