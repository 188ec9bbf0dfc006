//! OpenAI Chat Completions: `POST {base}/chat/completions`, JSON or SSE.

use schemas::{
    ChatRequest, ContentPart, Delta, ErrorBody, ErrorKind, FinishReason, Message, ResponseFormat,
    Role, ToolCallDelta, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Events, Failure, kind_for_status, read_json, scrub, send};
use switchyard_worker::ChunkSink;

pub const PROVIDER: &str = "openai";

/// The parameters of `params` OpenAI's chat API has no field for.
pub fn dropped_params(params: &schemas::Params) -> Vec<String> {
    schemas::chat::names_set([("top_k", params.top_k.is_some())])
}

/// The OpenAI client of one translator process (one connection pool).
#[derive(Debug, Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    url: String,
}

impl OpenAi {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
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
        let call = self.http.post(&self.url).bearer_auth(key).json(&body);
        let response = send(call, PROVIDER, key, on_first_byte, error_from_body).await?;
        if request.stream {
            self.stream(response, sink, key).await
        } else {
            let parsed: Completion = read_json(response, PROVIDER).await?;
            let choice = parsed.choices.into_iter().next();
            let (delta, finish) = match choice {
                Some(c) => (
                    Delta {
                        role: Some(Role::Assistant),
                        content: c.message.content.or(c.message.refusal),
                        tool_calls: c
                            .message
                            .tool_calls
                            .unwrap_or_default()
                            .into_iter()
                            .enumerate()
                            .map(|(i, t)| ToolCallDelta {
                                index: i as u32,
                                id: Some(t.id),
                                name: Some(t.function.name),
                                arguments: Some(t.function.arguments),
                            })
                            .collect(),
                    },
                    c.finish_reason.as_deref().map(finish_reason),
                ),
                None => (Delta::default(), Some(FinishReason::Stop)),
            };
            sink.set_service_tier(parsed.service_tier);
            sink.send(
                Some(delta),
                finish,
                parsed.usage.map(Usage::from),
                parsed.model.as_deref(),
                true,
            )
            .await?;
            Ok(())
        }
    }

    async fn stream(
        &self,
        response: reqwest::Response,
        sink: &mut ChunkSink,
        key: &str,
    ) -> Result<(), Failure> {
        let mut events = Events::new(response, PROVIDER, "[DONE]", key);
        while let Some(event) = events.next().await {
            let (_, data) = event?;
            if data.trim() == "[DONE]" {
                sink.send(None, None, None, None, true).await?;
                return Ok(());
            }
            let chunk: StreamChunk = events.parse(&data)?;
            if let Some(err) = chunk.error {
                return Err(Failure::Reply(ErrorBody::new(
                    ErrorKind::Upstream,
                    scrub(
                        &err.message.unwrap_or_else(|| "openai stream error".into()),
                        key,
                    ),
                )));
            }
            let mut delta = None;
            let mut finish = None;
            if let Some(choice) = chunk.choices.into_iter().next() {
                let d = choice.delta;
                let tool_calls: Vec<ToolCallDelta> = d
                    .tool_calls
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| ToolCallDelta {
                        index: t.index,
                        id: t.id,
                        name: t.function.as_ref().and_then(|f| f.name.clone()),
                        arguments: t.function.and_then(|f| f.arguments),
                    })
                    .collect();
                let content = d.content.or(d.refusal);
                if d.role.is_some() || content.is_some() || !tool_calls.is_empty() {
                    delta = Some(Delta {
                        role: d.role.as_deref().map(|_| Role::Assistant),
                        content,
                        tool_calls,
                    });
                }
                finish = choice.finish_reason.as_deref().map(finish_reason);
            }
            let usage = chunk.usage.map(Usage::from);
            if !sink.started() {
                sink.set_service_tier(chunk.service_tier);
            }
            if delta.is_some() || finish.is_some() || usage.is_some() || !sink.started() {
                sink.send(delta, finish, usage, chunk.model.as_deref(), false)
                    .await?;
            }
        }
        Err(events.ended_early())
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Other,
    }
}

fn role(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn message_json(m: &Message) -> Value {
    let only_text = m
        .content
        .iter()
        .all(|p| matches!(p, ContentPart::Text { .. }));
    let content = if m.content.is_empty() {
        Value::Null
    } else if only_text && m.content.len() == 1 {
        Value::String(m.joined_text())
    } else {
        Value::Array(
            m.content
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => json!({"type": "text", "text": text}),
                    ContentPart::Image { url, detail } => {
                        let mut image = json!({"url": url});
                        if let Some(d) = detail {
                            image["detail"] = json!(d);
                        }
                        json!({"type": "image_url", "image_url": image})
                    }
                })
                .collect(),
        )
    };
    let mut v = json!({"role": role(m.role), "content": content});
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    if !m.tool_calls.is_empty() {
        v["tool_calls"] = Value::Array(
            m.tool_calls
                .iter()
                .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                .collect(),
        );
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    v
}

/// The Chat Completions request body; a 400 for a response format whose schema is not
/// a JSON object.
pub fn request_body(request: &ChatRequest, upstream_model: &str) -> Result<Value, ErrorBody> {
    let mut body = json!({
        "model": upstream_model,
        "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
    });
    let p = &request.params;
    let non_empty = |set: bool, v: Value| if set { v } else { Value::Null };
    // Our parameters under OpenAI's names (ours are OpenAI's, but for max_tokens), and
    // OpenAI's own options as the caller gave them; unset ones are left out.
    let fields = [
        ("temperature", json!(p.temperature)),
        ("top_p", json!(p.top_p)),
        ("max_completion_tokens", json!(p.max_tokens)),
        ("stop", non_empty(!p.stop.is_empty(), json!(p.stop))),
        ("seed", json!(p.seed)),
        ("presence_penalty", json!(p.presence_penalty)),
        ("frequency_penalty", json!(p.frequency_penalty)),
        ("user", json!(p.user)),
        ("reasoning_effort", json!(p.reasoning_effort)),
        ("service_tier", json!(p.service_tier)),
        ("store", json!(p.store)),
        (
            "metadata",
            non_empty(!p.metadata.is_empty(), json!(p.metadata)),
        ),
        (
            "logit_bias",
            non_empty(!p.logit_bias.is_empty(), json!(p.logit_bias)),
        ),
        ("prompt_cache_key", json!(p.prompt_cache_key)),
        ("safety_identifier", json!(p.safety_identifier)),
        ("verbosity", json!(p.verbosity)),
    ];
    for (name, value) in fields {
        if !value.is_null() {
            body[name] = value;
        }
    }
    // OpenAI refuses parallel_tool_calls without tools; without tools it means nothing.
    if let Some(parallel) = p.parallel_tool_calls
        && !request.tools.is_empty()
    {
        body["parallel_tool_calls"] = json!(parallel);
    }
    if !request.tools.is_empty() {
        body["tools"] = Value::Array(
            request
                .tools
                .iter()
                .map(|t| {
                    let mut f = json!({"name": t.name});
                    if let Some(d) = &t.description {
                        f["description"] = json!(d);
                    }
                    if let Some(params) = t
                        .parameters_json
                        .as_deref()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    {
                        f["parameters"] = params;
                    }
                    json!({"type": "function", "function": f})
                })
                .collect(),
        );
    }
    if let Some(choice) = &request.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function { name } => {
                json!({"type": "function", "function": {"name": name}})
            }
        };
    }
    match &request.response_format {
        None => {}
        Some(ResponseFormat::JsonObject) => {
            body["response_format"] = json!({"type": "json_object"})
        }
        Some(ResponseFormat::JsonSchema {
            name,
            description,
            schema_json,
            strict,
        }) => {
            let mut spec = json!({"name": name, "schema": super::response_schema(schema_json)?});
            if let Some(d) = description {
                spec["description"] = json!(d);
            }
            if let Some(s) = strict {
                spec["strict"] = json!(s);
            }
            body["response_format"] = json!({"type": "json_schema", "json_schema": spec});
        }
    }
    if request.stream {
        body["stream"] = json!(true);
        // Always ask for usage: it is recorded even when the caller did not ask for it.
        body["stream_options"] = json!({"include_usage": true});
    }
    Ok(body)
}

/// Our error for an OpenAI error response.
pub fn error_from_body(
    status: u16,
    text: &str,
    retry_after_ms: Option<u64>,
    key: &str,
) -> ErrorBody {
    let message = serde_json::from_str::<ErrorEnvelope>(text)
        .ok()
        .and_then(|e| e.error.message)
        .unwrap_or_else(|| format!("openai answered HTTP {status}"));
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
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OaiUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<FullToolCall>>,
}

#[derive(Debug, Deserialize)]
struct FullToolCall {
    id: String,
    function: FullFunction,
}

#[derive(Debug, Deserialize)]
struct FullFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct OaiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<OaiUsage> for Usage {
    fn from(u: OaiUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
            cached_input_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
        }
    }
}

#[derive(Debug, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    choices: Vec<StreamChoice>,
    #[serde(default)]
    usage: Option<OaiUsage>,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: StreamDelta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamDelta {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<StreamToolCall>>,
}

#[derive(Debug, Deserialize)]
struct StreamToolCall {
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<StreamFunction>,
}

#[derive(Debug, Deserialize)]
struct StreamFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Params, Tool, ToolCall};

    #[test]
    fn request_body_translates_everything() {
        let request = ChatRequest {
            model: "openai/gpt-4o-mini".into(),
            messages: vec![
                Message::text(Role::System, "be brief"),
                Message {
                    role: Role::User,
                    content: vec![
                        ContentPart::Text {
                            text: "look".into(),
                        },
                        ContentPart::Image {
                            url: "https://x/i.png".into(),
                            detail: None,
                        },
                    ],
                    name: None,
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Assistant,
                    content: vec![],
                    name: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
            ],
            params: Params {
                max_tokens: Some(10),
                stop: vec!["x".into()],
                ..Params::default()
            },
            tools: vec![Tool {
                name: "f".into(),
                description: None,
                parameters_json: Some(r#"{"type":"object"}"#.into()),
            }],
            tool_choice: Some(ToolChoice::Required),
            stream: true,
            fallback_models: vec![],
            response_format: None,
        };
        let body = request_body(&request, "gpt-4o-mini").unwrap();
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["messages"][0]["content"], "be brief");
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"]["url"],
            "https://x/i.png"
        );
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(body["max_completion_tokens"], 10);
        assert_eq!(body["stop"], json!(["x"]));
        assert_eq!(body["tools"][0]["function"]["parameters"]["type"], "object");
        assert_eq!(body["tool_choice"], "required");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn errors_keep_status_and_never_the_key() {
        let e = error_from_body(
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-live-abcdef","type":"invalid_request_error"}}"#,
            None,
            "sk-live-abcdef",
        );
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert_eq!(e.provider_status, Some(401));
        assert!(!e.message.contains("sk-live-abcdef"));
        let e = error_from_body(502, "<html>bad gateway</html>", Some(1000), "k");
        assert_eq!(e.kind, ErrorKind::Upstream);
        assert_eq!(e.message, "openai answered HTTP 502");
        assert_eq!(e.retry_after_ms, Some(1000));
    }
}
