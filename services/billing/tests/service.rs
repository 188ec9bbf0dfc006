//! The billing service against a real nats-server and Postgres: exact bills, each
//! event once whatever JetStream delivers, poison dead-lettered, spend alerts once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use rust_decimal::Decimal;
use schemas::{SpendAlert, UsageEvent};
use switchyard_billing::{event, ledger};
use switchyard_store::{billing, keys};

mod common;

use common::{dec, ms, period, periods, tokens};

#[tokio::test]
async fn worked_example_two_instances_bill_a_plus_b_seconds_exactly() {
    let h = common::start().await;
    // Instance a runs a = 4,000.123 s across midnight (reported every 10 s), instance
    // b runs b = 1,234.5 s (reported every 7 s); cpu costs 0.00001 USD/s.
    let a_start = ms(2026, 3, 9, 23, 30, 0);
    let a_ms = 4_000_123;
    let b_start = ms(2026, 3, 10, 8, 0, 0);
    let b_ms = 1_234_500;
    let mut events = periods("acme", "i-a", "cpu", a_start, a_start + a_ms, 10_000);
    events.extend(periods(
        "acme",
        "i-b",
        "cpu",
        b_start,
        b_start + b_ms,
        7_000,
    ));
    events.push(tokens("acme", "openai", "gpt-4o-mini", 12, 34, b_start));
    for e in &events {
        h.publish(e, Some(&e.event_id)).await;
    }
    h.drained().await;

    let (total_ms, cost) = h.totals("acme").await;
    assert_eq!(total_ms, a_ms + b_ms);
    // (a + b) × 0.00001 = 5,234.623 s × 0.00001 = 0.05234623 exactly.
    assert_eq!(cost, dec("0.05234623"));
    assert_eq!(
        cost,
        Decimal::from(a_ms + b_ms) / Decimal::from(1000) * dec("0.00001")
    );
    // Split at midnight: 30 minutes on the 9th, the rest on the 10th.
    let days = h
        .texts("SELECT day::text || ' ' || SUM(instance_ms)::text FROM instance_usage_daily GROUP BY day ORDER BY day")
        .await;
    assert_eq!(
        days,
        [
            "2026-03-09 1800000".to_string(),
            format!("2026-03-10 {}", a_ms - 1_800_000 + b_ms)
        ]
    );
    // The month's spend is the same sum.
    let month = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
    assert_eq!(
        billing::month_spend(&h.db.db, "acme", month).await.unwrap(),
        dec("0.05234623")
    );
    // Tokens are recorded, not charged.
    let tokens = h
        .texts("SELECT provider || ' ' || model || ' ' || requests || ' ' || input_tokens || ' ' || output_tokens FROM token_usage_daily")
        .await;
    assert_eq!(tokens, ["openai gpt-4o-mini 1 12 34"]);
    assert_eq!(h.event_count().await, events.len() as i64);
}

#[tokio::test]
async fn billing_carries_on_after_nats_server_is_killed_and_restarted() {
    let mut h = common::start().await;
    let start = ms(2026, 3, 9, 12, 0, 0);
    let before = periods("acme", "i-a", "cpu", start, start + 30_000, 10_000);
    for e in &before {
        h.publish(e, Some(&e.event_id)).await;
    }
    h.drained().await;
    assert_eq!(h.totals("acme").await.0, 30_000);

    // kill -9: whatever the server had not yet written out of the consumer's state
    // may be redelivered; the books must not count it twice.
    h.nats.restart().unwrap();
    let after = periods("acme", "i-a", "cpu", start + 30_000, start + 60_000, 10_000);
    for e in &after {
        // The test's own client reconnects too: a publish may fail until it has.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(schemas::headers::MSG_ID, e.event_id.as_str());
            let published = async {
                h.js.publish_with_headers(
                    e.subject().unwrap(),
                    headers,
                    schemas::encode(e).unwrap().into(),
                )
                .await?
                .await
                .map_err(async_nats::Error::from)
            };
            match published.await {
                Ok(_) => break,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    eprintln!("publish after the restart failed, again: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("could not publish after the restart: {err}"),
            }
        }
    }
    // The service was not restarted: its consumer found the server again and bills
    // the new events as they come …
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.totals("acme").await.0 < 60_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the events after the restart were not billed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // … and what the killed server had not recorded as acked comes again after the
    // ack wait, and is not billed twice.
    h.drained().await;
    let (total_ms, cost) = h.totals("acme").await;
    assert_eq!(total_ms, 60_000);
    assert_eq!(cost, dec("0.0006"));
    assert_eq!(h.event_count().await, 6);
}

#[tokio::test]
async fn every_event_published_twice_and_redelivered_is_billed_once() {
    let h = common::start().await;
    let start = ms(2026, 4, 1, 12, 0, 0);
    let events = periods(
        "acme",
        "i-1",
        "gpu-a100-40gb",
        start,
        start + 600_000,
        5_000,
    );
    for e in &events {
        // A retried publish (same Nats-Msg-Id: JetStream drops it) …
        h.publish(e, Some(&e.event_id)).await;
        h.publish(e, Some(&e.event_id)).await;
        // … and one past the duplicate window (no id: the stream keeps it).
        h.publish(e, None).await;
    }
    let mut stream = h.js.get_stream("USAGE").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2 * events.len() as u64,
        "the stream holds every event twice"
    );
    h.drained().await;
    let (total_ms, cost) = h.totals("acme").await;
    assert_eq!(total_ms, 600_000);
    assert_eq!(cost, dec("0.108")); // 600 s × 0.00018
    assert_eq!(h.event_count().await, events.len() as i64);
    let duplicates = h
        .metric(r#"billing_events_total{kind="instance_period",outcome="duplicate"}"#)
        .await;
    assert_eq!(duplicates, Some(events.len() as f64));
}

#[tokio::test]
async fn a_crash_between_commit_and_ack_bills_once() {
    let mut h = common::setup().await;
    // Redeliver unacked messages after 1 s instead of 30.
    let stream = h.js.get_stream("USAGE").await.unwrap();
    let mut config = switchyard_billing::consumer(&h.js)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    config.ack_wait = Duration::from_secs(1);
    stream.create_consumer(config).await.unwrap();

    let start = ms(2026, 5, 20, 23, 59, 0);
    let events = periods("acme", "i-1", "cpu", start, start + 120_000, 10_000);
    for e in &events {
        h.publish(e, Some(&e.event_id)).await;
    }
    // A billing that commits and dies before acking: the same code the service runs.
    let consumer = switchyard_billing::consumer(&h.js).await.unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(events.len())
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    while let Some(m) = batch.next().await {
        held.push(m.unwrap());
    }
    assert_eq!(held.len(), events.len());
    let rules = event::Rules {
        prices: switchyard_billing::prices::Prices::embedded().unwrap(),
        max_period_ms: 3_600_000,
    };
    let checked: Vec<_> = held
        .iter()
        .map(|m| event::check_payload(&m.payload, &rules).unwrap())
        .collect();
    let recorded = ledger::record(&h.db.db, &checked).await.unwrap();
    assert!(recorded.new.iter().all(|n| *n));
    drop(held); // the crash: no ack

    // A billing starts again; JetStream redelivers what was never acked.
    h.start_billing().await;
    h.drained().await;
    let (total_ms, cost) = h.totals("acme").await;
    assert_eq!(total_ms, 120_000);
    assert_eq!(cost, dec("0.0012"));
    assert_eq!(h.event_count().await, events.len() as i64);
    assert_eq!(
        h.metric(r#"billing_events_total{kind="instance_period",outcome="duplicate"}"#)
            .await,
        Some(events.len() as f64),
        "every event came again and was recognised"
    );
    h.stop_billing().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_with_its_reason_and_the_rest_is_billed() {
    let h = common::start().await;
    let t = ms(2026, 6, 1, 10, 0, 0);
    h.publish_raw("usage.instance.acme", b"\xc1 not msgpack".to_vec(), None)
        .await;
    let mut newer = period("acme", "i-new", "cpu", t, t + 1000);
    newer.schema_version = schemas::SCHEMA_VERSION + 1;
    h.publish(&newer, None).await;
    h.publish(&period("acme", "i-neg", "cpu", t, t - 1), None)
        .await;
    h.publish(&period("acme", "i-long", "cpu", t, t + 3_600_001), None)
        .await;
    h.publish(&period("acme", "i-tpu", "tpu-v5", t, t + 1000), None)
        .await;
    h.publish(&period("acme", "i-ok", "cpu", t, t + 1000), None)
        .await;
    h.drained().await;

    assert_eq!(h.totals("acme").await, (1000, dec("0.00001")));
    let dlq = h.js.get_stream("DEADLETTER").await.unwrap();
    let mut reasons = Vec::new();
    for seq in 1..=5 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        assert_eq!(m.subject.as_str(), "dlq.USAGE.billing");
        let reason = m
            .headers
            .get(schemas::headers::DEAD_LETTER_REASON)
            .unwrap()
            .as_str()
            .to_string();
        reasons.push(reason);
    }
    let starts = [
        "undecodable",
        "newer schema version",
        "negative period",
        "overlong period",
        "unknown instance type: 'tpu-v5'",
    ];
    for (reason, start) in reasons.iter().zip(starts) {
        assert!(reason.starts_with(start), "{reason}");
    }
    assert!(reasons[4].contains("not billed at 0"));
    assert_eq!(
        h.metric(r#"billing_dead_letters_total{reason="unknown instance type"}"#)
            .await,
        Some(1.0)
    );
}

/// Every alert message on `usage.alert.>` so far.
async fn alerts(js: &jetstream::Context) -> Vec<(String, SpendAlert, String)> {
    let stream = js.get_stream("USAGE").await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "usage.alert.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut info = consumer.clone();
    let n = info.info().await.unwrap().num_pending as usize;
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::MSG_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        out.push((
            m.subject.to_string(),
            schemas::decode::<SpendAlert>(&m.payload).unwrap(),
            id,
        ));
    }
    out
}

#[tokio::test]
async fn spend_alerts_go_out_once_at_80_and_100_percent() {
    let h = common::start().await;
    keys::create_account(&h.db.db, "acme", None).await.unwrap();
    // 0.01 USD a month = 1,000 cpu-seconds.
    billing::set_spend_limit(&h.db.db, "acme", Some(dec("0.01")))
        .await
        .unwrap();
    let t = ms(2026, 7, 15, 9, 0, 0);
    let send = |events: Vec<UsageEvent>| {
        let h = &h;
        async move {
            for e in &events {
                h.publish(e, None).await;
            }
            h.drained().await;
        }
    };
    // 700 s: 70 %.
    send(periods("acme", "i-1", "cpu", t, t + 700_000, 100_000)).await;
    // A sentinel for another account: alerts of earlier batches go out before it is taken.
    send(vec![period("other", "i-x", "cpu", t, t + 1)]).await;
    assert!(alerts(&h.js).await.is_empty());
    // +100 s: 80 %.
    send(periods(
        "acme",
        "i-1",
        "cpu",
        t + 700_000,
        t + 800_000,
        100_000,
    ))
    .await;
    send(vec![period("other", "i-x", "cpu", t + 1, t + 2)]).await;
    let found = alerts(&h.js).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "usage.alert.acme");
    assert_eq!(found[0].1.threshold_percent, 80);
    assert_eq!(found[0].1.spent_usd, "0.008");
    assert_eq!(found[0].1.limit_usd, "0.01");
    // +300 s (110 %), everything again, and more: one 100 % alert, nothing else.
    let all = periods("acme", "i-1", "cpu", t, t + 1_100_000, 100_000);
    send(all.clone()).await;
    send(all).await;
    send(periods("acme", "i-2", "cpu", t, t + 500_000, 100_000)).await;
    send(vec![period("other", "i-x", "cpu", t + 2, t + 3)]).await;
    let found = alerts(&h.js).await;
    let ids: Vec<&str> = found.iter().map(|(_, a, _)| a.event_id.as_str()).collect();
    assert_eq!(ids, ["alert:acme:2026-07:80", "alert:acme:2026-07:100"]);
    for (_, alert, msg_id) in &found {
        assert_eq!(&alert.event_id, msg_id, "the id is the Nats-Msg-Id");
        assert_eq!(alert.month, "2026-07");
    }
    // The spend when it was found reached: at least the limit (batching decides how far past).
    let spent = dec(&found[1].1.spent_usd);
    assert!(spent >= dec("0.01") && spent <= dec("0.011"), "{spent}");
    let unpublished = h
        .texts("SELECT event_id FROM spend_alerts WHERE published_at IS NULL")
        .await;
    assert!(unpublished.is_empty());
    assert_eq!(h.totals("acme").await, (1_600_000, dec("0.016")));
}
