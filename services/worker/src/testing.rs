//! For tests of anything that takes requests off JetStream: publish a request the way
//! the ingress does (sealed, with its request id as `Nats-Msg-Id`) and read its reply.

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use schemas::subjects::{self, ModelRoute};
use schemas::{ReplyChunk, ReplyTarget, RequestEnvelope, SealKey, SealedRequest};
use uuid::Uuid;

/// Seals `sealed` for `account` with `deadline_in`, publishes it to its model's subject
/// (`req.closed.<provider>` or `req.open.<model>.<account>`), and returns the request id
/// and a subscription to its reply subject (made before publishing).
pub async fn publish_request(
    client: &async_nats::Client,
    seal: &SealKey,
    account: &str,
    sealed: &SealedRequest,
    deadline_in: chrono::Duration,
) -> Result<(Uuid, async_nats::Subscriber), String> {
    publish_request_with(client, seal, account, sealed, deadline_in, None).await
}

/// Like [`publish_request`], with the envelope's `enqueue_by` (when the ingress stops
/// waiting for the stream's acknowledgement).
pub async fn publish_request_with(
    client: &async_nats::Client,
    seal: &SealKey,
    account: &str,
    sealed: &SealedRequest,
    deadline_in: chrono::Duration,
    enqueue_by: Option<chrono::DateTime<Utc>>,
) -> Result<(Uuid, async_nats::Subscriber), String> {
    let model = sealed.request.model.clone();
    let subject = match subjects::route_model(&model).map_err(|e| e.to_string())? {
        ModelRoute::Closed { provider, .. } => subjects::closed_request(provider),
        ModelRoute::Open { .. } => {
            subjects::open_request_for(&model, account).map_err(|e| e.to_string())?
        }
    };
    let id = Uuid::now_v7();
    let reply = format!("reply.test.{}", id.simple());
    let sub = client
        .subscribe(reply.clone())
        .await
        .map_err(|e| e.to_string())?;
    let plain = schemas::encode(sealed).map_err(|e| e.to_string())?;
    let envelope = RequestEnvelope {
        schema_version: schemas::SCHEMA_VERSION,
        request_id: id,
        account: account.into(),
        created_at: Utc::now(),
        deadline: Utc::now() + deadline_in,
        reply: ReplyTarget::Stream { subject: reply },
        model,
        body: seal.seal(id, &plain).map_err(|e| e.to_string())?,
        start_by: None,
        enqueue_by,
    };
    jetstream::new(client.clone())
        .send_publish(
            subject,
            jetstream::message::PublishMessage::build()
                .payload(
                    schemas::encode(&envelope)
                        .map_err(|e| e.to_string())?
                        .into(),
                )
                .message_id(id.to_string()),
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((id, sub))
}

/// The next reply chunk, waiting at most `wait`.
pub async fn next_chunk(
    sub: &mut async_nats::Subscriber,
    wait: Duration,
) -> Result<ReplyChunk, String> {
    let msg = tokio::time::timeout(wait, sub.next())
        .await
        .map_err(|_| format!("no reply chunk within {wait:?}"))?
        .ok_or("the reply subscription ended")?;
    schemas::decode(&msg.payload).map_err(|e| e.to_string())
}
