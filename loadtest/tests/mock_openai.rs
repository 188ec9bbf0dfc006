//! The mock OpenAI provider over real HTTP: JSON and SSE shapes, auth, errors, tool
//! calls, truncation.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Mock;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_loadtest::mock::openai::MockConfig;

const KEY: &str = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz";

async fn post(mock: &Mock, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(mock.url())
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The `data:` payloads of an SSE body, in order, as text.
fn sse_data(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "events end with a blank line");
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"))
                .to_owned()
        })
        .collect()
}

fn chunks(data: &[String]) -> Vec<Value> {
    data.iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn non_streaming_reply_has_openai_shape() {
    let mock = Mock::start(MockConfig::default()).await;
    let response = post(
        &mock,
        &json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "hello"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    {"type": "text", "text": "big world"}
                ]}
            ]
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();

    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["system_fingerprint"].is_string());
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["role"], "assistant");
    assert_eq!(choices[0]["message"]["content"], "echo: hello big world");
    assert_eq!(choices[0]["message"]["refusal"], Value::Null);
    assert!(choices[0]["message"].get("tool_calls").is_none());
    assert_eq!(choices[0]["logprobs"], Value::Null);
    assert_eq!(choices[0]["finish_reason"], "stop");
    // "be brief" + "hello" + "big world" = 5 words; 4 chunks by default.
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 9);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
}

#[tokio::test]
async fn stream_follows_openai_event_sequence() {
    let mock = Mock::start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &mock,
        &json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "one two three"}]
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    let chunks = chunks(&data);
    // role, 3 content, finish, usage
    assert_eq!(chunks.len(), 6);
    let id = chunks[0]["id"].as_str().unwrap();
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert_eq!(chunk["created"], chunks[0]["created"]);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    let pieces: Vec<&str> = chunks[1..4]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            assert_eq!(c["choices"][0]["delta"].as_object().unwrap().len(), 1);
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    // "echo: one two three" is 19 chars: 7 + 6 + 6.
    assert_eq!(pieces, ["echo: o", "ne two", " three"]);
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    for chunk in &chunks[..5] {
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.get("usage").is_some(), "usage: null is present");
    }
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["prompt_tokens"], 3);
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 3);
    assert_eq!(chunks[5]["usage"]["total_tokens"], 6);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage() {
    let mock = Mock::start(MockConfig::default()).await;
    let response = post(
        &mock,
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let data = sse_data(&response.text().await.unwrap());
    let chunks = chunks(&data);
    // role, 4 content, finish
    assert_eq!(chunks.len(), 6);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: hi");
    assert_eq!(data.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn wrong_or_missing_key_gets_openai_401() {
    let mock = Mock::start(MockConfig {
        api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let client = reqwest::Client::new();
    let wrong_key = "sk-proj-WRONGWRONGWRONGWRONGWRONGWRONG9876";

    let response = client
        .post(mock.url())
        .bearer_auth(wrong_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let text = response.text().await.unwrap();
    assert!(!text.contains(wrong_key), "the key is never echoed whole");
    let error: Value = serde_json::from_str(&text).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Incorrect API key provided: sk-proj-*"));
    assert!(message.contains("9876. You can find your API key at"));
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["param"], Value::Null);
    assert_eq!(error["error"]["code"], "invalid_api_key");

    let response = client.post(mock.url()).json(&body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide an API key")
    );

    let response = client
        .post(mock.url())
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn mock_error_models_answer_openai_errors() {
    let mock = Mock::start(MockConfig::default()).await;
    let request =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "x"}]});

    let response = post(&mock, &request("mock-error-429")).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["retry-after-ms"], "1000");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "requests");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["param"], Value::Null);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit")
    );

    for (model, status) in [
        ("mock-error-500", StatusCode::INTERNAL_SERVER_ERROR),
        ("mock-error-503", StatusCode::SERVICE_UNAVAILABLE),
        ("openai/mock-error-502", StatusCode::BAD_GATEWAY),
    ] {
        let response = post(&mock, &request(model)).await;
        assert_eq!(response.status(), status, "{model}");
        assert!(response.headers().get("retry-after").is_none());
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["type"], "server_error", "{model}");
        assert_eq!(error["error"]["code"], Value::Null);
    }

    let response = post(&mock, &request("mock-error-404")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");

    let response = post(&mock, &request("mock-error-99")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn fail_status_mode_fails_everything() {
    let mock = Mock::start(MockConfig {
        fail_status: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &mock,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "server_error");
}

#[tokio::test]
async fn bad_requests_get_openai_400() {
    let mock = Mock::start(MockConfig::default()).await;
    let response = reqwest::Client::new()
        .post(mock.url())
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("We could not parse the JSON body")
    );

    let response = post(&mock, &json!({"model": "m", "messages": []})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "messages");
    assert_eq!(error["error"]["code"], "empty_array");

    let response = post(&mock, &json!({"model": "m"})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = reqwest::get(format!("http://{}/v1/nothing", mock.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "Invalid URL (GET /v1/nothing)");
}

fn tool_request(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "messages": [{"role": "user", "content": "call:get_weather {\"city\":\"Paris\"}"}]
    })
}

#[tokio::test]
async fn tool_call_reply() {
    let mock = Mock::start(MockConfig::default()).await;
    let body: Value = post(&mock, &tool_request(false))
        .await
        .json()
        .await
        .unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{
            "id": "call_mock_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}
        }])
    );
}

#[tokio::test]
async fn tool_call_streams_arguments_by_index() {
    let mock = Mock::start(MockConfig {
        chunks: 1,
        ..MockConfig::default()
    })
    .await;
    let response = post(&mock, &tool_request(true)).await;
    let data = sse_data(&response.text().await.unwrap());
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks = chunks(&data);

    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["content"], Value::Null);
    assert_eq!(
        first["tool_calls"],
        json!([{
            "index": 0, "id": "call_mock_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}
        }])
    );
    let (finish, middle) = chunks[1..].split_last().unwrap();
    // Even with --chunks 1 the arguments come in at least two pieces.
    assert!(middle.len() >= 2, "{} argument deltas", middle.len());
    let mut arguments = String::new();
    for chunk in middle {
        let call = &chunk["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            call.as_object().unwrap().len(),
            2,
            "only index and function"
        );
        assert_eq!(call["index"], 0);
        assert_eq!(call["function"].as_object().unwrap().len(), 1);
        arguments.push_str(call["function"]["arguments"].as_str().unwrap());
    }
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
}

/// Reads a body until it ends or breaks; returns the text and whether it broke.
async fn read_until_end(response: reqwest::Response) -> (String, bool) {
    let mut body = response.bytes_stream();
    let mut text = Vec::new();
    let mut broke = false;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    (String::from_utf8(text).unwrap(), broke)
}

#[tokio::test]
async fn truncated_stream_is_cut_without_done() {
    let mock = Mock::start(MockConfig::default()).await;
    let stream_request = |model: &str| {
        json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "a longer answer please"}]})
    };

    let response = post(&mock, &stream_request("mock-truncated")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (text, broke) = read_until_end(response).await;
    assert!(broke, "the connection is cut mid-body");
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"));
    let chunks = chunks(&data);
    assert_eq!(chunks.len(), 3, "role chunk and two content chunks");
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert!(
        chunks[1..]
            .iter()
            .all(|c| c["choices"][0]["delta"]["content"].is_string())
    );

    let response = post(&mock, &stream_request("mock-truncated-clean")).await;
    let (text, broke) = read_until_end(response).await;
    assert!(!broke, "the body ends normally");
    let data = sse_data(&text);
    assert_eq!(data.len(), 3);
    assert!(!data.iter().any(|d| d == "[DONE]"));
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread: the server's tasks run on this thread, under the capturing subscriber.
#[tokio::test(flavor = "current_thread")]
async fn logs_never_contain_prompts_or_keys() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("switchyard_loadtest=trace")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = Mock::start(MockConfig {
        api_key: Some(KEY.into()),
        chunks: 2,
        chunk_delay: Duration::from_millis(1),
        ..MockConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let prompt = "SECRET-PROMPT-7c1f";
    let wrong = "sk-proj-SECRET-WRONG-KEY-aaaaaaaaaaaaaaa";
    for (key, stream, model) in [
        (KEY, false, "gpt-4o-mini"),
        (KEY, true, "gpt-4o-mini"),
        (wrong, false, "gpt-4o-mini"),
        (KEY, false, "mock-error-429"),
    ] {
        let response = client
            .post(mock.url())
            .bearer_auth(key)
            .json(&json!({"model": model, "stream": stream,
                          "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        let _ = response.text().await.unwrap();
    }
    // Invalid JSON whose bytes include the prompt.
    let _ = client
        .post(mock.url())
        .bearer_auth(KEY)
        .body(format!("{{\"messages\": \"{prompt}\""))
        .send()
        .await
        .unwrap()
        .text()
        .await;
    mock.stop().await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("chat completion"),
        "requests are logged: {logs}"
    );
    assert!(!logs.contains("SECRET"), "{logs}");
    assert!(!logs.contains(&KEY[8..]), "{logs}");
}
