//! Switchyard's open-model worker: one process is one instance of one model.
//!
//! - [`config`]: flags and environment.
//! - [`runtime`]: loads ONNX Runtime (`ort::init_from`, so a missing or wrong library
//!   is a clear startup error) and sessions on the configured execution providers,
//!   reporting which one really runs the model.
//! - [`encoder`]: sentence encoders — embeddings and zero-shot classification — with
//!   dynamic batching (max batch, max queue delay, length-sorted, padded per batch).
//! - [`decoder`]: language models with a KV cache — chat, streamed token by token.
//! - [`worker`]: pulls the model's subject `req.open.<model-token>` through its
//!   durable consumer `open-<model-token>`, answers, acks after the reply is out.
//! - [`metrics`]: Prometheus metrics, served with `/healthz` on `INFERENCE_BIND`.
//!
//! Shutdown (SIGTERM/SIGINT) drains: the instance stops pulling, finishes what it
//! holds (up to [`DRAIN_TIMEOUT`]), acks, and exits; anything unfinished is
//! redelivered to another instance.

pub mod config;
pub mod decoder;
pub mod encoder;
pub mod metrics;
pub mod runtime;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use schemas::catalog::{Catalog, Engine as EngineKind, OpenModel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use worker::Engine;

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Model(String),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("invalid seal key: {0}")]
    Seal(#[from] schemas::SealError),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("{0}")]
    Consumer(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("consuming failed: {0}")]
    Consume(async_nats::Error),
}

/// How long requests in progress get to finish after shutdown is signalled.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A model loaded and ready to serve.
#[derive(Debug)]
pub struct LoadedModel {
    pub id: String,
    pub open: OpenModel,
    pub engine: Engine,
    /// The execution provider the session runs on.
    pub provider: &'static str,
}

/// Finds `model_id` in the catalog, loads ONNX Runtime and the model, and starts its
/// engine thread. Blocking (loading takes a moment): call before serving.
pub fn load_model(config: &Config, metrics: &metrics::Metrics) -> Result<LoadedModel, Error> {
    let catalog = Catalog::embedded().map_err(|e| Error::Model(e.to_string()))?;
    let entry = catalog.get(&config.model).ok_or_else(|| {
        Error::Model(format!(
            "'{}' is not an open model of the catalog (schemas/catalog/models.json)",
            config.model
        ))
    })?;
    let open = entry.open.clone().ok_or_else(|| {
        Error::Model(format!(
            "'{}' is a closed model; the translator serves it",
            config.model
        ))
    })?;
    let dir = config.models_dir.join(&open.dir);
    let env = runtime::init(&config.ort_lib)?;
    let session_config = runtime::SessionConfig {
        providers: config.execution_providers.clone(),
        trt_cache_dir: config.trt_cache_dir.clone(),
        threads: config.threads,
    };
    let tokenizer_path = dir.join(&open.tokenizer_file);
    // Check the small files first: a missing one is reported before a slow load.
    let tokenizer = encoder::load_tokenizer(&tokenizer_path, open.max_input_tokens.max(1))
        .map_err(Error::Model)?;
    let generation = match (&open.engine, &open.generation_file) {
        (EngineKind::Decoder, Some(file)) => {
            Some(decoder::GenerationConfig::load(&dir.join(file)).map_err(Error::Model)?)
        }
        _ => None,
    };
    let loaded = runtime::load(&env, &session_config, &dir.join(&open.model_file))?;
    metrics
        .execution_provider
        .get_or_create(&metrics::ProviderLabels {
            provider: loaded.provider.to_string(),
        })
        .set(1);
    let engine = match (open.engine, generation) {
        (EngineKind::Encoder, _) => Engine::Encoder(
            encoder::Encoder::start(
                loaded.session,
                tokenizer,
                encoder::Batching {
                    max_batch: open.max_batch,
                    max_delay: Duration::from_millis(open.max_delay_ms),
                },
                metrics.clone(),
            )
            .map_err(Error::Model)?,
        ),
        (EngineKind::Decoder, Some(generation)) => {
            // Decoding needs the whole prompt: no truncation.
            let mut tokenizer = tokenizer;
            tokenizer
                .with_truncation(None)
                .map_err(|e| Error::Model(e.to_string()))?;
            Engine::Decoder(
                decoder::Decoder::start(
                    loaded.session,
                    tokenizer,
                    generation,
                    open.max_batch,
                    metrics.clone(),
                )
                .map_err(Error::Model)?,
            )
        }
        (EngineKind::Decoder, None) => {
            return Err(Error::Model(format!(
                "'{}' has no generation_file",
                config.model
            )));
        }
    };
    Ok(LoadedModel {
        id: config.model.clone(),
        open,
        engine,
        provider: loaded.provider,
    })
}

#[derive(Debug)]
struct Health {
    client: async_nats::Client,
    metrics: metrics::Metrics,
    consuming: AtomicBool,
}

/// Loads the model, connects, serves `/healthz` and `/metrics` on `config.bind`, and
/// consumes until `shutdown`; then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
    serve(listener, config, shutdown).await
}

/// Like [`run`] with the health listener given (tests bind port 0).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let seal = config.seal.load()?;
    let metrics = metrics::Metrics::default();
    let model = {
        let config = config.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || load_model(&config, &metrics))
            .await
            .map_err(|e| Error::Model(format!("loading the model failed: {e}")))??
    };
    let token =
        schemas::subjects::model_token(&model.id).map_err(|e| Error::Model(e.to_string()))?;
    let client = async_nats::ConnectOptions::new()
        .name("switchyard-inference")
        .connect(&config.nats_url)
        .await
        .map_err(|source| Error::Connect {
            url: config.nats_url.clone(),
            source,
        })?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer = switchyard_nats::ensure_open_model_consumer(&js, &token)
        .await
        .map_err(|e| Error::Consumer(e.to_string()))?;
    let tracker = TaskTracker::new();
    let cancels = switchyard_worker::Cancels::start(&client, &tracker, shutdown.clone())
        .await
        .map_err(|e| Error::Consumer(format!("cannot subscribe to cancellations: {e}")))?;
    let concurrency = if config.concurrency > 0 {
        config.concurrency
    } else {
        model.open.max_batch.max(1) * 2
    };
    let worker = Arc::new(worker::Worker {
        model_id: model.id.clone(),
        open: model.open.clone(),
        engine: model.engine.clone(),
        intake: switchyard_worker::Intake {
            client: client.clone(),
            js: js.clone(),
            seal,
            stream: schemas::subjects::REQUESTS_STREAM.to_string(),
            consumer: switchyard_nats::open_model_consumer_name(&token),
            dead_letters: metrics.dead_letters.clone(),
            expired: metrics.expired.clone(),
        },
        cancels,
        metrics: metrics.clone(),
    });
    let health = Arc::new(Health {
        client,
        metrics,
        consuming: AtomicBool::new(false),
    });
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(health.clone());
    let addr = listener.local_addr().ok();
    let http_shutdown = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "health endpoint stopped");
        }
    });
    health.consuming.store(true, Ordering::Relaxed);
    tracing::info!(
        model = %model.id,
        execution_provider = model.provider,
        concurrency,
        health = ?addr,
        "inference instance consuming"
    );
    let result = switchyard_worker::consume(consumer, concurrency, &tracker, shutdown.clone(), {
        let worker = worker.clone();
        move |message| worker::handle(worker.clone(), message)
    })
    .await;
    health.consuming.store(false, Ordering::Relaxed);
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests in progress did not finish within the drain timeout; they will be redelivered"
        );
    }
    tracing::info!("inference instance stopped");
    result.map_err(Error::Consume)
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let connected = matches!(
        health.client.connection_state(),
        async_nats::connection::State::Connected
    );
    if connected && health.consuming.load(Ordering::Relaxed) {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable"})),
        )
    }
}

async fn metrics_text(State(health): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            switchyard_telemetry::METRICS_CONTENT_TYPE,
        )],
        health.metrics.render(),
    )
}
