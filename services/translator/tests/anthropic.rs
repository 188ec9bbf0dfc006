//! The translator between a real nats-server and the mock Anthropic Messages API:
//! requests for `anthropic/…` models come back as the right reply chunks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use schemas::{
    ErrorBody, ErrorKind, FinishReason, Message, ReplyChunk, Role, Tool, ToolCall, ToolChoice,
    Usage,
};
use switchyard_loadtest::mock::openai::MockConfig;

const PROVIDER_KEY: &str = "sk-ant-mock-good";

mod common;

use common::{Harness, content, request};

async fn start(mock: MockConfig) -> Harness {
    common::start(mock, PROVIDER_KEY).await
}

impl Harness {
    /// One system + user request for `model`, answered in full.
    async fn simple(&self, model: &str, key: &str, stream: bool) -> Vec<ReplyChunk> {
        self.call(
            request(model, "one two three", stream),
            key,
            chrono::Duration::seconds(30),
        )
        .await
    }
}

fn error(chunks: &[ReplyChunk]) -> ErrorBody {
    let last = chunks.last().unwrap();
    assert!(last.last);
    last.error.clone().expect("an error chunk")
}

/// The tool calls of a reply, assembled from their fragments by index.
fn tool_calls(chunks: &[ReplyChunk]) -> Vec<ToolCall> {
    let mut calls: Vec<ToolCall> = Vec::new();
    for d in chunks
        .iter()
        .filter_map(|c| c.delta.as_ref())
        .flat_map(|d| &d.tool_calls)
    {
        let i = d.index as usize;
        if calls.len() <= i {
            calls.resize(
                i + 1,
                ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                },
            );
        }
        let call = &mut calls[i];
        if let Some(id) = &d.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &d.name {
            call.name.clone_from(name);
        }
        if let Some(arguments) = &d.arguments {
            call.arguments.push_str(arguments);
        }
    }
    calls
}

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Weather by city".into()),
        parameters_json: Some(
            r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#
                .into(),
        ),
    }
}

const MODEL: &str = "anthropic/claude-sonnet-4-5";

#[tokio::test]
async fn non_streaming_answer_is_one_chunk_with_usage() {
    let h = start(MockConfig {
        chunks: 3,
        ..MockConfig::default()
    })
    .await;
    let chunks = h
        .call(
            request(MODEL, "hello there", false),
            PROVIDER_KEY,
            chrono::Duration::seconds(30),
        )
        .await;
    assert_eq!(chunks.len(), 1);
    let c = &chunks[0];
    assert!(c.error.is_none(), "{:?}", c.error);
    assert!(c.last);
    assert_eq!(c.provider.as_deref(), Some("anthropic"));
    assert_eq!(c.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(content(&chunks), "echo: hello there");
    assert_eq!(c.finish_reason, Some(FinishReason::Stop));
    // The mock counts words of system + messages ("be brief" + "hello there") and chunks.
    assert_eq!(
        c.usage,
        Some(Usage {
            input_tokens: 4,
            output_tokens: 3,
            cached_input_tokens: Some(0)
        })
    );
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
            request(MODEL, "stream me please", true),
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
    assert_eq!(chunks[0].provider.as_deref(), Some("anthropic"));
    assert_eq!(chunks[0].model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(
        chunks[0].delta.as_ref().unwrap().role,
        Some(Role::Assistant)
    );
    assert_eq!(
        chunks
            .iter()
            .filter_map(|c| c.finish_reason)
            .collect::<Vec<_>>(),
        [FinishReason::Stop]
    );
    // message_start's input tokens and message_delta's output tokens, in one chunk.
    let usage: Vec<_> = chunks.iter().filter_map(|c| c.usage).collect();
    assert_eq!(
        usage,
        [Usage {
            input_tokens: 5,
            output_tokens: 5,
            cached_input_tokens: Some(0)
        }]
    );
}

#[tokio::test]
async fn tool_call_round_trip() {
    let h = start(MockConfig::default()).await;
    let call_text = r#"call:get_weather {"city":"Paris"}"#;
    let mut ask = request(MODEL, call_text, true);
    ask.tools = vec![weather_tool()];
    ask.tool_choice = Some(ToolChoice::Auto);

    // Streamed: tool_use block start, then input_json_delta pieces.
    let chunks = h
        .call(ask.clone(), PROVIDER_KEY, chrono::Duration::seconds(30))
        .await;
    assert!(chunks.last().unwrap().error.is_none());
    let calls = tool_calls(&chunks);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, "toolu_mock_1");
    assert_eq!(calls[0].name, "get_weather");
    let args: serde_json::Value = serde_json::from_str(&calls[0].arguments).unwrap();
    assert_eq!(args, serde_json::json!({"city": "Paris"}));
    let argument_pieces = chunks
        .iter()
        .filter_map(|c| c.delta.as_ref())
        .flat_map(|d| &d.tool_calls)
        .filter(|t| t.arguments.as_deref().is_some_and(|a| !a.is_empty()))
        .count();
    assert!(argument_pieces >= 2, "{argument_pieces}");
    assert_eq!(
        chunks
            .iter()
            .filter_map(|c| c.finish_reason)
            .collect::<Vec<_>>(),
        [FinishReason::ToolCalls]
    );

    // Not streamed: the same call in one chunk.
    ask.stream = false;
    let chunks = h
        .call(ask.clone(), PROVIDER_KEY, chrono::Duration::seconds(30))
        .await;
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].finish_reason, Some(FinishReason::ToolCalls));
    let call = tool_calls(&chunks).remove(0);
    assert_eq!(call.id, "toolu_mock_1");
    assert_eq!(call.arguments, r#"{"city":"Paris"}"#);

    // The follow-up carries the assistant's call and the tool result; the mock checks
    // that the tool_result answers the tool_use of the message before it.
    let mut follow_up = ask;
    follow_up.messages.push(Message {
        role: Role::Assistant,
        content: vec![],
        name: None,
        tool_calls: vec![call],
        tool_call_id: None,
    });
    follow_up.messages.push(Message {
        tool_call_id: Some("toolu_mock_1".into()),
        ..Message::text(Role::Tool, "sunny, 21 C")
    });
    let chunks = h
        .call(follow_up, PROVIDER_KEY, chrono::Duration::seconds(30))
        .await;
    let last = chunks.last().unwrap();
    assert!(last.error.is_none(), "{:?}", last.error);
    assert_eq!(last.finish_reason, Some(FinishReason::Stop));
    assert!(content(&chunks).starts_with("echo:"));
    assert!(tool_calls(&chunks).is_empty());
    assert_eq!(h.pending().await, 0);
}

#[tokio::test]
async fn provider_errors_become_error_chunks() {
    let h = start(MockConfig::default()).await;

    let e = error(
        &h.simple("anthropic/mock-error-429", PROVIDER_KEY, false)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.provider_status, Some(429));
    assert_eq!(e.retry_after_ms, Some(1000));
    assert!(e.message.contains("rate limit"), "{}", e.message);

    let e = error(&h.simple(MODEL, "sk-ant-wrong-key-123", true).await);
    assert_eq!(e.kind, ErrorKind::Authentication);
    assert_eq!(e.provider_status, Some(401));
    assert!(!e.message.contains("sk-ant-wrong-key-123"), "{}", e.message);

    let e = error(
        &h.simple("anthropic/mock-error-529", PROVIDER_KEY, true)
            .await,
    );
    assert_eq!(
        (e.kind, e.provider_status),
        (ErrorKind::Unavailable, Some(529))
    );
    assert_eq!(e.message, "Overloaded");

    let e = error(
        &h.simple("anthropic/mock-error-500", PROVIDER_KEY, false)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::Upstream);

    // A stream that ends without message_stop is an explicit error, never a clean end.
    for model in ["anthropic/mock-truncated", "anthropic/mock-truncated-clean"] {
        let chunks = h.simple(model, PROVIDER_KEY, true).await;
        let e = error(&chunks);
        assert_eq!(e.kind, ErrorKind::Upstream, "{model}");
        assert!(e.message.contains("message_stop"), "{model}: {}", e.message);
        assert!(chunks.iter().all(|c| c.finish_reason.is_none()));
    }

    // An error event mid-stream keeps its type.
    let e = error(
        &h.simple("anthropic/mock-stream-error", PROVIDER_KEY, true)
            .await,
    );
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(e.message, "Overloaded");
    assert_eq!(h.pending().await, 0);
}
