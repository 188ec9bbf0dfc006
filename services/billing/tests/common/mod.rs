//! The harness the billing tests share: a nats-server of their own with the
//! definitions applied, a Postgres database of their own, and the billing service
//! itself (`serve`, as the binary runs it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    dead_code
)]

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use schemas::{UsageBody, UsageEvent};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use switchyard_billing::Config;
use switchyard_nats::testing::NatsServer;
use switchyard_store::testing::TestDb;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub db: TestDb,
    pub metrics_url: String,
    shutdown: CancellationToken,
    service: Option<tokio::task::JoinHandle<Result<(), switchyard_billing::Error>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Unix ms of a UTC date and time.
pub fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis()
}

/// Starts nats-server and Postgres, without the service (see [`Harness::start_billing`]).
pub async fn setup() -> Harness {
    let nats = NatsServer::start().unwrap();
    let client = nats.connect_and_apply().await.unwrap();
    let db = TestDb::new().await.unwrap();
    Harness {
        js: jetstream::new(client),
        nats,
        db,
        metrics_url: String::new(),
        shutdown: CancellationToken::new(),
        service: None,
    }
}

/// Starts everything, the service included.
pub async fn start() -> Harness {
    let mut h = setup().await;
    h.start_billing().await;
    h
}

impl Harness {
    pub fn config(&self) -> Config {
        Config {
            nats_url: self.nats.url().to_string(),
            database_url: self.db.url.clone(),
            bind: "127.0.0.1:0".parse().unwrap(),
            prices_file: None,
            batch_size: 100,
            max_period_secs: 3600,
        }
    }

    pub async fn start_billing(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
        self.service = Some(tokio::spawn(switchyard_billing::serve(
            listener,
            self.config(),
            self.shutdown.clone(),
        )));
    }

    /// Stops the service and waits until it returned.
    pub async fn stop_billing(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.service.take() {
            task.await.unwrap().unwrap();
        }
        self.shutdown = CancellationToken::new();
    }

    /// Publishes `event` on its subject; `msg_id` sets `Nats-Msg-Id` (JetStream then
    /// drops a second publish with the same id within its duplicate window).
    pub async fn publish(&self, event: &UsageEvent, msg_id: Option<&str>) {
        self.publish_raw(
            &event.subject().unwrap(),
            schemas::encode(event).unwrap(),
            msg_id,
        )
        .await;
    }

    pub async fn publish_raw(&self, subject: &str, payload: Vec<u8>, msg_id: Option<&str>) {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(schemas::headers::MSG_ID, id);
        }
        self.js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Waits until the billing consumer has nothing pending and nothing unacked: every
    /// message published so far was committed and acked (or dead-lettered).
    pub async fn drained(&self) {
        // Both loops: money (USAGE) and token counts (USAGE_TOKENS).
        let consumers = [
            switchyard_billing::consumer(&self.js).await.unwrap(),
            switchyard_billing::tokens_consumer(&self.js).await.unwrap(),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        for mut consumer in consumers {
            loop {
                let info = consumer.info().await.unwrap();
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "billing did not drain: {} pending, {} unacked",
                    info.num_pending,
                    info.num_ack_pending
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// `SELECT … ` → the first column of each row, as text.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        self.db
            .db
            .query_all(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get_by_index::<String>(0).unwrap())
            .collect()
    }

    /// (instance ms, cost) of `account` over every day.
    pub async fn totals(&self, account: &str) -> (i64, Decimal) {
        let row = self
            .db
            .db
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT COALESCE(SUM(instance_ms), 0)::BIGINT AS ms, COALESCE(SUM(cost), 0) AS cost \
                 FROM instance_usage_daily WHERE account_id = $1",
                [account.into()],
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get("", "ms").unwrap(),
            row.try_get("", "cost").unwrap(),
        )
    }

    /// Rows of `usage_events`.
    pub async fn event_count(&self) -> i64 {
        let row = self
            .db
            .db
            .query_one(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM usage_events",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get("", "n").unwrap()
    }

    /// The service's metric line value, e.g. `billing_events_total{kind="tokens",outcome="recorded"}`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        switchyard_telemetry::testing::scrape(&self.metrics_url, name)
            .await
            .unwrap()
    }
}

/// A period event of `instance` (cluster and model `m`).
pub fn period(
    account: &str,
    instance: &str,
    instance_type: &str,
    start_ms: i64,
    end_ms: i64,
) -> UsageEvent {
    UsageEvent {
        schema_version: schemas::SCHEMA_VERSION,
        event_id: UsageEvent::period_id(instance, start_ms),
        account: account.into(),
        emitted_at: Utc::now(),
        body: UsageBody::InstancePeriod {
            cluster: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            model: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
            instance_type: instance_type.into(),
            instance_id: instance.into(),
            start_ms,
            end_ms,
        },
    }
}

/// `[start, end)` reported as periods of at most `every_ms`, the way instances do.
pub fn periods(
    account: &str,
    instance: &str,
    instance_type: &str,
    start_ms: i64,
    end_ms: i64,
    every_ms: i64,
) -> Vec<UsageEvent> {
    let mut out = Vec::new();
    let mut at = start_ms;
    while at < end_ms {
        let until = (at + every_ms).min(end_ms);
        out.push(period(account, instance, instance_type, at, until));
        at = until;
    }
    out
}

/// A tokens event of a fresh request.
pub fn tokens(
    account: &str,
    provider: &str,
    model: &str,
    input: u64,
    output: u64,
    at_ms: i64,
) -> UsageEvent {
    let request_id = uuid::Uuid::now_v7();
    UsageEvent {
        schema_version: schemas::SCHEMA_VERSION,
        event_id: UsageEvent::tokens_id(request_id),
        account: account.into(),
        emitted_at: Utc::now(),
        body: UsageBody::Tokens {
            request_id,
            provider: provider.into(),
            model: model.into(),
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: 0,
            at_ms,
        },
    }
}
