//! Prometheus metrics of an inference instance. Labels come from small fixed sets.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use switchyard_worker::ReasonLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub task: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Cheap to clone: every field is a shared handle.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests finished, by task and outcome (`ok` or an error kind).
    pub requests: Family<OutcomeLabels, Counter>,
    /// Sequences per model run (encoders).
    pub batch_size: Histogram,
    /// Time a request waited before its batch (or generation) started.
    pub queue_delay: Histogram,
    /// Time from a generation's start to its first token.
    pub time_to_first_token: Histogram,
    /// Tokens generated (tokens/s is its rate).
    pub tokens: Counter,
    /// 1 for the execution provider the model runs on.
    pub execution_provider: Family<ProviderLabels, Gauge>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub expired: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("inference");
        let requests = Family::<OutcomeLabels, Counter>::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        let queue_delay = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        let time_to_first_token = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let tokens = Counter::default();
        let execution_provider = Family::<ProviderLabels, Gauge>::default();
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        let expired = Counter::default();
        registry.register(
            "requests",
            "Requests finished, by task and outcome",
            requests.clone(),
        );
        registry.register("batch_size", "Sequences per model run", batch_size.clone());
        registry.register(
            "queue_delay_seconds",
            "Time a request waited before its batch or generation started",
            queue_delay.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from a generation's start to its first token",
            time_to_first_token.clone(),
        );
        registry.register("generated_tokens", "Tokens generated", tokens.clone());
        registry.register(
            "execution_provider",
            "1 for the ONNX Runtime execution provider the model really runs on",
            execution_provider.clone(),
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
            registry: Arc::new(registry),
            requests,
            batch_size,
            queue_delay,
            time_to_first_token,
            tokens,
            execution_provider,
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
