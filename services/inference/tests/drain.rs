//! An instance told to stop (SIGTERM) finishes the generation it holds, acks it, and
//! exits cleanly — through a real nats-server and the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use schemas::subjects;
use schemas::{
    ChatRequest, FinishReason, InstanceState, Message, Params, ReplyChunk, Role, SealKey,
    SealedRequest, UsageBody, UsageEvent,
};
use switchyard_nats::testing::NatsServer;

#[tokio::test]
async fn sigterm_drains_the_generation_in_progress() {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = jetstream::new(client.clone());
    let seal_text = SealKey::generate_base64();
    let seal = SealKey::from_base64("default", &seal_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-inference"))
        .args([
            "--model",
            common::SMOLLM,
            "--account",
            "dev",
            "--execution-providers",
            "cpu",
            "--threads",
            "1",
        ])
        .env("NATS_URL", nats.url())
        .env("SWITCHYARD_SEAL_KEY", &seal_text)
        .env("SWITCHYARD_ORT_LIB", common::ort_lib())
        .env("SWITCHYARD_MODELS_DIR", common::models_dir())
        .env("NO_COLOR", "1")
        // Several periods within the test's few seconds.
        .env("INFERENCE_USAGE_PERIOD_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let sealed = SealedRequest {
        request: ChatRequest {
            model: common::SMOLLM.into(),
            messages: vec![Message::text(
                Role::User,
                "Write a long story about a lighthouse.",
            )],
            params: Params {
                max_tokens: Some(48),
                temperature: Some(0.0),
                ..Params::default()
            },
            tools: vec![],
            tool_choice: None,
            stream: true,
            fallback_models: vec![],
            response_format: None,
        },
        provider_key: None,
        provider_keys: Default::default(),
        task: None,
    };
    // Published before the instance is up: the request waits in JetStream for it.
    let token = subjects::model_token(common::SMOLLM).unwrap();
    let (_, mut sub) = switchyard_worker::testing::publish_request(
        &client,
        &seal,
        "dev",
        &sealed,
        chrono::Duration::seconds(120),
    )
    .await
    .unwrap();

    let first = next(&mut sub).await;
    assert_eq!(first.seq, 0);
    assert!(first.error.is_none(), "{:?}", first.error);
    // Generating: stop the instance now.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut chunks = vec![first];
    while !chunks.last().unwrap().last {
        chunks.push(next(&mut sub).await);
    }
    let last = chunks.last().unwrap();
    assert!(
        last.error.is_none(),
        "drained, not failed: {:?}",
        last.error
    );
    assert!(matches!(
        last.finish_reason,
        Some(FinishReason::Length | FinishReason::Stop)
    ));
    let usage = last.usage.unwrap();
    assert!(usage.output_tokens > 1);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Acked before the exit: nothing left for another instance to run again.
    let stream = js.get_stream(subjects::REQUESTS_STREAM).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&switchyard_nats::open_model_consumer_name(&token, "dev"))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.num_ack_pending, 0);

    // Its whole life is in the USAGE stream: started → ready → draining → stopped, and
    // instance-second periods that follow each other without gap or overlap from the
    // first event to the last.
    let events: Vec<UsageEvent> =
        switchyard_nats::testing::stream_contents(&js, subjects::USAGE_STREAM)
            .await
            .unwrap()
            .into_iter()
            .map(|(subject, payload)| {
                assert_eq!(subject.split('.').nth(2), Some("dev"));
                schemas::decode(&payload).unwrap()
            })
            .collect();
    let states: Vec<(InstanceState, i64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            UsageBody::Lifecycle { state, at_ms, .. } => Some((*state, *at_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(
        states.iter().map(|s| s.0).collect::<Vec<_>>(),
        [
            InstanceState::Started,
            InstanceState::Ready,
            InstanceState::Draining,
            InstanceState::Stopped
        ]
    );
    let mut periods: Vec<(i64, i64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            UsageBody::InstancePeriod {
                start_ms,
                end_ms,
                instance_type,
                model,
                ..
            } => {
                assert_eq!(instance_type, "cpu");
                assert_eq!(model, common::SMOLLM);
                assert_eq!(
                    e.event_id,
                    UsageEvent::period_id(
                        &e.event_id[7..e.event_id.rfind(':').unwrap()],
                        *start_ms
                    )
                );
                Some((*start_ms, *end_ms))
            }
            _ => None,
        })
        .collect();
    periods.sort();
    assert!(!periods.is_empty());
    assert_eq!(
        periods[0].0, states[0].1,
        "billing starts when the instance does"
    );
    for pair in periods.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "periods follow each other: {periods:?}"
        );
    }
    let last_end = periods.last().unwrap().1;
    assert!(
        last_end <= states[3].1 && last_end >= states[2].1,
        "billed up to the stop"
    );
}

async fn next(sub: &mut async_nats::Subscriber) -> ReplyChunk {
    switchyard_worker::testing::next_chunk(sub, Duration::from_secs(60))
        .await
        .unwrap()
}
