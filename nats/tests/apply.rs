//! `apply` against a real nats-server: everything exists afterwards, and a second run
//! changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use async_nats::jetstream;
use switchyard_nats::testing::NatsServer;
use switchyard_nats::{Definitions, apply};

#[tokio::test]
async fn apply_is_idempotent_and_creates_everything() {
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client);
    let defs = Definitions::embedded().unwrap();

    let first = apply(&js, &defs).await.unwrap();
    let second = apply(&js, &defs).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.streams.len(), 7);

    let mut requests = js.get_stream("REQUESTS").await.unwrap();
    let info = requests.info().await.unwrap();
    assert_eq!(info.config.subjects, ["req.>"]);
    assert_eq!(
        info.config.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );

    let mut consumer: jetstream::consumer::PullConsumer =
        requests.get_consumer("translator").await.unwrap();
    let cinfo = consumer.info().await.unwrap();
    assert_eq!(cinfo.config.filter_subject, "req.closed.>");

    let kv = js.get_key_value("clusters").await.unwrap();
    kv.put("probe", "1".into()).await.unwrap();
    assert_eq!(kv.get("probe").await.unwrap().as_deref(), Some(&b"1"[..]));

    // A changed definition is updated in place, not refused.
    let mut changed = defs.clone();
    for s in &mut changed.streams {
        if s.name == "RESULTS" {
            s.max_age = std::time::Duration::from_secs(3600);
            s.duplicate_window = std::time::Duration::from_secs(600);
        }
    }
    apply(&js, &changed).await.unwrap();
    let mut results = js.get_stream("RESULTS").await.unwrap();
    assert_eq!(
        results.info().await.unwrap().config.max_age,
        std::time::Duration::from_secs(3600)
    );
}

#[tokio::test]
async fn requests_are_persisted_asynchronously_and_an_older_stream_is_recreated() {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let defs = Definitions::embedded().unwrap();
    // A REQUESTS stream as an older build created it: default persistence.
    let mut old = defs
        .streams
        .iter()
        .find(|s| s.name == "REQUESTS")
        .unwrap()
        .clone();
    old.persist_mode = None;
    js.create_stream(old).await.unwrap();

    // NATS cannot change the persist mode in place: the error says how to recreate it.
    let err = apply(&js, &defs).await.unwrap_err();
    assert!(matches!(&err, switchyard_nats::Error::Immutable { name, .. } if name == "REQUESTS"));
    assert!(err.to_string().contains("--recreate REQUESTS"), "{err}");

    switchyard_nats::apply_recreating(&js, &defs, &["REQUESTS".to_string()])
        .await
        .unwrap();
    let mut requests = js.get_stream("REQUESTS").await.unwrap();
    assert_eq!(
        requests.info().await.unwrap().config.persist_mode,
        Some(jetstream::stream::PersistenceMode::Async)
    );
    // Money is never acked before it is on disk; token counts are not worth an fsync.
    let mut usage = js.get_stream("USAGE").await.unwrap();
    assert_ne!(
        usage.info().await.unwrap().config.persist_mode,
        Some(jetstream::stream::PersistenceMode::Async)
    );
    let mut tokens = js.get_stream("USAGE_TOKENS").await.unwrap();
    assert_eq!(
        tokens.info().await.unwrap().config.persist_mode,
        Some(jetstream::stream::PersistenceMode::Async)
    );
}

#[tokio::test]
async fn a_usage_stream_that_held_the_tokens_hands_them_to_usage_tokens() {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(server.connect().await.unwrap());
    let defs = Definitions::embedded().unwrap();
    // USAGE and its billing consumer as an older build made them: every usage.> subject.
    let mut old = defs
        .streams
        .iter()
        .find(|s| s.name == "USAGE")
        .unwrap()
        .clone();
    old.subjects = vec!["usage.>".into()];
    let stream = js.create_stream(old).await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("billing".into()),
            filter_subjects: vec![
                "usage.instance.>".into(),
                "usage.lifecycle.>".into(),
                "usage.tokens.>".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    apply(&js, &defs).await.unwrap();
    let ack = js
        .publish("usage.tokens.acme", "t".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "USAGE_TOKENS");
    let ack = js
        .publish("usage.instance.acme", "i".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, "USAGE");
}
