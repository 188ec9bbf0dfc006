//! Prometheus metrics of the ingress (`GET /metrics`). Labels come from small fixed
//! sets: never account or request ids.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
    pub stream: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterApiLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// The ingress's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub first_chunk: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub in_flight: Gauge,
    /// Cluster API calls by route (`create`, `put`, `get`, `patch`, `delete`, `list`)
    /// and status.
    pub cluster_api: Family<ClusterApiLabels, Counter>,
    /// Open-model requests published to a cluster with no instance, by outcome:
    /// `started` (a first chunk came within the caller's max wait) or `gave_up` (503).
    pub cold_starts: Family<OutcomeLabels, Counter>,
    /// Clusters created with the defaults by a first request to a model.
    pub clusters_auto_created: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms … ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ingress");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let first_chunk = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to the last byte of the answer",
            duration.clone(),
        );
        registry.register(
            "first_chunk_seconds",
            "Time from request to the first reply chunk from a worker",
            first_chunk.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests waiting for workers",
            in_flight.clone(),
        );
        let cluster_api = Family::<ClusterApiLabels, Counter>::default();
        let cold_starts = Family::<OutcomeLabels, Counter>::default();
        let clusters_auto_created = Counter::default();
        registry.register(
            "cluster_api_requests",
            "Cluster API calls answered, by route and status",
            cluster_api.clone(),
        );
        registry.register(
            "cold_starts",
            "Open-model requests that found their cluster without an instance, by outcome (started, gave_up = 503)",
            cold_starts.clone(),
        );
        registry.register(
            "clusters_auto_created",
            "Clusters created with the defaults by a first request to an open model",
            clusters_auto_created.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            first_chunk,
            in_flight,
            cluster_api,
            cold_starts,
            clusters_auto_created,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        switchyard_telemetry::metrics_text(&self.registry)
    }
}
