//! Sends a request's reply: numbered chunks to the waiting caller's reply subject, or,
//! for batch work, one whole [`BatchResult`] to the durable RESULTS stream.

use async_nats::jetstream;
use bytes::Bytes;
use schemas::batch::Assembly;
use schemas::{BatchResult, Delta, ErrorBody, FinishReason, ReplyChunk, TaskOutput, Usage};
use uuid::Uuid;

/// The reply of one request. Chunks go out over core NATS in order (one publisher,
/// one connection); `seq` lets the ingress check that none were lost. For batch work
/// ([`ChunkSink::for_result`]) the same chunks are assembled here, and the last one
/// publishes the whole result with JetStream.
#[derive(Debug)]
pub struct ChunkSink {
    destination: Destination,
    subject: String,
    request_id: Uuid,
    seq: u32,
    provider: &'static str,
    dropped_params: Vec<String>,
    service_tier: Option<String>,
    finished: bool,
    /// The token usage the reply reported, once sent (what billing records).
    usage: Option<Usage>,
    /// The served model named on the first chunk, once sent.
    served_model: Option<String>,
}

#[derive(Debug)]
enum Destination {
    Stream(async_nats::Client),
    Result {
        js: jetstream::Context,
        meta: ResultMeta,
        assembly: Box<Assembly>,
        /// The result could not be stored: the request must run again.
        lost: bool,
    },
}

/// What a batch result names besides the answer.
#[derive(Debug, Clone)]
pub struct ResultMeta {
    pub account: String,
    pub job: String,
    /// The model the request named.
    pub model: String,
}

/// Stores `result` on `subject` (stream RESULTS) with `Nats-Msg-Id` = its request id,
/// waiting for the PubAck: one result per request id, however often it is published.
pub async fn publish_result(
    js: &jetstream::Context,
    subject: &str,
    result: &BatchResult,
) -> Result<(), SendError> {
    let payload = schemas::encode(result).map_err(|e| SendError(e.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        schemas::headers::MSG_ID,
        result.request_id.to_string().as_str(),
    );
    js.publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .map_err(|e| SendError(e.to_string()))?
        .await
        .map_err(|e| SendError(e.to_string()))?;
    Ok(())
}

/// The reply subject cannot be published to (NATS is down or the connection closed).
#[derive(Debug, thiserror::Error)]
#[error("cannot send reply: {0}")]
pub struct SendError(String);

impl ChunkSink {
    pub fn new(
        client: async_nats::Client,
        subject: String,
        request_id: Uuid,
        provider: &'static str,
    ) -> Self {
        Self::with_destination(Destination::Stream(client), subject, request_id, provider)
    }

    /// A sink for batch work: the reply is assembled and stored whole as a
    /// [`BatchResult`] on `subject` (`res.<account>.<job>.<request>`).
    pub fn for_result(
        js: jetstream::Context,
        subject: String,
        request_id: Uuid,
        provider: &'static str,
        meta: ResultMeta,
    ) -> Self {
        Self::with_destination(
            Destination::Result {
                js,
                meta,
                assembly: Box::default(),
                lost: false,
            },
            subject,
            request_id,
            provider,
        )
    }

    fn with_destination(
        destination: Destination,
        subject: String,
        request_id: Uuid,
        provider: &'static str,
    ) -> Self {
        Self {
            destination,
            subject,
            request_id,
            seq: 0,
            provider,
            dropped_params: Vec::new(),
            service_tier: None,
            finished: false,
            usage: None,
            served_model: None,
        }
    }

    /// The provider answering (a fallback may take over before the first chunk).
    pub fn set_provider(&mut self, provider: &'static str) {
        self.provider = provider;
    }

    /// Parameters the provider call leaves out; reported on the first chunk.
    pub fn set_dropped_params(&mut self, params: Vec<String>) {
        self.dropped_params = params;
    }

    /// The processing tier the provider reports (OpenAI's names); sent on the first
    /// chunk, so it must be known before it.
    pub fn set_service_tier(&mut self, tier: Option<String>) {
        self.service_tier = tier;
    }

    /// Whether anything reached the caller yet (retrying is safe only before).
    pub fn started(&self) -> bool {
        self.seq > 0
    }

    /// Whether the last chunk was sent.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Who answers (see [`ChunkSink::set_provider`]).
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// The token usage the reply reported, once it was sent.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The model that served the request as named on the first chunk, once sent.
    pub fn served_model(&self) -> Option<&str> {
        self.served_model.as_deref()
    }

    /// Sends one chunk; the first names the provider and `served_model`.
    pub async fn send(
        &mut self,
        delta: Option<Delta>,
        finish_reason: Option<FinishReason>,
        usage: Option<Usage>,
        served_model: Option<&str>,
        last: bool,
    ) -> Result<(), SendError> {
        let mut chunk = ReplyChunk::new(self.request_id, self.seq);
        chunk.delta = delta;
        chunk.finish_reason = finish_reason;
        chunk.usage = usage;
        chunk.last = last;
        if self.seq == 0 {
            chunk.provider = Some(self.provider.to_string());
            chunk.model = served_model.map(str::to_string);
            chunk.dropped_params = self.dropped_params.clone();
            chunk.service_tier.clone_from(&self.service_tier);
        }
        self.publish(&chunk).await
    }

    /// Sends a task's whole result as the last chunk.
    pub async fn send_output(
        &mut self,
        output: TaskOutput,
        usage: Usage,
        served_model: &str,
    ) -> Result<(), SendError> {
        let mut chunk = ReplyChunk::new(self.request_id, self.seq);
        chunk.output = Some(output);
        chunk.usage = Some(usage);
        chunk.last = true;
        if self.seq == 0 {
            chunk.provider = Some(self.provider.to_string());
            chunk.model = Some(served_model.to_string());
            chunk.dropped_params = self.dropped_params.clone();
        }
        self.publish(&chunk).await
    }

    /// Sends `error` as the last chunk.
    pub async fn fail(&mut self, error: ErrorBody) -> Result<(), SendError> {
        let mut chunk = ReplyChunk::failure(self.request_id, self.seq, error);
        if self.seq == 0 {
            chunk.provider = Some(self.provider.to_string());
        }
        self.publish(&chunk).await
    }

    async fn publish(&mut self, chunk: &ReplyChunk) -> Result<(), SendError> {
        if self.finished {
            return Ok(());
        }
        match &mut self.destination {
            Destination::Stream(client) => {
                let payload = schemas::encode(chunk).map_err(|e| SendError(e.to_string()))?;
                client
                    .publish(self.subject.clone(), Bytes::from(payload))
                    .await
                    .map_err(|e| SendError(e.to_string()))?;
            }
            Destination::Result {
                js,
                meta,
                assembly,
                lost,
            } => {
                assembly.add(chunk);
                if chunk.last {
                    let result = std::mem::take(assembly.as_mut()).into_result(
                        self.request_id,
                        &meta.account,
                        &meta.job,
                        &meta.model,
                    );
                    if let Err(e) = publish_result(js, &self.subject, &result).await {
                        *lost = true;
                        return Err(e);
                    }
                }
            }
        }
        self.seq += 1;
        self.finished = chunk.last;
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        if chunk.model.is_some() {
            self.served_model.clone_from(&chunk.model);
        }
        Ok(())
    }

    /// Waits until everything sent so far has reached the server. For batch work:
    /// fails when the result could not be stored (so the request runs again).
    pub async fn flush(&self) -> Result<(), SendError> {
        match &self.destination {
            Destination::Stream(client) => {
                client.flush().await.map_err(|e| SendError(e.to_string()))
            }
            Destination::Result { lost: true, .. } => {
                Err(SendError("the batch result was not stored".into()))
            }
            // Stored with an awaited PubAck, or nothing to store (handed off).
            Destination::Result { .. } => Ok(()),
        }
    }

    /// Whether this sink stores a batch result (nobody is waiting on a connection).
    pub fn is_batch(&self) -> bool {
        matches!(self.destination, Destination::Result { .. })
    }
}
