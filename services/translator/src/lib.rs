//! Switchyard's closed-model worker.
//!
//! - [`config`]: flags and environment.
//! - [`worker`]: pulls `req.closed.>` from the REQUESTS stream (durable consumer
//!   `translator`), opens the sealed body, calls the provider, acks after the reply is
//!   out; poison messages are terminated and copied to the dead-letter stream.
//! - [`providers`]: one module per provider's wire format: OpenAI, Anthropic, Gemini.
//! - [`retry`]: provider calls are retried (backoff, `Retry-After`) before the first byte.
//! - `switchyard-worker` (shared with the inference workers): the pull loop, opening
//!   envelopes, dead letters, reply chunks, and `cancel.<request>` from the ingress.
//! - [`metrics`]: Prometheus metrics, served with `/healthz` on `TRANSLATOR_BIND`.
//!
//! Provider errors are answered to the caller (with `Retry-After` where the provider
//! gave one) and the message is acked: the caller already has an answer, and running
//! it again later would answer nobody.

pub mod config;
pub mod metrics;
pub mod providers;
pub mod retry;
pub mod worker;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Why the translator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("{0}")]
    Consumer(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
    #[error("consuming failed: {0}")]
    Consume(async_nats::Error),
}

/// Connects, serves `/healthz` and `/metrics` on `config.bind`, and consumes until
/// `shutdown`; then stops pulling, lets requests in progress finish, and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = switchyard_telemetry::bind(config.bind).await?;
    serve(listener, config, shutdown).await
}

/// Like [`run`] with the health listener given (tests bind port 0).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let seal = config.seal_key()?;
    let client = switchyard_nats::connect(&config.nats_url, "switchyard-translator")
        .await
        .map_err(Error::Connect)?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer = worker::consumer(&js).await.map_err(Error::Consumer)?;
    let batch_consumer = worker::batch_consumer(&js).await.map_err(Error::Consumer)?;
    let http = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout())
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()
        .map_err(Error::Http)?;
    let tracker = TaskTracker::new();
    let cancels = switchyard_worker::Cancels::start(&client, &tracker, shutdown.clone())
        .await
        .map_err(|e| Error::Consumer(format!("cannot subscribe to cancellations: {e}")))?;
    let metrics = metrics::Metrics::default();
    let intake = switchyard_worker::Intake {
        client: client.clone(),
        js: js.clone(),
        seal,
        stream: schemas::subjects::REQUESTS_STREAM.to_string(),
        consumer: schemas::subjects::TRANSLATOR_CONSUMER.to_string(),
        dead_letters: metrics.dead_letters.clone(),
        expired: metrics.expired.clone(),
    };
    let worker = Arc::new(worker::Worker {
        cancels,
        intake,
        retry: config.retry_policy(),
        providers: providers::Providers {
            openai: providers::openai::OpenAi::new(http.clone(), &config.openai_base_url),
            anthropic: providers::anthropic::Anthropic::new(
                http.clone(),
                &config.anthropic_base_url,
            ),
            gemini: providers::gemini::Gemini::new(http.clone(), &config.gemini_base_url),
        },
        client,
        metrics,
    });
    let health = switchyard_worker::Health::new(worker.client.clone());
    let app = health.router({
        let worker = worker.clone();
        move || worker.metrics.render()
    });
    tracker.spawn(switchyard_telemetry::serve_health(
        listener,
        app,
        shutdown.clone(),
    ));
    health.set_consuming(true);
    tracing::info!(concurrency = config.concurrency, "translator consuming");
    let result = worker::consume(
        worker,
        consumer,
        Some(batch_consumer),
        config.concurrency as usize,
        &tracker,
        shutdown.clone(),
    )
    .await;
    health.set_consuming(false);
    shutdown.cancel();
    switchyard_worker::drain(&tracker).await;
    tracing::info!("translator stopped");
    result.map_err(Error::Consume)
}
