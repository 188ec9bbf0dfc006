//! The request envelope: what travels on `req.…` and `batch.…` subjects.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chat::ChatRequest;
use crate::seal::Sealed;

/// Metadata in the clear (routing, deadlines, accounting) around a sealed body.
///
/// The body ([`SealedRequest`]) holds the prompt and the caller's provider key, so it is
/// sealed with AES-256-GCM before it is published: JetStream writes message bodies to disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestEnvelope {
    /// Schema version the writer used ([`crate::SCHEMA_VERSION`]).
    pub schema_version: u16,
    /// UUIDv7; also the `Nats-Msg-Id` header, so retried publishes are deduplicated.
    pub request_id: Uuid,
    /// The account the request is billed to.
    pub account: String,
    pub created_at: DateTime<Utc>,
    /// After this instant the request is dropped, not run.
    pub deadline: DateTime<Utc>,
    /// Where the answer goes.
    pub reply: ReplyTarget,
    /// The model id in the clear (not secret), for routing and metrics without unsealing.
    pub model: String,
    /// The sealed [`SealedRequest`].
    pub body: Sealed,
    /// A worker that takes the request after this instant drops it unrun (answering
    /// nothing): the caller stopped waiting for a cold start and was told to retry.
    /// Absent: only `deadline` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_by: Option<DateTime<Utc>>,
    /// A worker that finds the request *stored* in the stream after this instant (plus
    /// [`ENQUEUE_GRACE_MS`] for clock skew) drops it unrun: the ingress stopped waiting
    /// for JetStream's acknowledgement at this instant and told the caller to retry
    /// (503). Without it, a publish the NATS client held while the server was away
    /// would reach the stream after its caller's retry, and run twice. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue_by: Option<DateTime<Utc>>,
}

/// Slack a worker allows between an envelope's `enqueue_by` (the ingress's clock) and
/// the stream's timestamp of the message (the server's clock) before dropping it.
pub const ENQUEUE_GRACE_MS: i64 = 1_000;

impl RequestEnvelope {
    /// Whether the stream stored this request (at `stored`, the server's timestamp) after
    /// the ingress had given up on its acknowledgement ([`RequestEnvelope::enqueue_by`]).
    pub fn enqueued_too_late(&self, stored: DateTime<Utc>) -> bool {
        self.enqueue_by
            .is_some_and(|by| stored > by + chrono::Duration::milliseconds(ENQUEUE_GRACE_MS))
    }
}

/// Where a worker sends the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyTarget {
    /// Stream [`crate::ReplyChunk`]s over core NATS to this subject
    /// (`reply.<ingress>.<request>`); the HTTP caller is waiting.
    Stream { subject: String },
    /// Publish one whole [`crate::BatchResult`] to this subject
    /// (`res.<account>.<job>.<request>`, stream RESULTS) with JetStream, deduplicated by
    /// request id. Batch work: nobody waits on a connection.
    Result { subject: String, job: String },
}

impl ReplyTarget {
    /// Whether this is batch work (a durable result, not a waiting caller).
    pub fn is_batch(&self) -> bool {
        matches!(self, ReplyTarget::Result { .. })
    }

    /// The subject answers are published to.
    pub fn subject(&self) -> &str {
        match self {
            ReplyTarget::Stream { subject } | ReplyTarget::Result { subject, .. } => subject,
        }
    }
}

/// The secret part of a request: opened only by the worker that runs it.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SealedRequest {
    pub request: ChatRequest,
    /// The caller's own provider key for closed models; used for this request only.
    #[serde(default)]
    pub provider_key: Option<String>,
    /// Keys for other providers, by provider token (`anthropic`, `google`, …), for the
    /// request's fallback models; `provider_key` serves the primary model's provider.
    #[serde(default)]
    pub provider_keys: std::collections::BTreeMap<String, String>,
    /// A task other than chat (embeddings, zero-shot classification) for an open
    /// model; absent means chat on `request.messages`.
    #[serde(default)]
    pub task: Option<crate::task::TaskInput>,
}

impl SealedRequest {
    /// The caller's key for `provider`, given the primary model's provider.
    pub fn key_for(&self, provider: &str, primary_provider: &str) -> Option<&str> {
        self.provider_keys
            .get(provider)
            .map(String::as_str)
            .or_else(|| {
                (provider == primary_provider)
                    .then_some(self.provider_key.as_deref())
                    .flatten()
            })
    }
}

impl std::fmt::Debug for SealedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Prompts and keys never reach a log, even by accident.
        f.debug_struct("SealedRequest")
            .field("model", &self.request.model)
            .field("messages", &self.request.messages.len())
            .field(
                "task",
                &self.task.as_ref().map(crate::task::TaskInput::name),
            )
            .field(
                "provider_key",
                &self.provider_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
