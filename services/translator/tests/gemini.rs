//! The translator between a real nats-server and the mock Gemini server: `google/…`
//! requests published as the ingress publishes them come back as the right reply chunks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use schemas::{ErrorKind, FinishReason, Message, Role, Tool, ToolCall, ToolChoice};
use switchyard_loadtest::mock::openai::MockConfig;

const PROVIDER_KEY: &str = "AIzaSyMock-good-key";

mod common;

use common::{Harness, content, request};

async fn start(mock: MockConfig) -> Harness {
    common::start(mock, PROVIDER_KEY).await
}

#[tokio::test]
async fn non_streaming_answer_is_one_chunk_with_usage() {
    let h = start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let chunks = h
        .call(
            request("google/gemini-2.0-flash", "hello there", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(chunks.len(), 1);
    let c = &chunks[0];
    assert!(c.error.is_none(), "{:?}", c.error);
    assert!(c.last);
    assert_eq!(c.provider.as_deref(), Some("google"));
    assert_eq!(c.model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(content(&chunks), "echo: hello there");
    assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    let usage = c.usage.unwrap();
    // The mock counts words over systemInstruction ("be brief") and contents ("hello
    // there"); candidates = chunks.
    assert_eq!((usage.input_tokens, usage.output_tokens), (4, 3));
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn streaming_answer_arrives_in_pieces_then_usage() {
    let h = start(MockConfig {
        chunks: 5,
        ..MockConfig::default()
    })
    .await;
    let chunks = h
        .call(
            request("google/gemini-2.0-flash", "stream me please", true),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert!(chunks.last().unwrap().error.is_none());
    assert_eq!(content(&chunks), "echo: stream me please");
    let pieces = chunks
        .iter()
        .filter(|c| {
            c.delta
                .as_ref()
                .is_some_and(|d| d.content.as_deref().is_some_and(|s| !s.is_empty()))
        })
        .count();
    assert_eq!(pieces, 5);
    assert_eq!(
        chunks.len(),
        5,
        "the finishing chunk carries the last piece"
    );
    assert_eq!(chunks[0].provider.as_deref(), Some("google"));
    assert_eq!(chunks[0].model.as_deref(), Some("gemini-2.0-flash"));
    assert_eq!(
        chunks[0].delta.as_ref().unwrap().role,
        Some(schemas::Role::Assistant)
    );
    assert_eq!(
        chunks
            .iter()
            .filter_map(|c| c.finish_reason)
            .collect::<Vec<_>>(),
        [FinishReason::Stop]
    );
    let usage: Vec<_> = chunks.iter().filter_map(|c| c.usage).collect();
    assert_eq!(usage.len(), 1, "usage once, on the last chunk");
    assert_eq!((usage[0].input_tokens, usage[0].output_tokens), (5, 5));
    assert!(chunks.last().unwrap().usage.is_some());
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather in a city".into()),
        parameters_json: Some(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                .into(),
        ),
    }
}

#[tokio::test]
async fn a_function_call_round_trip() {
    let h = start(MockConfig::default()).await;
    for stream in [false, true] {
        let mut ask = request(
            "google/gemini-2.0-flash",
            r#"call:get_weather {"city":"Paris"}"#,
            stream,
        );
        ask.tools = vec![weather_tool()];
        ask.tool_choice = Some(ToolChoice::Auto);
        let chunks = h
            .call(ask.clone(), PROVIDER_KEY, chrono::Duration::seconds(30))
            .await;
        let last = chunks.last().unwrap();
        assert!(last.error.is_none(), "{:?}", last.error);
        assert_eq!(last.finish_reason, Some(FinishReason::ToolCalls));
        let calls: Vec<_> = chunks
            .iter()
            .filter_map(|c| c.delta.as_ref())
            .flat_map(|d| d.tool_calls.clone())
            .collect();
        assert_eq!(calls.len(), 1, "stream={stream}");
        let call = &calls[0];
        assert_eq!(call.index, 0);
        assert_eq!(call.id.as_deref(), Some("call_0"));
        assert_eq!(call.name.as_deref(), Some("get_weather"));
        let args: serde_json::Value =
            serde_json::from_str(call.arguments.as_deref().unwrap()).unwrap();
        assert_eq!(args, serde_json::json!({"city": "Paris"}));

        // The follow-up carries the assistant's call and the tool's result.
        let mut follow_up = ask;
        follow_up.messages.push(Message {
            role: Role::Assistant,
            content: vec![],
            name: None,
            tool_calls: vec![ToolCall {
                id: call.id.clone().unwrap(),
                name: call.name.clone().unwrap(),
                arguments: call.arguments.clone().unwrap(),
            }],
            tool_call_id: None,
        });
        follow_up.messages.push(Message {
            tool_call_id: Some(call.id.clone().unwrap()),
            ..Message::text(Role::Tool, r#"{"temp_c":21}"#)
        });
        let chunks = h
            .call(follow_up, PROVIDER_KEY, chrono::Duration::seconds(30))
            .await;
        let last = chunks.last().unwrap();
        assert!(last.error.is_none(), "{:?}", last.error);
        assert_eq!(last.finish_reason, Some(FinishReason::Stop));
        // The mock echoes the functionResponse it received: name lookup and JSON worked.
        assert_eq!(content(&chunks), r#"echo: {"temp_c":21}"#);
    }
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn provider_errors_become_error_chunks() {
    let h = start(MockConfig::default()).await;

    let chunks = h
        .call(
            request("google/mock-error-429", "x", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(chunks.len(), 1);
    let e = chunks[0].error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.provider_status, Some(429));
    assert_eq!(e.retry_after_ms, Some(1000));
    assert!(e.message.contains("quota"), "{}", e.message);

    // Google answers a wrong key with 400 API_KEY_INVALID; the caller sees a 401 kind.
    for stream in [false, true] {
        let chunks = h
            .call(
                request("google/gemini-2.0-flash", "x", stream),
                "AIzaWrongKey-123",
                chrono::Duration::seconds(30),
            )
            .await;
        let e = chunks.last().unwrap().error.clone().unwrap();
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert_eq!(e.provider_status, Some(400));
        assert!(!e.message.contains("AIzaWrongKey-123"), "{}", e.message);
    }

    for (model, kind) in [
        ("google/mock-error-404", ErrorKind::NotFound),
        ("google/mock-error-500", ErrorKind::Upstream),
        ("google/mock-error-503", ErrorKind::Unavailable),
    ] {
        let chunks = h
            .call(
                request(model, "x", false),
                PROVIDER_KEY,
                chrono::Duration::seconds(30),
            )
            .await;
        assert_eq!(chunks.last().unwrap().error.as_ref().unwrap().kind, kind);
    }

    // A model that is not one path segment never leaves the translator.
    let chunks = h
        .call(
            request("google/a..b", "x", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    let e = chunks.last().unwrap().error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    assert_eq!(e.provider_status, None);
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn truncated_streams_are_errors_never_clean_ends() {
    let h = start(MockConfig::default()).await;
    for model in ["google/mock-truncated", "google/mock-truncated-clean"] {
        let chunks = h
            .call(
                request(model, "one two three", true),
                PROVIDER_KEY,
                chrono::Duration::seconds(30),
            )
            .await;
        let last = chunks.last().unwrap();
        let e = last.error.as_ref().unwrap();
        assert_eq!(e.kind, ErrorKind::Upstream, "{model}");
        assert!(
            e.message.contains("finish reason"),
            "{model}: {}",
            e.message
        );
        // The two pieces that did arrive were passed on before the error.
        assert!(content(&chunks).starts_with("echo: "), "{model}");
        assert!(chunks.iter().all(|c| c.finish_reason.is_none()));
    }
    assert_eq!(h.pending().await, 0);
}
