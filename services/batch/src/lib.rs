//! The batch router: the way in for batch jobs that publish straight to NATS.
//!
//! A job publishes [`schemas::BatchRequest`]s to `batch.<account>.<job>` (stream BATCH;
//! the contract is `schemas/BATCH.md`). This service pulls them (durable consumer
//! `batch-router`) and, for each one:
//!
//! 1. reads it: the subject must be `batch.<account>.<job>`, the body must decode, its
//!    schema version must be known, `Nats-Msg-Id` must be its `request_id`, and its
//!    `account` must be the subject's (NATS permissions decide who may publish to which
//!    `batch.<account>.>`; see `nats/README.md`);
//! 2. skips it when its result is already in RESULTS (a job re-run after the 24 h
//!    duplicate window publishes nothing that runs twice);
//! 3. checks the model (a closed `provider/model`, or an open model of the catalog that
//!    serves the request's task), the job deadline, and, for open models (which are
//!    charged), the account's monthly spend limit (with `DATABASE_URL`);
//! 4. seals the request (prompt and provider key) like the ingress does and queues it
//!    for the workers on stream BATCHWORK: `breq.closed.<provider>` (translator) or
//!    `breq.open.<model>.<account>` (the account's cluster, created with the defaults
//!    when missing, and its batch consumer, so the autoscaler sees the backlog);
//! 5. acks only after the queued message (or the error result) is stored.
//!
//! Anything wrong becomes a [`schemas::BatchResult`] with the error on
//! `res.<account>.<job>.<request_id>`: the job learns why, and the router keeps going.
//! Only a message that names no result (a subject that is not `batch.<account>.<job>`,
//! or an undecodable body without a UUID `Nats-Msg-Id`) is dead-lettered instead, with
//! the reason in a header and without its body (which is not sealed).

pub mod job;
pub mod metrics;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use clap::Parser;
use schemas::catalog::{Catalog, task_of};
use schemas::subjects::{self, ModelRoute};
use schemas::{
    BatchRequest, BatchResult, ErrorBody, ErrorKind, ReplyTarget, RequestEnvelope, SealKey,
    SealKeyArgs, SealedRequest,
};
use switchyard_store::spend::SpendLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use metrics::Metrics;

/// Batch router: checks batch requests published to `batch.<account>.<job>`, seals
/// and queues them for the workers, and answers bad ones with error results on
/// `res.<account>.<job>.<request id>`.
#[derive(Clone, Parser)]
#[command(name = "switchyard-batch", version, about)]
pub struct Config {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    #[command(flatten)]
    pub seal: SealKeyArgs,

    /// Address of the health and metrics endpoint (`/healthz`, `/metrics`).
    #[arg(long, env = "BATCH_BIND", default_value = "127.0.0.1:8085")]
    pub bind: SocketAddr,

    /// Batch requests routed at once.
    #[arg(long, env = "BATCH_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Postgres with billing's tables: accounts over their monthly spend limit get a
    /// `payment_required` result for open-model work. Unset: no spend limits.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// How often the accounts over their spend limit are reloaded, in seconds.
    #[arg(long, env = "BATCH_SPEND_REFRESH_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub spend_refresh_secs: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Why the router could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seal key: {0}")]
    SealKey(#[from] schemas::SealError),
    #[error("model catalog: {0}")]
    Catalog(String),
    #[error("{0}")]
    Connect(switchyard_nats::ConnectError),
    #[error("accounts database: {0}")]
    Database(#[from] switchyard_store::Error),
    #[error("{0}")]
    Consumer(String),
    #[error(transparent)]
    Bind(#[from] switchyard_telemetry::BindError),
    #[error("consuming failed: {0}")]
    Consume(async_nats::Error),
}

/// Binds `config.bind` and routes until `shutdown`.
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
    let catalog = Catalog::embedded().map_err(|e| Error::Catalog(e.to_string()))?;
    let client = switchyard_nats::connect(&config.nats_url, "switchyard-batch")
        .await
        .map_err(Error::Connect)?;
    let js = jetstream::new(client.clone());
    let consumer = js
        .get_stream(subjects::BATCH_STREAM)
        .await
        .map_err(|e| {
            Error::Consumer(format!(
                "stream {} not found ({e}); run `switchyard-nats apply` first",
                subjects::BATCH_STREAM
            ))
        })?
        .get_consumer(subjects::BATCH_ROUTER_CONSUMER)
        .await
        .map_err(|e| {
            Error::Consumer(format!(
                "consumer {} not found ({e}); run `switchyard-nats apply` first",
                subjects::BATCH_ROUTER_CONSUMER
            ))
        })?;
    // Lazy: the router starts while Postgres is down (nobody is refused meanwhile).
    let db = match &config.database_url {
        Some(url) => Some(switchyard_store::connect(url, true).await?),
        None => None,
    };
    let spend = Arc::new(SpendLimits::new(
        db,
        Duration::from_secs(config.spend_refresh_secs),
    ));
    spend.refresh_or_keep().await;
    let router = Arc::new(Router {
        js,
        seal,
        catalog,
        metrics: Metrics::default(),
        spend: spend.clone(),
        clusters_ready: Mutex::new(HashSet::new()),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(spend.run(shutdown.clone()));
    let health = switchyard_worker::Health::new(client);
    let app = health.router({
        let router = router.clone();
        move || router.metrics.render()
    });
    tracker.spawn(switchyard_telemetry::serve_health(
        listener,
        app,
        shutdown.clone(),
    ));
    health.set_consuming(true);
    tracing::info!(concurrency = config.concurrency, "batch router consuming");
    let result = switchyard_worker::consume(
        consumer,
        config.concurrency as usize,
        &tracker,
        shutdown.clone(),
        move |message| {
            let router = router.clone();
            async move { router.handle(message).await }
        },
    )
    .await;
    health.set_consuming(false);
    shutdown.cancel();
    switchyard_worker::drain(&tracker).await;
    tracing::info!("batch router stopped");
    result.map_err(Error::Consume)
}

/// Shared by every message the router handles.
pub struct Router {
    pub js: jetstream::Context,
    pub seal: SealKey,
    pub catalog: Catalog,
    pub metrics: Metrics,
    /// Accounts over their monthly spend limit (open models are charged).
    pub spend: Arc<SpendLimits>,
    /// Clusters whose spec and batch consumer exist (made once per process).
    clusters_ready: Mutex<HashSet<(String, String)>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

/// Where a published message's result goes.
#[derive(Debug, Clone)]
struct Address {
    account_token: String,
    job: String,
    request_id: Uuid,
}

impl Address {
    fn subject(&self) -> String {
        subjects::batch_result(&self.account_token, &self.job, self.request_id)
    }
}

/// What became of one message.
#[derive(Debug)]
enum Outcome {
    /// Queued for a worker on this subject.
    Queued { kind: &'static str },
    /// Its result already exists: not run again.
    AlreadyDone,
    /// Answered with an error result.
    Rejected {
        address: Address,
        model: String,
        account: String,
        error: ErrorBody,
    },
    /// No result can be addressed: dead-lettered with this reason.
    Unaddressable(String),
    /// NATS trouble: try again later.
    Retry(String),
}

impl Router {
    async fn handle(&self, message: jetstream::Message) {
        match self.route(&message).await {
            Outcome::Queued { kind } => {
                self.metrics.routed(kind);
                let _ = message.ack().await;
            }
            Outcome::AlreadyDone => {
                self.metrics.routed("already_done");
                let _ = message.ack().await;
            }
            Outcome::Rejected {
                address,
                model,
                account,
                error,
            } => {
                tracing::info!(request_id = %address.request_id, job = %address.job, kind = error.kind.as_str(), reason = %error.message, "batch request rejected");
                self.metrics.rejected(error.kind.as_str());
                let result =
                    BatchResult::failure(address.request_id, &account, &address.job, &model, error);
                match switchyard_worker::publish_result(&self.js, &address.subject(), &result).await
                {
                    Ok(()) => {
                        let _ = message.ack().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot store an error result; retrying");
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            }
            Outcome::Unaddressable(reason) => {
                self.metrics.rejected("unaddressable");
                self.dead_letter(&message, &reason).await;
            }
            Outcome::Retry(reason) => {
                tracing::warn!(reason = %reason, "cannot route a batch request now; retrying");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    async fn route(&self, message: &jetstream::Message) -> Outcome {
        let Some((account_token, job)) = subjects::batch_request_parts(&message.subject) else {
            return Outcome::Unaddressable(format!(
                "subject '{}' is not batch.<account>.<job>",
                message.subject
            ));
        };
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::MSG_ID))
            .map(|v| v.as_str().to_string());
        let header_id = msg_id.as_deref().and_then(|v| Uuid::try_parse(v).ok());
        let request: BatchRequest = match schemas::decode(&message.payload) {
            Ok(r) => r,
            Err(e) => {
                let Some(request_id) = header_id else {
                    return Outcome::Unaddressable(format!(
                        "undecodable batch request and no UUID Nats-Msg-Id to answer it under: {e}"
                    ));
                };
                return Outcome::Rejected {
                    address: Address {
                        account_token: account_token.to_string(),
                        job: job.to_string(),
                        request_id,
                    },
                    model: String::new(),
                    account: String::new(),
                    error: ErrorBody::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "the message is not a BatchRequest (MessagePack map; see schemas/json/batch_request.schema.json): {e}"
                        ),
                    ),
                };
            }
        };
        let address = Address {
            account_token: account_token.to_string(),
            job: job.to_string(),
            request_id: request.request_id,
        };
        let refuse = |error: ErrorBody| Outcome::Rejected {
            address: address.clone(),
            model: request.request.model.clone(),
            account: request.account.clone(),
            error,
        };
        let reject = |kind: ErrorKind, message: String| refuse(ErrorBody::new(kind, message));
        if let Err(e) = schemas::batch::check_job(job) {
            return reject(ErrorKind::InvalidRequest, e.to_string());
        }
        if request.schema_version == 0 || request.schema_version > schemas::SCHEMA_VERSION {
            return reject(
                ErrorKind::InvalidRequest,
                format!(
                    "schema_version {} is not supported (this router reads 1 to {})",
                    request.schema_version,
                    schemas::SCHEMA_VERSION
                ),
            );
        }
        if header_id != Some(request.request_id) {
            return reject(
                ErrorKind::InvalidRequest,
                "publish each request with the header Nats-Msg-Id set to its request_id (it is how a re-published request is stored once)".into(),
            );
        }
        match subjects::model_token(&request.account) {
            Ok(token) if token == account_token => {}
            _ => {
                return reject(
                    ErrorKind::PermissionDenied,
                    format!(
                        "account '{}' may not publish on batch.{account_token}.>: a request's account must be the one its subject names",
                        request.account
                    ),
                );
            }
        }
        match self.result_exists(&address).await {
            Ok(true) => {
                tracing::info!(request_id = %address.request_id, job, "result already stored; not run again");
                return Outcome::AlreadyDone;
            }
            Ok(false) => {}
            Err(e) => return Outcome::Retry(e),
        }
        if request.deadline < Utc::now() {
            return reject(
                ErrorKind::Timeout,
                "the job deadline passed before the request was run".into(),
            );
        }
        let model = request.request.model.clone();
        let route = match subjects::route_model(&model) {
            Ok(r) => r,
            Err(e) => return reject(ErrorKind::InvalidRequest, format!("model: {e}")),
        };
        let task = task_of(request.task.as_ref());
        let (subject, kind) = match &route {
            ModelRoute::Closed { provider, .. } => {
                if task != schemas::catalog::Task::Chat {
                    return reject(
                        ErrorKind::InvalidRequest,
                        format!(
                            "'{model}' is a closed model, served for chat only, not {}",
                            task.as_str()
                        ),
                    );
                }
                (subjects::closed_batch_work(*provider), "closed")
            }
            ModelRoute::Open { token } => {
                let Some(entry) = self.catalog.get(&model).filter(|m| m.open.is_some()) else {
                    return reject(
                        ErrorKind::NotFound,
                        format!("the model '{model}' is not in the catalog"),
                    );
                };
                if !entry.serves(task) {
                    return reject(
                        ErrorKind::InvalidRequest,
                        format!("the model '{model}' does not do {}", task.as_str()),
                    );
                }
                // Open models are charged: none for an account over its spend limit.
                if let Err(e) = self.spend.check(&request.account) {
                    return refuse(e);
                }
                if let Err(e) = self
                    .ensure_cluster(&request.account, &model, token, account_token)
                    .await
                {
                    return Outcome::Retry(e);
                }
                (subjects::open_batch_work(token, account_token), "open")
            }
        };
        match self.queue(&request, &address, subject).await {
            Ok(()) => Outcome::Queued { kind },
            Err(e) => Outcome::Retry(e),
        }
    }

    /// Whether `address` already has a result (a direct get by subject on RESULTS).
    async fn result_exists(&self, address: &Address) -> Result<bool, String> {
        let stream = self
            .js
            .get_stream_no_info(subjects::RESULTS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        match stream.direct_get_last_for_subject(address.subject()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot look up the result: {e}")),
        }
    }

    /// The account's cluster of `model` with the defaults, and its batch consumer (so
    /// the autoscaler sees the backlog before any instance runs); once per process.
    async fn ensure_cluster(
        &self,
        account: &str,
        model: &str,
        model_token: &str,
        account_token: &str,
    ) -> Result<(), String> {
        let key = (model_token.to_string(), account_token.to_string());
        if self
            .clusters_ready
            .lock()
            .map(|set| set.contains(&key))
            .unwrap_or(false)
        {
            return Ok(());
        }
        switchyard_worker::ensure_cluster(&self.js, account, model).await?;
        switchyard_nats::ensure_batch_consumer(&self.js, model_token, account_token)
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(mut set) = self.clusters_ready.lock() {
            set.insert(key);
        }
        Ok(())
    }

    /// Seals `request` and stores it on `subject` (stream BATCHWORK).
    async fn queue(
        &self,
        request: &BatchRequest,
        address: &Address,
        subject: String,
    ) -> Result<(), String> {
        let mut chat = request.request.clone();
        // A result is always whole.
        chat.stream = false;
        let sealed = SealedRequest {
            request: chat,
            provider_key: request.provider_key.clone(),
            provider_keys: request.provider_keys.clone(),
            task: request.task.clone(),
        };
        let plain = schemas::encode(&sealed).map_err(|e| e.to_string())?;
        let body = self
            .seal
            .seal(request.request_id, &plain)
            .map_err(|e| e.to_string())?;
        let envelope = RequestEnvelope {
            schema_version: schemas::SCHEMA_VERSION,
            request_id: request.request_id,
            account: request.account.clone(),
            created_at: request.created_at.unwrap_or_else(Utc::now),
            deadline: request.deadline,
            reply: ReplyTarget::Result {
                subject: address.subject(),
                job: address.job.clone(),
            },
            model: request.request.model.clone(),
            body,
            start_by: None,
            enqueue_by: None,
        };
        let payload = schemas::encode(&envelope).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            schemas::headers::MSG_ID,
            request.request_id.to_string().as_str(),
        );
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Terminates `message` and records it on `dlq.BATCH.batch-router` with the reason
    /// and the subject, but not its body (which is not sealed).
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) {
        switchyard_worker::dead_letter(
            &self.js,
            message,
            switchyard_worker::DeadLetter {
                reason,
                stream: subjects::BATCH_STREAM,
                consumer: subjects::BATCH_ROUTER_CONSUMER,
                source_detail: Some(&message.subject),
                request_id: None,
                payload: Default::default(),
                retry_in: Duration::from_secs(5),
            },
        )
        .await;
    }
}
