//! The mock Anthropic Messages API over real HTTP: JSON and SSE shapes, headers, auth,
//! errors, tool use, truncation.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::Mock;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchyard_loadtest::mock::openai::MockConfig;

const KEY: &str = "sk-ant-api03-0123456789abcdefghijklmnopqrstuvwxyz";

async fn start(config: MockConfig) -> Mock {
    Mock::start(MockConfig {
        api_key: Some(KEY.into()),
        ..config
    })
    .await
}

async fn post_with(
    mock: &Mock,
    key: Option<&str>,
    version: bool,
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/messages", mock.addr))
        .json(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    if version {
        request = request.header("anthropic-version", "2023-06-01");
    }
    request.send().await.unwrap()
}

async fn post(mock: &Mock, body: &Value) -> reqwest::Response {
    post_with(mock, Some(KEY), true, body).await
}

/// The `(event, data)` pairs of an SSE body, in order.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "events end with a blank line");
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let (name, data) = event
                .split_once('\n')
                .unwrap_or_else(|| panic!("not an event: {event:?}"));
            let name = name.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name, "the data's type names the event");
            (name.to_owned(), data)
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

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

async fn error_of(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    assert!(
        response.headers()["request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert!(body["request_id"].as_str().unwrap().starts_with("req_"));
    (
        status,
        body["error"]["type"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn non_streaming_reply_has_anthropic_shape() {
    let mock = start(MockConfig::default()).await;
    let response = post(
        &mock,
        &json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": "be brief",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "hello"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                    {"type": "text", "text": "big world"}
                ]}
            ]
        }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("request-id"));
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    let mut body = body;
    body["id"] = json!("msg_x");
    // "be brief" + "hello" + "big world" = 5 words; 4 chunks by default.
    assert_eq!(
        body,
        json!({
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "echo: hello big world"}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": {"input_tokens": 5, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0, "output_tokens": 4,
                      "service_tier": "standard"}
        })
    );
}

#[tokio::test]
async fn stream_follows_anthropic_event_sequence() {
    let mock = start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let response = post(
        &mock,
        &json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": true,
                "system": [{"type": "text", "text": "be brief"}],
                "messages": [{"role": "user", "content": "one two three"}]}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&response.text().await.unwrap());
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], 5);
    assert_eq!(start["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}})
    );
    let pieces: Vec<&str> = events[3..6]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    // "echo: one two three" is 19 chars: 7 + 6 + 6.
    assert_eq!(pieces, ["echo: o", "ne two", " three"]);
    assert_eq!(
        events[6].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[7].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 3}})
    );
    assert_eq!(events[8].1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn auth_version_and_body_are_checked_like_anthropic() {
    let mock = start(MockConfig::default()).await;
    let body = json!({"model": "m", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "hi"}]});

    let (status, kind, message) =
        error_of(post_with(&mock, Some("sk-ant-wrong"), true, &body).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "authentication_error")
    );
    assert_eq!(message, "invalid x-api-key");

    let (status, kind, message) = error_of(post_with(&mock, None, true, &body).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::UNAUTHORIZED, "authentication_error")
    );
    assert!(message.contains("x-api-key"));

    let (status, kind, message) = error_of(post_with(&mock, Some(KEY), false, &body).await).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request_error")
    );
    assert!(message.contains("anthropic-version"), "{message}");

    let no_max = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, message) = error_of(post(&mock, &no_max).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(message, "max_tokens: Field required");

    let system_role = json!({"model": "m", "max_tokens": 5,
                             "messages": [{"role": "system", "content": "hi"}]});
    let (status, _, _) = error_of(post(&mock, &system_role).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn magic_errors_use_anthropic_types_and_headers() {
    let mock = start(MockConfig::default()).await;
    let body = |model: &str| json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});

    let response = post(&mock, &body("mock-error-429")).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(
        response.headers()["anthropic-ratelimit-requests-remaining"],
        "0"
    );
    let (status, kind, _) = error_of(response).await;
    assert_eq!(
        (status, kind.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
    );

    for (model, status, kind) in [
        ("mock-error-529", 529, "overloaded_error"),
        ("mock-error-500", 500, "api_error"),
        ("mock-error-400", 400, "invalid_request_error"),
        ("mock-error-404", 404, "not_found_error"),
    ] {
        let response = post(&mock, &body(model)).await;
        assert!(!response.headers().contains_key("retry-after"));
        let (got, got_kind, _) = error_of(response).await;
        assert_eq!((got.as_u16(), got_kind.as_str()), (status, kind), "{model}");
    }

    let failing = start(MockConfig {
        fail_status: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..MockConfig::default()
    })
    .await;
    let (status, kind, _) = error_of(post(&failing, &body("m")).await).await;
    assert_eq!((status.as_u16(), kind.as_str()), (503, "api_error"));
}

#[tokio::test]
async fn tool_use_streams_input_json_deltas() {
    let mock = start(MockConfig::default()).await;
    let request = |stream: bool| {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
               "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
               "messages": [{"role": "user", "content": "call:get_weather {\"city\": \"Paris\"}"}]})
    };

    let body: Value = post(&mock, &request(false)).await.json().await.unwrap();
    assert_eq!(
        body["content"],
        json!([{"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather",
                "input": {"city": "Paris"}}])
    );
    assert_eq!(body["stop_reason"], "tool_use");

    let events = sse_events(&post(&mock, &request(true)).await.text().await.unwrap());
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {}})
    );
    let partials: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(partials.len() >= 2, "{partials:?}");
    let input: Value = serde_json::from_str(&partials.concat()).unwrap();
    assert_eq!(input, json!({"city": "Paris"}));
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(names(&events).last(), Some(&"message_stop"));

    // The follow-up with the tool result is accepted and echoed (no user text left).
    let follow_up = json!({"model": "claude-sonnet-4-5", "max_tokens": 100,
    "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": "call:get_weather {\"city\": \"Paris\"}"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_mock_1",
            "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_1",
            "content": "sunny"}]}
    ]});
    let response = post(&mock, &follow_up).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["stop_reason"], "end_turn");

    let mut orphan = follow_up.clone();
    orphan["messages"][2]["content"][0]["tool_use_id"] = json!("toolu_other");
    let (status, _, message) = error_of(post(&mock, &orphan).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("toolu_other"));
}

#[tokio::test]
async fn truncated_streams_lack_message_stop() {
    let mock = start(MockConfig::default()).await;
    let request = |model: &str| {
        json!({"model": model, "max_tokens": 100, "stream": true,
               "messages": [{"role": "user", "content": "a longer answer please"}]})
    };

    let response = post(&mock, &request("mock-truncated")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let (text, broke) = read_until_end(response).await;
    assert!(broke, "the connection is cut mid-body");
    let events = sse_events(&text);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta"
        ]
    );

    let (text, broke) = read_until_end(post(&mock, &request("mock-truncated-clean")).await).await;
    assert!(!broke, "the body ends normally");
    let events = sse_events(&text);
    assert_eq!(events.len(), 5);
    assert!(!names(&events).contains(&"message_stop"));

    let (text, broke) = read_until_end(post(&mock, &request("mock-stream-error")).await).await;
    assert!(!broke);
    let events = sse_events(&text);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["type"], "overloaded_error");
}
