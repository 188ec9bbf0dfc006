//! Prometheus metrics of the billing service. Labels come from small fixed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `kind`: `instance_period`, `lifecycle`, `tokens` (or `unknown` when undecodable);
/// `outcome`: `recorded`, `duplicate`, `dead_lettered`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub kind: String,
    pub outcome: String,
}

/// The reason of a dead letter, up to its first `:`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// `outcome`: `committed` or `failed` (Postgres; the batch is redelivered).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub batches: Family<OutcomeLabels, Counter>,
    pub batch_seconds: Histogram,
    pub alerts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("billing");
        let events = Family::<EventLabels, Counter>::default();
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        let batches = Family::<OutcomeLabels, Counter>::default();
        let batch_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        let alerts = Counter::default();
        registry.register(
            "events",
            "Usage events taken in, by kind and outcome",
            events.clone(),
        );
        registry.register(
            "dead_letters",
            "Usage events terminated and dead-lettered, by reason",
            dead_letters.clone(),
        );
        registry.register(
            "batches",
            "Postgres transactions of a batch of events, by outcome",
            batches.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to write one batch of events to Postgres (transaction to commit)",
            batch_seconds.clone(),
        );
        registry.register(
            "alerts",
            "Spend alerts published (80 % and 100 % of an account's limit)",
            alerts.clone(),
        );
        Self {
            registry,
            events,
            dead_letters,
            batches,
            batch_seconds,
            alerts,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        switchyard_telemetry::metrics_text(&self.registry)
    }

    pub(crate) fn event(&self, kind: &str, outcome: &str) {
        self.events
            .get_or_create(&EventLabels {
                kind: kind.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}
