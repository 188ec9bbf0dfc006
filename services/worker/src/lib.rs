//! What every Switchyard worker (the translator for closed models, the inference
//! instances for open ones) shares, so both halves behave the same way:
//!
//! - [`consume`]: the pull loop, at most `concurrency` requests at once;
//! - [`Intake::receive`]: decode the envelope, check its schema version and deadline,
//!   open the sealed body; poison messages are terminated and copied to the dead-letter
//!   stream with the reason ([`Intake::dead_letter`]);
//! - [`supervise`]: runs a request while marking its message in progress, watching
//!   for the caller's cancellation and the request's deadline;
//! - [`finish`]: acks only after the reply reached the server;
//! - [`Intake::hand_off`]: passes a request that failed before its first byte to its
//!   next fallback model, whichever half serves it (closed ↔ open);
//! - [`sink`]: numbered reply chunks to `reply.<ingress>.<request>`;
//! - [`cancels`]: one `cancel.*` subscription per process;
//! - [`usage`]: each answered request's tokens to billing ([`usage::finish_and_report`]).

pub mod cancels;
pub mod sink;
#[cfg(feature = "testing")]
pub mod testing;
pub mod usage;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use schemas::{ErrorBody, ErrorKind, ReplyTarget, RequestEnvelope, SealKey, SealedRequest};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cancels::{Cancels, Watch};
pub use sink::{ChunkSink, ResultMeta, SendError, publish_result};
pub use switchyard_nats::inflight::InFlight;
pub use switchyard_nats::{DeadLetter, dead_letter};

/// Attempts a batch request gets: a request whose worker stopped (crashed, killed)
/// this many times while running it is answered with an error result instead of
/// being run again. (Interactive requests end with the consumers' `max_deliver`; the
/// caller has long given up by then.)
pub const MAX_BATCH_ATTEMPTS: i64 = 5;

/// How long requests in progress get to finish after shutdown is signalled.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A worker's health: connected to NATS and pulling.
#[derive(Debug, Clone)]
pub struct Health {
    client: async_nats::Client,
    consuming: Arc<AtomicBool>,
}

impl Health {
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            consuming: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the worker as pulling (or not, while it drains).
    pub fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        ) && self.consuming.load(Ordering::Relaxed)
    }

    /// `/healthz` (this health) and `/metrics` (`metrics()`).
    pub fn router(
        &self,
        metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
    ) -> axum::Router {
        let me = self.clone();
        switchyard_telemetry::health_router(move || me.healthy(), metrics)
    }
}

/// Lets the tasks of `tracker` finish, up to [`DRAIN_TIMEOUT`]; what does not finish is
/// redelivered by JetStream (its message was never acked).
pub async fn drain(tracker: &TaskTracker) {
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests in progress did not finish within the drain timeout; they will be redelivered"
        );
    }
}

/// While a request runs, its message is marked in progress this often so JetStream
/// does not redeliver it mid-stream (consumers' ack wait is 30 s).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Label of the dead-letter counter: the reason up to its first `:`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Pulls from `consumer` until `shutdown`, running `handle` on each message with at
/// most `concurrency` in flight.
pub async fn consume<H, F>(
    consumer: PullConsumer,
    concurrency: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    handle: H,
) -> Result<(), async_nats::Error>
where
    H: Fn(jetstream::Message) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    consume_with_batch(consumer, None, concurrency, tracker, shutdown, handle).await
}

/// How long a worker waits before asking an empty batch queue again (batch work is
/// not latency-sensitive; interactive requests wake the loop at once).
pub const BATCH_IDLE_POLL: Duration = Duration::from_millis(200);

/// [`consume`] with a second, lower-priority source: `batch` work is taken only with
/// idle capacity. Whenever a slot is free, an interactive message that is ready goes
/// first; only when none is waiting does the worker fetch batch messages — no more
/// than it has free slots, without waiting (`no_wait`), so nothing sits prefetched
/// and unstarted while interactive work runs. An empty batch queue is asked again
/// after [`BATCH_IDLE_POLL`].
pub async fn consume_with_batch<H, F>(
    consumer: PullConsumer,
    batch: Option<PullConsumer>,
    concurrency: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    handle: H,
) -> Result<(), async_nats::Error>
where
    H: Fn(jetstream::Message) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    use futures::FutureExt;
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut messages = switchyard_nats::pull::Messages::new(consumer, concurrency).await?;
    let mut batch_quiet_until = tokio::time::Instant::now();
    let spawn = |message: jetstream::Message, permit: tokio::sync::OwnedSemaphorePermit| {
        // Boxed once: a handler's future is large (the translator's is ~21 KB), and every
        // move on its way into the task (this block, the tracker's wrapper, the task
        // cell) copied it whole. Profiled at 1,500 rps, the memmoves here took 2.9 % of
        // the translator's CPU; boxed, 1.3 % (the one copy into the box).
        let run = Box::pin(handle(message));
        tracker.spawn(async move {
            run.await;
            drop(permit);
        });
    };
    loop {
        // Take a permit first, so at most `concurrency` requests run at once (the pull
        // stream prefetches at most one batch beyond them).
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            () = shutdown.cancelled() => break,
        };
        // Interactive work that is already here goes first.
        let next = match messages.next().now_or_never() {
            Some(next) => next,
            None => {
                if let Some(batch) = &batch
                    && tokio::time::Instant::now() >= batch_quiet_until
                {
                    let free = 1 + permits.available_permits();
                    match fetch_now(batch, free).await {
                        Ok(taken) if !taken.is_empty() => {
                            let mut first = Some(permit);
                            for message in taken {
                                // Permits only come back while this loop runs, so the
                                // `free` counted above are still free.
                                let slot = match first.take() {
                                    Some(p) => Some(p),
                                    None => permits.clone().try_acquire_owned().ok(),
                                };
                                match slot {
                                    Some(p) => spawn(message, p),
                                    None => {
                                        let _ = message.ack_with(AckKind::Nak(None)).await;
                                    }
                                }
                            }
                            continue;
                        }
                        Ok(_) => batch_quiet_until = tokio::time::Instant::now() + BATCH_IDLE_POLL,
                        Err(e) => {
                            tracing::warn!(error = %e, "batch pull error");
                            batch_quiet_until = tokio::time::Instant::now() + BATCH_IDLE_POLL;
                        }
                    }
                }
                tokio::select! {
                    m = messages.next() => m,
                    // Time to look at the batch queue again (the permit is taken anew).
                    () = tokio::time::sleep_until(batch_quiet_until), if batch.is_some() => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        match next {
            Some(Ok(message)) => spawn(message, permit),
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream starts over by itself.
                // Pause briefly so a lasting fault does not spin.
                tracing::warn!(error = %e, "pull error");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = shutdown.cancelled() => break,
                }
            }
            None => break,
        }
    }
    Ok(())
}

/// How long a `no_wait` batch fetch may go unanswered. The server answers at once
/// (the messages it has, then a status); no answer means the request was lost with a
/// server that went away, and nothing would ever end the fetch.
pub const FETCH_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Up to `max` messages `consumer` has now, without waiting for more. A fetch left
/// unanswered for [`FETCH_ANSWER_WITHIN`] ends with what it got (the rest, if any
/// comes later, is redelivered after the ack wait).
async fn fetch_now(
    consumer: &PullConsumer,
    max: usize,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut batch = consumer.fetch().max_messages(max).messages().await?;
    let mut out = Vec::with_capacity(max);
    loop {
        match tokio::time::timeout(FETCH_ANSWER_WITHIN, batch.next()).await {
            Ok(Some(message)) => out.push(message?),
            Ok(None) => return Ok(out),
            Err(_) => {
                tracing::warn!(
                    received = out.len(),
                    "a batch fetch went unanswered; asking again"
                );
                return Ok(out);
            }
        }
    }
}

/// A request taken off the stream and opened, ready to run.
#[derive(Debug)]
pub struct Received {
    pub envelope: RequestEnvelope,
    pub sealed: SealedRequest,
    pub sink: ChunkSink,
    /// The caller's W3C trace context, carried in a header by the ingress.
    pub traceparent: Option<String>,
}

/// How a worker takes messages in: where poison goes and what it counts.
#[derive(Debug, Clone)]
pub struct Intake {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub seal: SealKey,
    /// The stream the messages come from.
    pub stream: String,
    /// The durable consumer they are pulled through.
    pub consumer: String,
    /// Messages terminated and dead-lettered, by reason.
    pub dead_letters: Family<ReasonLabels, Counter>,
    /// Requests dropped because their deadline had passed.
    pub expired: Counter,
}

impl Intake {
    /// Decodes and opens `message`. `None` when the message was already dealt with
    /// (dead-lettered, or answered as expired and acked). `provider` names who answers
    /// (on the reply's first chunk), given the envelope.
    pub async fn receive(
        &self,
        message: &jetstream::Message,
        provider: impl FnOnce(&RequestEnvelope) -> &'static str,
    ) -> Option<Received> {
        let envelope: RequestEnvelope = match schemas::decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(message, &format!("undecodable envelope: {e}"), None)
                    .await;
                return None;
            }
        };
        let traceparent = message
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::TRACEPARENT))
            .map(|v| v.as_str().to_string())
            .filter(|v| schemas::headers::is_traceparent(v));
        let mut sink = match &envelope.reply {
            ReplyTarget::Stream { subject } => ChunkSink::new(
                self.client.clone(),
                subject.clone(),
                envelope.request_id,
                provider(&envelope),
            ),
            ReplyTarget::Result { subject, job } => ChunkSink::for_result(
                self.js.clone(),
                subject.clone(),
                envelope.request_id,
                provider(&envelope),
                ResultMeta {
                    account: envelope.account.clone(),
                    job: job.clone(),
                    model: envelope.model.clone(),
                },
            ),
        };
        let id = Some(envelope.request_id.to_string());
        if envelope.schema_version > schemas::SCHEMA_VERSION {
            let reason = format!(
                "schema version {} is newer than this worker's {}",
                envelope.schema_version,
                schemas::SCHEMA_VERSION
            );
            let _ = sink
                .fail(ErrorBody::new(ErrorKind::Internal, reason.clone()))
                .await;
            self.dead_letter(message, &reason, id).await;
            return None;
        }
        if let Some(start_by) = envelope.start_by
            && start_by < Utc::now()
        {
            // The caller got a 503 (cold start) and will retry: running it now would
            // answer nobody, and running the retry too would run it twice.
            self.expired.inc();
            tracing::info!(request_id = %envelope.request_id, "not started in time; dropped unrun");
            let _ = message.ack().await;
            return None;
        }
        if let Ok(info) = message.info()
            && envelope.enqueued_too_late(stored_at(&info))
        {
            // The NATS client held the publish while the server was away, and the
            // ingress had answered 503 before the stream stored it: the caller retries.
            self.expired.inc();
            tracing::info!(request_id = %envelope.request_id, "stored after the ingress gave up on it; dropped unrun");
            let _ = message.ack().await;
            return None;
        }
        if envelope.deadline < Utc::now() {
            self.expired.inc();
            tracing::info!(request_id = %envelope.request_id, "deadline passed before the request was run; dropped");
            let reason = if sink.is_batch() {
                "the job deadline passed before the request was run"
            } else {
                "the request waited past its deadline and was not run"
            };
            let _ = sink.fail(ErrorBody::new(ErrorKind::Timeout, reason)).await;
            finish(message, &sink).await;
            return None;
        }
        if sink.is_batch()
            && let Ok(info) = message.info()
            && info.delivered > MAX_BATCH_ATTEMPTS
        {
            tracing::warn!(request_id = %envelope.request_id, attempts = info.delivered - 1, "batch request never finished; answered with an error");
            let _ = sink
                .fail(ErrorBody::new(
                    ErrorKind::Internal,
                    format!(
                        "the request was attempted {MAX_BATCH_ATTEMPTS} times and never finished (its worker stopped each time)"
                    ),
                ))
                .await;
            finish(message, &sink).await;
            return None;
        }
        let sealed: SealedRequest = match self
            .seal
            .open(envelope.request_id, &envelope.body)
            .map_err(|e| e.to_string())
            .and_then(|plain| schemas::decode(&plain).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                let _ = sink
                    .fail(ErrorBody::new(
                        ErrorKind::Internal,
                        "this request cannot be opened by the worker",
                    ))
                    .await;
                self.dead_letter(message, &format!("cannot open body: {e}"), id)
                    .await;
                return None;
            }
        };
        Some(Received {
            envelope,
            sealed,
            sink,
            traceparent,
        })
    }

    /// Passes the request to `rest[0]`, the next of its fallback models, by publishing it
    /// again to that model's subject with the same request id, reply subject and
    /// deadline (and `rest[1..]` as its fallbacks); the worker there answers the caller.
    /// Only for a request nothing has reached the caller of yet. The caller's provider
    /// keys move into `provider_keys` (by provider), so they serve whichever model is
    /// primary next.
    pub async fn hand_off(
        &self,
        envelope: &RequestEnvelope,
        sealed: &SealedRequest,
        rest: &[String],
        traceparent: Option<&str>,
    ) -> Result<(), String> {
        use schemas::subjects::{self, ModelRoute};
        let Some((next, after)) = rest.split_first() else {
            return Err("no fallback model left".into());
        };
        let batch = envelope.reply.is_batch();
        let subject = match subjects::route_model(next).map_err(|e| e.to_string())? {
            ModelRoute::Closed { provider, .. } if batch => subjects::closed_batch_work(provider),
            ModelRoute::Closed { provider, .. } => subjects::closed_request(provider),
            ModelRoute::Open { token } => {
                // As a first request through the ingress would: the account gets a
                // cluster with the defaults, so the autoscaler starts an instance.
                self.ensure_cluster(&envelope.account, next).await?;
                let account =
                    subjects::model_token(&envelope.account).map_err(|e| e.to_string())?;
                if batch {
                    // Batch work for a cluster: its queue must exist for the autoscaler
                    // to see it.
                    switchyard_nats::ensure_batch_consumer(&self.js, &token, &account)
                        .await
                        .map_err(|e| e.to_string())?;
                    subjects::open_batch_work(&token, &account)
                } else {
                    subjects::open_request(&token, &account)
                }
            }
        };
        let mut sealed = sealed.clone();
        if let Some(key) = sealed.provider_key.take()
            && let Ok(ModelRoute::Closed { provider, .. }) =
                subjects::route_model(&sealed.request.model)
        {
            sealed
                .provider_keys
                .entry(provider.as_str().to_string())
                .or_insert(key);
        }
        sealed.request.model = next.clone();
        sealed.request.fallback_models = after.to_vec();
        let plain = schemas::encode(&sealed).map_err(|e| e.to_string())?;
        let body = self
            .seal
            .seal(envelope.request_id, &plain)
            .map_err(|e| e.to_string())?;
        let handed = RequestEnvelope {
            model: next.clone(),
            body,
            // Stored now, long after the ingress's publish: that limit was for it alone.
            enqueue_by: None,
            ..envelope.clone()
        };
        let payload = schemas::encode(&handed).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        // One hand-off per (request, model): a retried publish is deduplicated.
        headers.insert(
            schemas::headers::MSG_ID,
            format!("{}:{}", envelope.request_id, next).as_str(),
        );
        if let Some(tp) = traceparent {
            headers.insert(schemas::headers::TRACEPARENT, tp);
        }
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(model = %next, "handed the request to its next fallback model");
        Ok(())
    }

    /// Creates `account`'s cluster of the open model `model` with the defaults, unless
    /// it exists (see [`ensure_cluster`]).
    pub async fn ensure_cluster(&self, account: &str, model: &str) -> Result<(), String> {
        ensure_cluster(&self.js, account, model).await
    }

    /// Copies `message` (still sealed) to the dead-letter stream with `reason` and
    /// terminates it; when the copy cannot be stored, naks it so it comes back.
    pub async fn dead_letter(
        &self,
        message: &jetstream::Message,
        reason: &str,
        request_id: Option<String>,
    ) {
        // Where the message really came from (a worker pulls interactive and batch
        // work through different consumers); the configured names otherwise.
        let (stream, consumer) = match message.info() {
            Ok(info) => (info.stream.to_string(), info.consumer.to_string()),
            Err(_) => (self.stream.clone(), self.consumer.clone()),
        };
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.split(':').next().unwrap_or(reason).to_string(),
            })
            .inc();
        // The payload stays as published (sealed), so nothing secret lands in the clear.
        dead_letter(
            &self.js,
            message,
            DeadLetter {
                reason,
                stream: &stream,
                consumer: &consumer,
                source_detail: None,
                request_id: request_id.as_deref(),
                payload: message.payload.clone(),
                retry_in: Duration::from_secs(5),
            },
        )
        .await;
    }
}

/// Creates `account`'s cluster of the open model `model` with the defaults, unless
/// it exists — what a first request through the ingress does, so the autoscaler
/// starts an instance.
pub async fn ensure_cluster(
    js: &jetstream::Context,
    account: &str,
    model: &str,
) -> Result<(), String> {
    let catalog = schemas::catalog::Catalog::embedded().map_err(|e| e.to_string())?;
    let open = catalog
        .get(model)
        .and_then(|m| m.open.as_ref())
        .ok_or_else(|| format!("'{model}' is not an open model of the catalog"))?;
    let kv = js
        .get_key_value(schemas::subjects::CLUSTERS_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let key = schemas::cluster::spec_key(account, model).map_err(|e| e.to_string())?;
    let spec = schemas::cluster::ClusterSpec::with_defaults(
        account,
        model,
        &open.instance_type,
        Utc::now(),
    );
    let value = serde_json_vec(&spec)?;
    match kv.create(&key, value.into()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Longest a batch request waits before its next attempt after a provider said "later".
pub const MAX_BATCH_RETRY_DELAY: Duration = Duration::from_secs(60);

/// For batch work that failed before anything was produced: when `error` says "try
/// later" (rate limited, unavailable, a failing upstream), the message is given back to
/// JetStream to come again after the provider's `Retry-After` (5 s without one, at most
/// [`MAX_BATCH_RETRY_DELAY`]), as long as it has attempts left and its job deadline
/// allows. Returns whether it did; the caller then sends nothing. A batch job has
/// no caller waiting, so a rate limit should delay a row, not fail it.
pub async fn retry_batch_later(
    message: &jetstream::Message,
    sink: &ChunkSink,
    error: &ErrorBody,
    deadline: chrono::DateTime<Utc>,
) -> bool {
    if !sink.is_batch() || sink.started() {
        return false;
    }
    if !matches!(
        error.kind,
        ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Upstream
    ) {
        return false;
    }
    let Ok(info) = message.info() else {
        return false;
    };
    if info.delivered >= MAX_BATCH_ATTEMPTS {
        return false;
    }
    let delay = error
        .retry_after_ms
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(100), MAX_BATCH_RETRY_DELAY);
    if Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default() > deadline {
        return false;
    }
    tracing::info!(
        kind = error.kind.as_str(),
        attempt = info.delivered,
        ?delay,
        "batch request will be tried again later"
    );
    message.ack_with(AckKind::Nak(Some(delay))).await.is_ok()
}

/// How a supervised request ended.
#[derive(Debug)]
pub enum Supervised<T> {
    Done(T),
    /// The caller asked to stop (`cancel.<request>`).
    Cancelled,
    /// The request's deadline passed first.
    DeadlinePassed,
}

/// When the stream stored a message (the server's timestamp).
fn stored_at(info: &jetstream::message::Info<'_>) -> chrono::DateTime<Utc> {
    let nanos = i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
}

/// A timer ticking every `period`, the first tick one period from now, and after a stall
/// one tick rather than a burst. Not `interval` with an awaited first tick: that tick is
/// a timer at "now", which tokio rounds up to its next millisecond, so whatever waits
/// for it waits up to a millisecond for the timer driver.
pub fn every(period: Duration) -> tokio::time::Interval {
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Runs `work` while marking `message` in progress every [`PROGRESS_EVERY`], until it
/// finishes, `cancel` fires or `deadline` passes (dropping `work` in the latter cases).
pub async fn supervise<T>(
    message: &jetstream::Message,
    cancel: &CancellationToken,
    deadline: chrono::DateTime<Utc>,
    work: impl Future<Output = T>,
) -> Supervised<T> {
    supervise_with(
        || async {
            let _ = message.ack_with(AckKind::Progress).await;
        },
        cancel,
        deadline,
        work,
    )
    .await
}

/// [`supervise`] with the in-progress mark as a function (tests count the marks).
async fn supervise_with<T, P, PF>(
    mut progress_mark: P,
    cancel: &CancellationToken,
    deadline: chrono::DateTime<Utc>,
    work: impl Future<Output = T>,
) -> Supervised<T>
where
    P: FnMut() -> PF,
    PF: Future<Output = ()>,
{
    let remaining = (deadline - Utc::now()).to_std().unwrap_or_default();
    tokio::pin!(work);
    // No timer between a message and its handling (see `every`).
    let mut progress = every(PROGRESS_EVERY);
    let deadline = tokio::time::sleep(remaining);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            result = &mut work => return Supervised::Done(result),
            _ = progress.tick() => progress_mark().await,
            () = cancel.cancelled() => return Supervised::Cancelled,
            () = &mut deadline => return Supervised::DeadlinePassed,
        }
    }
}

/// Acks `message` once everything `sink` sent has reached the server; otherwise naks
/// it for a quick redelivery.
pub async fn finish(message: &jetstream::Message, sink: &ChunkSink) {
    match sink.flush().await {
        Ok(()) => {
            let _ = message.ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reply not flushed; redelivering");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

fn serde_json_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;

    fn far_deadline() -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::hours(1)
    }

    /// Supervises `work` with no cancel and a far deadline; the outcome and how many
    /// in-progress marks were made.
    async fn supervised_marks<T>(work: impl Future<Output = T>) -> (Supervised<T>, usize) {
        let marks = AtomicUsize::new(0);
        let outcome = supervise_with(
            || async {
                marks.fetch_add(1, Ordering::SeqCst);
            },
            &CancellationToken::new(),
            far_deadline(),
            work,
        )
        .await;
        (outcome, marks.load(Ordering::SeqCst))
    }

    /// The work is polled at once: no timer stands between a message and its handling
    /// (the clock is half a millisecond off a timer tick, where a timer at "now" would
    /// be rounded up to the next tick).
    #[tokio::test(start_paused = true)]
    async fn work_starts_without_waiting_for_a_timer() {
        tokio::time::advance(Duration::from_micros(500)).await;
        let before = Instant::now();
        let (outcome, marks) = supervised_marks(async { Instant::now() }).await;
        let Supervised::Done(started) = outcome else {
            panic!("expected Done, got {outcome:?}");
        };
        assert_eq!(started - before, Duration::ZERO);
        assert_eq!(marks, 0);
    }

    /// Long work is marked in progress once per period, not before the first.
    #[tokio::test(start_paused = true)]
    async fn long_work_is_marked_in_progress_every_period() {
        let (outcome, marks) =
            supervised_marks(tokio::time::sleep(PROGRESS_EVERY * 2 + PROGRESS_EVERY / 2)).await;
        assert!(matches!(outcome, Supervised::Done(())));
        assert_eq!(marks, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_and_deadline_end_the_work() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let outcome = supervise_with(
            || async {},
            &cancel,
            far_deadline(),
            std::future::pending::<()>(),
        )
        .await;
        assert!(matches!(outcome, Supervised::Cancelled));

        let outcome = supervise_with(
            || async {},
            &CancellationToken::new(),
            Utc::now() + chrono::Duration::milliseconds(50),
            std::future::pending::<()>(),
        )
        .await;
        assert!(matches!(outcome, Supervised::DeadlinePassed));
    }
}
