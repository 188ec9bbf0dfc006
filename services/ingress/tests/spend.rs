//! Spend limits through the ingress: an account whose month's open-model spend has
//! reached its limit gets 402 for open models — nothing is queued — while its
//! closed-model requests still go through.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use schemas::{Delta, FinishReason, ReplyChunk, RequestEnvelope, Role};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use switchyard_ingress::config::AuthArgs;
use switchyard_store::billing::{self, Decimal};
use switchyard_store::entities::account_monthly_spend;
use switchyard_store::keys;
use switchyard_store::testing::TestDb;

mod common;

use common::Options;

const OPEN_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// An account with a key, a limit, and this month's spend as billing records it.
async fn account(db: &TestDb, id: &str, limit: &str, spent: &str) -> String {
    keys::create_account(&db.db, id, None).await.unwrap();
    let (key, _) = keys::create_key(&db.db, id, None).await.unwrap();
    billing::set_spend_limit(&db.db, id, Some(Decimal::from_str(limit).unwrap()))
        .await
        .unwrap();
    account_monthly_spend::Entity::insert(account_monthly_spend::ActiveModel {
        account_id: Set(id.into()),
        month: Set(billing::current_month()),
        cost: Set(Decimal::from_str(spent).unwrap()),
        updated_at: Set(Utc::now()),
    })
    .exec(&db.db)
    .await
    .unwrap();
    key.expose().to_string()
}

#[tokio::test]
async fn reached_spend_limit_refuses_open_models_with_402() {
    let db = TestDb::new().await.unwrap();
    let over = account(&db, "acme", "25", "25.0000001").await;
    let h = common::start(Options {
        auth: AuthArgs {
            database_url: Some(db.url.clone()),
            ..AuthArgs::default()
        },
        ..Options::default()
    })
    .await;

    // OpenAI-compatible route.
    let response = h
        .http
        .post(format!("{}/v1/embeddings", h.base))
        .bearer_auth(&over)
        .json(&json!({"model": OPEN_MODEL, "input": ["hello"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "spend_limit_reached");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("spend limit reached"), "{message}");
    assert!(message.contains("25 USD"), "{message}");
    assert!(message.contains("25.0000001 USD"), "{message}");

    // The unified route says the same in its shape.
    let response = h
        .http
        .post(format!("{}/models/v2/{OPEN_MODEL}", h.base))
        .header("authorization", format!("Key {over}"))
        .json(&json!({"text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "payment_required");

    // Nothing was queued for an inference worker.
    assert_eq!(h.pending().await.1, 0);

    // Closed models are not charged: the same key still gets through.
    let call = tokio::spawn(
        h.http
            .post(format!("{}/v1/chat/completions", h.base))
            .bearer_auth(&over)
            .header("provider-key", "sk-test")
            .json(&json!({"model": "openai/gpt-4o-mini",
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send(),
    );
    let mut batch = h
        .translator_consumer()
        .await
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let message = batch.next().await.expect("published").unwrap();
    let envelope: RequestEnvelope = schemas::decode(&message.payload).unwrap();
    assert_eq!(envelope.account, "acme");
    let mut chunk = ReplyChunk::new(envelope.request_id, 0);
    chunk.delta = Some(Delta {
        role: Some(Role::Assistant),
        content: Some("ok".into()),
        tool_calls: vec![],
    });
    chunk.provider = Some("openai".into());
    chunk.finish_reason = Some(FinishReason::Stop);
    chunk.last = true;
    h.reply(&envelope, &chunk).await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
}
