//! `switchyard_nats::pull::Messages` against a real nats-server that stops answering:
//! frozen (SIGSTOP), then killed and started again on the same port and store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use switchyard_nats::pull::{Messages, PullError};
use switchyard_nats::testing::{NatsServer, scratch_stream};

/// The next message's payload, skipping the errors the stream reports meanwhile
/// (bounded); returns them too.
async fn next_payload(messages: &mut Messages, within: Duration) -> (String, Vec<String>) {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let next = tokio::time::timeout(left, messages.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {within:?}; errors: {errors:?}"))
            .expect("the stream ended");
        match next {
            Ok(message) => {
                message.ack().await.unwrap();
                return (String::from_utf8(message.payload.to_vec()).unwrap(), errors);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
}

/// Publishes until the stream stores it (the client may still be reconnecting).
async fn publish(js: &jetstream::Context, payload: &'static str) {
    switchyard_nats::testing::publish_until_stored(
        js,
        "t.x",
        payload.into(),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pull_stream_carries_on_after_the_server_stops_answering_it() {
    let mut server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let stream = scratch_stream(&js, "T", "t.>").await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = Messages::with_heartbeat(consumer, 8, Duration::from_secs(1))
        .await
        .unwrap();
    publish(&js, "one").await;
    assert_eq!(
        next_payload(&mut messages, Duration::from_secs(10)).await.0,
        "one"
    );

    // Frozen: no idle heartbeat arrives, and the stream says so (then starts over).
    server.freeze();
    let missed = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a missed heartbeat reported within 10 s")
        .unwrap();
    server.thaw();
    match missed {
        Err(PullError::Messages(e)) => assert_eq!(
            e.kind(),
            async_nats::jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat
        ),
        other => panic!("expected a missed heartbeat, got {other:?}"),
    }
    publish(&js, "two").await;
    assert_eq!(
        next_payload(&mut messages, Duration::from_secs(10)).await.0,
        "two"
    );

    // Killed and started again: the pull request died with the old process.
    server.restart().unwrap();
    publish(&js, "three").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (payload, errors) = next_payload(&mut messages, left).await;
        if payload == "three" {
            break;
        }
        // The killed server may not have written the last ack out: at least once.
        assert_eq!(payload, "two", "errors meanwhile: {errors:?}");
    }
}
