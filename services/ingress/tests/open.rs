//! Open models through the ingress, against a real nats-server: this test plays the
//! inference worker (not written yet) by pulling `req.open.>` from the REQUESTS stream,
//! opening the sealed envelope with the ingress's key, checking what it was asked and
//! answering with real reply chunks. Covers `POST /v1/embeddings` (float and base64),
//! zero-shot classification and embeddings through `POST /models/v2/…`, chat to an
//! open model, fallbacks, and every 4xx that must stop a request before the queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use base64::Engine as _;
use schemas::{
    Delta, ErrorBody, ErrorKind, FinishReason, ReplyChunk, RequestEnvelope, Role, TaskInput,
    TaskOutput, Usage, subjects,
};
use serde_json::{Value, json};
use switchyard_ingress::config::AuthArgs;

mod common;

use common::{API_KEY, Harness, Options};

const EMBEDDER: &str = "sentence-transformers/all-MiniLM-L6-v2";
const CHATTER: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// A provider key a caller sends to an open model anyway: it must go nowhere.
const STRAY_KEY: &str = "sk-stray-canary-91c2";

async fn start() -> Harness {
    common::start(Options::default()).await
}

impl Harness {
    fn embeddings(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/embeddings", self.base))
            .bearer_auth(API_KEY)
            .json(body)
    }

    fn unified(&self, model: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/models/v2/{model}", self.base))
            .bearer_auth(API_KEY)
            .json(body)
    }

    fn chat(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(API_KEY)
            .json(body)
    }

    /// Answers a task request as the inference worker does: one chunk, seq 0, last,
    /// with the output and the tokens it read.
    async fn answer_task(&self, envelope: &RequestEnvelope, output: TaskOutput, tokens: u64) {
        let mut chunk = ReplyChunk::new(envelope.request_id, 0);
        chunk.output = Some(output);
        chunk.usage = Some(Usage {
            input_tokens: tokens,
            output_tokens: 0,
            cached_input_tokens: None,
        });
        chunk.provider = Some("switchyard".into());
        chunk.model = Some(envelope.model.clone());
        chunk.last = true;
        self.reply(envelope, &chunk).await;
    }
}

/// `req.open.<model-token>.<account-token>` of a model id, for the dev account.
fn open_subject(model: &str) -> String {
    subjects::open_request_for(model, "dev").unwrap()
}

/// A distinct, exactly representable vector for the `i`-th of `texts`.
fn vector_for(i: usize, text: &str) -> Vec<f32> {
    vec![i as f32 + 0.5, -(text.len() as f32), 0.1, 1.0 / 3.0]
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// Takes one open request, checks it is `model`'s and sealed without any provider
/// key, and returns it.
async fn take_open(
    h: &Harness,
    model: &str,
) -> (
    async_nats::jetstream::Message,
    RequestEnvelope,
    schemas::SealedRequest,
) {
    let (message, envelope, sealed) = h.take_open_request().await;
    assert_eq!(message.subject.as_str(), open_subject(model));
    assert_eq!(envelope.model, model);
    assert_eq!(sealed.request.model, model);
    assert_eq!(sealed.provider_key, None);
    assert!(
        sealed.provider_keys.is_empty(),
        "{:?}",
        sealed.provider_keys
    );
    let raw = String::from_utf8_lossy(&message.payload);
    assert!(!raw.contains(STRAY_KEY));
    assert_eq!(
        message
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str(),
        envelope.request_id.to_string()
    );
    (message, envelope, sealed)
}

#[tokio::test]
async fn embeddings_answer_floats_in_input_order_without_a_provider_key() {
    let h = start().await;
    let texts = ["the secret first text", "b", "third"];
    let call = tokio::spawn(
        h.embeddings(
            &json!({"model": EMBEDDER, "input": texts, "encoding_format": "float", "user": "u-7"}),
        )
        .send(),
    );

    let (message, envelope, sealed) = take_open(&h, EMBEDDER).await;
    assert!(
        !String::from_utf8_lossy(&message.payload).contains("secret first"),
        "inputs are sealed"
    );
    assert_eq!(
        sealed.task,
        Some(TaskInput::FeatureExtraction {
            inputs: texts.iter().map(|t| t.to_string()).collect()
        })
    );
    assert!(sealed.request.messages.is_empty());
    assert!(!sealed.request.stream);
    assert_eq!(sealed.request.params.user.as_deref(), Some("u-7"));
    h.answer_task(
        &envelope,
        TaskOutput::FeatureExtraction {
            embeddings: texts
                .iter()
                .enumerate()
                .map(|(i, t)| vector_for(i, t))
                .collect(),
        },
        11,
    )
    .await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "switchyard");
    assert_eq!(response.headers()["x-switchyard-served-model"], EMBEDDER);
    assert_eq!(
        response.headers()["x-request-id"],
        envelope.request_id.to_string().as_str()
    );
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], EMBEDDER);
    assert_eq!(body["provider"], "switchyard");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "total_tokens": 11})
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), texts.len());
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        assert_eq!(floats(&item["embedding"]), vector_for(i, texts[i]), "{i}");
    }
    // f32s are written in their shortest form.
    assert_eq!(body["data"][0]["embedding"][2].to_string(), "0.1");
}

#[tokio::test]
async fn embeddings_answer_base64_as_the_openai_sdk_asks() {
    let h = start().await;
    // One string, as `input="…"`, and a provider key the caller sent out of habit.
    let call = tokio::spawn(
        h.embeddings(&json!({"model": EMBEDDER, "input": "hello there", "encoding_format": "base64", "dimensions": 4}))
            .header("provider-key", STRAY_KEY)
            .send(),
    );
    let (message, envelope, sealed) = take_open(&h, EMBEDDER).await;
    assert_eq!(
        sealed.task,
        Some(TaskInput::FeatureExtraction {
            inputs: vec!["hello there".into()]
        })
    );
    let vector = vec![0.1f32, -2.5, 3.25e-7, f32::MIN_POSITIVE];
    h.answer_task(
        &envelope,
        TaskOutput::FeatureExtraction {
            embeddings: vec![vector.clone()],
        },
        2,
    )
    .await;
    message.ack().await.unwrap();

    let (status, body) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(bytes.len(), 16);
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // Bit for bit: base64 carries the f32s exactly.
    assert_eq!(
        decoded.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        vector.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(body["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn dimensions_other_than_the_native_size_are_refused() {
    let h = start().await;
    let call = tokio::spawn(
        h.embeddings(&json!({"model": EMBEDDER, "input": ["a", "b"], "dimensions": 2}))
            .send(),
    );
    let (message, envelope, _) = take_open(&h, EMBEDDER).await;
    h.answer_task(
        &envelope,
        TaskOutput::FeatureExtraction {
            embeddings: vec![vector_for(0, "a"), vector_for(1, "b")],
        },
        2,
    )
    .await;
    message.ack().await.unwrap();
    let (status, body) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "dimensions");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("4-dimensional"), "{message}");
    assert!(message.contains("Matryoshka"), "{message}");
}

#[tokio::test]
async fn zero_shot_classification_through_the_unified_route() {
    let h = start().await;
    let labels = ["cooking", "sport", "politics"];
    let call = tokio::spawn(
        h.unified(
            EMBEDDER,
            &json!({"text": "the match ended 2-1 after extra time",
                    "params": {"candidate_labels": labels, "multi_label": true}}),
        )
        .header("provider-key", STRAY_KEY)
        .send(),
    );
    let (message, envelope, sealed) = take_open(&h, EMBEDDER).await;
    assert_eq!(
        sealed.task,
        Some(TaskInput::ZeroShotClassification {
            text: "the match ended 2-1 after extra time".into(),
            candidate_labels: labels.iter().map(|l| l.to_string()).collect(),
            multi_label: true,
        })
    );
    assert!(sealed.request.messages.is_empty());
    h.answer_task(
        &envelope,
        TaskOutput::ZeroShotClassification {
            labels: vec!["sport".into(), "politics".into(), "cooking".into()],
            scores: vec![0.875, 0.25, 0.125],
        },
        9,
    )
    .await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.headers()["x-switchyard-provider"], "switchyard");
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "output": {"labels": ["sport", "politics", "cooking"], "scores": [0.875, 0.25, 0.125]},
            "provider": "switchyard",
            "model": EMBEDDER,
            "served_model": EMBEDDER,
            "usage": {"input_tokens": 9, "output_tokens": 0},
            "error": null,
            "request_id": envelope.request_id.to_string(),
        })
    );
}

#[tokio::test]
async fn unified_embeddings_of_inputs_or_text() {
    let h = start().await;
    for (body, texts) in [
        (json!({"inputs": ["x", "yy"]}), vec!["x", "yy"]),
        (json!({"inputs": "one"}), vec!["one"]),
        (json!({"text": "just text"}), vec!["just text"]),
    ] {
        let call = tokio::spawn(h.unified(EMBEDDER, &body).send());
        let (message, envelope, sealed) = take_open(&h, EMBEDDER).await;
        assert_eq!(
            sealed.task,
            Some(TaskInput::FeatureExtraction {
                inputs: texts.iter().map(|t| t.to_string()).collect()
            }),
            "{body}"
        );
        let vectors: Vec<Vec<f32>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| vector_for(i, t))
            .collect();
        h.answer_task(
            &envelope,
            TaskOutput::FeatureExtraction {
                embeddings: vectors.clone(),
            },
            texts.len() as u64,
        )
        .await;
        message.ack().await.unwrap();
        let (status, reply) = status_and_body(call.await.unwrap().unwrap()).await;
        assert_eq!(status, 200, "{reply}");
        let got: Vec<Vec<f32>> = reply["output"]["embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        assert_eq!(got, vectors, "{body}");
        assert_eq!(reply["error"], Value::Null);
        assert_eq!(reply["provider"], "switchyard");
        assert_eq!(reply["usage"]["input_tokens"], texts.len());
    }
}

#[tokio::test]
async fn chat_to_an_open_model_needs_no_provider_key() {
    let h = start().await;
    let call = tokio::spawn(
        h.chat(&json!({"model": CHATTER, "top_k": 20, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}))
            .header("provider-key", STRAY_KEY)
            .send(),
    );
    let (message, envelope, sealed) = take_open(&h, CHATTER).await;
    assert_eq!(sealed.task, None);
    assert_eq!(sealed.request.messages[0].joined_text(), "hi");
    assert_eq!(sealed.request.params.top_k, Some(20));
    assert_eq!(sealed.request.params.max_tokens, Some(8));
    let id = envelope.request_id;
    for (seq, text) in ["Hel", "lo"].iter().enumerate() {
        let mut c = ReplyChunk::new(id, seq as u32);
        c.delta = Some(Delta {
            role: (seq == 0).then_some(Role::Assistant),
            content: Some((*text).into()),
            tool_calls: vec![],
        });
        if seq == 0 {
            c.provider = Some("switchyard".into());
            c.model = Some(CHATTER.into());
        }
        h.reply(&envelope, &c).await;
    }
    let mut end = ReplyChunk::new(id, 2);
    end.finish_reason = Some(FinishReason::Stop);
    end.usage = Some(Usage {
        input_tokens: 5,
        output_tokens: 2,
        cached_input_tokens: None,
    });
    end.last = true;
    h.reply(&envelope, &end).await;
    message.ack().await.unwrap();

    let (status, body) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello");
    assert_eq!(body["provider"], "switchyard");
    assert_eq!(body["model"], CHATTER);
    assert_eq!(body["usage"]["total_tokens"], 7);
    // Nothing went to the translator.
    assert_eq!(h.pending().await, (0, 0));
}

#[tokio::test]
async fn fallbacks_of_an_open_model() {
    let h = start().await;
    let chat = json!({"model": CHATTER, "models": ["openai/gpt-4o-mini"],
                      "messages": [{"role": "user", "content": "hi"}]});
    // The closed fallback needs its own key header: provider-key is not forwarded.
    let (status, body) = status_and_body(
        h.chat(&chat)
            .header("provider-key", STRAY_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["param"], "models[0]");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider-key-openai"),
        "{body}"
    );
    assert_eq!(h.pending().await, (0, 0));

    let call = tokio::spawn(
        h.chat(&chat)
            .header("provider-key", STRAY_KEY)
            .header("provider-key-openai", "sk-openai-fallback")
            .send(),
    );
    let (message, envelope, sealed) = h.take_open_request().await;
    assert_eq!(message.subject.as_str(), open_subject(CHATTER));
    assert_eq!(sealed.provider_key, None);
    assert_eq!(sealed.request.fallback_models, ["openai/gpt-4o-mini"]);
    assert_eq!(
        sealed.provider_keys.get("openai").map(String::as_str),
        Some("sk-openai-fallback")
    );
    assert_eq!(sealed.provider_keys.len(), 1);
    let mut error = ErrorBody::new(ErrorKind::Unavailable, "no instance could start");
    error.retry_after_ms = Some(1500);
    h.reply(
        &envelope,
        &ReplyChunk::failure(envelope.request_id, 0, error),
    )
    .await;
    message.ack().await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");

    // An open model may fall back to another open model doing the same task only.
    let (status, body) = status_and_body(
        h.embeddings(&json!({"model": EMBEDDER, "input": "x", "models": [CHATTER]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "models[0]");
    let (status, body) = status_and_body(
        h.embeddings(
            &json!({"model": EMBEDDER, "input": "x", "models": ["openai/text-embedding-3-small"]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "models[0]");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("closed models are served for chat only"),
        "{body}"
    );
    let (status, body) = status_and_body(
        h.embeddings(
            &json!({"model": EMBEDDER, "input": "x", "models": ["acme/no-such-embedder"]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "models[0]");

    // A closed model may fall back to an open one.
    let call = tokio::spawn(
        h.chat(&json!({"model": "openai/gpt-4o-mini", "models": [CHATTER],
                       "messages": [{"role": "user", "content": "hi"}]}))
            .header("provider-key", "sk-openai-primary")
            .send(),
    );
    let (message, envelope, sealed) = h.take_request().await;
    assert_eq!(message.subject.as_str(), "req.closed.openai");
    assert_eq!(sealed.provider_key.as_deref(), Some("sk-openai-primary"));
    assert_eq!(sealed.request.fallback_models, [CHATTER]);
    assert!(sealed.provider_keys.is_empty());
    h.reply(
        &envelope,
        &ReplyChunk::failure(
            envelope.request_id,
            0,
            ErrorBody::new(ErrorKind::Upstream, "provider down"),
        ),
    )
    .await;
    message.ack().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), 502);
}

#[tokio::test]
async fn worker_errors_and_broken_answers_become_statuses() {
    let h = start().await;
    // A worker error: its status, in each route's shape.
    let call = tokio::spawn(
        h.unified(
            EMBEDDER,
            &json!({"text": "x", "params": {"candidate_labels": ["a", "b"]}}),
        )
        .send(),
    );
    let (message, envelope, _) = take_open(&h, EMBEDDER).await;
    let mut error = ErrorBody::new(ErrorKind::RateLimited, "the model's queue is full");
    error.retry_after_ms = Some(2500);
    h.reply(
        &envelope,
        &ReplyChunk::failure(envelope.request_id, 0, error),
    )
    .await;
    message.ack().await.unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.headers()["retry-after"], "3");
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["kind"], "rate_limited");
    assert_eq!(body["provider"], "switchyard");
    assert_eq!(body["output"], Value::Null);

    // A worker that returns fewer vectors than texts is our bug, not an answer.
    let call = tokio::spawn(
        h.embeddings(&json!({"model": EMBEDDER, "input": ["a", "b"]}))
            .send(),
    );
    let (message, envelope, _) = take_open(&h, EMBEDDER).await;
    h.answer_task(
        &envelope,
        TaskOutput::FeatureExtraction {
            embeddings: vec![vector_for(0, "a")],
        },
        1,
    )
    .await;
    message.ack().await.unwrap();
    let (status, body) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "server_error");

    // A last chunk without the result is as broken.
    let call = tokio::spawn(
        h.embeddings(&json!({"model": EMBEDDER, "input": "a"}))
            .send(),
    );
    let (message, envelope, _) = take_open(&h, EMBEDDER).await;
    let mut empty = ReplyChunk::new(envelope.request_id, 0);
    empty.last = true;
    h.reply(&envelope, &empty).await;
    message.ack().await.unwrap();
    let (status, _) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn bad_open_model_requests_never_reach_a_worker() {
    let h = common::start(Options {
        max_body_bytes: 64 * 1024,
        ..Options::default()
    })
    .await;
    let message_of = |body: &Value| body["error"]["message"].as_str().unwrap().to_string();

    // /v1/embeddings: (body, status, param, words the message must hold)
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"model": "acme/no-such-embedder", "input": "x"}),
            404,
            "model",
            "GET /v1/models",
        ),
        (
            json!({"model": CHATTER, "input": "x"}),
            400,
            "model",
            "does not do feature-extraction; it serves chat",
        ),
        (
            json!({"model": "openai/text-embedding-3-small", "input": "x"}),
            400,
            "model",
            "closed models are served for chat only",
        ),
        (
            json!({"model": EMBEDDER, "input": [[101, 2023, 102]]}),
            400,
            "input",
            "token-id",
        ),
        (
            json!({"model": EMBEDDER, "input": [101, 2023, 102]}),
            400,
            "input",
            "token-id",
        ),
        (
            json!({"model": EMBEDDER, "input": ""}),
            400,
            "input",
            "empty",
        ),
        (
            json!({"model": EMBEDDER, "input": []}),
            400,
            "input",
            "empty",
        ),
        (json!({"model": EMBEDDER}), 400, "input", "input"),
        (
            json!({"model": EMBEDDER, "input": ["ok", ""]}),
            400,
            "input[1]",
            "empty",
        ),
        (
            json!({"model": EMBEDDER, "input": vec!["x"; 2049]}),
            400,
            "input",
            "2048",
        ),
        (
            json!({"model": EMBEDDER, "input": "x", "dimensions": 0}),
            400,
            "dimensions",
            "at least 1",
        ),
        (
            json!({"model": EMBEDDER, "input": "x", "encoding_format": "int8"}),
            400,
            "encoding_format",
            "base64",
        ),
        (
            json!({"model": EMBEDDER, "input": "x", "base_url": "http://evil"}),
            400,
            "base_url",
            "operator",
        ),
        (
            json!({"model": EMBEDDER, "input": "x".repeat(65 * 1024)}),
            413,
            "",
            "byte limit",
        ),
    ];
    for (body, status, param, words) in cases {
        let (got, reply) = status_and_body(h.embeddings(&body).send().await.unwrap()).await;
        let shown = body.to_string().chars().take(120).collect::<String>();
        assert_eq!(got, status, "{shown}: {reply}");
        if !param.is_empty() {
            assert_eq!(reply["error"]["param"], param, "{shown}: {reply}");
        }
        assert!(message_of(&reply).contains(words), "{shown}: {reply}");
    }

    // Chat to the embedder, on both routes.
    let (status, reply) = status_and_body(
        h.chat(&json!({"model": EMBEDDER, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["param"], "model");
    assert!(
        message_of(&reply).contains(&format!(
            "the model '{EMBEDDER}' does not do chat; it serves feature-extraction, zero-shot-classification"
        )),
        "{reply}"
    );
    let (status, reply) = status_and_body(
        h.unified(
            EMBEDDER,
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["kind"], "invalid_request");
    assert_eq!(reply["error"]["param"], "messages");
    assert!(message_of(&reply).contains("does not do chat"), "{reply}");
    assert_eq!(reply["provider"], "switchyard");

    // Unknown open models: 404 on every route.
    let (status, reply) = status_and_body(
        h.chat(
            &json!({"model": "acme/no-such-llm", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"]["code"], "model_not_found");
    assert!(message_of(&reply).contains("'acme/no-such-llm'"), "{reply}");
    let (status, reply) = status_and_body(
        h.unified(
            "acme/no-such-llm",
            &json!({"text": "hi", "params": {"candidate_labels": ["a"]}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"]["kind"], "not_found");
    assert_eq!(reply["provider"], Value::Null);

    // The unified route: (model, body, param)
    let unified: Vec<(&str, Value, &str)> = vec![
        (
            EMBEDDER,
            json!({"text": "x", "params": {"candidate_labels": []}}),
            "params.candidate_labels",
        ),
        (
            EMBEDDER,
            json!({"text": "x", "params": {"candidate_labels": "sport"}}),
            "params.candidate_labels",
        ),
        (
            CHATTER,
            json!({"text": "x", "params": {"candidate_labels": ["a", "b"]}}),
            "params.candidate_labels",
        ),
        (
            "openai/gpt-4o-mini",
            json!({"text": "x", "params": {"candidate_labels": ["a", "b"]}}),
            "params.candidate_labels",
        ),
        (CHATTER, json!({"inputs": ["x"]}), "inputs"),
        (EMBEDDER, json!({"inputs": [[1, 2]]}), "inputs"),
        (
            EMBEDDER,
            json!({"text": "x", "params": {"max_tokens": 5}}),
            "params.max_tokens",
        ),
        (EMBEDDER, json!({"text": "x", "stream": true}), "stream"),
    ];
    for (model, body, param) in unified {
        let (got, reply) = status_and_body(h.unified(model, &body).send().await.unwrap()).await;
        assert_eq!(got, 400, "{model} {body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{model} {body}: {reply}");
        assert_eq!(reply["output"], Value::Null);
    }

    // No Switchyard key: 401, provider key or not.
    let (status, _) = status_and_body(
        h.http
            .post(format!("{}/v1/embeddings", h.base))
            .header("provider-key", STRAY_KEY)
            .json(&json!({"model": EMBEDDER, "input": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // Nothing above reached a queue.
    assert_eq!(h.pending().await, (0, 0));

    // Counted under the embeddings route.
    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ingress_requests_total{")
                    && l.contains("route=\"embeddings\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(count("404").as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("413").as_deref(), Some("1"), "{metrics}");
    assert_eq!(count("401").as_deref(), Some("1"), "{metrics}");
}

#[tokio::test]
async fn embeddings_share_the_key_rate_limit() {
    let h = common::start(Options {
        auth: AuthArgs {
            // One token every 100 s: the burst is all the key gets during the test.
            rate_limit_rps: 0.01,
            rate_limit_burst: 1,
            ..AuthArgs::default()
        },
        ..Options::default()
    })
    .await;
    // The first passes the limiter (and fails on its input: no worker needed).
    let (status, _) = status_and_body(
        h.embeddings(&json!({"model": EMBEDDER, "input": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let response = h
        .embeddings(&json!({"model": EMBEDDER, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = status_and_body(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(h.pending().await, (0, 0));
}
