//! Google Gemini: `POST {base}/v1beta/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` for streams (SSE whose chunks are whole
//! `GenerateContentResponse`s; the chunk with a `finishReason` is the end — Gemini sends
//! no `[DONE]`).
//!
//! Choices the wire format leaves to us:
//! - System and developer messages, wherever they stand, become `systemInstruction`
//!   (Gemini has one). Assistant turns are role `model`, user and tool turns `user`;
//!   consecutive turns of one role are merged, since Gemini wants them alternating.
//! - Gemini's function calls carry no id: each gets `call_<n>`, `n` its position among
//!   the answer's calls. A tool message is matched to its call by searching earlier
//!   assistant calls for its `tool_call_id`, newest first (so repeated `call_0` ids of
//!   earlier turns resolve to the nearest one).
//! - A prompt Gemini blocks (`promptFeedback.blockReason`, no candidates) is an
//!   `InvalidRequest` error, as OpenAI answers a prompt its filter rejects with a 400;
//!   a blocked *answer* is a normal reply with finish reason `ContentFilter`.
//! - `output_tokens` = `candidatesTokenCount` + `thoughtsTokenCount` (thinking is billed
//!   as output); thought parts are never sent on as content.
//! - A wrong key is a 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID` from Google;
//!   we report it as `Authentication`, like every other provider's bad key.

use schemas::{
    ChatRequest, ContentPart, Delta, ErrorBody, ErrorKind, FinishReason, Message, ResponseFormat,
    Role, ToolCallDelta, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Events, Failure, kind_for_status, read_json, scrub, send};
use switchyard_worker::ChunkSink;

/// How the provider is named in messages to the caller.
pub const PROVIDER: &str = "gemini";

/// The Gemini client of one translator process (one connection pool).
#[derive(Debug, Clone)]
pub struct Gemini {
    http: reqwest::Client,
    base: String,
}

impl Gemini {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
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
        let url = self.url(upstream_model, request.stream)?;
        let body = request_body(request).map_err(Failure::Reply)?;
        // The key goes in a header, never in the URL: URLs end up in logs and errors.
        let call = self
            .http
            .post(&url)
            .header("x-goog-api-key", key)
            .json(&body);
        let response = send(call, PROVIDER, key, on_first_byte, error_from_body).await?;
        if request.stream {
            return stream(response, sink, key).await;
        }
        let parsed: GenerateResponse = read_json(response, PROVIDER).await?;
        let mut calls = CallCounter::default();
        let mut piece = translate(&parsed, &mut calls, key).map_err(Failure::Reply)?;
        if parsed.candidates.is_empty() {
            return Err(Failure::Reply(ErrorBody::new(
                ErrorKind::Upstream,
                "gemini answered with no candidates",
            )));
        }
        let mut delta = piece.delta.take().unwrap_or_default();
        delta.role = Some(Role::Assistant);
        sink.send(
            Some(delta),
            Some(piece.finish.unwrap_or(FinishReason::Stop)),
            parsed.usage_metadata.map(Usage::from),
            parsed.model_version.as_deref(),
            true,
        )
        .await?;
        Ok(())
    }

    fn url(&self, upstream_model: &str, stream: bool) -> Result<String, Failure> {
        let model = model_path_segment(upstream_model).map_err(Failure::Reply)?;
        Ok(if stream {
            format!(
                "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                self.base
            )
        } else {
            format!("{}/v1beta/models/{model}:generateContent", self.base)
        })
    }
}

async fn stream(
    response: reqwest::Response,
    sink: &mut ChunkSink,
    key: &str,
) -> Result<(), Failure> {
    let mut events = Events::new(response, PROVIDER, "a finish reason", key);
    let mut calls = CallCounter::default();
    let mut usage = None;
    while let Some(event) = events.next().await {
        let (_, data) = event?;
        let chunk: GenerateResponse = events.parse(&data)?;
        let piece = translate(&chunk, &mut calls, key).map_err(Failure::Reply)?;
        if let Some(u) = chunk.usage_metadata {
            // Every chunk carries counts; the finishing one has the complete ones.
            usage = Some(Usage::from(u));
        }
        let mut delta = piece.delta;
        if !sink.started() {
            delta.get_or_insert_with(Delta::default).role = Some(Role::Assistant);
        }
        let model = chunk.model_version.as_deref();
        if let Some(finish) = piece.finish {
            sink.send(delta, Some(finish), usage, model, true).await?;
            return Ok(());
        }
        if delta.is_some() {
            sink.send(delta, None, None, model, false).await?;
        }
    }
    Err(events.ended_early())
}

/// Numbers function calls across one answer (all chunks of a stream).
#[derive(Debug, Default)]
struct CallCounter {
    next: u32,
}

/// What one response (or stream chunk) adds to the reply.
#[derive(Debug, Default, PartialEq)]
struct Piece {
    delta: Option<Delta>,
    finish: Option<FinishReason>,
}

/// Our delta and finish reason for one `GenerateContentResponse`; an error when it
/// reports one or the prompt was blocked.
fn translate(
    response: &GenerateResponse,
    calls: &mut CallCounter,
    key: &str,
) -> Result<Piece, ErrorBody> {
    if let Some(err) = &response.error {
        let kind = err.code.map_or(ErrorKind::Upstream, kind_for_status);
        let message = err
            .message
            .clone()
            .unwrap_or_else(|| "gemini stream error".into());
        return Err(ErrorBody::new(kind, scrub(&message, key)));
    }
    let Some(candidate) = response.candidates.first() else {
        if let Some(reason) = response
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
        {
            return Err(ErrorBody::new(
                ErrorKind::InvalidRequest,
                format!("gemini blocked the prompt (blockReason {reason})"),
            ));
        }
        return Ok(Piece::default());
    };
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for part in candidate.content.iter().flat_map(|c| &c.parts) {
        if let Some(call) = &part.function_call {
            let index = calls.next;
            calls.next += 1;
            let args = call.args.clone().unwrap_or_else(|| json!({}));
            tool_calls.push(ToolCallDelta {
                index,
                id: Some(call.id.clone().unwrap_or_else(|| format!("call_{index}"))),
                name: Some(call.name.clone()),
                arguments: Some(args.to_string()),
            });
        } else if let Some(text) = &part.text
            && !part.thought.unwrap_or(false)
        {
            content.push_str(text);
        }
    }
    let delta = (!content.is_empty() || !tool_calls.is_empty()).then(|| Delta {
        role: None,
        content: (!content.is_empty()).then_some(content),
        tool_calls,
    });
    let finish = candidate.finish_reason.as_deref().map(|reason| {
        match finish_reason(reason) {
            // Gemini says STOP after function calls; callers expect tool_calls.
            FinishReason::Stop if calls.next > 0 => FinishReason::ToolCalls,
            other => other,
        }
    });
    Ok(Piece { delta, finish })
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Other,
    }
}

/// The model as one path segment: validated (it comes from the caller) and
/// percent-encoded.
fn model_path_segment(model: &str) -> Result<String, ErrorBody> {
    if model.is_empty()
        || model.contains(['/', '?', '#', '\\'])
        || model.contains("..")
        || model.chars().any(char::is_control)
    {
        let mut e = ErrorBody::new(
            ErrorKind::InvalidRequest,
            "the gemini model name must be one path segment (no '/', '?', '#' or '..')",
        );
        e.param = Some("model".into());
        return Err(e);
    }
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

fn invalid(param: &str, message: impl Into<String>) -> ErrorBody {
    let mut e = ErrorBody::new(ErrorKind::InvalidRequest, message);
    e.param = Some(param.into());
    e
}

/// A Gemini part for one of our content parts.
fn content_part(part: &ContentPart) -> Result<Value, ErrorBody> {
    match part {
        ContentPart::Text { text } => Ok(json!({"text": text})),
        ContentPart::Image { url, .. } => {
            if let Some(rest) = url.strip_prefix("data:") {
                let Some((meta, data)) = rest.split_once(',') else {
                    return Err(invalid(
                        "messages",
                        "an image data: URL has no ',' before its data",
                    ));
                };
                let Some(mime) = meta.strip_suffix(";base64") else {
                    return Err(invalid(
                        "messages",
                        "an image data: URL must be base64 (';base64,')",
                    ));
                };
                let mime = if mime.is_empty() { "image/jpeg" } else { mime };
                Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
            } else if url.starts_with("https://") || url.starts_with("http://") {
                Ok(json!({"fileData": {"mimeType": mime_from_url(url), "fileUri": url}}))
            } else {
                Err(invalid(
                    "messages",
                    "gemini takes images as data: URLs or http(s) URLs",
                ))
            }
        }
    }
}

/// The media type of a file URL, guessed from its extension; JPEG when unknown.
fn mime_from_url(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

/// The function name of the call `tool_call_id` answers, from the assistant messages
/// before `before`, newest first.
fn function_name<'a>(
    messages: &'a [Message],
    before: usize,
    tool_call_id: &str,
) -> Option<&'a str> {
    messages[..before]
        .iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter().rev())
        .find(|c| c.id == tool_call_id)
        .map(|c| c.name.as_str())
}

/// The parameters of `params` Gemini has no field for.
pub fn dropped_params(params: &schemas::Params) -> Vec<String> {
    schemas::chat::names_set(
        [
            ("user", params.user.is_some()),
            // Thinking is a budget (2.5) or a level (3) depending on the model.
            ("reasoning_effort", params.reasoning_effort.is_some()),
            (
                "parallel_tool_calls",
                params.parallel_tool_calls == Some(false),
            ),
        ]
        .into_iter()
        .chain(params.openai_options()),
    )
}

/// The `generateContent` request body.
pub fn request_body(request: &ChatRequest) -> Result<Value, ErrorBody> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                for p in &m.content {
                    if let ContentPart::Text { text } = p {
                        system.push(json!({"text": text}));
                    }
                }
                continue;
            }
            Role::User => (
                "user",
                m.content
                    .iter()
                    .map(content_part)
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Role::Assistant => {
                let mut parts = m
                    .content
                    .iter()
                    .map(content_part)
                    .collect::<Result<Vec<_>, _>>()?;
                for call in &m.tool_calls {
                    let args = if call.arguments.trim().is_empty() {
                        Value::Object(Map::new())
                    } else {
                        match serde_json::from_str::<Value>(&call.arguments) {
                            Ok(v @ Value::Object(_)) => v,
                            _ => {
                                return Err(invalid(
                                    "messages",
                                    format!(
                                        "the arguments of tool call '{}' are not a JSON object",
                                        call.id
                                    ),
                                ));
                            }
                        }
                    };
                    parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = function_name(&request.messages, i, id)
                    .or(m.name.as_deref())
                    .ok_or_else(|| {
                        invalid(
                            "messages",
                            format!("tool message answers '{id}', which no earlier assistant message called"),
                        )
                    })?;
                let text = m.joined_text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last_role, last_parts)) if *last_role == role => last_parts.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = json!({
        "contents": contents
            .into_iter()
            .map(|(role, parts)| json!({"role": role, "parts": parts}))
            .collect::<Vec<_>>(),
    });
    if !system.is_empty() {
        body["systemInstruction"] = json!({"parts": system});
    }
    let p = &request.params;
    let mut config = Map::new();
    if let Some(t) = p.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(t) = p.top_p {
        config.insert("topP".into(), json!(t));
    }
    if let Some(k) = p.top_k {
        config.insert("topK".into(), json!(k));
    }
    if let Some(n) = p.max_tokens {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if !p.stop.is_empty() {
        config.insert("stopSequences".into(), json!(p.stop));
    }
    if let Some(s) = p.seed {
        config.insert("seed".into(), json!(s));
    }
    if let Some(x) = p.presence_penalty {
        config.insert("presencePenalty".into(), json!(x));
    }
    if let Some(x) = p.frequency_penalty {
        config.insert("frequencyPenalty".into(), json!(x));
    }
    // JSON mode is the JSON MIME type; a schema goes in `responseJsonSchema` (JSON
    // Schema as written, unlike `responseSchema`'s OpenAPI subset). Name, description
    // and `strict` have no field.
    if let Some(format) = &request.response_format {
        config.insert("responseMimeType".into(), json!("application/json"));
        if let ResponseFormat::JsonSchema { schema_json, .. } = format {
            config.insert(
                "responseJsonSchema".into(),
                super::response_schema(schema_json)?,
            );
        }
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    // `user` has no Gemini field: left out and reported through `dropped_params`.
    if !request.tools.is_empty() {
        let declarations = request
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                if let Some(text) = t.parameters_json.as_deref() {
                    let params = serde_json::from_str::<Value>(text).map_err(|_| {
                        invalid(
                            "tools",
                            format!("the parameters of tool '{}' are not valid JSON", t.name),
                        )
                    })?;
                    f["parameters"] = params;
                }
                Ok(f)
            })
            .collect::<Result<Vec<_>, ErrorBody>>()?;
        body["tools"] = json!([{"functionDeclarations": declarations}]);
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Function { name } => {
                json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
        };
        body["toolConfig"] = json!({"functionCallingConfig": config});
    }
    Ok(body)
}

/// Our error for a Gemini error response.
pub fn error_from_body(
    status: u16,
    text: &str,
    retry_after_ms: Option<u64>,
    key: &str,
) -> ErrorBody {
    let parsed = serde_json::from_str::<ErrorEnvelope>(text)
        .ok()
        .map(|e| e.error);
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| format!("gemini answered HTTP {status}"));
    let reason_is = |wanted: &str| {
        parsed.as_ref().is_some_and(|e| {
            e.details
                .iter()
                .any(|d| d.get("reason").and_then(Value::as_str) == Some(wanted))
        })
    };
    // Google answers a bad key with 400 INVALID_ARGUMENT, not 401.
    let bad_key = status == 400
        && (reason_is("API_KEY_INVALID")
            || message.contains("API key not valid")
            || message.contains("API Key not found"));
    let kind = if bad_key {
        ErrorKind::Authentication
    } else {
        kind_for_status(status)
    };
    // Gemini puts the wait in a RetryInfo detail ("34s") more often than in a header.
    let retry_after_ms = retry_after_ms.or_else(|| {
        parsed.as_ref().and_then(|e| {
            e.details.iter().find_map(|d| {
                d.get("retryDelay")
                    .and_then(Value::as_str)
                    .and_then(|s| s.strip_suffix('s'))
                    .and_then(|s| s.parse::<f64>().ok())
                    .map(|s| (s.max(0.0) * 1000.0).ceil() as u64)
            })
        })
    });
    ErrorBody {
        kind,
        message: scrub(&message, key),
        param: None,
        retry_after_ms,
        provider_status: Some(status),
    }
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: GoogleError,
}

#[derive(Debug, Deserialize)]
struct GoogleError {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    /// Set on an error event inside a stream.
    #[serde(default)]
    error: Option<GoogleError>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    #[serde(default)]
    text: Option<String>,
    /// A thought summary, not part of the answer.
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    name: String,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    cached_content_token_count: Option<u64>,
}

impl From<UsageMetadata> for Usage {
    fn from(u: UsageMetadata) -> Self {
        Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_input_tokens: u.cached_content_token_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Params, Tool, ToolCall};

    fn message(role: Role, content: Vec<ContentPart>) -> Message {
        Message::with_parts(role, content)
    }

    fn chat(messages: Vec<Message>) -> ChatRequest {
        ChatRequest {
            model: "google/gemini-2.0-flash".into(),
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
        let mut request = chat(vec![
            Message::text(Role::System, "be brief"),
            Message::text(Role::Developer, "use metric"),
            message(
                Role::User,
                vec![
                    ContentPart::Text {
                        text: "look".into(),
                    },
                    ContentPart::Image {
                        url: "data:image/png;base64,AAAA".into(),
                        detail: None,
                    },
                    ContentPart::Image {
                        url: "https://x.test/a/cat.WEBP?size=2".into(),
                        detail: Some("high".into()),
                    },
                    ContentPart::Image {
                        url: "https://x.test/photo".into(),
                        detail: None,
                    },
                ],
            ),
            Message::text(Role::User, "and the weather?"),
            Message {
                tool_calls: vec![
                    ToolCall {
                        id: "c1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    },
                    ToolCall {
                        id: "c2".into(),
                        name: "get_time".into(),
                        arguments: "".into(),
                    },
                ],
                ..message(Role::Assistant, vec![])
            },
            Message {
                tool_call_id: Some("c2".into()),
                ..Message::text(Role::Tool, "noon")
            },
            Message {
                tool_call_id: Some("c1".into()),
                ..Message::text(Role::Tool, r#"{"temp":21}"#)
            },
            Message::text(Role::Assistant, "21 at noon"),
        ]);
        request.params = Params {
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(40),
            max_tokens: Some(10),
            stop: vec!["x".into()],
            seed: Some(7),
            presence_penalty: Some(0.1),
            frequency_penalty: Some(0.2),
            user: Some("u".into()),
            ..Params::default()
        };
        request.tools = vec![Tool {
            name: "get_weather".into(),
            description: Some("weather".into()),
            parameters_json: Some(r#"{"type":"object"}"#.into()),
        }];
        request.tool_choice = Some(ToolChoice::Function {
            name: "get_weather".into(),
        });
        let body = request_body(&request).unwrap();
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "be brief"}, {"text": "use metric"}]})
        );
        let contents = body["contents"].as_array().unwrap();
        // user+user merged, model, user (two tool results merged), model.
        assert_eq!(contents.len(), 4);
        assert_eq!(contents[0]["role"], "user");
        let parts = contents[0]["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 5);
        assert_eq!(
            parts[1],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
        );
        assert_eq!(
            parts[2],
            json!({"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/a/cat.WEBP?size=2"}})
        );
        assert_eq!(parts[3]["fileData"]["mimeType"], "image/jpeg");
        assert_eq!(parts[4], json!({"text": "and the weather?"}));
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}}
            ])
        );
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"],
            json!([
                {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}
            ])
        );
        assert_eq!(
            contents[3],
            json!({"role": "model", "parts": [{"text": "21 at noon"}]})
        );
        assert_eq!(
            body["generationConfig"],
            json!({"temperature": 0.5, "topP": 0.9, "topK": 40, "maxOutputTokens": 10,
                   "stopSequences": ["x"], "seed": 7, "presencePenalty": 0.1,
                   "frequencyPenalty": 0.2})
        );
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [{"name": "get_weather", "description": "weather",
                                              "parameters": {"type": "object"}}]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        );
    }

    #[test]
    fn tool_choices_and_minimal_bodies() {
        let mut request = chat(vec![Message::text(Role::User, "hi")]);
        let body = request_body(&request).unwrap();
        assert_eq!(
            body,
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        );
        for (choice, mode) in [
            (ToolChoice::Auto, "AUTO"),
            (ToolChoice::None, "NONE"),
            (ToolChoice::Required, "ANY"),
        ] {
            request.tool_choice = Some(choice);
            let body = request_body(&request).unwrap();
            assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn bad_requests_are_rejected_before_sending() {
        let bad_args = chat(vec![Message {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "f".into(),
                arguments: "{not json".into(),
            }],
            ..message(Role::Assistant, vec![])
        }]);
        assert_eq!(
            request_body(&bad_args).unwrap_err().kind,
            ErrorKind::InvalidRequest
        );
        let orphan = chat(vec![Message {
            tool_call_id: Some("nope".into()),
            ..Message::text(Role::Tool, "x")
        }]);
        assert_eq!(
            request_body(&orphan).unwrap_err().kind,
            ErrorKind::InvalidRequest
        );
        let ftp = chat(vec![message(
            Role::User,
            vec![ContentPart::Image {
                url: "ftp://x/y.png".into(),
                detail: None,
            }],
        )]);
        assert!(request_body(&ftp).is_err());
        for model in ["", "a/b", "a?b", "a#b", "..", "x..y"] {
            let e = model_path_segment(model).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{model}");
            assert_eq!(e.param.as_deref(), Some("model"));
        }
        assert_eq!(
            model_path_segment("gemini-2.0-flash").unwrap(),
            "gemini-2.0-flash"
        );
        assert_eq!(model_path_segment("m:x@1+2").unwrap(), "m%3Ax%401%2B2");
    }

    #[test]
    fn urls_never_hold_the_key() {
        let g = Gemini::new(reqwest::Client::new(), "http://h:1/");
        let Ok(url) = g.url("gemini-2.0-flash", true) else {
            panic!("valid model");
        };
        assert_eq!(
            url,
            "http://h:1/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        let Ok(url) = g.url("gemini-2.0-flash", false) else {
            panic!("valid model");
        };
        assert_eq!(
            url,
            "http://h:1/v1beta/models/gemini-2.0-flash:generateContent"
        );
    }

    fn response(json: &str) -> GenerateResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn responses_become_deltas_with_numbered_calls() {
        let mut calls = CallCounter::default();
        let first = response(
            r#"{"candidates":[{"content":{"role":"model","parts":[
                {"text":"thinking...","thought":true},{"text":"Let me check."},
                {"functionCall":{"name":"get_weather","args":{"city":"Paris"}}}]},"index":0}],
                "usageMetadata":{"promptTokenCount":5,"totalTokenCount":5}}"#,
        );
        let piece = translate(&first, &mut calls, "k").unwrap();
        let delta = piece.delta.unwrap();
        assert_eq!(delta.content.as_deref(), Some("Let me check."));
        assert_eq!(
            delta.tool_calls,
            [ToolCallDelta {
                index: 0,
                id: Some("call_0".into()),
                name: Some("get_weather".into()),
                arguments: Some(r#"{"city":"Paris"}"#.into()),
            }]
        );
        assert_eq!(piece.finish, None);
        let last = response(
            r#"{"candidates":[{"content":{"role":"model","parts":[
                {"functionCall":{"name":"get_time"}}]},"finishReason":"STOP"}],
                "usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":3,
                                 "thoughtsTokenCount":2,"cachedContentTokenCount":4}}"#,
        );
        let piece = translate(&last, &mut calls, "k").unwrap();
        let call = &piece.delta.unwrap().tool_calls[0];
        assert_eq!((call.index, call.id.as_deref()), (1, Some("call_1")));
        assert_eq!(call.arguments.as_deref(), Some("{}"));
        // STOP after function calls is reported as tool_calls.
        assert_eq!(piece.finish, Some(FinishReason::ToolCalls));
        let usage = Usage::from(last.usage_metadata.unwrap());
        assert_eq!(
            (
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens
            ),
            (5, 5, Some(4))
        );
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        assert_eq!(finish_reason("STOP"), FinishReason::Stop);
        assert_eq!(finish_reason("MAX_TOKENS"), FinishReason::Length);
        for r in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason(r), FinishReason::ContentFilter);
        }
        assert_eq!(
            finish_reason("MALFORMED_FUNCTION_CALL"),
            FinishReason::Other
        );
        let text_stop = response(
            r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]},"finishReason":"STOP"}]}"#,
        );
        let piece = translate(&text_stop, &mut CallCounter::default(), "k").unwrap();
        assert_eq!(piece.finish, Some(FinishReason::Stop));
        let blocked = response(r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#);
        let e = translate(&blocked, &mut CallCounter::default(), "k").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message.contains("SAFETY"));
        let stream_error =
            response(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#);
        let e = translate(&stream_error, &mut CallCounter::default(), "k").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
    }

    #[test]
    fn errors_map_like_google_means_them() {
        let key = "AIzaSecretKey123";
        let e = error_from_body(
            400,
            r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key. AIzaSecretKey123","status":"INVALID_ARGUMENT",
                "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
            None,
            key,
        );
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert_eq!(e.provider_status, Some(400));
        assert!(!e.message.contains(key));
        let e = error_from_body(
            400,
            r#"{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT"}}"#,
            None,
            key,
        );
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert_eq!(e.message, "Request contains an invalid argument.");
        let e = error_from_body(
            429,
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED",
                "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34s"}]}}"#,
            None,
            key,
        );
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after_ms, Some(34_000));
        let e = error_from_body(429, "{}", Some(1000), key);
        assert_eq!(e.retry_after_ms, Some(1000));
        assert_eq!(e.message, "gemini answered HTTP 429");
        assert_eq!(
            error_from_body(404, "", None, key).kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            error_from_body(500, "", None, key).kind,
            ErrorKind::Upstream
        );
        assert_eq!(
            error_from_body(503, "", None, key).kind,
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn reports_the_params_it_drops() {
        let params = schemas::Params {
            seed: Some(1),
            frequency_penalty: Some(0.1),
            user: Some("u".into()),
            ..schemas::Params::default()
        };
        assert_eq!(dropped_params(&params), ["user".to_string()]);
        assert!(dropped_params(&schemas::Params::default()).is_empty());
    }
}
