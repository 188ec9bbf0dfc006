//! Mock Anthropic Messages API: `POST /v1/messages` in Anthropic's real wire format
//! (`x-api-key` and `anthropic-version` headers, `message` JSON, SSE with `event:` lines,
//! `{"type":"error","error":{...}}` bodies).
//!
//! Deterministic, like the OpenAI mock: the reply is `"echo: " + <last user text>`, cut
//! into [`MockConfig::chunks`] `text_delta`s when streaming; `input_tokens` counts the
//! words of `system` and every message's text, `output_tokens` the pieces. A last user
//! text `call:<name> <json args>` in a request with `tools` gets a `tool_use` block
//! (`toolu_mock_1`) instead; arguments that are not a JSON object get the echo. Magic
//! model names: `mock-error-<status>` (Anthropic error body, 429 with `retry-after`),
//! `mock-truncated` (connection cut after two text deltas), `mock-truncated-clean` (the
//! body ends after two text deltas, no `message_stop`) and `mock-stream-error` (an
//! `error` event, `overloaded_error`, after two text deltas).
//!
//! Prompts, outputs and keys are never logged.

mod stream;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::MockConfig;
use super::openai::reply::{self as shared, Magic};
use wire::{InputMessage, MessagesRequest};

/// Fixed id of the one tool use the mock makes.
pub(crate) const TOOL_USE_ID: &str = "toolu_mock_1";

struct Shared {
    config: MockConfig,
    next_id: AtomicU64,
}

/// Adds this provider's routes to `router`.
pub fn mount(router: Router, config: &MockConfig) -> Router {
    let shared = Arc::new(Shared {
        config: MockConfig {
            chunks: config.chunks.max(1),
            ..config.clone()
        },
        next_id: AtomicU64::new(1),
    });
    router.merge(
        Router::new()
            .route("/v1/messages", post(messages))
            .with_state(shared),
    )
}

/// The assistant's answer before it is cut into events.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// `"echo: " + <last user text>`.
    Text(String),
    /// From a last user text `call:<name> <json object>` when the request has tools.
    ToolUse { name: String, input: Value },
}

/// Special behaviour selected by the request's model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Normal,
    Error(u16),
    BadError,
    Truncated,
    TruncatedClean,
    StreamError,
    EchoParams,
}

fn behaviour(model: &str) -> Behaviour {
    let model = model.strip_prefix("anthropic/").unwrap_or(model);
    if model == "mock-stream-error" {
        return Behaviour::StreamError;
    }
    match shared::magic(model) {
        // Flaky models are only for the OpenAI mock's retry tests.
        Magic::None | Magic::Flaky(_) | Magic::Slow => Behaviour::Normal,
        Magic::EchoParams => Behaviour::EchoParams,
        Magic::Error(status) => Behaviour::Error(status),
        Magic::BadError => Behaviour::BadError,
        Magic::Truncated => Behaviour::Truncated,
        Magic::TruncatedClean => Behaviour::TruncatedClean,
    }
}

/// Text of the last user message; text blocks are joined with a space.
fn last_user_text(messages: &[InputMessage]) -> String {
    let Some(message) = messages.iter().rev().find(|m| m.role == "user") else {
        return String::new();
    };
    message.content.texts().collect::<Vec<_>>().join(" ")
}

/// Whitespace-separated words of `system` and every message's text blocks.
fn input_tokens(request: &MessagesRequest) -> u64 {
    let words: usize = request
        .system
        .iter()
        .chain(request.messages.iter().map(|m| &m.content))
        .flat_map(|c| c.texts())
        .map(|t| t.split_whitespace().count())
        .sum();
    count(words)
}

fn plan(request: &MessagesRequest) -> Reply {
    // A turn that only answers tool uses is echoed: the tool results reached the model.
    if let Some(last) = request.messages.last()
        && last.role == "user"
        && last.content.texts().next().is_none()
        && last
            .content
            .blocks()
            .iter()
            .any(|b| b.kind == "tool_result")
    {
        let results: Vec<String> = last
            .content
            .blocks()
            .iter()
            .filter(|b| b.kind == "tool_result")
            .map(wire::Block::result_text)
            .collect();
        return Reply::Text(format!("echo: {}", results.join(" ")));
    }
    let text = last_user_text(&request.messages);
    let has_tools = request.tools.as_ref().is_some_and(|t| !t.is_empty());
    if has_tools && let Some(call) = text.strip_prefix("call:") {
        let call = call.trim_start();
        let (name, arguments) = call.split_once(char::is_whitespace).unwrap_or((call, ""));
        let arguments = arguments.trim();
        let input = if arguments.is_empty() {
            Some(json!({}))
        } else {
            serde_json::from_str::<Value>(arguments)
                .ok()
                .filter(Value::is_object)
        };
        if let Some(input) = input {
            return Reply::ToolUse {
                name: name.to_owned(),
                input,
            };
        }
    }
    match output_schema(request) {
        Some(schema) => Reply::Text(crate::mock::json_reply(&text, Some(schema))),
        None => Reply::Text(format!("echo: {text}")),
    }
}

/// The schema of a structured-output request (checked by [`validate`]).
fn output_schema(request: &MessagesRequest) -> Option<&Value> {
    request
        .output_config
        .as_ref()
        .and_then(|c| c.format.as_ref())
        .and_then(|f| f.schema.as_ref())
}

/// Per-request values shared by every event of one reply.
pub(crate) struct Meta {
    pub id: String,
    pub input_tokens: u64,
}

async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let config = &shared.config;
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("req_mock{n:016x}");
    if let Some(status) = config.fail_status {
        tracing::debug!(status = status.as_u16(), "fail-status mode");
        return status_error(status, &request_id);
    }
    if let Some(expected) = &config.api_key {
        let provided = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        match provided {
            Some(key) if key == expected => {}
            Some(key) if !key.is_empty() => {
                tracing::debug!(status = 401, "rejected api key");
                return status_error(StatusCode::UNAUTHORIZED, &request_id);
            }
            _ => {
                return error_response(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "x-api-key header is required",
                    &request_id,
                );
            }
        }
    }
    if !headers.contains_key("anthropic-version") {
        return invalid_request("anthropic-version: header is required", &request_id);
    }
    let request: MessagesRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            tracing::debug!(status = 400, category = ?err.classify(), "bad request body");
            // Never quote the body back: serde's data errors can contain prompt text.
            let message = format!(
                "invalid request body: a required field is missing, has the wrong type or \
                 the JSON is malformed (line {}, column {})",
                err.line(),
                err.column()
            );
            return invalid_request(&message, &request_id);
        }
    };
    if let Err(message) = validate(&request) {
        tracing::debug!(status = 400, "invalid request");
        return invalid_request(&message, &request_id);
    }
    let stream = request.stream.unwrap_or(false);
    let behaviour = behaviour(&request.model);
    tracing::debug!(model = %request.model, stream, ?behaviour, "messages");
    match behaviour {
        Behaviour::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return status_error(status, &request_id);
        }
        Behaviour::BadError => {
            return invalid_request(
                "mock-error-<status> needs a status between 400 and 599.",
                &request_id,
            );
        }
        _ => {}
    }

    let meta = Meta {
        id: format!("msg_mock{n:016x}"),
        input_tokens: input_tokens(&request),
    };
    let reply = if behaviour == Behaviour::EchoParams {
        let conversation = ["model", "messages", "system", "stream"];
        Reply::Text(super::echo_params(&body, &conversation))
    } else {
        plan(&request)
    };
    let request_id =
        HeaderValue::from_str(&request_id).unwrap_or_else(|_| HeaderValue::from_static("req_mock"));
    if stream {
        let ending = match behaviour {
            Behaviour::Truncated => stream::Ending::Abort,
            Behaviour::TruncatedClean => stream::Ending::Clean,
            Behaviour::StreamError => stream::Ending::ErrorEvent,
            _ => stream::Ending::Stop,
        };
        let body = stream::body(config, &meta, &request.model, &reply, ending);
        return (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::HeaderName::from_static("request-id"), request_id),
            ],
            body,
        )
            .into_response();
    }

    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let (content, stop_reason, output_tokens) = match &reply {
        Reply::Text(text) => (
            json!([{"type": "text", "text": text}]),
            "end_turn",
            config.chunks,
        ),
        Reply::ToolUse { name, input } => (
            json!([{"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": input}]),
            "tool_use",
            stream::tool_input_pieces(config, &input.to_string()),
        ),
    };
    let message = json!({
        "id": meta.id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage(meta.input_tokens, count(output_tokens)),
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::HeaderName::from_static("request-id"), request_id),
        ],
        serde_json::to_vec(&message).unwrap_or_default(),
    )
        .into_response()
}

/// The checks of the real API the translator could get wrong.
fn validate(request: &MessagesRequest) -> Result<(), String> {
    if request.max_tokens.is_none() {
        return Err("max_tokens: Field required".into());
    }
    if request.messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    if let Some(format) = request
        .output_config
        .as_ref()
        .and_then(|c| c.format.as_ref())
    {
        if format.kind != "json_schema" {
            return Err(format!(
                "output_config.format.type: Input should be 'json_schema', got '{}'",
                format.kind
            ));
        }
        if !format.schema.as_ref().is_some_and(Value::is_object) {
            return Err("output_config.format.schema: Field required".into());
        }
    }
    for (i, message) in request.messages.iter().enumerate() {
        if message.role != "user" && message.role != "assistant" {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        // Every tool_result must answer a tool_use of the message just before it.
        let previous_uses: Vec<&str> = i
            .checked_sub(1)
            .and_then(|p| request.messages.get(p))
            .filter(|p| p.role == "assistant")
            .map(|p| {
                p.content
                    .blocks()
                    .iter()
                    .filter(|b| b.kind == "tool_use")
                    .filter_map(|b| b.id.as_deref())
                    .collect()
            })
            .unwrap_or_default();
        for (j, block) in message.content.blocks().iter().enumerate() {
            if block.kind != "tool_result" {
                continue;
            }
            if message.role != "user" {
                return Err(format!(
                    "messages.{i}.content.{j}: tool_result blocks are only allowed in user messages"
                ));
            }
            let id = block.tool_use_id.as_deref().unwrap_or("");
            if !previous_uses.contains(&id) {
                return Err(format!(
                    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` \
                     blocks: {id}. Each `tool_result` block must have a corresponding \
                     `tool_use` block in the previous message."
                ));
            }
        }
    }
    Ok(())
}

/// Anthropic's `usage` object; the mock never caches.
pub(crate) fn usage(input_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

pub(crate) fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn invalid_request(message: &str, request_id: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        request_id,
    )
}

/// Anthropic's error body for `status`, with the headers it sends alongside.
fn status_error(status: StatusCode, request_id: &str) -> Response {
    let (kind, message) = match status.as_u16() {
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => ("not_found_error", "model: mock"),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization (mock) of 5 \
             requests per minute. For details, refer to: \
             https://docs.claude.com/en/api/rate-limits.",
        ),
        500 => ("api_error", "Internal server error"),
        529 => ("overloaded_error", "Overloaded"),
        400..=499 => ("invalid_request_error", "Invalid request (mock error)."),
        _ => ("api_error", "Internal server error (mock error)."),
    };
    let mut response = error_response(status, kind, message, request_id);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let headers = response.headers_mut();
        for (name, value) in [
            ("retry-after", "1"),
            ("anthropic-ratelimit-requests-limit", "5"),
            ("anthropic-ratelimit-requests-remaining", "0"),
        ] {
            headers.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
    response
}

fn error_response(status: StatusCode, kind: &str, message: &str, request_id: &str) -> Response {
    let body = json!({
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": request_id,
    });
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> MessagesRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn echoes_the_last_user_text_and_counts_system_words() {
        let req = request(
            r#"{"model":"m","max_tokens":5,"system":"be brief","messages":[
                {"role":"user","content":"first"},
                {"role":"assistant","content":"ok"},
                {"role":"user","content":[{"type":"text","text":"what is"},
                    {"type":"image","source":{"type":"url","url":"https://x"}},
                    {"type":"text","text":"this?"}]}]}"#,
        );
        assert_eq!(plan(&req), Reply::Text("echo: what is this?".into()));
        assert_eq!(input_tokens(&req), 2 + 1 + 1 + 3);
    }

    #[test]
    fn tool_use_needs_tools_and_an_object() {
        let with = request(
            r#"{"model":"m","tools":[{"name":"get_weather"}],"messages":[
                {"role":"user","content":"call:get_weather {\"city\":\"Paris\"}"}]}"#,
        );
        assert_eq!(
            plan(&with),
            Reply::ToolUse {
                name: "get_weather".into(),
                input: json!({"city": "Paris"})
            }
        );
        let without =
            request(r#"{"model":"m","messages":[{"role":"user","content":"call:f {}"}]}"#);
        assert_eq!(plan(&without), Reply::Text("echo: call:f {}".into()));
        let not_object = request(
            r#"{"model":"m","tools":[{}],"messages":[{"role":"user","content":"call:f [1]"}]}"#,
        );
        assert_eq!(plan(&not_object), Reply::Text("echo: call:f [1]".into()));
    }

    #[test]
    fn tool_results_must_answer_the_previous_tool_use() {
        let ok = request(
            r#"{"model":"m","max_tokens":5,"messages":[
                {"role":"user","content":"hi"},
                {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"2"}]}]}"#,
        );
        assert_eq!(validate(&ok), Ok(()));
        let orphan = request(
            r#"{"model":"m","max_tokens":5,"messages":[
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t9","content":"2"}]}]}"#,
        );
        assert!(validate(&orphan).unwrap_err().contains("t9"));
        let system_role =
            request(r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#);
        assert!(validate(&system_role).unwrap_err().contains("role"));
        let no_max = request(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!(validate(&no_max), Err("max_tokens: Field required".into()));
    }

    #[test]
    fn structured_outputs_answer_json_and_need_a_schema() {
        let with = request(
            r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi"}],
                "output_config":{"format":{"type":"json_schema","schema":{"type":"object"}}}}"#,
        );
        assert_eq!(validate(&with), Ok(()));
        assert_eq!(
            plan(&with),
            Reply::Text(r#"{"echo":"hi","schema":{"type":"object"}}"#.into())
        );
        let no_schema = request(
            r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi"}],
                "output_config":{"format":{"type":"json_schema"}}}"#,
        );
        assert!(validate(&no_schema).unwrap_err().contains("schema"));
        let not_json = request(
            r#"{"model":"m","max_tokens":9,"messages":[{"role":"user","content":"hi"}],
                "output_config":{"format":{"type":"json_object","schema":{}}}}"#,
        );
        assert!(validate(&not_json).unwrap_err().contains("json_schema"));
    }

    #[test]
    fn magic_models() {
        assert_eq!(behaviour("mock-error-529"), Behaviour::Error(529));
        assert_eq!(behaviour("anthropic/mock-error-429"), Behaviour::Error(429));
        assert_eq!(behaviour("mock-truncated"), Behaviour::Truncated);
        assert_eq!(behaviour("mock-truncated-clean"), Behaviour::TruncatedClean);
        assert_eq!(behaviour("mock-stream-error"), Behaviour::StreamError);
        assert_eq!(behaviour("claude-sonnet-4-5"), Behaviour::Normal);
    }
}
