//! The harness every ingress integration test shares: a real nats-server with the
//! definitions applied and the ingress itself; the test plays the worker by pulling the
//! translator's consumer (closed models) or a stand-in inference consumer on
//! `req.open.>` (open models) and publishing reply chunks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    dead_code
)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull};
use futures::StreamExt;
use schemas::{ReplyChunk, RequestEnvelope, SealKey, SealedRequest};
use switchyard_ingress::Config;
use switchyard_ingress::config::AuthArgs;
use switchyard_nats::testing::NatsServer;
use tokio_util::sync::CancellationToken;

/// The dev API key every harness ingress accepts.
pub const API_KEY: &str = "sy-test-key";

/// The durable consumer the tests' stand-in inference worker pulls open-model
/// requests from (every model: `req.open.>`).
pub const OPEN_CONSUMER: &str = "test-inference";

pub struct Harness {
    _nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub seal: SealKey,
    pub base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What differs between the tests' ingresses.
pub struct Options {
    pub max_body_bytes: usize,
    pub timeout_secs: u64,
    pub auth: AuthArgs,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            timeout_secs: 10,
            auth: AuthArgs::default(),
        }
    }
}

pub async fn start(options: Options) -> Harness {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let seal_text = SealKey::generate_base64();
    let config = Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        nats_url: nats.url().to_string(),
        dev_api_key: API_KEY.into(),
        seal: schemas::SealKeyArgs::inline(seal_text.clone()),
        max_body_bytes: options.max_body_bytes,
        request_timeout_secs: options.timeout_secs,
        publish_timeout_ms: 5000,
        ingress_id: Some("test1".into()),
        auth: options.auth,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    // The listener is bound already: connections wait in its backlog until the
    // server, once connected to NATS, accepts them.
    tokio::spawn(switchyard_ingress::serve(
        listener,
        config,
        shutdown.clone(),
    ));
    Harness {
        js: jetstream::new(client.clone()),
        client,
        seal: SealKey::from_base64("default", &seal_text).unwrap(),
        _nats: nats,
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shutdown,
    }
}

impl Harness {
    pub async fn translator_consumer(&self) -> PullConsumer {
        self.js
            .get_stream("REQUESTS")
            .await
            .unwrap()
            .get_consumer("translator")
            .await
            .unwrap()
    }

    /// Takes the next request off the translator's consumer, as a worker would.
    pub async fn take_request(&self) -> (jetstream::Message, RequestEnvelope, SealedRequest) {
        self.take_from(self.translator_consumer().await).await
    }

    /// The stand-in inference worker's consumer (`req.open.>`), made on first use. The
    /// stream keeps requests until they are acked, so it sees those published before.
    pub async fn open_consumer(&self) -> PullConsumer {
        self.js
            .get_stream("REQUESTS")
            .await
            .unwrap()
            .get_or_create_consumer(
                OPEN_CONSUMER,
                pull::Config {
                    durable_name: Some(OPEN_CONSUMER.into()),
                    filter_subject: "req.open.>".into(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    /// Takes the next open-model request, as an inference worker would.
    pub async fn take_open_request(&self) -> (jetstream::Message, RequestEnvelope, SealedRequest) {
        self.take_from(self.open_consumer().await).await
    }

    /// Requests waiting for the translator and for the inference workers.
    pub async fn pending(&self) -> (u64, u64) {
        let mut closed = self.translator_consumer().await;
        let mut open = self.open_consumer().await;
        (
            closed.info().await.unwrap().num_pending,
            open.info().await.unwrap().num_pending,
        )
    }

    /// Fetches one message from `consumer` and opens its sealed body with the
    /// ingress's key.
    async fn take_from(
        &self,
        consumer: PullConsumer,
    ) -> (jetstream::Message, RequestEnvelope, SealedRequest) {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = batch
            .next()
            .await
            .expect("a request was published")
            .unwrap();
        let envelope: RequestEnvelope = schemas::decode(&message.payload).unwrap();
        let plain = self.seal.open(envelope.request_id, &envelope.body).unwrap();
        let sealed: SealedRequest = schemas::decode(&plain).unwrap();
        (message, envelope, sealed)
    }

    /// Publishes one reply chunk, as a worker would.
    pub async fn reply(&self, envelope: &RequestEnvelope, chunk: &ReplyChunk) {
        self.client
            .publish(
                envelope.reply.subject().to_string(),
                schemas::encode(chunk).unwrap().into(),
            )
            .await
            .unwrap();
    }
}
