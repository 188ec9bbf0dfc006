//! The translator between a real nats-server and the mock OpenAI server: requests
//! published as the ingress publishes them come back as the right reply chunks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream;
use futures::{FutureExt, StreamExt};
use schemas::{ErrorKind, FinishReason, ReplyChunk, SealedRequest};
use switchyard_loadtest::mock::openai::MockConfig;

const PROVIDER_KEY: &str = "sk-mock-good";

mod common;

use common::{Harness, content, request};

async fn start(mock: MockConfig) -> Harness {
    common::start(mock, PROVIDER_KEY).await
}

#[tokio::test]
async fn non_streaming_answer_is_one_chunk_with_usage() {
    let h = start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let chunks = h
        .call(
            request("openai/gpt-4o-mini", "hello there", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(chunks.len(), 1);
    let c = &chunks[0];
    assert!(c.error.is_none(), "{:?}", c.error);
    assert_eq!(c.provider.as_deref(), Some("openai"));
    assert_eq!(c.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(content(&chunks), "echo: hello there");
    assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    let usage = c.usage.unwrap();
    // The mock counts words over all messages ("be brief" + "hello there") and chunks.
    assert_eq!((usage.input_tokens, usage.output_tokens), (4, 3));
    // Acked once answered: nothing left for redelivery.
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn streaming_answer_arrives_in_pieces_then_usage() {
    let h = start(MockConfig {
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let chunks = h
        .call(
            request("openai/gpt-4o-mini", "stream me please", true),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(content(&chunks), "echo: stream me please");
    let pieces = chunks
        .iter()
        .filter(|c| {
            c.delta
                .as_ref()
                .is_some_and(|d| d.content.as_deref().is_some_and(|s| !s.is_empty()))
        })
        .count();
    assert_eq!(pieces, 5);
    assert_eq!(chunks[0].provider.as_deref(), Some("openai"));
    assert_eq!(
        chunks
            .iter()
            .filter_map(|c| c.finish_reason)
            .collect::<Vec<_>>(),
        [FinishReason::Stop]
    );
    let usage: Vec<_> = chunks.iter().filter_map(|c| c.usage).collect();
    assert_eq!(usage.len(), 1, "usage is always asked for upstream");
    assert_eq!(usage[0].output_tokens, 5);
    assert!(chunks.last().unwrap().error.is_none());
}

#[tokio::test]
async fn provider_errors_become_error_chunks() {
    let h = start(MockConfig::default()).await;

    let chunks = h
        .call(
            request("openai/mock-error-429", "x", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    let e = chunks.last().unwrap().error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.provider_status, Some(429));
    assert_eq!(e.retry_after_ms, Some(1000));

    let chunks = h
        .call(
            request("openai/gpt-4o-mini", "x", true),
            "sk-wrong-key-123",
            chrono::Duration::seconds(30),
        )
        .await;
    let e = chunks.last().unwrap().error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::Authentication);
    assert!(!e.message.contains("sk-wrong-key-123"), "{}", e.message);

    let chunks = h
        .call(
            request("openai/mock-error-500", "x", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(
        chunks.last().unwrap().error.as_ref().unwrap().kind,
        ErrorKind::Upstream
    );

    // A stream cut before [DONE] is an explicit error, never a clean end.
    let chunks = h
        .call(
            request("openai/mock-truncated", "one two three", true),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    let last = chunks.last().unwrap();
    assert_eq!(last.error.as_ref().unwrap().kind, ErrorKind::Upstream);
    assert!(last.error.as_ref().unwrap().message.contains("[DONE]"));
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn expired_requests_are_dropped_not_run() {
    let h = start(MockConfig::default()).await;
    let chunks = h
        .call(
            request("openai/gpt-4o-mini", "late", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(-1),
        )
        .await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].error.as_ref().unwrap().kind, ErrorKind::Timeout);
    assert_eq!(content(&chunks), "");
}

#[tokio::test]
async fn a_request_stored_after_the_ingress_gave_up_is_dropped_unrun() {
    // The ingress told its caller 503 at `enqueue_by` (no PubAck in time); the NATS
    // client still delivered the publish later. Running it would call the provider for
    // nobody, and again for the caller's retry.
    let h = start(MockConfig::default()).await;
    let sealed = |text: &str| SealedRequest {
        request: request("openai/gpt-4o-mini", text, false),
        provider_key: Some(PROVIDER_KEY.into()),
        provider_keys: Default::default(),
        task: None,
    };
    let now = chrono::Utc::now();
    let (late_request, timely_request) = (sealed("late"), sealed("timely"));
    let publish = |sealed, enqueue_by| {
        switchyard_worker::testing::publish_request_with(
            &h.client,
            &h.seal,
            "dev",
            sealed,
            chrono::Duration::seconds(30),
            Some(enqueue_by),
        )
    };
    let (_, mut late) = publish(&late_request, now - chrono::Duration::seconds(5))
        .await
        .unwrap();
    // Within its limit (as every request the ingress publishes normally is): it runs.
    let (_, mut timely) = publish(&timely_request, now + chrono::Duration::seconds(5))
        .await
        .unwrap();
    let answer = switchyard_worker::testing::next_chunk(&mut timely, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(answer.error, None);
    assert_eq!(h.pending().await, 0, "both messages acked");
    assert!(
        late.next().now_or_never().is_none(),
        "the late request was answered"
    );
    assert_eq!(h.metric("translator_expired_total").await, Some(1.0));
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_the_reason() {
    let h = start(MockConfig::default()).await;
    let ack =
        h.js.publish("req.closed.openai", "not messagepack".into())
            .await
            .unwrap()
            .await
            .unwrap();
    assert_eq!(ack.stream, "REQUESTS");
    let dlq = h.js.get_stream("DEADLETTER").await.unwrap();
    let consumer = dlq
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(20), messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(dead.subject.as_str(), "dlq.REQUESTS.translator");
    assert_eq!(&dead.payload[..], b"not messagepack");
    let reason = dead
        .headers
        .as_ref()
        .unwrap()
        .get("Switchyard-Reason")
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.starts_with("undecodable envelope"), "{reason}");
    // The worker kept running: a good request still works.
    let chunks = h
        .call(
            request("openai/gpt-4o-mini", "still alive", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(content(&chunks), "echo: still alive");
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn a_cancel_stops_the_provider_call() {
    // The mock waits 30 s before answering; the cancel must cut that short.
    let h = start(MockConfig {
        latency: Duration::from_secs(30),
        ..MockConfig::default()
    })
    .await;
    let (id, mut sub) = h
        .publish(
            request("openai/gpt-4o-mini", "slow", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(60),
        )
        .await;
    // Cancel once the translator holds the message (it is then ack-pending).
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.consumer_info().await.num_ack_pending != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the translator took the message");
    // The translator subscribes to the cancel subject right after taking the message;
    // publish until its answer arrives.
    let chunk = loop {
        h.client
            .publish(schemas::subjects::cancel(id), "".into())
            .await
            .unwrap();
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            break schemas::decode::<ReplyChunk>(&msg.payload).unwrap();
        }
    };
    let error = chunk.error.unwrap();
    assert!(error.message.contains("cancelled"), "{}", error.message);
    assert!(chunk.last);
    // Acked, not left for redelivery.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.pending().await != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the cancelled request was acked");
}

#[tokio::test]
async fn failures_before_the_first_byte_are_retried() {
    let h = start(MockConfig::default()).await;
    // The mock fails every other request of a flaky model: 429 (retry-after 1 s) first.
    let chunks = h
        .call(
            request("openai/mock-flaky-429", "try again", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert!(
        chunks.last().unwrap().error.is_none(),
        "{:?}",
        chunks.last().unwrap().error
    );
    assert_eq!(content(&chunks), "echo: try again");
    // Then a streaming request whose first attempt gets a 503.
    let chunks = h
        .call(
            request("openai/mock-flaky-503", "and again", true),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert!(
        chunks.last().unwrap().error.is_none(),
        "{:?}",
        chunks.last().unwrap().error
    );
    assert_eq!(content(&chunks), "echo: and again");

    assert_eq!(
        h.metric(r#"translator_retries_total{provider="openai"}"#)
            .await,
        Some(2.0)
    );

    // A failure that keeps failing is reported after the last attempt.
    let chunks = h
        .call(
            request("openai/mock-error-503", "never", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(
        chunks.last().unwrap().error.as_ref().unwrap().kind,
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn a_fallback_model_answers_when_the_first_fails_before_the_first_byte() {
    let h = start(MockConfig::default()).await;
    let mut request = request("openai/mock-error-503", "fall back please", true);
    request.fallback_models = vec!["anthropic/claude-sonnet-4-5".into()];
    let chunks = h
        .call_sealed(
            SealedRequest {
                request,
                provider_key: Some(PROVIDER_KEY.into()),
                provider_keys: [("anthropic".to_string(), PROVIDER_KEY.to_string())].into(),
                task: None,
            },
            chrono::Duration::seconds(30),
        )
        .await;
    assert!(
        chunks.last().unwrap().error.is_none(),
        "{:?}",
        chunks.last().unwrap().error
    );
    assert_eq!(chunks[0].provider.as_deref(), Some("anthropic"));
    assert_eq!(chunks[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(content(&chunks), "echo: fall back please");

    assert_eq!(
        h.metric(r#"translator_fallbacks_total{provider="anthropic"}"#)
            .await,
        Some(1.0)
    );
}
