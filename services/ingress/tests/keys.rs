//! Accounts' API keys and the per-key rate limit, against a real nats-server (this
//! test plays the worker) and a Postgres database of the test's own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use schemas::{Delta, FinishReason, ReplyChunk, RequestEnvelope, Role};
use serde_json::{Value, json};
use switchyard_ingress::config::AuthArgs;
use switchyard_store::keys;
use switchyard_store::testing::TestDb;

mod common;

use common::{API_KEY, Harness, Options};

const PROVIDER_KEY: &str = "sk-provider-canary-keys";

async fn start(auth: AuthArgs) -> Harness {
    common::start(Options {
        auth,
        ..Options::default()
    })
    .await
}

fn with_db(db: &TestDb) -> AuthArgs {
    AuthArgs {
        database_url: Some(db.url.clone()),
        ..AuthArgs::default()
    }
}

fn body() -> String {
    json!({
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
}

impl Harness {
    fn post(&self, authorization: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .header("authorization", authorization)
            .header("provider-key", PROVIDER_KEY)
            .header("content-type", "application/json")
            .body(body())
    }

    /// Takes the next published request and answers it, as a worker would.
    async fn serve_one(&self) -> RequestEnvelope {
        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream("REQUESTS")
            .await
            .unwrap()
            .get_consumer("translator")
            .await
            .unwrap();
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .unwrap();
        let message = batch
            .next()
            .await
            .expect("a request was published")
            .unwrap();
        let envelope: RequestEnvelope = schemas::decode(&message.payload).unwrap();
        let mut chunk = ReplyChunk::new(envelope.request_id, 0);
        chunk.delta = Some(Delta {
            role: Some(Role::Assistant),
            content: Some("ok".into()),
            tool_calls: vec![],
        });
        chunk.provider = Some("openai".into());
        chunk.finish_reason = Some(FinishReason::Stop);
        chunk.last = true;
        self.client
            .publish(
                envelope.reply.subject().to_string(),
                schemas::encode(&chunk).unwrap().into(),
            )
            .await
            .unwrap();
        message.ack().await.unwrap();
        envelope
    }

    /// A request that should get through: returns the account it was published for.
    async fn call_ok(&self, authorization: &str) -> String {
        let call = tokio::spawn(self.post(authorization).send());
        let envelope = self.serve_one().await;
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["choices"][0]["message"]["content"], "ok");
        envelope.account
    }

    async fn call_err(&self, authorization: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self.post(authorization).send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.unwrap())
    }
}

#[tokio::test]
async fn account_keys_authenticate_and_revoked_ones_do_not() {
    let db = TestDb::new().await.unwrap();
    keys::create_account(&db.db, "acme", None).await.unwrap();
    let (key, id) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let (unused, unused_id) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let h = start(AuthArgs {
        // No cache, so a revocation shows at once.
        auth_cache_ttl_secs: 0,
        ..with_db(&db)
    })
    .await;

    // Both schemes; the envelope carries the key's account.
    assert_eq!(h.call_ok(&format!("Bearer {}", key.expose())).await, "acme");
    assert_eq!(h.call_ok(&format!("Key {}", key.expose())).await, "acme");
    // The dev key still works, as account `dev`.
    assert_eq!(h.call_ok(&format!("Bearer {API_KEY}")).await, "dev");

    // Right prefix, wrong secret.
    let mut forged = key.expose().to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'x' { 'y' } else { 'x' });
    let (status, _, body) = h.call_err(&format!("Bearer {forged}")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid or revoked Switchyard API key")
    );
    let (status, _, _) = h.call_err("Bearer sy_garbage").await;
    assert_eq!(status, 401);

    // Revoked: a key used before, and one never used.
    assert!(keys::revoke_key(&db.db, id).await.unwrap());
    assert!(keys::revoke_key(&db.db, unused_id).await.unwrap());
    for k in [&key, &unused] {
        let (status, _, body) = h.call_err(&format!("Key {}", k.expose())).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked")
        );
    }
}

#[tokio::test]
async fn verified_keys_are_cached() {
    use sea_orm::ConnectionTrait;
    let db = TestDb::new().await.unwrap();
    keys::create_account(&db.db, "acme", None).await.unwrap();
    let (key, _) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let h = start(with_db(&db)).await;
    assert_eq!(h.call_ok(&format!("Bearer {}", key.expose())).await, "acme");
    // Within the TTL the ingress does not ask Postgres again: a key whose row
    // vanished behind its back (no revocation announced) still works from the cache.
    db.db
        .execute_unprepared("DELETE FROM api_keys")
        .await
        .unwrap();
    assert_eq!(h.call_ok(&format!("Bearer {}", key.expose())).await, "acme");
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_every_ingress_at_once() {
    let db = TestDb::new().await.unwrap();
    keys::create_account(&db.db, "acme", None).await.unwrap();
    let (key, id) = keys::create_key(&db.db, "acme", None).await.unwrap();
    // Two ingresses on the same accounts database, each trusting a verified key for
    // an hour.
    let auth = || AuthArgs {
        auth_cache_ttl_secs: 3600,
        ..with_db(&db)
    };
    let (a, b) = (start(auth()).await, start(auth()).await);
    let bearer = format!("Bearer {}", key.expose());
    assert_eq!(a.call_ok(&bearer).await, "acme");
    assert_eq!(b.call_ok(&bearer).await, "acme");
    assert!(keys::revoke_key(&db.db, id).await.unwrap());
    // The revocation is announced (Postgres NOTIFY) and both drop the key from their
    // caches: 401 well within the hour.
    for h in [&a, &b] {
        // GET /v1/models authenticates like every route and answers at once (a chat
        // request with a still-valid key would wait for a worker).
        let refused = async {
            loop {
                let status = h
                    .http
                    .get(format!("{}/v1/models", h.base))
                    .header("authorization", &bearer)
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status == 401 {
                    break;
                }
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("the revoked key still works after 5 s");
    }
}

#[tokio::test]
async fn postgres_down_is_503_not_401() {
    // Nothing listens on the port: the database is "down".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = start(AuthArgs {
        database_url: Some(format!("postgres://postgres@127.0.0.1:{port}/switchyard")),
        ..AuthArgs::default()
    })
    .await;
    let key = keys::generate();
    let (status, headers, body) = h.call_err(&format!("Bearer {}", key.expose())).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("accounts database unavailable")
    );
    // Not one of ours at all: still a plain 401, and the dev key still works.
    assert_eq!(h.call_err("Bearer nonsense").await.0, 401);
    assert_eq!(h.call_ok(&format!("Bearer {API_KEY}")).await, "dev");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_after_the_burst() {
    let db = TestDb::new().await.unwrap();
    keys::create_account(&db.db, "acme", None).await.unwrap();
    let (key, _) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let (other, _) = keys::create_key(&db.db, "acme", None).await.unwrap();
    let h = start(AuthArgs {
        // One token every 100 s: the burst is all a key gets during the test.
        rate_limit_rps: 0.01,
        rate_limit_burst: 2,
        ..with_db(&db)
    })
    .await;
    let auth = format!("Bearer {}", key.expose());
    h.call_ok(&auth).await;
    h.call_ok(&auth).await;
    let (status, headers, body) = h.call_err(&auth).await;
    assert_eq!(status, 429, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((90..=100).contains(&retry), "{retry}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );

    // The unified route shares the bucket and answers in its own shape.
    let r = h
        .http
        .post(format!("{}/models/v2/openai/gpt-4o-mini", h.base))
        .header("authorization", format!("Key {}", key.expose()))
        .header("provider-key", PROVIDER_KEY)
        .header("content-type", "application/json")
        .body(json!({"text": "hi"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["kind"], "rate_limited");

    // Another key has a bucket of its own.
    assert_eq!(
        h.call_ok(&format!("Bearer {}", other.expose())).await,
        "acme"
    );
}
