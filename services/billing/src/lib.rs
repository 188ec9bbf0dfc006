//! Switchyard's billing service: usage events into Postgres, exactly once.
//!
//! - [`config`]: flags and environment.
//! - [`prices`]: USD per instance-second by instance type (a JSON file, exact decimals).
//! - [`event`]: decoding and checking one event — poison (undecodable, newer schema,
//!   negative or overlong period, unknown instance type) is refused with a reason —
//!   and the rounding rule: a period costs `ms × price_per_second / 1000`, exactly,
//!   split at UTC midnight.
//! - [`ledger`]: a batch of events in one Postgres transaction: each event inserted
//!   once (`ON CONFLICT (event_id) DO NOTHING`), only new ones added to the daily
//!   aggregates and the month's spend, spend alerts raised.
//! - [`alerts`]: spend alerts (80 %, 100 % of the monthly limit) to
//!   `usage.alert.<account-token>`.
//! - [`metrics`]: Prometheus metrics, served with `/healthz` on `BILLING_BIND`.
//!
//! The loop pulls from the durable consumer `billing` (stream USAGE), takes whatever
//! has arrived up to `BILLING_BATCH_SIZE`, dead-letters poison (terminated, copied to
//! `dlq.USAGE.billing` with the reason), writes the rest in one transaction and acks
//! only after the commit. A crash before the ack redelivers the batch; the event ids
//! make the second write a no-op. A failed transaction naks the batch for later.

pub mod alerts;
pub mod config;
pub mod event;
pub mod ledger;
pub mod metrics;
pub mod prices;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::FutureExt;
use switchyard_store::{DatabaseConnection, MigratorTrait};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// The durable consumer billing pulls from (`nats/consumers/USAGE/billing.json`).
pub const CONSUMER: &str = "billing";
/// Its durable consumer of token usage (stream USAGE_TOKENS).
pub const TOKENS_CONSUMER: &str = "billing-tokens";

/// How long a batch that Postgres refused waits before it is delivered again.
const RETRY_DELAY: Duration = Duration::from_secs(2);

/// Why billing could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("prices: {0}")]
    Prices(#[from] prices::PricesError),
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("Postgres (DATABASE_URL): {0}")]
    Database(#[from] switchyard_store::Error),
    #[error("the database lacks {0} migration(s): run `switchyard-admin migrate` (`just up` does)")]
    NotMigrated(usize),
    #[error("{0}")]
    Consumer(String),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
    #[error("consuming failed: {0}")]
    Consume(async_nats::Error),
}

/// Everything the consumer loop uses.
#[derive(Debug)]
struct Billing {
    client: async_nats::Client,
    js: jetstream::Context,
    db: DatabaseConnection,
    rules: event::Rules,
    metrics: metrics::Metrics,
    consuming: AtomicBool,
    /// The last transaction failed (Postgres down): `/healthz` says so.
    db_failing: AtomicBool,
}

/// Connects, serves `/healthz` and `/metrics` on `config.bind`, and consumes until
/// `shutdown`; the batch in hand is finished (committed and acked) before it returns.
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
    let rules = event::Rules {
        prices: config.prices()?,
        max_period_ms: config.max_period_ms(),
    };
    let db = switchyard_store::connect(&config.database_url, false).await?;
    let pending = switchyard_store::Migrator::get_pending_migrations(&db)
        .await
        .map_err(switchyard_store::Error::from)?;
    if !pending.is_empty() {
        return Err(Error::NotMigrated(pending.len()));
    }
    let client = switchyard_nats::connect(&config.nats_url, "switchyard-billing")
        .await
        .map_err(Error::Connect)?;
    let js = jetstream::new(client.clone());
    let consumer = consumer(&js).await.map_err(Error::Consumer)?;
    let tokens_consumer = tokens_consumer(&js).await.map_err(Error::Consumer)?;
    let billing = Arc::new(Billing {
        client,
        js,
        db,
        rules,
        metrics: metrics::Metrics::default(),
        consuming: AtomicBool::new(false),
        db_failing: AtomicBool::new(false),
    });
    let tracker = TaskTracker::new();
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .with_state(billing.clone());
    let http_shutdown = shutdown.clone();
    tracker.spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
        {
            tracing::warn!(error = %e, "health endpoint stopped");
        }
    });
    let instance_types: Vec<&str> = billing.rules.prices.iter().map(|(t, _)| t).collect();
    tracing::info!(
        batch_size = config.batch_size,
        instance_types = %instance_types.join(","),
        "billing consuming"
    );
    billing.consuming.store(true, Ordering::Relaxed);
    // Money (USAGE) and token counts (USAGE_TOKENS) in two loops, each acking after
    // its own commits; they write different tables, and only money raises alerts.
    let batch = config.batch_size as usize;
    let result = tokio::try_join!(
        billing.consume(consumer, batch, &shutdown, true),
        billing.consume(tokens_consumer, batch, &shutdown, false),
    )
    .map(|_| ());
    billing.consuming.store(false, Ordering::Relaxed);
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    tracing::info!("billing stopped");
    result.map_err(Error::Consume)
}

/// The durable consumer `billing-tokens` of token usage (stream USAGE_TOKENS), which
/// `switchyard-nats apply` creates.
pub async fn tokens_consumer(js: &jetstream::Context) -> Result<PullConsumer, String> {
    let stream = js
        .get_stream(schemas::subjects::USAGE_TOKENS_STREAM)
        .await
        .map_err(|e| {
            format!("stream USAGE_TOKENS not found ({e}); run `switchyard-nats apply` first")
        })?;
    stream.get_consumer(TOKENS_CONSUMER).await.map_err(|e| {
        format!(
            "consumer USAGE_TOKENS/{TOKENS_CONSUMER} not found ({e}); run `switchyard-nats apply` first"
        )
    })
}

/// The durable consumer `billing`, which `switchyard-nats apply` creates.
pub async fn consumer(js: &jetstream::Context) -> Result<PullConsumer, String> {
    let stream = js
        .get_stream(schemas::subjects::USAGE_STREAM)
        .await
        .map_err(|e| format!("stream USAGE not found ({e}); run `switchyard-nats apply` first"))?;
    stream.get_consumer(CONSUMER).await.map_err(|e| {
        format!("consumer USAGE/{CONSUMER} not found ({e}); run `switchyard-nats apply` first")
    })
}

impl Billing {
    /// Pulls batches until `shutdown`; `alerts`: this loop records spend, so it also
    /// publishes the spend alerts its commits raise.
    async fn consume(
        &self,
        consumer: PullConsumer,
        batch_size: usize,
        shutdown: &CancellationToken,
        alerts: bool,
    ) -> Result<(), async_nats::Error> {
        // Pull requests ask for at least 128 messages: async-nats' pull stream with
        // a batch of 1 waits tens of ms between pulls (15 events/s in the benchmark).
        let mut messages =
            switchyard_nats::pull::Messages::new(consumer, batch_size.max(128)).await?;
        // Alerts raised before a crash may not have gone out yet.
        let mut alerts_pending = alerts;
        loop {
            if alerts_pending {
                alerts_pending = self.publish_alerts().await;
            }
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                m = messages.next() => m,
            };
            let mut batch = Vec::with_capacity(batch_size);
            match first {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => {
                    // Missed heartbeats and the like: the stream starts over by itself.
                    tracing::warn!(error = %e, "pull error");
                    self.pause(Duration::from_millis(250), shutdown).await;
                    continue;
                }
                None => break,
            }
            // Whatever else has arrived already joins this transaction.
            while batch.len() < batch_size {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => {
                        tracing::warn!(error = %e, "pull error");
                        break;
                    }
                    _ => break,
                }
            }
            match self.process(batch).await {
                Some(raised) => alerts_pending |= alerts && raised > 0,
                None => self.pause(RETRY_DELAY, shutdown).await,
            }
        }
        Ok(())
    }

    async fn pause(&self, delay: Duration, shutdown: &CancellationToken) {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => {}
        }
    }

    /// Dead-letters poison, writes the rest, acks after the commit. `None` when the
    /// transaction failed (the batch is naked for redelivery); else the alerts raised.
    async fn process(&self, batch: Vec<jetstream::Message>) -> Option<usize> {
        let mut checked = Vec::with_capacity(batch.len());
        let mut held = Vec::with_capacity(batch.len());
        for message in batch {
            match event::check_payload(&message.payload, &self.rules) {
                Ok(c) => {
                    checked.push(c);
                    held.push(message);
                }
                Err(poison) => self.dead_letter(&message, &poison).await,
            }
        }
        if checked.is_empty() {
            return Some(0);
        }
        let started = Instant::now();
        match ledger::record(&self.db, &checked).await {
            Ok(recorded) => {
                self.metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .batches
                    .get_or_create(&metrics::OutcomeLabels {
                        outcome: "committed".into(),
                    })
                    .inc();
                self.db_failing.store(false, Ordering::Relaxed);
                for ((message, event), new) in held.iter().zip(&checked).zip(&recorded.new) {
                    // After the commit: a lost ack only redelivers an event the
                    // ledger now knows.
                    if let Err(e) = message.ack().await {
                        tracing::debug!(error = %e, "ack not sent; the event will be redelivered");
                    }
                    let outcome = if *new { "recorded" } else { "duplicate" };
                    self.metrics.event(event.kind, outcome);
                }
                Some(recorded.alerts_raised)
            }
            Err(e) => {
                self.metrics
                    .batches
                    .get_or_create(&metrics::OutcomeLabels {
                        outcome: "failed".into(),
                    })
                    .inc();
                self.db_failing.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, events = held.len(), "cannot write usage to Postgres; the batch will be redelivered");
                for message in &held {
                    let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                }
                None
            }
        }
    }

    /// Publishes pending spend alerts; `true` when some are still pending.
    async fn publish_alerts(&self) -> bool {
        match alerts::publish_pending(&self.db, &self.js).await {
            Ok(n) => {
                self.metrics.alerts.inc_by(n as u64);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "spend alerts not published yet; will retry");
                true
            }
        }
    }

    /// Copies `message` to `dlq.<stream>.<consumer>` with the reason and terminates it; when
    /// the copy cannot be stored, naks it so it comes back.
    async fn dead_letter(&self, message: &jetstream::Message, poison: &event::Poison) {
        let reason = poison.reason.as_str();
        // USAGE/billing or USAGE_TOKENS/billing-tokens: where the message came from.
        let (stream, consumer) = match message.info() {
            Ok(info) => (info.stream.to_string(), info.consumer.to_string()),
            Err(_) => (
                schemas::subjects::USAGE_STREAM.to_string(),
                CONSUMER.to_string(),
            ),
        };
        let stored = switchyard_nats::dead_letter(
            &self.js,
            message,
            switchyard_nats::DeadLetter {
                reason,
                stream: &stream,
                consumer: &consumer,
                source_detail: None,
                request_id: None,
                payload: message.payload.clone(),
                retry_in: RETRY_DELAY,
            },
        )
        .await;
        if stored {
            self.metrics
                .dead_letters
                .get_or_create(&metrics::ReasonLabels {
                    reason: reason.split(':').next().unwrap_or(reason).to_string(),
                })
                .inc();
            self.metrics.event(poison.kind, "dead_lettered");
            tracing::warn!(
                event_id = poison.event_id.as_deref().unwrap_or_default(),
                "usage event dead-lettered"
            );
        }
    }
}

async fn healthz(State(billing): State<Arc<Billing>>) -> impl IntoResponse {
    let connected = matches!(
        billing.client.connection_state(),
        async_nats::connection::State::Connected
    );
    let db_ok = !billing.db_failing.load(Ordering::Relaxed);
    if connected && db_ok && billing.consuming.load(Ordering::Relaxed) {
        (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "unavailable",
                "nats": connected,
                "database": db_ok,
            })),
        )
    }
}

async fn metrics_text(State(billing): State<Arc<Billing>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            switchyard_telemetry::METRICS_CONTENT_TYPE,
        )],
        billing.metrics.render(),
    )
}
