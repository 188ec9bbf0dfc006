//! The mock Gemini provider over real HTTP: JSON and SSE shapes, auth, errors, function
//! calls, truncation.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::Mock;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_loadtest::mock::openai::MockConfig;

const KEY: &str = "AIzaSyMock-0123456789abcdefghijklmnopqrs";

fn url(mock: &Mock, model: &str, method: &str) -> String {
    format!("http://{}/v1beta/models/{model}:{method}", mock.addr)
}

async fn post(url: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(key) = key {
        request = request.header("x-goog-api-key", key);
    }
    request.send().await.unwrap()
}

async fn keyed_mock(chunks: usize) -> Mock {
    Mock::start(MockConfig {
        chunks,
        api_key: Some(KEY.into()),
        ..MockConfig::default()
    })
    .await
}

fn hello() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [
            {"text": "hello"},
            {"inlineData": {"mimeType": "image/png", "data": "AA=="}},
            {"text": "big world"}
        ]}],
        "generationConfig": {"temperature": 0.5, "maxOutputTokens": 100}
    })
}

/// The JSON payloads of an SSE body whose events end with CRLF CRLF.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\r\n\r\n"), "events end with CRLF CRLF");
    body.split("\r\n\r\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn non_streaming_reply_has_gemini_shape() {
    let mock = keyed_mock(4).await;
    let response = post(
        &url(&mock, "gemini-2.0-flash", "generateContent"),
        Some(KEY),
        &hello(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    let candidates = body["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["index"], 0);
    assert_eq!(candidates[0]["finishReason"], "STOP");
    assert_eq!(
        candidates[0]["content"],
        json!({"role": "model", "parts": [{"text": "echo: hello big world"}]})
    );
    // "be brief" + "hello" + "big world" = 5 words; 4 chunks by default.
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 5);
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 4);
    assert_eq!(body["usageMetadata"]["totalTokenCount"], 9);
    assert_eq!(body["modelVersion"], "gemini-2.0-flash");
    assert!(body["responseId"].as_str().unwrap().starts_with("mock"));
}

#[tokio::test]
async fn keys_work_like_the_real_api() {
    let mock = keyed_mock(2).await;
    let generate = url(&mock, "gemini-2.0-flash", "generateContent");
    // ?key= is accepted as well as the header.
    let response = post(&format!("{generate}?key={KEY}"), None, &hello()).await;
    assert_eq!(response.status(), StatusCode::OK);

    // A wrong key is a 400 INVALID_ARGUMENT with reason API_KEY_INVALID, as Google answers.
    let response = post(&generate, Some("AIzaWrong"), &hello()).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(
        body["error"]["message"],
        "API key not valid. Please pass a valid API key."
    );
    assert_eq!(body["error"]["details"][0]["reason"], "API_KEY_INVALID");
    assert!(!body.to_string().contains("AIzaWrong"));

    // No key at all: 403 PERMISSION_DENIED.
    let response = post(&generate, None, &hello()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn sse_stream_ends_with_the_finish_reason_chunk() {
    let mock = keyed_mock(3).await;
    let response = post(
        &format!(
            "{}?alt=sse",
            url(&mock, "gemini-2.0-flash", "streamGenerateContent")
        ),
        Some(KEY),
        &json!({"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let events = sse_events(&body);
    assert_eq!(events.len(), 3);
    let pieces: Vec<&str> = events
        .iter()
        .map(|e| {
            assert_eq!(e["responseId"], events[0]["responseId"]);
            assert_eq!(e["modelVersion"], "gemini-2.0-flash");
            assert_eq!(e["candidates"][0]["content"]["role"], "model");
            assert_eq!(e["usageMetadata"]["promptTokenCount"], 3);
            e["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap()
        })
        .collect();
    // "echo: one two three" is 19 chars: 7 + 6 + 6.
    assert_eq!(pieces, ["echo: o", "ne two", " three"]);
    for e in &events[..2] {
        assert!(e["candidates"][0].get("finishReason").is_none());
        assert!(e["usageMetadata"].get("candidatesTokenCount").is_none());
    }
    assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(events[2]["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(events[2]["usageMetadata"]["totalTokenCount"], 6);
}

#[tokio::test]
async fn stream_without_alt_sse_is_one_json_array() {
    let mock = keyed_mock(2).await;
    let response = post(
        &url(&mock, "gemini-2.0-flash", "streamGenerateContent"),
        Some(KEY),
        &json!({"contents": [{"parts": [{"text": "hi"}]}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let chunks = body.as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn function_calls_come_whole_with_stop() {
    let mock = keyed_mock(4).await;
    let request = json!({
        "contents": [{"role": "user", "parts": [{"text": "call:get_weather {\"city\":\"Paris\"}"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "object"}}]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}
    });
    let response = post(
        &url(&mock, "gemini-2.0-flash", "generateContent"),
        Some(KEY),
        &request,
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["candidates"][0]["content"]["parts"],
        json!([{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}])
    );
    assert_eq!(body["candidates"][0]["finishReason"], "STOP");

    let response = post(
        &format!(
            "{}?alt=sse",
            url(&mock, "gemini-2.0-flash", "streamGenerateContent")
        ),
        Some(KEY),
        &request,
    )
    .await;
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]["city"],
        "Paris"
    );
    assert_eq!(events[0]["candidates"][0]["finishReason"], "STOP");

    // The follow-up turn with the function's result gets a text answer.
    let follow_up = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "call:get_weather {\"city\":\"Paris\"}"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}
        ],
        "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]
    });
    let response = post(
        &url(&mock, "gemini-2.0-flash", "generateContent"),
        Some(KEY),
        &follow_up,
    )
    .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        r#"echo: {"temp":21}"#
    );
}

#[tokio::test]
async fn magic_errors_use_googles_envelope() {
    let mock = keyed_mock(2).await;
    let response = post(
        &url(&mock, "mock-error-429", "generateContent"),
        Some(KEY),
        &hello(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 429);
    assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(body["error"]["details"][1]["retryDelay"], "1s");

    for (status, name) in [
        (400, "INVALID_ARGUMENT"),
        (404, "NOT_FOUND"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ] {
        let response = post(
            &url(&mock, &format!("mock-error-{status}"), "generateContent"),
            Some(KEY),
            &hello(),
        )
        .await;
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], status);
        assert_eq!(body["error"]["status"], name);
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }

    let response = post(
        &url(&mock, "gemini-2.0-flash", "countTokens"),
        Some(KEY),
        &hello(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = post(
        &url(&mock, "gemini-2.0-flash", "generateContent"),
        Some(KEY),
        &json!({"contents": []}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn fail_status_mode_answers_every_request() {
    let mock = Mock::start(MockConfig {
        fail_status: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &url(&mock, "gemini-2.0-flash", "generateContent"),
        None,
        &hello(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
}

#[tokio::test]
async fn truncated_streams_never_send_a_finish_reason() {
    let mock = keyed_mock(5).await;
    let request =
        json!({"contents": [{"role": "user", "parts": [{"text": "one two three four"}]}]});

    let response = post(
        &format!(
            "{}?alt=sse",
            url(&mock, "mock-truncated-clean", "streamGenerateContent")
        ),
        Some(KEY),
        &request,
    )
    .await;
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["candidates"][0].get("finishReason").is_none())
    );

    let response = post(
        &format!(
            "{}?alt=sse",
            url(&mock, "mock-truncated", "streamGenerateContent")
        ),
        Some(KEY),
        &request,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.text().await.is_err(),
        "the connection is cut mid-body"
    );
}
