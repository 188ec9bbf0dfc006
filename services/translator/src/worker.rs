//! The consumer loop and the handling of one request message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::StreamExt;
use schemas::subjects::{self, ModelRoute, Provider};
use schemas::{ErrorBody, ErrorKind, RequestEnvelope, SealKey, SealedRequest};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cancels::Cancels;
use crate::metrics::{Metrics, OutcomeLabels, ProviderLabels, ReasonLabels};
use crate::providers::{Failure, Providers};
use crate::retry::{Retries, RetryPolicy};
use crate::sink::ChunkSink;

/// Shared by every request this process handles.
#[derive(Debug)]
pub struct Worker {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub seal: SealKey,
    pub providers: Providers,
    pub metrics: Metrics,
    pub cancels: Cancels,
    pub retry: RetryPolicy,
}

/// While a request runs, its message is marked in progress this often so JetStream
/// does not redeliver it mid-stream (the consumer's ack wait is 30 s).
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Pulls from the translator consumer until `shutdown`, at most `concurrency` at once.
pub async fn consume(
    worker: Arc<Worker>,
    consumer: PullConsumer,
    concurrency: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    loop {
        // Take a permit first, so at most `concurrency` requests run at once (the pull
        // stream prefetches at most one batch beyond them).
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            () = shutdown.cancelled() => break,
        };
        let next = tokio::select! {
            m = messages.next() => m,
            () = shutdown.cancelled() => break,
        };
        match next {
            Some(Ok(message)) => {
                let worker = worker.clone();
                tracker.spawn(async move {
                    handle(&worker, message).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream recovers by itself. Pause
                // briefly so a lasting fault does not spin.
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

async fn dead_letter(
    worker: &Worker,
    message: &jetstream::Message,
    reason: &str,
    request_id: Option<String>,
) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(schemas::headers::DEAD_LETTER_REASON, reason);
    headers.insert(
        schemas::headers::DEAD_LETTER_SOURCE,
        format!(
            "{}/{}",
            subjects::REQUESTS_STREAM,
            subjects::TRANSLATOR_CONSUMER
        )
        .as_str(),
    );
    if let Some(id) = request_id {
        headers.insert(schemas::headers::REQUEST_ID, id.as_str());
    }
    let subject = subjects::dead_letter(subjects::REQUESTS_STREAM, subjects::TRANSLATOR_CONSUMER);
    // The payload stays as published (sealed), so nothing secret lands in the clear.
    let stored = match worker
        .js
        .publish_with_headers(subject, headers, message.payload.clone())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    worker
        .metrics
        .dead_letters
        .get_or_create(&ReasonLabels {
            reason: reason.split(':').next().unwrap_or(reason).to_string(),
        })
        .inc();
    if stored {
        let _ = message.ack_with(AckKind::Term).await;
        tracing::warn!(reason, "message dead-lettered");
    } else {
        // Keep the message: it is redelivered and dead-lettered once JetStream is back.
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        tracing::error!(
            reason,
            "cannot dead-letter a message; it will be redelivered"
        );
    }
}

/// Handles one message; always acks, naks or terminates it.
async fn handle(worker: &Worker, message: jetstream::Message) {
    let envelope: RequestEnvelope = match schemas::decode(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            return dead_letter(
                worker,
                &message,
                &format!("undecodable envelope: {e}"),
                None,
            )
            .await;
        }
    };
    // The caller's W3C trace context, carried in a header by the ingress.
    let traceparent = message
        .headers
        .as_ref()
        .and_then(|h| h.get(schemas::headers::TRACEPARENT))
        .map(|v| v.as_str().to_string())
        .filter(|v| schemas::headers::is_traceparent(v));
    let span = tracing::info_span!(
        "request",
        request_id = %envelope.request_id,
        model = %envelope.model,
        traceparent = traceparent.as_deref().unwrap_or_default(),
    );
    async {
        let route = subjects::route_model(&envelope.model);
        let provider = match &route {
            Ok(ModelRoute::Closed { provider, .. }) => *provider,
            // Not ours to run; say so below, as the OpenAI-compatible provider.
            _ => Provider::OpenAi,
        };
        let mut sink = ChunkSink::new(
            worker.client.clone(),
            envelope.reply.subject().to_string(),
            envelope.request_id,
            provider.as_str(),
        );
        let id = Some(envelope.request_id.to_string());
        if envelope.schema_version > schemas::SCHEMA_VERSION {
            let reason = format!(
                "schema version {} is newer than this translator's {}",
                envelope.schema_version,
                schemas::SCHEMA_VERSION
            );
            let _ = sink.fail(ErrorBody::new(ErrorKind::Internal, reason.clone())).await;
            return dead_letter(worker, &message, &reason, id).await;
        }
        if envelope.deadline < Utc::now() {
            worker.metrics.expired.inc();
            tracing::info!("deadline passed before the request was run; dropped");
            let _ = sink
                .fail(ErrorBody::new(ErrorKind::Timeout, "the request waited past its deadline and was not run"))
                .await;
            let _ = message.ack().await;
            return;
        }
        let sealed: SealedRequest = match worker
            .seal
            .open(envelope.request_id, &envelope.body)
            .map_err(|e| e.to_string())
            .and_then(|plain| schemas::decode(&plain).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                let _ = sink
                    .fail(ErrorBody::new(ErrorKind::Internal, "this request cannot be opened by the worker"))
                    .await;
                return dead_letter(worker, &message, &format!("cannot open body: {e}"), id).await;
            }
        };
        let outcome = match route {
            Ok(ModelRoute::Closed { provider, upstream_model }) if sealed.request.model == envelope.model => {
                run(worker, &message, &envelope, &sealed, provider, &upstream_model, &mut sink).await
            }
            _ => Err(Failure::Reply(ErrorBody::new(
                ErrorKind::InvalidRequest,
                format!("'{}' is not a closed-model id", envelope.model),
            ))),
        };
        let label = match &outcome {
            Ok(()) => "ok".to_string(),
            Err(Failure::Reply(e)) => e.kind.as_str().to_string(),
            Err(Failure::Sink(_)) => "reply_failed".to_string(),
        };
        worker
            .metrics
            .requests
            .get_or_create(&OutcomeLabels {
                provider: provider.as_str().to_string(),
                outcome: label,
            })
            .inc();
        match outcome {
            Ok(()) => {}
            Err(Failure::Reply(error)) => {
                tracing::info!(kind = error.kind.as_str(), provider_status = ?error.provider_status, "request failed");
                if let Err(e) = sink.fail(error).await {
                    tracing::warn!(error = %e, "cannot send the failure");
                }
            }
            Err(Failure::Sink(e)) => {
                tracing::warn!(error = %e, "reply subject unusable");
            }
        }
        // Ack only after the reply reached the server.
        match sink.flush().await {
            Ok(()) => {
                let _ = message.ack().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reply not flushed; redelivering");
                let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the provider call, keeping the message alive and watching for cancellation and
/// the deadline.
async fn run(
    worker: &Worker,
    message: &jetstream::Message,
    envelope: &RequestEnvelope,
    sealed: &SealedRequest,
    provider: Provider,
    upstream_model: &str,
    sink: &mut ChunkSink,
) -> Result<(), Failure> {
    // The model, then its fallbacks: each is tried (with retries) only while nothing
    // has reached the caller.
    let mut chain = vec![(provider, upstream_model.to_string())];
    for model in &sealed.request.fallback_models {
        match subjects::route_model(model) {
            Ok(ModelRoute::Closed {
                provider,
                upstream_model,
            }) => chain.push((provider, upstream_model)),
            _ => {
                return Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    format!("the fallback '{model}' is not a closed-model id"),
                )));
            }
        }
    }
    let cancel = worker.cancels.watch(envelope.request_id);
    let remaining = (envelope.deadline - Utc::now())
        .to_std()
        .unwrap_or_default();
    let metrics = &worker.metrics;
    let call = async {
        let mut outcome = Ok(());
        for (i, (provider, upstream_model)) in chain.iter().enumerate() {
            let Some(key) = sealed.key_for(provider.as_str(), chain[0].0.as_str()) else {
                outcome = Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::Authentication,
                    format!("missing the provider key for {}", provider.as_str()),
                )));
                continue;
            };
            if i > 0 {
                tracing::info!(
                    provider = provider.as_str(),
                    "falling back to the next model"
                );
                metrics
                    .fallbacks
                    .get_or_create(&ProviderLabels {
                        provider: provider.as_str().to_string(),
                    })
                    .inc();
            }
            sink.set_provider(provider.as_str());
            outcome = call_with_retries(
                worker,
                *provider,
                upstream_model,
                key,
                &sealed.request,
                sink,
            )
            .await;
            match &outcome {
                Err(Failure::Reply(_)) if !sink.started() => continue,
                _ => break,
            }
        }
        outcome
    };
    tokio::pin!(call);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let deadline = tokio::time::sleep(remaining);
    tokio::pin!(deadline);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            () = cancel.token.cancelled() => {
                tracing::info!("cancelled by the caller");
                break Err(Failure::Reply(ErrorBody::new(ErrorKind::InvalidRequest, "cancelled by the caller")));
            }
            () = &mut deadline => {
                break Err(Failure::Reply(ErrorBody::new(ErrorKind::Timeout, "the provider did not finish before the request deadline")));
            }
        }
    };
    drop(cancel);
    result
}

/// One provider call, retried (see `retry`) while nothing has reached the caller.
async fn call_with_retries(
    worker: &Worker,
    provider: Provider,
    upstream_model: &str,
    key: &str,
    request: &schemas::ChatRequest,
    sink: &mut ChunkSink,
) -> Result<(), Failure> {
    let metrics = &worker.metrics;
    let labels = ProviderLabels {
        provider: provider.as_str().to_string(),
    };
    let mut retries = Retries::new(worker.retry);
    loop {
        let attempt_started = Instant::now();
        let result = worker
            .providers
            .chat(provider, request, upstream_model, key, sink, || {
                metrics
                    .upstream_first_byte
                    .get_or_create(&labels)
                    .observe(attempt_started.elapsed().as_secs_f64());
            })
            .await;
        match result {
            Err(Failure::Reply(error)) if !sink.started() => match retries.next_delay(&error) {
                Some(delay) => {
                    tracing::info!(
                        kind = error.kind.as_str(),
                        provider_status = ?error.provider_status,
                        attempt = retries.attempts(),
                        delay_ms = delay.as_millis() as u64,
                        "retrying the provider call"
                    );
                    metrics.retries.get_or_create(&labels).inc();
                    tokio::time::sleep(delay).await;
                }
                None => return Err(Failure::Reply(error)),
            },
            other => return other,
        }
    }
}

/// The translator's durable consumer, which `switchyard-nats apply` creates.
pub async fn consumer(js: &jetstream::Context) -> Result<PullConsumer, String> {
    let stream = js
        .get_stream(subjects::REQUESTS_STREAM)
        .await
        .map_err(|e| {
            format!(
                "stream {} not found ({e}); run `switchyard-nats apply` first",
                subjects::REQUESTS_STREAM
            )
        })?;
    stream
        .get_consumer(subjects::TRANSLATOR_CONSUMER)
        .await
        .map_err(|e| {
            format!(
                "consumer {} not found ({e}); run `switchyard-nats apply` first",
                subjects::TRANSLATOR_CONSUMER
            )
        })
}
