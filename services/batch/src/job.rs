//! A batch job's side of the contract, in Rust: what `examples/batch.rs` (and the
//! tests) use to publish requests and collect their results. Written from
//! `schemas/BATCH.md` like any other publisher's code would be.
//!
//! - [`request_id`]: a UUIDv5 of account, job and row, so re-running a job publishes
//!   the same ids (the stream drops duplicates; the router skips requests already
//!   answered).
//! - [`Results::open`]: reads the job's results from RESULTS (a named, ordered *push*
//!   consumer on `res.<account>.<job>.>` delivering to the job's own inbox: what a
//!   batch user's NATS permissions allow, see `nats/README.md`), first those already
//!   stored, then new ones as they land.
//! - [`publish`]: publishes requests with JetStream, `Nats-Msg-Id` = request id,
//!   pipelining up to [`PUBLISH_WINDOW`] unacknowledged publishes.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::push::OrderedConfig};
use futures::StreamExt;
use futures::stream::BoxStream;
use schemas::{BatchRequest, BatchResult, subjects};
use uuid::Uuid;

/// Publishes in flight at once, awaiting their PubAcks in order.
pub const PUBLISH_WINDOW: usize = 256;

/// The namespace of [`request_id`]'s UUIDv5s (fixed; documented in `schemas/BATCH.md`).
pub const REQUEST_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_8a2e_4c3b_5d7e_9f10_2a3b_4c5d_6e7f);

/// The request id of row `row` of `job` of `account`: UUIDv5 of `"<account>/<job>/<row>"`.
pub fn request_id(account: &str, job: &str, row: u64) -> Uuid {
    Uuid::new_v5(
        &REQUEST_ID_NAMESPACE,
        format!("{account}/{job}/{row}").as_bytes(),
    )
}

/// Something the job could not do.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Nats(String),
    #[error("cannot encode a request: {0}")]
    Encode(#[from] schemas::CodecError),
}

fn nats(e: impl std::fmt::Display) -> JobError {
    JobError::Nats(e.to_string())
}

/// How many of the published requests the stream stored, and how many it dropped as
/// already published (same `Nats-Msg-Id` within its duplicate window).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub stored: u64,
    pub duplicates: u64,
}

/// Publishes `requests` to `batch.<account>.<job>` with JetStream, each with
/// `Nats-Msg-Id` = its request id, and waits for every PubAck.
pub async fn publish(
    js: &jetstream::Context,
    account_token: &str,
    job: &str,
    requests: impl IntoIterator<Item = BatchRequest>,
) -> Result<Published, JobError> {
    let subject = subjects::batch_request(account_token, job);
    let mut acks = std::collections::VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut out = Published::default();
    let settle = |ack: jetstream::publish::PublishAck, out: &mut Published| {
        if ack.duplicate {
            out.duplicates += 1;
        } else {
            out.stored += 1;
        }
    };
    for request in requests {
        let payload = schemas::encode(&request)?;
        let ack = js
            .send_publish(
                subject.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(request.request_id.to_string()),
            )
            .await
            .map_err(nats)?;
        acks.push_back(ack);
        if acks.len() >= PUBLISH_WINDOW
            && let Some(ack) = acks.pop_front()
        {
            settle(ack.await.map_err(nats)?, &mut out);
        }
    }
    for ack in acks {
        settle(ack.await.map_err(nats)?, &mut out);
    }
    Ok(out)
}

/// A job's results, in the order they were stored.
pub struct Results {
    messages: BoxStream<'static, Result<jetstream::Message, String>>,
    /// How many results were already stored when [`Results::open`] looked.
    pub stored_at_open: u64,
}

impl std::fmt::Debug for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results")
            .field("stored_at_open", &self.stored_at_open)
            .finish_non_exhaustive()
    }
}

impl Results {
    /// Starts reading every result of `job` (`res.<account>.<job>.>`) from the
    /// beginning, with a named, ordered push consumer (ephemeral, ack none, recreated
    /// by the client on gaps) delivering to an inbox of `js`'s connection. How many
    /// results were stored comes with the consumer's creation (a batch user may not ask
    /// for consumer info).
    pub async fn open(
        js: &jetstream::Context,
        account_token: &str,
        job: &str,
    ) -> Result<Self, JobError> {
        let config = OrderedConfig {
            name: Some(format!("{account_token}-{job}-{}", Uuid::now_v7().simple())),
            deliver_subject: js.client().new_inbox(),
            filter_subject: subjects::batch_results_of(account_token, job),
            ..OrderedConfig::default()
        };
        let consumer = js
            .create_consumer_on_stream(config, subjects::RESULTS_STREAM)
            .await
            .map_err(nats)?;
        let stored_at_open = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(nats)?
            .map(|m| m.map_err(|e| e.to_string()))
            .boxed();
        Ok(Self {
            messages,
            stored_at_open,
        })
    }

    /// The next result, waiting at most `wait`; `Ok(None)` when none came in time.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<BatchResult>, JobError> {
        match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(JobError::Nats("the results consumer ended".into())),
            Ok(Some(Err(e))) => Err(JobError::Nats(e)),
            Ok(Some(Ok(message))) => schemas::decode(&message.payload)
                .map(Some)
                .map_err(|e| JobError::Nats(format!("a result does not decode: {e}"))),
        }
    }

    /// Reads the results that were stored when the reader opened.
    pub async fn already_stored(
        &mut self,
        wait: Duration,
    ) -> Result<HashMap<Uuid, BatchResult>, JobError> {
        let mut out = HashMap::new();
        for _ in 0..self.stored_at_open {
            match self.next(wait).await? {
                Some(r) => {
                    out.insert(r.request_id, r);
                }
                None => {
                    return Err(JobError::Nats(
                        "stored results stopped arriving before all were read".into(),
                    ));
                }
            }
        }
        Ok(out)
    }
}
