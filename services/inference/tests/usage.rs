//! An instance's instance-second periods, through a real nats-server: one event per
//! tick, and no unbilled gap when a tick is dropped between its publish and the PubAck
//! (the reporting loop is dropped whenever consuming ends).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream;
use futures::FutureExt;
use schemas::subjects;
use schemas::{UsageBody, UsageEvent};
use switchyard_inference::usage::{Identity, Reporter, now_ms};
use switchyard_nats::testing::{NatsServer, stream_contents};

fn identity() -> Identity {
    Identity {
        instance_id: "i-usage-test".into(),
        account: "dev".into(),
        model: "sentence-transformers/all-MiniLM-L6-v2".into(),
        instance_type: "cpu".into(),
        execution_provider: "cpu".into(),
    }
}

/// The periods stored in USAGE, sorted by start.
async fn periods(js: &jetstream::Context) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = stream_contents(js, subjects::USAGE_STREAM)
        .await
        .unwrap()
        .into_iter()
        .filter_map(
            |(_, payload)| match schemas::decode::<UsageEvent>(&payload).unwrap().body {
                UsageBody::InstancePeriod {
                    start_ms, end_ms, ..
                } => Some((start_ms, end_ms)),
                _ => None,
            },
        )
        .collect();
    out.sort();
    out
}

/// Until the wall clock (milliseconds, what periods are cut in) has moved past `ms`.
async fn clock_past(ms: i64) {
    while now_ms() <= ms {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_tick_dropped_before_its_puback_leaves_no_unbilled_gap() {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let js = jetstream::new(client.clone());
    let mut reporter = Reporter::start(
        js.clone(),
        identity(),
        Duration::from_secs(3600),
        Default::default(),
    )
    .await;
    let started = now_ms();
    clock_past(started).await;

    // Polled once: the period is cut and handed to the client, then the tick is dropped
    // with its PubAck outstanding, as when consuming ends mid-tick.
    // (`now_or_never`, not a zero timeout: tokio rounds a timer up to its next
    // millisecond, within which the PubAck may well arrive.)
    let dropped = reporter.tick().now_or_never();
    assert!(dropped.is_none(), "the tick finished within one poll");
    // The client still sends it: wait until it is stored.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let stored = periods(&js).await;
        if !stored.is_empty() {
            break stored;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped tick's period never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(first.len(), 1, "{first:?}");
    let (start, end) = first[0];
    assert!(start <= started && end > start, "{first:?}");

    // Later, a full tick: the stored period stands, and the next starts where it ends.
    clock_past(end).await;
    reporter.tick().await;
    let after = periods(&js).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], (start, end), "the first period as it was sent");
    assert_eq!(after[1].0, end, "periods follow each other: {after:?}");
    assert!(after[1].1 > end);

    // One event per tick: the next tick adds exactly one period, from where that ended.
    clock_past(after[1].1).await;
    reporter.tick().await;
    let last = periods(&js).await;
    assert_eq!(last.len(), 3, "{last:?}");
    assert_eq!(last[2].0, after[1].1);
}
