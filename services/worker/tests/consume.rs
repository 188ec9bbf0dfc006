//! The worker's pull loop against a real nats-server that goes away.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull, stream};
use switchyard_nats::testing::{NatsServer, publish_until_stored, scratch_stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn consumer(stream: &stream::Stream, name: &str) -> PullConsumer {
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: format!("t.{name}"),
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn received(rx: &mut mpsc::UnboundedReceiver<String>, within: Duration) -> String {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing handled within {within:?}"))
        .unwrap()
}

#[tokio::test]
async fn a_batch_fetch_lost_with_the_server_does_not_stall_the_worker() {
    let mut server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = scratch_stream(&js, "T", "t.>").await.unwrap();
    let live = consumer(&stream, "live").await;
    let batch = consumer(&stream, "batch").await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let worker = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            switchyard_worker::consume_with_batch(
                live,
                Some(batch),
                1,
                &tracker,
                shutdown,
                move |message: jetstream::Message| {
                    let tx = tx.clone();
                    async move {
                        message.ack().await.unwrap();
                        tx.send(String::from_utf8(message.payload.to_vec()).unwrap())
                            .unwrap();
                    }
                },
            )
            .await
        }
    });
    let within = Duration::from_secs(20);
    publish_until_stored(&js, "t.batch", "before".into(), within)
        .await
        .unwrap();
    assert_eq!(received(&mut rx, within).await, "before");

    // Frozen, the server leaves the worker's next fetch request unread in its socket;
    // killed, it loses it. Nothing will ever answer that fetch.
    let stats = client.statistics();
    server.freeze();
    let written = stats.out_messages.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats.out_messages.load(Ordering::Relaxed) == written {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker sent no fetch request within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    server.start_again().unwrap();

    publish_until_stored(&js, "t.batch", "after".into(), within)
        .await
        .unwrap();
    assert_eq!(received(&mut rx, within).await, "after");
    publish_until_stored(&js, "t.live", "live".into(), within)
        .await
        .unwrap();
    assert_eq!(received(&mut rx, within).await, "live");

    shutdown.cancel();
    worker.await.unwrap().unwrap();
}
