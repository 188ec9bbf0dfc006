//! Each answered request reports its tokens to USAGE_TOKENS once, before its message is acked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use schemas::subjects;
use schemas::{
    Delta, ErrorBody, ErrorKind, FinishReason, ReplyTarget, RequestEnvelope, Role, Usage,
    UsageBody, UsageEvent,
};
use switchyard_nats::testing::NatsServer;
use switchyard_worker::ChunkSink;
use switchyard_worker::usage::{finish_and_report, publish_tokens};
use uuid::Uuid;

fn envelope(account: &str) -> RequestEnvelope {
    let request_id = Uuid::now_v7();
    let now = chrono::Utc::now();
    RequestEnvelope {
        schema_version: schemas::SCHEMA_VERSION,
        request_id,
        account: account.into(),
        created_at: now,
        deadline: now + chrono::Duration::seconds(30),
        reply: ReplyTarget::Stream {
            subject: subjects::reply("ing1", request_id),
        },
        model: "openai/gpt-4o-mini".into(),
        body: schemas::Sealed {
            key_id: "default".into(),
            nonce: Vec::new(),
            ciphertext: Vec::new(),
        },
        start_by: None,
        enqueue_by: None,
    }
}

#[tokio::test]
async fn an_answered_request_reports_its_tokens_once_then_acks() {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let requests = js.get_stream("REQUESTS").await.unwrap();
    let mut consumer = requests
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("translator")
        .await
        .unwrap();
    let usage_stream = js.get_stream("USAGE_TOKENS").await.unwrap();

    let answered = envelope("acme");
    let failed = envelope("acme");
    for e in [&answered, &failed] {
        js.publish("req.closed.openai", schemas::encode(e).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut batch = consumer
        .fetch()
        .max_messages(2)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let first = batch.next().await.unwrap().unwrap();
    let second = batch.next().await.unwrap().unwrap();

    // One answered with usage …
    let mut sink = ChunkSink::new(
        client.clone(),
        answered.reply.subject().to_string(),
        answered.request_id,
        "openai",
    );
    let delta = Delta {
        role: Some(Role::Assistant),
        content: Some("hi".into()),
        tool_calls: vec![],
    };
    sink.send(
        Some(delta),
        Some(FinishReason::Stop),
        Some(Usage {
            input_tokens: 12,
            output_tokens: 34,
            cached_input_tokens: Some(5),
        }),
        Some("gpt-4o-mini-2024-07-18"),
        true,
    )
    .await
    .unwrap();
    finish_and_report(&first, &sink, &js, &answered).await;
    // … one failed: nothing to report.
    let mut failing = ChunkSink::new(
        client.clone(),
        failed.reply.subject().to_string(),
        failed.request_id,
        "openai",
    );
    failing
        .fail(ErrorBody::new(ErrorKind::Upstream, "down"))
        .await
        .unwrap();
    finish_and_report(&second, &failing, &js, &failed).await;

    let raw = usage_stream
        .get_last_raw_message_by_subject("usage.tokens.acme")
        .await
        .unwrap();
    let event: UsageEvent = schemas::decode(&raw.payload).unwrap();
    assert_eq!(event.event_id, UsageEvent::tokens_id(answered.request_id));
    assert_eq!(
        raw.headers.get(schemas::headers::MSG_ID).unwrap().as_str(),
        event.event_id
    );
    assert_eq!(event.account, "acme");
    let UsageBody::Tokens {
        request_id,
        provider,
        model,
        input_tokens,
        output_tokens,
        cached_input_tokens,
        ..
    } = event.body
    else {
        panic!("not a tokens event: {:?}", event.body);
    };
    assert_eq!(request_id, answered.request_id);
    assert_eq!(provider, "openai");
    assert_eq!(model, "gpt-4o-mini-2024-07-18");
    assert_eq!(
        (input_tokens, output_tokens, cached_input_tokens),
        (12, 34, 5)
    );

    // Reported again (a redelivered request answered twice): JetStream keeps one.
    publish_tokens(
        &js,
        &answered,
        "openai",
        "gpt-4o-mini-2024-07-18",
        &Usage {
            input_tokens: 12,
            output_tokens: 34,
            cached_input_tokens: Some(5),
        },
    )
    .await
    .unwrap();
    let mut usage_stream = usage_stream;
    assert_eq!(usage_stream.info().await.unwrap().state.messages, 1);

    // Both requests were acked.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not acked: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
