//! The consumer loop and the handling of one request message.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, consumer::PullConsumer};
use schemas::subjects::{self, ModelRoute, Provider};
use schemas::{ErrorBody, ErrorKind, RequestEnvelope, SealedRequest};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::{Metrics, OutcomeLabels, ProviderLabels};
use crate::providers::{Failure, Providers};
use crate::retry::{Retries, RetryPolicy};
use switchyard_worker::{Cancels, ChunkSink, Intake, Received, Supervised};

/// Shared by every request this process handles.
#[derive(Debug)]
pub struct Worker {
    pub client: async_nats::Client,
    pub intake: Intake,
    pub providers: Providers,
    pub metrics: Metrics,
    pub cancels: Cancels,
    pub retry: RetryPolicy,
}

/// Pulls from the translator consumer until `shutdown`, at most `concurrency` at once;
/// batch work (`batch`) only with idle capacity.
pub async fn consume(
    worker: Arc<Worker>,
    consumer: PullConsumer,
    batch: Option<PullConsumer>,
    concurrency: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), async_nats::Error> {
    switchyard_worker::consume_with_batch(
        consumer,
        batch,
        concurrency,
        tracker,
        shutdown,
        move |message| {
            let worker = worker.clone();
            async move { handle(&worker, message).await }
        },
    )
    .await
}

/// Handles one message; always acks, naks or terminates it.
async fn handle(worker: &Worker, message: jetstream::Message) {
    let Some(Received {
        envelope,
        sealed,
        mut sink,
        traceparent,
    }) = worker
        .intake
        .receive(&message, |envelope| {
            match subjects::route_model(&envelope.model) {
                Ok(ModelRoute::Closed { provider, .. }) => provider.as_str(),
                // Not ours to run; answered below, as the OpenAI-compatible provider.
                _ => Provider::OpenAi.as_str(),
            }
        })
        .await
    else {
        return;
    };
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
            _ => Provider::OpenAi,
        };
        let outcome = match route {
            Ok(ModelRoute::Closed { provider, upstream_model }) if sealed.request.model == envelope.model => {
                run(worker, &message, &envelope, &sealed, (provider, &upstream_model), &mut sink, traceparent.as_deref()).await
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
            Err(Failure::HandedOff) => "handed_off".to_string(),
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
                // Batch work: a rate limit delays the row rather than failing it.
                if switchyard_worker::retry_batch_later(&message, &sink, &error, envelope.deadline).await {
                    return;
                }
                if let Err(e) = sink.fail(error).await {
                    tracing::warn!(error = %e, "cannot send the failure");
                }
            }
            Err(Failure::Sink(e)) => {
                tracing::warn!(error = %e, "reply subject unusable");
            }
            // The open model's worker answers the caller now.
            Err(Failure::HandedOff) => {}
        }
        // Ack only after the reply reached the server (and its tokens went to billing).
        switchyard_worker::usage::finish_and_report(&message, &sink, &worker.intake.js, &envelope)
            .await;
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
    (provider, upstream_model): (Provider, &str),
    sink: &mut ChunkSink,
    traceparent: Option<&str>,
) -> Result<(), Failure> {
    // The model, then its closed fallbacks: each is tried here (with retries) only
    // while nothing has reached the caller. From the first open-model fallback on, the
    // rest is handed to the inference workers.
    let mut chain = vec![(provider, upstream_model.to_string())];
    let mut open_rest: &[String] = &[];
    for (i, model) in sealed.request.fallback_models.iter().enumerate() {
        match subjects::route_model(model) {
            Ok(ModelRoute::Closed {
                provider,
                upstream_model,
            }) => chain.push((provider, upstream_model)),
            Ok(ModelRoute::Open { .. }) => {
                open_rest = &sealed.request.fallback_models[i..];
                break;
            }
            Err(e) => {
                return Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    format!("the fallback '{model}' is not a model id: {e}"),
                )));
            }
        }
    }
    let cancel = worker.cancels.watch(envelope.request_id);
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
        if matches!(outcome, Err(Failure::Reply(_))) && !sink.started() && !open_rest.is_empty() {
            match worker
                .intake
                .hand_off(envelope, sealed, open_rest, traceparent)
                .await
            {
                Ok(()) => {
                    metrics
                        .fallbacks
                        .get_or_create(&ProviderLabels {
                            provider: "switchyard".to_string(),
                        })
                        .inc();
                    return Err(Failure::HandedOff);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand the request to its open fallback")
                }
            }
        }
        outcome
    };
    let result =
        match switchyard_worker::supervise(message, &cancel.token, envelope.deadline, call).await {
            Supervised::Done(result) => result,
            Supervised::Cancelled => {
                tracing::info!("cancelled by the caller");
                Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    "cancelled by the caller",
                )))
            }
            Supervised::DeadlinePassed => Err(Failure::Reply(ErrorBody::new(
                ErrorKind::Timeout,
                "the provider did not finish before the request deadline",
            ))),
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
    applied_consumer(js, subjects::REQUESTS_STREAM, subjects::TRANSLATOR_CONSUMER).await
}

/// The translator's batch consumer (closed-model batch work), which `switchyard-nats
/// apply` creates.
pub async fn batch_consumer(js: &jetstream::Context) -> Result<PullConsumer, String> {
    applied_consumer(
        js,
        subjects::BATCHWORK_STREAM,
        subjects::TRANSLATOR_BATCH_CONSUMER,
    )
    .await
}

async fn applied_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> Result<PullConsumer, String> {
    let stream = js.get_stream(stream).await.map_err(|e| {
        format!("stream {stream} not found ({e}); run `switchyard-nats apply` first")
    })?;
    stream
        .get_consumer(name)
        .await
        .map_err(|e| format!("consumer {name} not found ({e}); run `switchyard-nats apply` first"))
}
