//! The harness every provider's translator test shares: a real nats-server with the
//! definitions applied, the mock provider (all wire formats) and the translator itself,
//! plus publishing requests the way the ingress does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    dead_code
)]

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use schemas::{ChatRequest, Message, Params, ReplyChunk, Role, SealKey, SealedRequest};
use switchyard_loadtest::mock::openai::MockConfig;
use switchyard_nats::testing::NatsServer;
use switchyard_translator::Config;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct Harness {
    _nats: NatsServer,
    pub health_url: String,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub seal: SealKey,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A nats-server, the mock (every provider, accepting `provider_key`) and the translator.
pub async fn start(mock: MockConfig, provider_key: &str) -> Harness {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let shutdown = CancellationToken::new();

    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_root = format!("http://{}", mock_listener.local_addr().unwrap());
    let stop = shutdown.clone();
    tokio::spawn(switchyard_loadtest::mock::openai::serve(
        mock_listener,
        MockConfig {
            api_key: Some(provider_key.into()),
            ..mock
        },
        async move { stop.cancelled().await },
    ));

    let seal_text = SealKey::generate_base64();
    let config = Config {
        nats_url: nats.url().to_string(),
        seal: schemas::SealKeyArgs::inline(seal_text.clone()),
        openai_base_url: format!("{mock_root}/v1"),
        anthropic_base_url: mock_root.clone(),
        gemini_base_url: mock_root.clone(),
        bind: "127.0.0.1:0".parse().unwrap(),
        concurrency: 8,
        max_attempts: 3,
        connect_timeout_secs: 2,
    };
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_url = format!("http://{}", health.local_addr().unwrap());
    tokio::spawn(switchyard_translator::serve(
        health,
        config,
        shutdown.clone(),
    ));
    Harness {
        js: jetstream::new(client.clone()),
        client,
        seal: SealKey::from_base64("default", &seal_text).unwrap(),
        _nats: nats,
        health_url,
        shutdown,
    }
}

/// A system + user request.
pub fn request(model: &str, text: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![
            Message::text(Role::System, "be brief"),
            Message::text(Role::User, text),
        ],
        params: Params::default(),
        tools: vec![],
        tool_choice: None,
        stream,
        fallback_models: vec![],
        response_format: None,
    }
}

impl Harness {
    /// Publishes like the ingress does; returns the request id and its reply subscription.
    pub async fn publish(
        &self,
        request: ChatRequest,
        key: &str,
        deadline_in: chrono::Duration,
    ) -> (Uuid, async_nats::Subscriber) {
        self.publish_sealed(
            SealedRequest {
                request,
                provider_key: Some(key.into()),
                provider_keys: Default::default(),
                task: None,
            },
            deadline_in,
        )
        .await
    }

    /// Like [`Harness::publish`], with the whole secret part given.
    pub async fn publish_sealed(
        &self,
        sealed: SealedRequest,
        deadline_in: chrono::Duration,
    ) -> (Uuid, async_nats::Subscriber) {
        assert!(
            matches!(
                schemas::subjects::route_model(&sealed.request.model),
                Ok(schemas::subjects::ModelRoute::Closed { .. })
            ),
            "not a closed model"
        );
        switchyard_worker::testing::publish_request(
            &self.client,
            &self.seal,
            "dev",
            &sealed,
            deadline_in,
        )
        .await
        .unwrap()
    }

    /// Publishes and collects the reply chunks up to the last.
    pub async fn call(
        &self,
        request: ChatRequest,
        key: &str,
        deadline_in: chrono::Duration,
    ) -> Vec<ReplyChunk> {
        let published = self.publish(request, key, deadline_in).await;
        Self::collect(published).await
    }

    /// Like [`Harness::call`], with the whole secret part given.
    pub async fn call_sealed(
        &self,
        sealed: SealedRequest,
        deadline_in: chrono::Duration,
    ) -> Vec<ReplyChunk> {
        let published = self.publish_sealed(sealed, deadline_in).await;
        Self::collect(published).await
    }

    /// The reply chunks up to the last, checked for order.
    async fn collect((id, mut sub): (Uuid, async_nats::Subscriber)) -> Vec<ReplyChunk> {
        let mut chunks = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("reply within 20 s")
                .unwrap();
            let chunk: ReplyChunk = schemas::decode(&msg.payload).unwrap();
            assert_eq!(chunk.request_id, id);
            let last = chunk.last;
            chunks.push(chunk);
            if last {
                break;
            }
        }
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.seq as usize, i, "chunks in order");
        }
        chunks
    }

    /// A metric line's value, e.g. `translator_expired_total`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        switchyard_telemetry::testing::scrape(&format!("{}/metrics", self.health_url), name)
            .await
            .unwrap()
    }

    pub async fn consumer_info(&self) -> jetstream::consumer::Info {
        let mut c: jetstream::consumer::PullConsumer = self
            .js
            .get_stream("REQUESTS")
            .await
            .unwrap()
            .get_consumer("translator")
            .await
            .unwrap();
        c.info().await.unwrap().clone()
    }

    /// Messages not yet acked once the worker has settled what it holds: a reply
    /// reaches the caller before its message is acked (the worker then reports usage
    /// and acks), so this waits, up to 5 s, for the ack of anything in progress.
    pub async fn pending(&self) -> u64 {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let info = self.consumer_info().await;
            if info.num_ack_pending == 0 || tokio::time::Instant::now() >= until {
                return info.num_pending + info.num_ack_pending as u64;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The streamed text, concatenated.
pub fn content(chunks: &[ReplyChunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| c.delta.as_ref().and_then(|d| d.content.clone()))
        .collect()
}
