//! A pull consumer's message stream that starts over when the server stops answering.
//!
//! async-nats' pull stream keeps one pull request open and counts the messages it still
//! expects from it. When nats-server restarts, the request is gone with the old
//! process, but the stream may still count it as pending: its reconnect check can fail
//! while JetStream is still recovering, and then it asks again only when the old
//! request would have expired (30 s and more). Until then nothing is delivered, though
//! the server is back. [`Messages`] watches for the signs (a missed idle heartbeat, no
//! responders, a pull request that could not be sent) and then replaces the stream
//! with a fresh one: a new inbox and a new pull request.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{MessagesError, MessagesErrorKind, Stream};
use async_nats::jetstream::{self};
use futures::StreamExt;

/// How often the server sends an idle heartbeat on an open pull request; two missed
/// ones end it here.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long one pull request stays open.
pub const EXPIRES: Duration = Duration::from_secs(30);

/// The messages of a pull consumer, `batch` per pull request, with a heartbeat.
pub struct Messages {
    consumer: PullConsumer,
    batch: usize,
    heartbeat: Duration,
    stream: Option<Stream>,
}

/// Why [`Messages::next`] yielded no message this time; the stream goes on.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// From the pull stream (a missed heartbeat, no responders, …).
    #[error("{0}")]
    Messages(#[from] MessagesError),
    /// A fresh pull stream could not be opened (the server is away).
    #[error("cannot open a pull stream: {0}")]
    Open(String),
}

impl Messages {
    /// Opens the stream: the first pull request goes out.
    pub async fn new(consumer: PullConsumer, batch: usize) -> Result<Self, PullError> {
        Self::with_heartbeat(consumer, batch, HEARTBEAT).await
    }

    /// [`Self::new`] with another idle heartbeat (tests: at most half of [`EXPIRES`]).
    pub async fn with_heartbeat(
        consumer: PullConsumer,
        batch: usize,
        heartbeat: Duration,
    ) -> Result<Self, PullError> {
        let mut me = Self {
            consumer,
            batch: batch.max(1),
            heartbeat,
            stream: None,
        };
        me.stream = Some(me.open().await?);
        Ok(me)
    }

    async fn open(&self) -> Result<Stream, PullError> {
        self.consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .heartbeat(self.heartbeat)
            .expires(EXPIRES)
            .messages()
            .await
            .map_err(|e| PullError::Open(e.to_string()))
    }

    /// The next message. An error is for the caller to log (and pause on); the stream
    /// carries on, started over where the error means the server has lost the pull
    /// request. `None`: the stream has ended for good (the consumer was deleted, or it
    /// is not a pull consumer).
    pub async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => match self.open().await {
                Ok(stream) => self.stream.insert(stream),
                Err(e) => return Some(Err(e)),
            },
        };
        match stream.next().await? {
            Ok(message) => Some(Ok(message)),
            Err(e) => {
                if starts_over(e.kind()) {
                    // Opened again on the next call (now, if the server is back).
                    self.stream = None;
                }
                Some(Err(e.into()))
            }
        }
    }
}

/// The server no longer serves this stream's pull request.
fn starts_over(kind: MessagesErrorKind) -> bool {
    matches!(
        kind,
        MessagesErrorKind::MissingHeartbeat
            | MessagesErrorKind::NoResponders
            | MessagesErrorKind::Pull
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_pull_request_starts_the_stream_over() {
        assert!(starts_over(MessagesErrorKind::MissingHeartbeat));
        assert!(starts_over(MessagesErrorKind::NoResponders));
        assert!(starts_over(MessagesErrorKind::Pull));
        assert!(!starts_over(MessagesErrorKind::ConsumerDeleted));
        assert!(!starts_over(MessagesErrorKind::PushBasedConsumer));
        assert!(!starts_over(MessagesErrorKind::Other));
    }
}
