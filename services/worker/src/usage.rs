//! Token usage events: every answered request reports its tokens to billing
//! (`usage.tokens.<account-token>`, stream USAGE_TOKENS), recorded for the account and charged
//! for no closed model.
//!
//! The event id is `tokens:<request id>` (also the `Nats-Msg-Id`), so a request
//! redelivered and answered twice is still counted once.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use schemas::{RequestEnvelope, Usage, UsageBody, UsageEvent};

use crate::ChunkSink;

/// A usage event that could not be stored in JetStream.
#[derive(Debug, thiserror::Error)]
#[error("cannot publish the usage event: {0}")]
pub struct PublishError(String);

/// The tokens event of `envelope`'s request, served by `provider`'s `model`.
pub fn tokens_event(
    envelope: &RequestEnvelope,
    provider: &str,
    model: &str,
    usage: &Usage,
) -> UsageEvent {
    let now = Utc::now();
    UsageEvent {
        schema_version: schemas::SCHEMA_VERSION,
        event_id: UsageEvent::tokens_id(envelope.request_id),
        account: envelope.account.clone(),
        emitted_at: now,
        body: UsageBody::Tokens {
            request_id: envelope.request_id,
            provider: provider.to_string(),
            model: model.to_string(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_input_tokens: usage.cached_input_tokens.unwrap_or(0),
            at_ms: now.timestamp_millis(),
        },
    }
}

/// Publishes `event` with JetStream, `Nats-Msg-Id` = its event id, and waits for the
/// PubAck (USAGE fsyncs before it answers; USAGE_TOKENS, persisted asynchronously,
/// does not).
pub async fn publish(js: &jetstream::Context, event: &UsageEvent) -> Result<(), PublishError> {
    let subject = event.subject().map_err(|e| PublishError(e.to_string()))?;
    let payload = schemas::encode(event).map_err(|e| PublishError(e.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(schemas::headers::MSG_ID, event.event_id.as_str());
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .map_err(|e| PublishError(e.to_string()))?
        .await
        .map_err(|e| PublishError(e.to_string()))?;
    Ok(())
}

/// Publishes the tokens event of `envelope`'s request (see [`tokens_event`]).
pub async fn publish_tokens(
    js: &jetstream::Context,
    envelope: &RequestEnvelope,
    provider: &str,
    model: &str,
    usage: &Usage,
) -> Result<(), PublishError> {
    publish(js, &tokens_event(envelope, provider, model, usage)).await
}

/// [`crate::finish`] that also reports the request's tokens: once the reply has
/// reached the server, publishes what `sink` reported (provider, served model — else
/// the envelope's model — and usage; nothing when the reply carried no usage, e.g. a
/// failure or a hand-off), then acks. A usage event that cannot be stored is logged
/// and the message acked anyway: the caller has the answer, and running the request
/// again would answer nobody.
pub async fn finish_and_report(
    message: &jetstream::Message,
    sink: &ChunkSink,
    js: &jetstream::Context,
    envelope: &RequestEnvelope,
) {
    if let Err(e) = sink.flush().await {
        tracing::warn!(error = %e, "reply not flushed; redelivering");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    if let Some(usage) = sink.usage() {
        let model = sink.served_model().unwrap_or(&envelope.model);
        if let Err(e) = publish_tokens(js, envelope, sink.provider(), model, &usage).await {
            tracing::error!(error = %e, "token usage not recorded");
        }
    }
    let _ = message.ack().await;
}
