//! The ingress against a real nats-server, with this test playing the worker: bad
//! input gets the right 4xx, requests are published sealed and deduplicable, and reply
//! chunks come back as OpenAI JSON or SSE.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use futures::StreamExt;
use schemas::{Delta, ErrorBody, ErrorKind, FinishReason, ReplyChunk, Role, Usage};
use serde_json::{Value, json};

mod common;

use common::{API_KEY, Harness, Options};

const PROVIDER_KEY: &str = "sk-provider-canary-7f3a";

async fn start(max_body_bytes: usize, timeout_secs: u64) -> Harness {
    common::start(Options {
        max_body_bytes,
        timeout_secs,
        ..Options::default()
    })
    .await
}

impl Harness {
    fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(API_KEY)
            .header("provider-key", PROVIDER_KEY)
            .header("content-type", "application/json")
            .body(body)
    }
}

fn chat_body(stream: bool) -> String {
    json!({
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "the secret prompt"}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_input_gets_openai_style_4xx() {
    let h = start(1024, 5).await;

    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.base))
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing API key")
    );

    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth("wrong")
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 401);

    let (status, body) = error_of(h.post("{\"model\": ").send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    let (status, body) = error_of(
        h.post(r#"{"model":"openai/x","messages":"hi"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "messages");

    let (status, body) = error_of(
        h.post(r#"{"messages":[{"role":"user","content":"x"}]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "model");

    let (status, body) = error_of(
        h.post(r#"{"model":"openai/a b","messages":[{"role":"user","content":"x"}]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "model");

    let (status, body) = error_of(
        h.post(r#"{"model":"nosuch/model","messages":[{"role":"user","content":"x"}]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");

    let big =
        json!({"model": "openai/x", "messages": [{"role": "user", "content": "x".repeat(2000)}]})
            .to_string();
    let (status, body) = error_of(h.post(big).send().await.unwrap()).await;
    assert_eq!(status, 413);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1024 byte limit")
    );

    let r = h
        .http
        .post(format!("{}/v1/chat/completions", h.base))
        .bearer_auth(API_KEY)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider-key")
    );

    let (status, _) = error_of(
        h.http
            .get(format!("{}/v1/nothing", h.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    // Nothing above reached the queue.
    let mut consumer = h.translator_consumer().await;
    assert_eq!(consumer.info().await.unwrap().num_pending, 0);
}

#[tokio::test]
async fn non_streaming_request_is_sealed_published_and_answered() {
    let h = start(1 << 20, 10).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let call = tokio::spawn(
        h.post(chat_body(false))
            .header("traceparent", traceparent)
            .send(),
    );

    let (message, envelope, sealed) = h.take_request().await;
    // Sealed on the wire: neither prompt nor key in the stored bytes.
    let raw = String::from_utf8_lossy(&message.payload);
    assert!(!raw.contains("secret prompt"));
    assert!(!raw.contains(PROVIDER_KEY));
    assert_eq!(message.subject.as_str(), "req.closed.openai");
    let headers = message.headers.clone().unwrap();
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        envelope.request_id.to_string()
    );
    assert_eq!(headers.get("traceparent").unwrap().as_str(), traceparent);
    assert_eq!(envelope.request_id.get_version_num(), 7);
    assert_eq!(envelope.account, "dev");
    assert!(envelope.deadline > envelope.created_at);
    assert_eq!(sealed.provider_key.as_deref(), Some(PROVIDER_KEY));
    assert_eq!(
        sealed.request.messages[0].joined_text(),
        "the secret prompt"
    );

    let id = envelope.request_id;
    let mut first = ReplyChunk::new(id, 0);
    first.delta = Some(Delta {
        role: Some(Role::Assistant),
        content: Some("Hel".into()),
        tool_calls: vec![],
    });
    first.provider = Some("openai".into());
    first.model = Some("gpt-4o-mini-2024-07-18".into());
    h.reply(&envelope, &first).await;
    let mut second = ReplyChunk::new(id, 1);
    second.delta = Some(Delta {
        role: None,
        content: Some("lo".into()),
        tool_calls: vec![],
    });
    second.finish_reason = Some(FinishReason::Stop);
    second.usage = Some(Usage {
        input_tokens: 3,
        output_tokens: 2,
        cached_input_tokens: None,
    });
    second.last = true;
    h.reply(&envelope, &second).await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchyard-provider"], "openai");
    assert_eq!(response.headers()["x-request-id"], id.to_string().as_str());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "openai/gpt-4o-mini");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 5);
}

#[tokio::test]
async fn streaming_request_becomes_sse_with_done() {
    let h = start(1 << 20, 10).await;
    let call = tokio::spawn(h.post(chat_body(true)).send());
    let (message, envelope, sealed) = h.take_request().await;
    assert!(sealed.request.stream);
    let id = envelope.request_id;
    for (seq, text) in ["a", "b", "c"].iter().enumerate() {
        let mut c = ReplyChunk::new(id, seq as u32);
        c.delta = Some(Delta {
            role: None,
            content: Some((*text).into()),
            tool_calls: vec![],
        });
        h.reply(&envelope, &c).await;
    }
    let mut end = ReplyChunk::new(id, 3);
    end.finish_reason = Some(FinishReason::Length);
    end.usage = Some(Usage {
        input_tokens: 4,
        output_tokens: 3,
        cached_input_tokens: Some(1),
    });
    end.last = true;
    h.reply(&envelope, &end).await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let parsed: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content: String = parsed
        .iter()
        .filter_map(|v| {
            v["choices"]
                .get(0)
                .and_then(|c| c["delta"]["content"].as_str())
        })
        .collect();
    assert_eq!(content, "abc");
    let finish: Vec<&str> = parsed
        .iter()
        .filter_map(|v| {
            v["choices"]
                .get(0)
                .and_then(|c| c["finish_reason"].as_str())
        })
        .collect();
    assert_eq!(finish, ["length"]);
    let usage = parsed.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
}

#[tokio::test]
async fn worker_errors_map_to_status_and_retry_after() {
    let h = start(1 << 20, 10).await;
    let call = tokio::spawn(h.post(chat_body(true)).send());
    let (message, envelope, _) = h.take_request().await;
    let mut error = ErrorBody::new(ErrorKind::RateLimited, "Rate limit reached");
    error.retry_after_ms = Some(2500);
    error.provider_status = Some(429);
    h.reply(
        &envelope,
        &ReplyChunk::failure(envelope.request_id, 0, error),
    )
    .await;
    message.ack().await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let (_, body) = error_of(response).await;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["message"], "Rate limit reached");
}

#[tokio::test]
async fn no_worker_means_504_at_the_deadline() {
    let h = start(1 << 20, 1).await;
    let (status, body) = error_of(h.post(chat_body(false)).send().await.unwrap()).await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["type"], "timeout_error");
}

#[tokio::test]
async fn metrics_count_requests_by_status() {
    let h = start(1 << 20, 5).await;
    let _ = h.post("not json").send().await.unwrap();
    let text = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ingress_requests_total{") && l.contains("status=\"400\""))
        .unwrap_or_else(|| panic!("no 400 counter in:\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn a_caller_who_leaves_cancels_the_worker() {
    let h = start(1 << 20, 30).await;
    let mut cancels = h.client.subscribe("cancel.*").await.unwrap();
    h.client.flush().await.unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let call = tokio::spawn(
        impatient
            .post(format!("{}/v1/chat/completions", h.base))
            .bearer_auth(API_KEY)
            .header("provider-key", PROVIDER_KEY)
            .body(chat_body(false))
            .send(),
    );
    let (message, envelope, _) = h.take_request().await;
    // The worker never answers; the caller gives up after 300 ms.
    assert!(call.await.unwrap().unwrap_err().is_timeout());
    let cancel = tokio::time::timeout(Duration::from_secs(10), cancels.next())
        .await
        .expect("a cancel message")
        .unwrap();
    assert_eq!(
        cancel.subject.as_str(),
        schemas::subjects::cancel(envelope.request_id)
    );
    message.ack().await.unwrap();
}

#[tokio::test]
async fn models_and_catalog_are_listed_for_authenticated_callers() {
    let h = start(1 << 20, 5).await;
    let get = |path: &str, auth: bool| {
        let r = h.http.get(format!("{}{path}", h.base));
        if auth { r.bearer_auth(API_KEY) } else { r }
    };
    assert_eq!(get("/v1/models", false).send().await.unwrap().status(), 401);

    let models: Value = get("/v1/models", true)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().unwrap();
    let catalog = schemas::catalog::Catalog::embedded().unwrap();
    assert_eq!(data.len(), catalog.models.len());
    let owners: std::collections::BTreeSet<&str> = data
        .iter()
        .map(|m| m["owned_by"].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        ["anthropic", "google", "openai", "switchyard"]
            .into_iter()
            .collect()
    );
    assert!(
        data.iter()
            .any(|m| m["id"] == "anthropic/claude-sonnet-4-5" && m["object"] == "model")
    );
    let open: std::collections::BTreeSet<&str> = data
        .iter()
        .filter(|m| m["owned_by"] == "switchyard")
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        open,
        [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "sentence-transformers/all-MiniLM-L6-v2"
        ]
        .into_iter()
        .collect()
    );

    let catalog_of = |path: &'static str| {
        let request = get(path, true);
        async move {
            let v: Value = request.send().await.unwrap().json().await.unwrap();
            v["models"].as_array().unwrap().clone()
        }
    };
    // Chat: every closed model, and the open chat model.
    let chat = catalog_of("/v1/catalog?task=chat").await;
    assert_eq!(chat.len(), data.len() - 1);
    assert!(chat.iter().all(|m| m["task"] == "chat"));
    let smol = chat
        .iter()
        .find(|m| m["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct")
        .unwrap();
    assert_eq!(smol["kind"], "open");
    assert_eq!(smol["owner"], "switchyard");
    assert_eq!(smol["instance_type"], "cpu");
    assert_eq!(smol["other_tasks"], json!([]));
    let gpt = chat
        .iter()
        .find(|m| m["id"] == "openai/gpt-4o-mini")
        .unwrap();
    assert_eq!(gpt["kind"], "closed");
    assert_eq!(gpt["instance_type"], Value::Null);
    assert_eq!(
        chat.iter().filter(|m| m["kind"] == "closed").count(),
        data.len() - 2
    );
    // A model matches its main task and its other tasks.
    for path in [
        "/v1/catalog?task=feature-extraction",
        "/v1/catalog?task=zero-shot-classification",
    ] {
        let models = catalog_of(path).await;
        assert_eq!(models.len(), 1, "{path}");
        let minilm = &models[0];
        assert_eq!(minilm["id"], "sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(minilm["task"], "feature-extraction");
        assert_eq!(minilm["other_tasks"], json!(["zero-shot-classification"]));
        assert_eq!(minilm["kind"], "open");
        assert_eq!(minilm["instance_type"], "cpu");
    }
    assert_eq!(
        catalog_of("/v1/catalog?task=text-classification").await,
        Vec::<Value>::new()
    );
    let (status, body) =
        error_of(get("/v1/catalog?task=juggling", true).send().await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "task");
}
