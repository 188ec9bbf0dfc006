//! The unified route, `POST /models/v2/{model id}`, against a real nats-server with
//! this test playing the worker: the body becomes the same sealed request as
//! `/v1/chat/completions` makes, and reply chunks come back as the unified JSON answer
//! or as named SSE events (`chunk`, `done`, `error`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use futures::StreamExt;
use schemas::{
    Delta, ErrorBody, ErrorKind, FinishReason, Message, ReplyChunk, RequestEnvelope, Role,
    ToolCallDelta, Usage,
};
use serde_json::{Value, json};

mod common;

use common::{API_KEY, Harness, Options};

const PROVIDER_KEY: &str = "sk-provider-canary-5b1e";

async fn start(timeout_secs: u64) -> Harness {
    common::start(Options {
        timeout_secs,
        ..Options::default()
    })
    .await
}

impl Harness {
    /// `POST /models/v2/<model>` with both keys.
    fn post(&self, model: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/models/v2/{model}", self.base))
            .bearer_auth(API_KEY)
            .header("provider-key", PROVIDER_KEY)
            .json(body)
    }

    /// Replies `texts` as content chunks, then a last chunk with `finish` and `usage`.
    async fn reply_texts(
        &self,
        envelope: &RequestEnvelope,
        provider: &str,
        texts: &[&str],
        finish: FinishReason,
        usage: Usage,
    ) {
        let id = envelope.request_id;
        for (seq, text) in texts.iter().enumerate() {
            let mut c = ReplyChunk::new(id, seq as u32);
            c.delta = Some(Delta {
                role: (seq == 0).then_some(Role::Assistant),
                content: Some((*text).into()),
                tool_calls: vec![],
            });
            if seq == 0 {
                c.provider = Some(provider.into());
                c.model = Some("served-model-2025".into());
            }
            self.reply(envelope, &c).await;
        }
        let mut end = ReplyChunk::new(id, texts.len() as u32);
        end.finish_reason = Some(finish);
        end.usage = Some(usage);
        end.last = true;
        self.reply(envelope, &end).await;
    }
}

fn usage(input: u64, output: u64, cached: Option<u64>) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_input_tokens: cached,
    }
}

/// The SSE body as (event name, data) pairs; keep-alive comments are skipped.
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            Some((
                name?,
                data.unwrap_or_else(|| panic!("event without data: {block:?}")),
            ))
        })
        .collect()
}

async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn text_shorthand_is_answered_as_unified_json() {
    let h = start(10).await;
    let call = tokio::spawn(
        h.post(
            "openai/gpt-4o-mini",
            &json!({"text": "the secret prompt", "params": {"max_tokens": 7, "stop": "END", "temperature": 0.3}}),
        )
        .send(),
    );
    let (message, envelope, sealed) = h.take_request().await;
    assert_eq!(message.subject.as_str(), "req.closed.openai");
    let raw = String::from_utf8_lossy(&message.payload);
    assert!(!raw.contains("secret prompt"));
    assert!(!raw.contains(PROVIDER_KEY));
    assert_eq!(envelope.model, "openai/gpt-4o-mini");
    assert_eq!(sealed.provider_key.as_deref(), Some(PROVIDER_KEY));
    let request = &sealed.request;
    assert_eq!(request.model, "openai/gpt-4o-mini");
    assert_eq!(
        request.messages,
        [Message::text(Role::User, "the secret prompt")]
    );
    assert_eq!(request.params.max_tokens, Some(7));
    assert_eq!(request.params.stop, ["END"]);
    assert_eq!(request.params.temperature, Some(0.3));
    assert!(!request.stream);

    h.reply_texts(
        &envelope,
        "openai",
        &["Hel", "lo"],
        FinishReason::Stop,
        usage(3, 2, Some(1)),
    )
    .await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let id = envelope.request_id.to_string();
    assert_eq!(response.headers()["x-request-id"], id.as_str());
    assert_eq!(response.headers()["x-switchyard-provider"], "openai");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "output": {"role": "assistant", "content": "Hello"},
            "finish_reason": "stop",
            "provider": "openai",
            "model": "openai/gpt-4o-mini",
            "served_model": "served-model-2025",
            "usage": {"input_tokens": 3, "output_tokens": 2, "cached_input_tokens": 1},
            "error": null,
            "request_id": id,
        })
    );
}

#[tokio::test]
async fn messages_form_with_tools_and_key_authorization() {
    let h = start(10).await;
    let body = json!({
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "weather in Paris?"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "params": {"seed": 42},
    });
    let call = tokio::spawn(
        h.http
            .post(format!("{}/models/v2/anthropic/claude-sonnet-4-5", h.base))
            .header("authorization", format!("Key {API_KEY}"))
            .header("provider-key", PROVIDER_KEY)
            .json(&body)
            .send(),
    );
    let (message, envelope, sealed) = h.take_request().await;
    assert_eq!(message.subject.as_str(), "req.closed.anthropic");
    let request = &sealed.request;
    assert_eq!(request.model, "anthropic/claude-sonnet-4-5");
    assert_eq!(request.messages.len(), 2);
    assert_eq!(request.messages[0].role, Role::System);
    assert_eq!(request.messages[1].joined_text(), "weather in Paris?");
    assert_eq!(request.tools[0].name, "get_weather");
    assert_eq!(request.params.seed, Some(42));

    let id = envelope.request_id;
    let mut first = ReplyChunk::new(id, 0);
    first.provider = Some("anthropic".into());
    first.delta = Some(Delta {
        role: Some(Role::Assistant),
        content: None,
        tool_calls: vec![ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            name: Some("get_weather".into()),
            arguments: Some("{\"city\":".into()),
        }],
    });
    h.reply(&envelope, &first).await;
    let mut end = ReplyChunk::new(id, 1);
    end.delta = Some(Delta {
        role: None,
        content: None,
        tool_calls: vec![ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: Some("\"Paris\"}".into()),
        }],
    });
    end.finish_reason = Some(FinishReason::ToolCalls);
    end.usage = Some(usage(9, 5, None));
    end.last = true;
    h.reply(&envelope, &end).await;
    message.ack().await.unwrap();

    let (status, body) = status_and_body(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["content"], Value::Null);
    assert_eq!(
        body["output"]["tool_calls"],
        json!([{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(body["finish_reason"], "tool_calls");
    assert_eq!(body["provider"], "anthropic");
    assert_eq!(body["model"], "anthropic/claude-sonnet-4-5");
    assert_eq!(body["served_model"], Value::Null);
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 9, "output_tokens": 5})
    );
}

#[tokio::test]
async fn streaming_answers_named_chunk_and_done_events() {
    let h = start(10).await;
    let call = tokio::spawn(
        h.post(
            "google/gemini-2.5-flash",
            &json!({"text": "stream it", "stream": true}),
        )
        .send(),
    );
    let (message, envelope, sealed) = h.take_request().await;
    assert!(sealed.request.stream);
    assert_eq!(message.subject.as_str(), "req.closed.google");
    h.reply_texts(
        &envelope,
        "google",
        &["a", "b", "c"],
        FinishReason::Length,
        usage(2, 3, None),
    )
    .await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(response.headers()["x-switchyard-provider"], "google");
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["chunk", "chunk", "chunk", "chunk", "done"]);
    assert_eq!(events[0].1, json!({"delta": {"content": "a"}}));
    assert_eq!(events[2].1, json!({"delta": {"content": "c"}}));
    assert_eq!(events[3].1, json!({"delta": {}, "finish_reason": "length"}));
    assert_eq!(
        events[4].1,
        json!({"usage": {"input_tokens": 2, "output_tokens": 3}, "provider": "google", "finish_reason": "length"})
    );
}

#[tokio::test]
async fn an_error_mid_stream_ends_it_with_an_error_event() {
    let h = start(10).await;
    let call = tokio::spawn(
        h.post("openai/gpt-4o-mini", &json!({"text": "x", "stream": true}))
            .send(),
    );
    let (message, envelope, _) = h.take_request().await;
    let id = envelope.request_id;
    let mut first = ReplyChunk::new(id, 0);
    first.provider = Some("openai".into());
    first.delta = Some(Delta {
        role: None,
        content: Some("partial".into()),
        tool_calls: vec![],
    });
    h.reply(&envelope, &first).await;
    h.reply(
        &envelope,
        &ReplyChunk::failure(
            id,
            1,
            ErrorBody::new(ErrorKind::Upstream, "the provider stream ended early"),
        ),
    )
    .await;
    message.ack().await.unwrap();

    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["chunk", "error"]);
    assert_eq!(
        events[1].1,
        json!({"error": {"kind": "upstream", "message": "the provider stream ended early", "param": null}})
    );
}

#[tokio::test]
async fn worker_errors_map_to_status_retry_after_and_unified_body() {
    let h = start(10).await;
    for stream in [false, true] {
        let call = tokio::spawn(
            h.post(
                "openai/gpt-4o-mini",
                &json!({"text": "x", "stream": stream}),
            )
            .send(),
        );
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
        assert_eq!(response.status(), 429, "stream={stream}");
        assert_eq!(response.headers()["retry-after"], "3");
        assert_eq!(response.headers()["retry-after-ms"], "2500");
        let (_, body) = status_and_body(response).await;
        assert_eq!(
            body,
            json!({
                "error": {"kind": "rate_limited", "message": "Rate limit reached", "param": null, "retry_after_ms": 2500},
                "output": null,
                "provider": "openai",
                "usage": null,
            })
        );
    }
}

#[tokio::test]
async fn no_worker_means_504_in_the_unified_shape() {
    let h = start(1).await;
    let (status, body) = status_and_body(
        h.post("openai/gpt-4o-mini", &json!({"text": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(body["error"]["kind"], "timeout");
    assert_eq!(body["output"], Value::Null);
}

#[tokio::test]
async fn bad_input_gets_4xx_naming_the_field() {
    let h = start(5).await;
    let text = json!({"text": "x"});

    // (model in the path, body, status, error.kind, error.param)
    let cases: Vec<(&str, Value, u16, &str, Value)> = vec![
        (
            "openai/gpt-4o-mini",
            json!({"text": "x", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request",
            json!("text"),
        ),
        (
            "openai/gpt-4o-mini",
            json!({"stream": true}),
            400,
            "invalid_request",
            json!("messages"),
        ),
        (
            "openai/gpt-4o-mini",
            json!({"text": "x", "model": "openai/gpt-4o"}),
            400,
            "invalid_request",
            json!("model"),
        ),
        (
            "openai/gpt-4o-mini",
            json!({"text": ["x"]}),
            400,
            "invalid_request",
            json!("text"),
        ),
        (
            "openai/gpt-4o-mini",
            json!({"text": "x", "params": {"temperature": "warm"}}),
            400,
            "invalid_request",
            json!("params.temperature"),
        ),
        (
            "openai/gpt*",
            text.clone(),
            400,
            "invalid_request",
            json!("model"),
        ),
        (
            "openai/gpt>",
            text.clone(),
            400,
            "invalid_request",
            json!("model"),
        ),
        (
            "openai/gpt 4o",
            text.clone(),
            400,
            "invalid_request",
            json!("model"),
        ),
        (
            "openai/",
            text.clone(),
            400,
            "invalid_request",
            json!("model"),
        ),
        (
            "nosuch/model",
            text.clone(),
            404,
            "not_found",
            json!("model"),
        ),
        // An open-model id the catalog does not list.
        (
            "HuggingFaceTB/no-such-model",
            text.clone(),
            404,
            "not_found",
            json!("model"),
        ),
    ];
    for (model, body, status, kind, param) in cases {
        let (got, reply) = status_and_body(h.post(model, &body).send().await.unwrap()).await;
        assert_eq!(got, status, "{model} {body}: {reply}");
        assert_eq!(reply["error"]["kind"], kind, "{model} {body}: {reply}");
        assert_eq!(reply["error"]["param"], param, "{model} {body}: {reply}");
        assert_eq!(reply["output"], Value::Null);
        assert_eq!(reply["usage"], Value::Null);
    }

    let (status, reply) = status_and_body(
        h.post(
            "openai/gpt-4o-mini",
            &json!({"text": "x", "params": {"max_token": 5}}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_token"),
        "{reply}"
    );

    let (status, reply) = status_and_body(
        h.http
            .post(format!("{}/models/v2/openai/gpt-4o-mini", h.base))
            .body("[1, 2]")
            .bearer_auth(API_KEY)
            .header("provider-key", PROVIDER_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(reply["error"]["kind"], "invalid_request");

    // No provider key: 401, with the provider named.
    let (status, reply) = status_and_body(
        h.http
            .post(format!("{}/models/v2/openai/gpt-4o-mini", h.base))
            .bearer_auth(API_KEY)
            .json(&text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(reply["error"]["kind"], "authentication");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider-key")
    );
    assert_eq!(reply["provider"], "openai");

    // No or a wrong Switchyard key: 401, whichever scheme.
    for auth in [None, Some("Bearer wrong"), Some("Key wrong"), Some(API_KEY)] {
        let mut request = h
            .http
            .post(format!("{}/models/v2/openai/gpt-4o-mini", h.base))
            .header("provider-key", PROVIDER_KEY)
            .json(&text);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let (status, reply) = status_and_body(request.send().await.unwrap()).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(reply["error"]["kind"], "authentication");
    }

    // `Authorization: Key` passes authentication on the OpenAI route too (and then
    // fails on the missing provider key, not on the Switchyard key).
    let (status, reply) = status_and_body(
        h.http
            .post(format!("{}/v1/chat/completions", h.base))
            .header("authorization", format!("Key {API_KEY}"))
            .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("provider-key"),
        "{reply}"
    );

    // Nothing above reached the queue.
    let mut consumer = h.translator_consumer().await;
    assert_eq!(consumer.info().await.unwrap().num_pending, 0);

    // Counted under the unified route.
    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ingress_requests_total{")
                && l.contains("route=\"unified\"")
                && l.contains("status=\"404\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_streaming_caller_who_leaves_cancels_the_worker() {
    let h = start(30).await;
    let mut cancels = h.client.subscribe("cancel.*").await.unwrap();
    h.client.flush().await.unwrap();
    let response_task = {
        let request = h.post("openai/gpt-4o-mini", &json!({"text": "x", "stream": true}));
        tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            // Read the first event, then hang up.
            let mut body = response.bytes_stream();
            body.next().await.unwrap().unwrap()
        })
    };
    let (message, envelope, _) = h.take_request().await;
    let id = envelope.request_id;
    let mut first = ReplyChunk::new(id, 0);
    first.delta = Some(Delta {
        role: None,
        content: Some("a".into()),
        tool_calls: vec![],
    });
    h.reply(&envelope, &first).await;
    let first_bytes = response_task.await.unwrap();
    assert!(String::from_utf8_lossy(&first_bytes).contains("event: chunk"));
    // The caller is gone; the next chunk's send fails and the worker is told to stop.
    for seq in 1..20 {
        let mut c = ReplyChunk::new(id, seq);
        c.delta = Some(Delta {
            role: None,
            content: Some("more".into()),
            tool_calls: vec![],
        });
        h.reply(&envelope, &c).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = tokio::time::timeout(Duration::from_secs(10), cancels.next())
        .await
        .expect("a cancel message")
        .unwrap();
    assert_eq!(cancel.subject.as_str(), schemas::subjects::cancel(id));
    message.ack().await.unwrap();
}
