//! Switchyard's HTTP ingress.
//!
//! - [`config`]: flags and environment.
//! - [`auth`]: API keys (the dev key; accounts' keys from Postgres, cached) and the
//!   per-key rate limit.
//! - [`routes`]: the axum router — `POST /v1/chat/completions`, `POST /v1/embeddings`,
//!   `POST /models/v2/…`, `GET /healthz`, `GET /metrics` — and the request pipeline
//!   every route shares: authenticate, normalize, route the model (closed:
//!   `req.closed.<provider>` with the caller's provider key; open: the catalog's models
//!   on `req.open.<model-token>`, checked against the task they serve), seal, publish to
//!   JetStream (awaited PubAck, `Nats-Msg-Id` = request id), stream the reply back.
//! - [`openai`]: the OpenAI wire format in and out.
//! - [`embeddings`]: `POST /v1/embeddings`, OpenAI-compatible (float or base64 vectors).
//! - [`unified`]: Switchyard's own route, `POST /models/v2/{model id}`: the model in the
//!   path; chat (`messages` or `text`, JSON or named SSE events), embeddings (`inputs`)
//!   or zero-shot classification (`text` + `params.candidate_labels`) by what the model
//!   serves.
//! - [`replies`]: routes reply chunks from `reply.<ingress>.*` to waiting requests.
//! - [`error`]: the one error type, answered OpenAI-style (or in the unified shape).
//! - [`metrics`]: Prometheus metrics.
//! - [`models`]: `GET /v1/models` and `GET /v1/catalog` from the model catalog.
//! - spend limits (`switchyard_store::spend`): accounts over their monthly spend limit get 402 for open models.
//! - [`clusters`]: the cluster API (`/v1/clusters`), a first request creating its
//!   model's cluster, and the bounded wait of a cold start.
//!
//! [`run`] is what the binary runs; tests call [`serve`] with a listener of their own.

pub mod auth;
pub mod clusters;
pub mod config;
pub mod embeddings;
pub mod error;
pub mod metrics;
pub mod models;
pub mod openai;
pub mod replies;
mod resume;
pub mod routes;
pub mod unified;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Why the ingress could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("cannot subscribe to replies: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
    #[error("the model catalog is broken: {0}")]
    Catalog(#[from] schemas::catalog::CatalogError),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("accounts database (DATABASE_URL): {0}")]
    Database(#[from] switchyard_store::Error),
}

/// How long the start waits for the key-revocation listener's first connection.
const REVOCATIONS_WAIT: Duration = Duration::from_secs(3);

/// How long in-flight requests get to finish after shutdown is signalled.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `config.bind` and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = switchyard_telemetry::bind(config.bind).await?;
    serve(listener, config, shutdown).await
}

/// Serves on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let seal = config.seal_key()?;
    let ingress_id = config.ingress_id()?;
    let client = switchyard_nats::connect(
        &config.nats_url,
        &format!("switchyard-ingress-{ingress_id}"),
    )
    .await
    .map_err(Error::Connect)?;
    // Lazy: the ingress starts while Postgres is down, and answers 503 to keys it
    // cannot check until it is back (the dev key keeps working).
    let db = match &config.auth.database_url {
        Some(url) => Some(switchyard_store::connect(url, true).await?),
        None => None,
    };
    let spend = Arc::new(switchyard_store::spend::SpendLimits::new(
        db.clone(),
        config.auth.spend_refresh(),
    ));
    spend.refresh_or_keep().await;
    let auth = auth::Auth::new(config.dev_api_key.clone(), db, &config.auth);
    let tracker = TaskTracker::new();
    let replies =
        replies::Replies::start(&client, ingress_id.clone(), &tracker, shutdown.clone()).await?;
    let state = Arc::new(routes::AppState {
        js: async_nats::jetstream::new(client.clone()),
        client,
        seal,
        replies,
        auth,
        catalog: schemas::catalog::Catalog::embedded()?,
        metrics: metrics::Metrics::default(),
        clusters: clusters::Clusters::default(),
        spend: spend.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        config,
    });
    tracker.spawn(spend.run(shutdown.clone()));
    if let Some(url) = state.config.auth.database_url.clone() {
        // A key revoked anywhere leaves this ingress's cache at once. The watcher
        // empties the cache when it (re)connects, since announcements may have been
        // missed; so wait briefly for its first connection before serving, or keys
        // verified meanwhile would be dropped from the cache again. Postgres being down
        // does not hold the start up (keys are then checked when it is back).
        let listening = Arc::new(tokio::sync::Notify::new());
        let heard = listening.clone();
        let state = state.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            switchyard_store::keys::watch_revocations(&url, stop, |r| {
                state.auth.forget(r);
                heard.notify_one();
            })
            .await;
        });
        if tokio::time::timeout(REVOCATIONS_WAIT, listening.notified())
            .await
            .is_err()
        {
            tracing::warn!(
                "not yet listening for key revocations (Postgres unreachable?); serving anyway"
            );
        }
    }
    let addr = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%addr, ingress_id = %ingress_id, "ingress listening");
    let app = routes::router(state);
    // SSE chunks are small: without TCP_NODELAY, Nagle holds each one back until the
    // previous one is acknowledged.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .map_err(Error::Serve)?;
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("in-flight work did not finish within the drain timeout");
    }
    tracing::info!("ingress stopped");
    Ok(())
}
