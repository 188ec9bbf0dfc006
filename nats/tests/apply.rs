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
    assert_eq!(first.streams.len(), 5);

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
        }
    }
    apply(&js, &changed).await.unwrap();
    let mut results = js.get_stream("RESULTS").await.unwrap();
    assert_eq!(
        results.info().await.unwrap().config.max_age,
        std::time::Duration::from_secs(3600)
    );
}
