//! Switchyard's open-model worker: one process is one instance of one model.
//!
//! - [`config`]: flags and environment.
//! - [`runtime`]: loads ONNX Runtime (`ort::init_from`, so a missing or wrong library
//!   is a clear startup error) and sessions on the configured execution providers,
//!   reporting which one really runs the model.
//! - [`encoder`]: sentence encoders — embeddings and zero-shot classification — with
//!   dynamic batching (max batch, max queue delay, length-sorted, padded per batch).
//! - [`decoder`]: language models with a KV cache — chat, streamed token by token.
//! - [`worker`]: pulls its cluster's subject `req.open.<model-token>.<account-token>`
//!   through the durable consumer `open__<model-token>__<account-token>` (shared by
//!   the cluster's instances), answers, acks after the reply is out.
//! - [`usage`]: lifecycle events and instance-second periods to the USAGE stream, and
//!   a heartbeat in KV `instances`, so billing counts every second the instance runs.
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
pub mod usage;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

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
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("{0}")]
    Consumer(String),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
    #[error("consuming failed: {0}")]
    Consume(async_nats::Error),
}

pub use switchyard_worker::DRAIN_TIMEOUT;

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
    let (engine, provider) = match (open.engine, generation) {
        (EngineKind::Encoder, _) => {
            let batching = encoder::Batching {
                max_batch: open.max_batch,
                max_delay: Duration::from_millis(open.max_delay_ms),
            };
            let (encoder, provider) =
                start_encoder(&env, config, &open, tokenizer, batching, metrics)?;
            (Engine::Encoder(encoder), provider)
        }
        (EngineKind::Decoder, Some(generation)) => {
            let loaded = runtime::load(
                &env,
                &session_config(config, config.threads),
                &dir.join(&open.model_file),
            )?;
            set_provider_metric(metrics, loaded.provider);
            // Decoding needs the whole prompt: no truncation.
            let mut tokenizer = tokenizer;
            tokenizer
                .with_truncation(None)
                .map_err(|e| Error::Model(e.to_string()))?;
            let decoder = decoder::Decoder::start(
                loaded.session,
                tokenizer,
                generation,
                open.max_batch,
                metrics.clone(),
            )
            .map_err(Error::Model)?;
            (Engine::Decoder(decoder), loaded.provider)
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
        provider,
    })
}

/// Loads an encoder model and starts its runners with `batching`: one session with
/// every thread, and with several runners (`--encoder-runners`) one more session per
/// runner with its share of the threads (the first then serves lone runs only).
/// Returns the encoder and the execution provider its sessions run on. `load_model`
/// uses it with the catalog's batching; the benchmark with its own.
pub fn start_encoder(
    env: &ort::environment::Environment,
    config: &Config,
    open: &OpenModel,
    tokenizer: tokenizers::Tokenizer,
    batching: encoder::Batching,
    metrics: &metrics::Metrics,
) -> Result<(encoder::Encoder, &'static str), Error> {
    let path = config.models_dir.join(&open.dir).join(&open.model_file);
    // The session with every thread first: it tells the execution provider, and is
    // the only one when a single runner serves.
    let wide = runtime::load(env, &session_config(config, config.threads), &path)?;
    let provider = wide.provider;
    set_provider_metric(metrics, provider);
    let runners = match config.encoder_runners {
        0 => auto_runners(provider, config.threads),
        n => usize::from(n),
    };
    if runners <= 1 {
        let encoder = encoder::Encoder::start(
            vec![wide.session],
            None,
            tokenizer,
            batching,
            metrics.clone(),
        )
        .map_err(Error::Model)?;
        return Ok((encoder, provider));
    }
    let narrow = session_config(config, threads_per_runner(config.threads, runners));
    let mut sessions = Vec::with_capacity(runners);
    for _ in 0..runners {
        let loaded = runtime::load(env, &narrow, &path)?;
        if loaded.provider != provider {
            return Err(Error::Model(format!(
                "the encoder's sessions came up on different execution providers ({provider} and {})",
                loaded.provider
            )));
        }
        sessions.push(loaded.session);
    }
    tracing::info!(
        runners,
        threads_each = narrow.threads,
        "encoder runs {runners} model runs at a time (and a lone one on every thread)"
    );
    let encoder = encoder::Encoder::start(
        sessions,
        Some(wide.session),
        tokenizer,
        batching,
        metrics.clone(),
    )
    .map_err(Error::Model)?;
    Ok((encoder, provider))
}

/// `--encoder-runners 0`: two runners on the CPU provider with at least two threads
/// (measured: loadtest/RESULTS.md), otherwise one (GPU providers keep one session: not
/// measured here, and a GPU already runs a batch's rows in parallel).
fn auto_runners(provider: &str, threads: usize) -> usize {
    if provider == "CPUExecutionProvider" && total_threads(threads) >= 2 {
        2
    } else {
        1
    }
}

/// The instance's threads: `threads`, or one per core when 0.
fn total_threads(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
    } else {
        threads
    }
}

fn session_config(config: &Config, threads: usize) -> runtime::SessionConfig {
    runtime::SessionConfig {
        providers: config.execution_providers.clone(),
        trt_cache_dir: config.trt_cache_dir.clone(),
        threads,
    }
}

/// Intra-op threads of each of `runners` sessions: the instance's `threads` (0: one
/// per core) shared out, at least one each. A single runner keeps `threads` as given
/// (0 stays ONNX Runtime's own default).
fn threads_per_runner(threads: usize, runners: usize) -> usize {
    if runners <= 1 {
        return threads;
    }
    (total_threads(threads) / runners).max(1)
}

fn set_provider_metric(metrics: &metrics::Metrics, provider: &str) {
    metrics
        .execution_provider
        .get_or_create(&metrics::ProviderLabels {
            provider: provider.to_string(),
        })
        .set(1);
}

/// Loads the model, connects, serves `/healthz` and `/metrics` on `config.bind`, and
/// consumes until `shutdown`; then drains and returns.
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
    let account_token = schemas::subjects::model_token(&config.account)
        .map_err(|e| Error::Model(format!("invalid account '{}': {e}", config.account)))?;
    let client = switchyard_nats::connect(&config.nats_url, "switchyard-inference")
        .await
        .map_err(Error::Connect)?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer = switchyard_nats::ensure_open_model_consumer(&js, &token, &account_token)
        .await
        .map_err(|e| Error::Consumer(e.to_string()))?;
    // The cluster's batch queue, served with idle capacity only.
    let batch_consumer = switchyard_nats::ensure_batch_consumer(&js, &token, &account_token)
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
    let in_flight = switchyard_worker::InFlight::default();
    let worker = Arc::new(worker::Worker {
        model_id: model.id.clone(),
        open: model.open.clone(),
        engine: model.engine.clone(),
        intake: switchyard_worker::Intake {
            client: client.clone(),
            js: js.clone(),
            seal,
            stream: schemas::subjects::REQUESTS_STREAM.to_string(),
            consumer: switchyard_nats::open_model_consumer_name(&token, &account_token),
            dead_letters: metrics.dead_letters.clone(),
            expired: metrics.expired.clone(),
        },
        cancels,
        metrics: metrics.clone(),
        in_flight: in_flight.clone(),
    });
    let health = switchyard_worker::Health::new(client);
    let app = health.router({
        let metrics = metrics.clone();
        move || metrics.render()
    });
    let addr = listener.local_addr().ok();
    tracker.spawn(switchyard_telemetry::serve_health(
        listener,
        app,
        shutdown.clone(),
    ));
    let instance_id = config
        .instance_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let mut reporter = usage::Reporter::start(
        js.clone(),
        usage::Identity {
            instance_id: instance_id.clone(),
            account: config.account.clone(),
            model: model.id.clone(),
            instance_type: model.open.instance_type.clone(),
            execution_provider: model.provider.to_string(),
        },
        config.usage_period(),
        in_flight,
    )
    .await;
    reporter.lifecycle(schemas::InstanceState::Ready).await;
    health.set_consuming(true);
    tracing::info!(
        instance = %instance_id,
        account = %config.account,
        model = %model.id,
        execution_provider = model.provider,
        concurrency,
        health = ?addr,
        "inference instance consuming"
    );
    let consuming = switchyard_worker::consume_with_batch(
        consumer,
        Some(batch_consumer),
        concurrency,
        &tracker,
        shutdown.clone(),
        {
            let worker = worker.clone();
            move |message| worker::handle(worker.clone(), message)
        },
    );
    let result = tokio::select! {
        r = consuming => r,
        never = report_every_period(&mut reporter) => match never {},
    };
    health.set_consuming(false);
    reporter.lifecycle(schemas::InstanceState::Draining).await;
    shutdown.cancel();
    // Still beating while the last answers finish: a long drain is not a lost instance.
    tokio::select! {
        () = switchyard_worker::drain(&tracker) => {}
        never = report_every_period(&mut reporter) => match never {},
    }
    reporter.stop().await;
    tracing::info!("inference instance stopped");
    result.map_err(Error::Consume)
}

/// How soon a change in the deliveries running reaches the heartbeat.
const IN_FLIGHT_BEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// A period and a heartbeat every [`usage::Reporter::period`], and a heartbeat within
/// [`IN_FLIGHT_BEAT`] of a change in the deliveries running, until dropped.
async fn report_every_period(reporter: &mut usage::Reporter) -> std::convert::Infallible {
    // After a stall (a tick waiting out NATS), one period, not a burst of tiny ones.
    let mut period = switchyard_worker::every(reporter.period);
    let mut check = switchyard_worker::every(IN_FLIGHT_BEAT);
    loop {
        tokio::select! {
            _ = period.tick() => reporter.tick().await,
            _ = check.tick() => reporter.beat_if_in_flight_changed().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threads_per_runner;

    #[test]
    fn runners_share_the_threads_at_least_one_each() {
        assert_eq!(
            threads_per_runner(0, 1),
            0,
            "one runner keeps ONNX Runtime's default"
        );
        assert_eq!(threads_per_runner(4, 1), 4);
        assert_eq!(threads_per_runner(4, 2), 2);
        assert_eq!(threads_per_runner(5, 2), 2);
        assert_eq!(threads_per_runner(1, 2), 1);
        assert_eq!(threads_per_runner(2, 8), 1);
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(threads_per_runner(0, 2), (cores / 2).max(1));
    }

    #[test]
    fn two_runners_by_default_on_a_cpu_with_two_threads() {
        use super::auto_runners;
        assert_eq!(auto_runners("CPUExecutionProvider", 2), 2);
        assert_eq!(auto_runners("CPUExecutionProvider", 8), 2);
        assert_eq!(auto_runners("CPUExecutionProvider", 1), 1);
        assert_eq!(auto_runners("CUDAExecutionProvider", 8), 1);
        assert_eq!(auto_runners("TensorrtExecutionProvider", 8), 1);
    }
}
