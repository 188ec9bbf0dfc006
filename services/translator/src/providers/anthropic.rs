//! Anthropic Messages: `POST {base}/v1/messages`, JSON or SSE with named events.

use std::collections::HashMap;

use schemas::{
    ChatRequest, ContentPart, Delta, ErrorBody, ErrorKind, FinishReason, Message, ResponseFormat,
    Role, ToolCallDelta, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Events, Failure, kind_for_status, read_json, scrub, send};
use switchyard_worker::ChunkSink;

pub const PROVIDER: &str = "anthropic";

/// The Messages API version this translator speaks.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the caller gives none. Anthropic requires the field (OpenAI does
/// not), and 4096 is an answer length every current Claude model allows.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic client of one translator process (one connection pool).
#[derive(Debug, Clone)]
pub struct Anthropic {
    http: reqwest::Client,
    url: String,
}

impl Anthropic {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
        }
    }

    /// Calls the provider and sends the answer to `sink`. Returns when the last chunk
    /// was sent, or with the failure to report.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        upstream_model: &str,
        key: &str,
        sink: &mut ChunkSink,
        on_first_byte: impl FnOnce(),
    ) -> Result<(), Failure> {
        let body = request_body(request, upstream_model).map_err(Failure::Reply)?;
        let call = self
            .http
            .post(&self.url)
            .header("x-api-key", key)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let response = send(call, PROVIDER, key, on_first_byte, error_from_body).await?;
        if request.stream {
            stream(response, sink, key).await
        } else {
            let mut parsed: MessageResponse = read_json(response, PROVIDER).await?;
            let model = parsed.model.take();
            sink.set_service_tier(parsed.usage.as_ref().and_then(AnthUsage::openai_tier));
            let (delta, finish, usage) = parsed.into_reply();
            sink.send(Some(delta), finish, usage, model.as_deref(), true)
                .await?;
            Ok(())
        }
    }
}

/// What a stream has said so far that is only reported at its end.
#[derive(Debug, Default)]
struct StreamState {
    usage: Option<AnthUsage>,
    output_tokens: Option<u64>,
    stop_reason: Option<String>,
    /// Content-block index → tool-call index (position among tool calls).
    tool_calls: HashMap<u32, u32>,
}

async fn stream(
    response: reqwest::Response,
    sink: &mut ChunkSink,
    key: &str,
) -> Result<(), Failure> {
    let mut events = Events::new(response, PROVIDER, "message_stop", key);
    let mut state = StreamState::default();
    while let Some(event) = events.next().await {
        let (_, data) = event?;
        let parsed: StreamEvent = events.parse(&data)?;
        match parsed {
            StreamEvent::MessageStart { message } => {
                sink.set_service_tier(message.usage.as_ref().and_then(AnthUsage::openai_tier));
                state.usage = message.usage;
                let delta = Delta {
                    role: Some(Role::Assistant),
                    ..Delta::default()
                };
                sink.send(Some(delta), None, None, message.model.as_deref(), false)
                    .await?;
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let delta = match content_block {
                    Block::Text { text } if !text.is_empty() => Some(Delta {
                        content: Some(text),
                        ..Delta::default()
                    }),
                    Block::ToolUse { id, name, .. } => {
                        let call = tool_index(&mut state, index);
                        Some(Delta {
                            tool_calls: vec![ToolCallDelta {
                                index: call,
                                id: Some(id),
                                name: Some(name),
                                arguments: Some(String::new()),
                            }],
                            ..Delta::default()
                        })
                    }
                    _ => None,
                };
                if let Some(delta) = delta {
                    sink.send(Some(delta), None, None, None, false).await?;
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let delta = match delta {
                    BlockDelta::TextDelta { text } if !text.is_empty() => Some(Delta {
                        content: Some(text),
                        ..Delta::default()
                    }),
                    BlockDelta::InputJsonDelta { partial_json } if !partial_json.is_empty() => {
                        let call = tool_index(&mut state, index);
                        Some(Delta {
                            tool_calls: vec![ToolCallDelta {
                                index: call,
                                arguments: Some(partial_json),
                                ..ToolCallDelta::default()
                            }],
                            ..Delta::default()
                        })
                    }
                    _ => None,
                };
                if let Some(delta) = delta {
                    sink.send(Some(delta), None, None, None, false).await?;
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    state.stop_reason = Some(reason);
                }
                if let Some(usage) = usage {
                    // Counts in message_delta are cumulative; input counts appear there
                    // only in newer API versions.
                    state.output_tokens = usage.output_tokens.or(state.output_tokens);
                    let total = state.usage.get_or_insert_with(AnthUsage::default);
                    if let Some(n) = usage.input_tokens {
                        total.input_tokens = n;
                    }
                    if usage.cache_read_input_tokens.is_some() {
                        total.cache_read_input_tokens = usage.cache_read_input_tokens;
                    }
                    if usage.cache_creation_input_tokens.is_some() {
                        total.cache_creation_input_tokens = usage.cache_creation_input_tokens;
                    }
                }
            }
            StreamEvent::MessageStop => {
                let usage = state.usage.take().map(|mut u| {
                    if let Some(n) = state.output_tokens {
                        u.output_tokens = Some(n);
                    }
                    Usage::from(u)
                });
                let finish = state.stop_reason.as_deref().map(finish_reason);
                sink.send(None, finish, usage, None, true).await?;
                return Ok(());
            }
            StreamEvent::Error { error } => {
                let kind = error
                    .kind
                    .as_deref()
                    .map(kind_for_error_type)
                    .unwrap_or(ErrorKind::Upstream);
                let message = error
                    .message
                    .unwrap_or_else(|| "anthropic stream error".into());
                return Err(Failure::Reply(ErrorBody::new(kind, scrub(&message, key))));
            }
            StreamEvent::ContentBlockStop | StreamEvent::Ping | StreamEvent::Unknown => {}
        }
    }
    Err(events.ended_early())
}

/// The tool-call index of content block `block`, numbering tool uses as they appear.
fn tool_index(state: &mut StreamState, block: u32) -> u32 {
    let next = state.tool_calls.len() as u32;
    *state.tool_calls.entry(block).or_insert(next)
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

/// Our kind for the `error.type` of an error event (the HTTP status is already 200).
fn kind_for_error_type(kind: &str) -> ErrorKind {
    match kind {
        "invalid_request_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "permission_error" => ErrorKind::PermissionDenied,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::PayloadTooLarge,
        "rate_limit_error" => ErrorKind::RateLimited,
        "overloaded_error" => ErrorKind::Unavailable,
        "timeout_error" => ErrorKind::Timeout,
        _ => ErrorKind::Upstream,
    }
}

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorKind::InvalidRequest, message)
}

/// An image part as an Anthropic image block: `data:` URLs inline, http(s) by URL.
fn image_block(url: &str) -> Result<Value, ErrorBody> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or_else(|| invalid("an image data URL has no ',' before its data"))?;
        let media_type = header
            .strip_suffix(";base64")
            .ok_or_else(|| invalid("anthropic takes image data URLs only base64-encoded"))?;
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid("an image URL must be http(s) or a base64 data URL"))
}

/// Text and image parts as content blocks. Empty text is left out: Anthropic rejects
/// empty text blocks.
fn content_blocks(parts: &[ContentPart]) -> Result<Vec<Value>, ErrorBody> {
    let mut blocks = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            ContentPart::Text { text } if text.is_empty() => {}
            ContentPart::Text { text } => blocks.push(json!({"type": "text", "text": text})),
            ContentPart::Image { url, .. } => blocks.push(image_block(url)?),
        }
    }
    Ok(blocks)
}

/// One of our messages as an Anthropic role and content blocks.
fn message_blocks(m: &Message) -> Result<(&'static str, Vec<Value>), ErrorBody> {
    match m.role {
        Role::User => Ok(("user", content_blocks(&m.content)?)),
        Role::Assistant => {
            let mut blocks = content_blocks(&m.content)?;
            for call in &m.tool_calls {
                let input: Value = if call.arguments.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&call.arguments).map_err(|_| {
                        invalid(format!(
                            "the arguments of tool call '{}' are not valid JSON",
                            call.id
                        ))
                    })?
                };
                blocks.push(json!({
                    "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                }));
            }
            Ok(("assistant", blocks))
        }
        Role::Tool => {
            let id = m
                .tool_call_id
                .as_deref()
                .ok_or_else(|| invalid("a tool message needs tool_call_id"))?;
            let mut result = json!({"type": "tool_result", "tool_use_id": id});
            let content = content_blocks(&m.content)?;
            if !content.is_empty() {
                result["content"] = Value::Array(content);
            }
            Ok(("user", vec![result]))
        }
        // Handled by the caller (top-level `system`).
        Role::System | Role::Developer => Ok(("user", Vec::new())),
    }
}

/// The parameters of `params` the Messages API has no equivalent for.
pub fn dropped_params(params: &schemas::Params) -> Vec<String> {
    schemas::chat::names_set(
        [
            ("seed", params.seed.is_some()),
            ("presence_penalty", params.presence_penalty.is_some()),
            ("frequency_penalty", params.frequency_penalty.is_some()),
            // Extended thinking takes a token budget, not a level: no faithful mapping.
            ("reasoning_effort", params.reasoning_effort.is_some()),
            // metadata.user_id holds one end user: safety_identifier's, when both are set.
            (
                "user",
                params.user.is_some() && params.safety_identifier.is_some(),
            ),
        ]
        .into_iter()
        .chain(params.openai_options().into_iter().filter(|(name, _)| {
            // Mapped: the tier to Anthropic's (see `service_tier`), the end-user id to
            // `metadata.user_id`.
            !(*name == "safety_identifier"
                || *name == "service_tier" && service_tier(params).is_some())
        })),
    )
}

/// Anthropic's `service_tier` for OpenAI's: `auto` is `auto`, and `default` (standard
/// processing) is `standard_only`; OpenAI's other tiers have no equivalent.
fn service_tier(params: &schemas::Params) -> Option<&'static str> {
    match params.service_tier.as_deref()? {
        "auto" => Some("auto"),
        "default" => Some("standard_only"),
        _ => None,
    }
}

/// The Messages request body, or the reason the request cannot be expressed.
pub fn request_body(request: &ChatRequest, upstream_model: &str) -> Result<Value, ErrorBody> {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        if matches!(m.role, Role::System | Role::Developer) {
            let text = m.joined_text();
            if !text.is_empty() {
                system.push(text);
            }
            continue;
        }
        let (role, blocks) = message_blocks(m)?;
        if blocks.is_empty() {
            continue;
        }
        // Anthropic wants user and assistant turns to alternate: merge neighbours.
        match messages.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let p = &request.params;
    let mut body = json!({
        "model": upstream_model,
        "max_tokens": p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = p.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = p.top_p {
        body["top_p"] = json!(t);
    }
    if let Some(k) = p.top_k {
        body["top_k"] = json!(k);
    }
    if !p.stop.is_empty() {
        body["stop_sequences"] = json!(p.stop);
    }
    // Both name the end user for abuse detection; OpenAI's newer field first.
    if let Some(u) = p.safety_identifier.as_ref().or(p.user.as_ref()) {
        body["metadata"] = json!({"user_id": u});
    }
    if let Some(tier) = service_tier(p) {
        body["service_tier"] = json!(tier);
    }
    // seed, presence_penalty and frequency_penalty have no Anthropic equivalent: left
    // out, and reported to the caller through `dropped_params`.
    if !request.tools.is_empty() {
        let mut tools = Vec::with_capacity(request.tools.len());
        for t in &request.tools {
            let schema = match t.parameters_json.as_deref() {
                Some(text) => serde_json::from_str::<Value>(text).map_err(|_| {
                    invalid(format!(
                        "the parameters of tool '{}' are not valid JSON",
                        t.name
                    ))
                })?,
                // Anthropic requires an input schema; no parameters means an empty object.
                None => json!({"type": "object", "properties": {}}),
            };
            let mut tool = Map::new();
            tool.insert("name".into(), json!(t.name));
            if let Some(d) = &t.description {
                tool.insert("description".into(), json!(d));
            }
            tool.insert("input_schema".into(), schema);
            tools.push(Value::Object(tool));
        }
        body["tools"] = Value::Array(tools);
        // tool_choice without tools is an Anthropic 400; without tools there is nothing to choose.
        let mut choice = request.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function { name } => json!({"type": "tool", "name": name}),
        });
        // One call per turn: Anthropic's `disable_parallel_tool_use`, on the choice
        // (`auto` when none was given; `none` calls nothing anyway).
        if p.parallel_tool_calls == Some(false)
            && !matches!(request.tool_choice, Some(ToolChoice::None))
        {
            choice.get_or_insert_with(|| json!({"type": "auto"}))["disable_parallel_tool_use"] =
                json!(true);
        }
        if let Some(choice) = choice {
            body["tool_choice"] = choice;
        }
    }
    // Structured outputs (`output_config.format`, generally available; no beta header).
    // A schema's name, description and `strict` have no field: Anthropic always follows
    // the schema. `json_object` was refused before the call (`ResponseFormat::refusal`).
    if let Some(ResponseFormat::JsonSchema { schema_json, .. }) = &request.response_format {
        body["output_config"] = json!({"format": {
            "type": "json_schema",
            "schema": super::response_schema(schema_json)?,
        }});
    }
    if request.stream {
        body["stream"] = json!(true);
    }
    Ok(body)
}

/// Our error for an Anthropic error response.
pub fn error_from_body(
    status: u16,
    text: &str,
    retry_after_ms: Option<u64>,
    key: &str,
) -> ErrorBody {
    let message = serde_json::from_str::<ErrorEnvelope>(text)
        .ok()
        .and_then(|e| e.error.message)
        .unwrap_or_else(|| format!("anthropic answered HTTP {status}"));
    ErrorBody {
        kind: kind_for_status(status),
        message: scrub(&message, key),
        param: None,
        retry_after_ms,
        provider_status: Some(status),
    }
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageResponse {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthUsage>,
}

impl MessageResponse {
    fn into_reply(self) -> (Delta, Option<FinishReason>, Option<Usage>) {
        let mut text: Option<String> = None;
        let mut tool_calls = Vec::new();
        for block in self.content {
            match block {
                Block::Text { text: t } => text.get_or_insert_with(String::new).push_str(&t),
                Block::ToolUse { id, name, input } => tool_calls.push(ToolCallDelta {
                    index: tool_calls.len() as u32,
                    id: Some(id),
                    name: Some(name),
                    arguments: Some(input.to_string()),
                }),
                Block::Unknown => {}
            }
        }
        let delta = Delta {
            role: Some(Role::Assistant),
            content: text,
            tool_calls,
        };
        let finish = Some(
            self.stop_reason
                .as_deref()
                .map(finish_reason)
                .unwrap_or(FinishReason::Stop),
        );
        (delta, finish, self.usage.map(Usage::from))
    }
}

/// A content block of a reply (or a stream's `content_block_start`).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// Thinking and other blocks this gateway does not pass on.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Default, Deserialize)]
struct AnthUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    /// `standard`, `priority` or `batch`.
    #[serde(default)]
    service_tier: Option<String>,
}

impl AnthUsage {
    /// The tier in OpenAI's names: standard capacity is OpenAI's `default`.
    fn openai_tier(&self) -> Option<String> {
        self.service_tier.as_deref().map(|t| match t {
            "standard" => "default".to_string(),
            other => other.to_string(),
        })
    }
}

impl From<AnthUsage> for Usage {
    fn from(u: AnthUsage) -> Self {
        // Anthropic counts cached prompt tokens apart from `input_tokens`; ours, like
        // OpenAI's, are the whole prompt with the cached part reported inside it.
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        Usage {
            input_tokens: u.input_tokens + u.cache_creation_input_tokens.unwrap_or(0) + cached,
            output_tokens: u.output_tokens.unwrap_or(0),
            cached_input_tokens: u.cache_read_input_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta,
    },
    ContentBlockStop,
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Ping,
    Error {
        error: ErrorDetail,
    },
    /// An event type newer than this build: ignored, as Anthropic's versioning asks.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<AnthUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        #[serde(default)]
        text: String,
    },
    InputJsonDelta {
        #[serde(default)]
        partial_json: String,
    },
    /// Thinking, signature and citation deltas.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeltaUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Params, Tool, ToolCall};

    fn message(role: Role, content: Vec<ContentPart>) -> Message {
        Message::with_parts(role, content)
    }

    fn base(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "anthropic/claude-sonnet-4-5".into(),
            messages,
            params: Params::default(),
            tools: vec![],
            tool_choice: None,
            stream: false,
            fallback_models: vec![],
            response_format: None,
        }
    }

    #[test]
    fn request_body_translates_everything() {
        let request = ChatRequest {
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::Developer, "use metric units"),
                message(
                    Role::User,
                    vec![
                        ContentPart::Text {
                            text: "look".into(),
                        },
                        ContentPart::Image {
                            url: "https://x/i.png".into(),
                            detail: Some("high".into()),
                        },
                        ContentPart::Image {
                            url: "data:image/png;base64,AAAA".into(),
                            detail: None,
                        },
                    ],
                ),
                Message::text(Role::User, "and this"),
                Message {
                    tool_calls: vec![ToolCall {
                        id: "toolu_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }],
                    ..message(Role::Assistant, vec![])
                },
                Message {
                    tool_call_id: Some("toolu_1".into()),
                    ..Message::text(Role::Tool, "sunny")
                },
                Message::text(Role::User, "thanks"),
            ],
            params: Params {
                temperature: Some(0.5),
                top_p: Some(0.9),
                top_k: Some(40),
                stop: vec!["END".into()],
                seed: Some(7),
                presence_penalty: Some(0.1),
                frequency_penalty: Some(0.2),
                user: Some("u-1".into()),
                ..Params::default()
            },
            tools: vec![
                Tool {
                    name: "get_weather".into(),
                    description: Some("weather by city".into()),
                    parameters_json: Some(
                        r#"{"type":"object","properties":{"city":{"type":"string"}}}"#.into(),
                    ),
                },
                Tool {
                    name: "ping".into(),
                    description: None,
                    parameters_json: None,
                },
            ],
            tool_choice: Some(ToolChoice::Required),
            stream: true,
            ..base(vec![])
        };
        let body = request_body(&request, "claude-sonnet-4-5").unwrap();
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(body["system"], "be brief\n\nuse metric units");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        let messages = body["messages"].as_array().unwrap();
        // user+user merged; tool result and the next user text merged after the assistant.
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(
            messages[0]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "text", "text": "and this"},
            ])
        );
        assert_eq!(
            messages[1],
            json!({"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
            ]})
        );
        assert_eq!(
            messages[2],
            json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "sunny"}]},
                {"type": "text", "text": "thanks"},
            ]})
        );
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["top_k"], 40);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id": "u-1"}));
        for dropped in [
            "seed",
            "presence_penalty",
            "frequency_penalty",
            "stop",
            "user",
        ] {
            assert!(body.get(dropped).is_none(), "{dropped}");
        }
        assert_eq!(
            body["tools"],
            json!([
                {"name": "get_weather", "description": "weather by city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn tool_choice_and_max_tokens_variants() {
        let tool = Tool {
            name: "f".into(),
            description: None,
            parameters_json: None,
        };
        let mut request = base(vec![Message::text(Role::User, "hi")]);
        request.params.max_tokens = Some(12);
        let body = request_body(&request, "m").unwrap();
        assert_eq!(body["max_tokens"], 12);
        assert!(body.get("system").is_none());
        assert!(body.get("stream").is_none());
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        );

        // Without tools a tool_choice is left out (Anthropic would reject it).
        request.tool_choice = Some(ToolChoice::Auto);
        assert!(
            request_body(&request, "m")
                .unwrap()
                .get("tool_choice")
                .is_none()
        );

        request.tools = vec![tool];
        for (choice, expected) in [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::None, json!({"type": "none"})),
            (ToolChoice::Required, json!({"type": "any"})),
            (
                ToolChoice::Function { name: "f".into() },
                json!({"type": "tool", "name": "f"}),
            ),
        ] {
            request.tool_choice = Some(choice);
            assert_eq!(
                request_body(&request, "m").unwrap()["tool_choice"],
                expected
            );
        }
    }

    #[test]
    fn untranslatable_requests_are_invalid() {
        let bad_args = base(vec![
            Message::text(Role::User, "hi"),
            Message {
                tool_calls: vec![ToolCall {
                    id: "t1".into(),
                    name: "f".into(),
                    arguments: "{not json".into(),
                }],
                ..message(Role::Assistant, vec![])
            },
        ]);
        let e = request_body(&bad_args, "m").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("t1"), "{}", e.message);

        let no_id = base(vec![Message::text(Role::Tool, "x")]);
        assert_eq!(
            request_body(&no_id, "m").unwrap_err().kind,
            ErrorKind::InvalidRequest
        );

        let ftp = base(vec![message(
            Role::User,
            vec![ContentPart::Image {
                url: "ftp://x/i.png".into(),
                detail: None,
            }],
        )]);
        assert_eq!(
            request_body(&ftp, "m").unwrap_err().kind,
            ErrorKind::InvalidRequest
        );
    }

    #[test]
    fn replies_map_content_tools_stop_reasons_and_usage() {
        let reply: MessageResponse = serde_json::from_value(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {"x": 1}},
                {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5,
                      "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3}
        }))
        .unwrap();
        let (delta, finish, usage) = reply.into_reply();
        assert_eq!(delta.content.as_deref(), Some("Let me check."));
        assert_eq!(delta.tool_calls.len(), 2);
        assert_eq!(delta.tool_calls[1].index, 1);
        assert_eq!(delta.tool_calls[0].arguments.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(finish, Some(FinishReason::ToolCalls));
        assert_eq!(
            usage,
            Some(Usage {
                input_tokens: 15,
                output_tokens: 5,
                cached_input_tokens: Some(3)
            })
        );
        for (reason, expected) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other),
        ] {
            assert_eq!(finish_reason(reason), expected);
        }
    }

    #[test]
    fn stream_events_parse_including_unknown_ones() {
        let e: StreamEvent = serde_json::from_str(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a"}}"#,
        )
        .unwrap();
        assert!(matches!(
            e,
            StreamEvent::ContentBlockDelta { index: 1, delta: BlockDelta::InputJsonDelta { ref partial_json } } if partial_json == "{\"a"
        ));
        let e: StreamEvent =
            serde_json::from_str(r#"{"type":"content_block_stop","index":0}"#).unwrap();
        assert!(matches!(e, StreamEvent::ContentBlockStop));
        let e: StreamEvent = serde_json::from_str(r#"{"type":"brand_new_event","x":1}"#).unwrap();
        assert!(matches!(e, StreamEvent::Unknown));
        let e: StreamEvent = serde_json::from_str(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap();
        let StreamEvent::Error { error } = e else {
            panic!("not an error event")
        };
        assert_eq!(
            error.kind.as_deref().map(kind_for_error_type),
            Some(ErrorKind::Unavailable)
        );
        let mut state = StreamState::default();
        assert_eq!(tool_index(&mut state, 1), 0);
        assert_eq!(tool_index(&mut state, 3), 1);
        assert_eq!(tool_index(&mut state, 1), 0);
    }

    #[test]
    fn errors_keep_status_and_never_the_key() {
        let e = error_from_body(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-secret1"},"request_id":"req_1"}"#,
            None,
            "sk-ant-secret1",
        );
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert_eq!(e.provider_status, Some(401));
        assert!(!e.message.contains("sk-ant-secret1"), "{}", e.message);
        assert!(e.message.starts_with("invalid x-api-key"));
        let e = error_from_body(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            None,
            "k",
        );
        assert_eq!(
            (e.kind, e.message.as_str()),
            (ErrorKind::Unavailable, "Overloaded")
        );
        let e = error_from_body(429, "not json", Some(1000), "k");
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.message, "anthropic answered HTTP 429");
        assert_eq!(e.retry_after_ms, Some(1000));
    }

    #[test]
    fn reports_the_params_it_drops() {
        let params = schemas::Params {
            seed: Some(1),
            frequency_penalty: Some(0.1),
            user: Some("u".into()),
            ..schemas::Params::default()
        };
        assert_eq!(
            dropped_params(&params),
            ["seed".to_string(), "frequency_penalty".to_string()]
        );
        assert!(dropped_params(&schemas::Params::default()).is_empty());
    }
}
