//! Sends a request's reply chunks, numbered, to its reply subject.

use bytes::Bytes;
use schemas::{Delta, ErrorBody, FinishReason, ReplyChunk, TaskOutput, Usage};
use uuid::Uuid;

/// The reply stream of one request. Chunks go out over core NATS in order (one
/// publisher, one connection); `seq` lets the ingress check that none were lost.
#[derive(Debug)]
pub struct ChunkSink {
    client: async_nats::Client,
    subject: String,
    request_id: Uuid,
    seq: u32,
    provider: &'static str,
    dropped_params: Vec<String>,
    finished: bool,
    /// The token usage the reply reported, once sent (what billing records).
    usage: Option<Usage>,
    /// The served model named on the first chunk, once sent.
    served_model: Option<String>,
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
        Self {
            client,
            subject,
            request_id,
            seq: 0,
            provider,
            dropped_params: Vec::new(),
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
        let payload = schemas::encode(chunk).map_err(|e| SendError(e.to_string()))?;
        self.client
            .publish(self.subject.clone(), Bytes::from(payload))
            .await
            .map_err(|e| SendError(e.to_string()))?;
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

    /// Waits until everything sent so far has reached the server.
    pub async fn flush(&self) -> Result<(), SendError> {
        self.client
            .flush()
            .await
            .map_err(|e| SendError(e.to_string()))
    }
}
