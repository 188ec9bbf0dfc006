//! The OpenAI-compatible wire format: request parsing into [`schemas::ChatRequest`] and
//! the `chat.completion` / `chat.completion.chunk` objects built from reply chunks.

use schemas::{
    ChatRequest, ContentPart, ErrorKind, FinishReason, Message, Params, ResponseFormat, Role, Tool,
    ToolCall, ToolChoice, Usage,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// `POST /v1/chat/completions` body, as OpenAI documents it. A field OpenAI does not
/// document (nor our `top_k` and `models`) is a 400, as OpenAI answers one: a misspelt
/// `max_token` silently ignored would be worse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatCompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<OaiMessage>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Not in OpenAI's API; open models (and Anthropic, Gemini) take it.
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<OaiTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// JSON mode or structured outputs.
    #[serde(default)]
    pub response_format: Option<OaiResponseFormat>,
    /// Fallbacks: tried in order when `model` fails before the first byte.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Refused: provider endpoints are the operator's (see `base_url_override`).
    #[serde(
        default,
        alias = "api_base",
        alias = "baseURL",
        alias = "api_url",
        alias = "endpoint"
    )]
    pub base_url: Option<serde::de::IgnoredAny>,
    // OpenAI parameters not implemented here: see [`not_implemented`].
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    #[serde(default)]
    pub audio: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub prediction: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub web_search_options: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub functions: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub function_call: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub verbosity: Option<String>,
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
}

/// OpenAI's chat parameters this gateway does not implement: a 400 for one that would
/// change what the caller gets back (log probabilities, audio, predicted outputs, web
/// search, the deprecated `functions`).
pub(crate) fn not_implemented(u: &ChatCompletionRequest) -> Result<(), ApiError> {
    const NO_LOGPROBS: &str = "answers carry no log probabilities";
    const TEXT_ONLY: &str = "only text output is served";
    const DEPRECATED: &str = "it is deprecated; send 'tools' and 'tool_choice'";
    let text_only = |m: &Vec<String>| m.iter().all(|m| m == "text");
    let refused = [
        ("logprobs", u.logprobs == Some(true), NO_LOGPROBS),
        ("top_logprobs", u.top_logprobs.is_some(), NO_LOGPROBS),
        (
            "modalities",
            !u.modalities.as_ref().is_none_or(text_only),
            TEXT_ONLY,
        ),
        ("audio", u.audio.is_some(), TEXT_ONLY),
        (
            "prediction",
            u.prediction.is_some(),
            "predicted outputs are not forwarded",
        ),
        (
            "web_search_options",
            u.web_search_options.is_some(),
            "web search is not forwarded",
        ),
        ("functions", u.functions.is_some(), DEPRECATED),
        ("function_call", u.function_call.is_some(), DEPRECATED),
    ];
    match refused.into_iter().find(|(_, set, _)| *set) {
        Some((param, _, why)) => {
            Err(invalid(format!("'{param}' is not supported: {why}")).with_param(param))
        }
        None => Ok(()),
    }
}

/// `metadata` as OpenAI takes it: string values only.
fn metadata(
    m: Option<serde_json::Map<String, Value>>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(v) => Ok((k, v)),
            other => Err(invalid(format!(
                "'metadata' values must be strings; '{k}' is {}",
                json_kind(&other)
            ))
            .with_param("metadata")),
        })
        .collect()
}

/// `logit_bias` as OpenAI takes it: token ids to integer biases.
fn logit_bias(
    m: Option<serde_json::Map<String, Value>>,
) -> Result<std::collections::BTreeMap<String, i32>, ApiError> {
    m.unwrap_or_default()
        .into_iter()
        .map(|(token, bias)| {
            let bias = bias
                .as_i64()
                .and_then(|b| i32::try_from(b).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "'logit_bias' maps token ids to integers; '{token}' has {bias}"
                    ))
                    .with_param("logit_bias")
                })?;
            Ok((token, bias))
        })
        .collect()
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The answer to a request that tries to choose the provider's URL: the gateway would
/// otherwise send the caller's key (and a sealed prompt) wherever it was told.
pub(crate) fn base_url_override(field: &str) -> ApiError {
    invalid(format!(
        "'{field}' cannot be set: provider base URLs are configured by the operator, not per request"
    ))
    .with_param(field)
}

/// Header names that would choose a provider URL; any of them is refused.
pub(crate) fn is_base_url_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "base-url", "base_url", "api-base", "api_base", "baseurl", "endpoint",
    ]
    .iter()
    .any(|n| name.contains(n))
}

/// The fallback list from a request's `models`: `model` itself and repeats dropped, at
/// most [`MAX_FALLBACKS`].
pub(crate) fn fallbacks(model: &str, models: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::new();
    for m in models.unwrap_or_default() {
        if m != model && !out.contains(&m) {
            out.push(m);
        }
    }
    if out.len() > MAX_FALLBACKS {
        return Err(
            invalid(format!("'models' lists at most {MAX_FALLBACKS} fallbacks"))
                .with_param("models"),
        );
    }
    Ok(out)
}

/// Fallback models one request may name.
pub const MAX_FALLBACKS: usize = 4;

/// OpenAI's `reasoning_effort` levels.
pub const REASONING_EFFORTS: [&str; 6] = ["none", "minimal", "low", "medium", "high", "xhigh"];

/// OpenAI's `service_tier` values.
pub const SERVICE_TIERS: [&str; 5] = ["auto", "default", "flex", "scale", "priority"];

/// OpenAI's `verbosity` levels.
pub const VERBOSITIES: [&str; 3] = ["low", "medium", "high"];

/// OpenAI's limits on `metadata`: pairs, key and value length (characters).
pub const METADATA_LIMITS: (usize, usize, usize) = (16, 64, 512);

/// Checks parameter ranges the way providers document them, so a bad value is our 400
/// naming the field, not a provider error after a round trip.
pub(crate) fn validate_params(p: &schemas::Params) -> Result<(), ApiError> {
    let range = |name: &str, v: Option<f64>, lo: f64, hi: f64| match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(invalid(format!(
            "'{name}' must be between {lo} and {hi}, got {x}"
        ))
        .with_param(name)),
        _ => Ok(()),
    };
    range("temperature", p.temperature, 0.0, 2.0)?;
    range("top_p", p.top_p, 0.0, 1.0)?;
    range("presence_penalty", p.presence_penalty, -2.0, 2.0)?;
    range("frequency_penalty", p.frequency_penalty, -2.0, 2.0)?;
    if p.max_tokens == Some(0) {
        return Err(invalid("'max_tokens' must be at least 1").with_param("max_tokens"));
    }
    if p.stop.len() > 4 {
        return Err(invalid("'stop' takes at most 4 sequences").with_param("stop"));
    }
    let one_of = |name: &str, v: &Option<String>, allowed: &[&str]| match v {
        Some(v) if !allowed.contains(&v.as_str()) => Err(invalid(format!(
            "'{name}' must be one of {}, got {v:?}",
            allowed.join(", ")
        ))
        .with_param(name)),
        _ => Ok(()),
    };
    one_of("reasoning_effort", &p.reasoning_effort, &REASONING_EFFORTS)?;
    one_of("service_tier", &p.service_tier, &SERVICE_TIERS)?;
    one_of("verbosity", &p.verbosity, &VERBOSITIES)?;
    let (pairs, key_len, value_len) = METADATA_LIMITS;
    let too_long = |s: &str, max: usize| s.chars().count() > max;
    if p.metadata.len() > pairs {
        return Err(invalid(format!(
            "'metadata' takes at most {pairs} pairs, got {}",
            p.metadata.len()
        ))
        .with_param("metadata"));
    }
    if let Some((k, v)) = p
        .metadata
        .iter()
        .find(|(k, v)| too_long(k, key_len) || too_long(v, value_len))
    {
        let (what, name, max) = if too_long(k, key_len) {
            ("key", k.as_str(), key_len)
        } else {
            ("value", v.as_str(), value_len)
        };
        let shown: String = name.chars().take(16).collect();
        return Err(invalid(format!(
            "'metadata' {what}s are at most {max} characters ('{shown}…' is longer)"
        ))
        .with_param("metadata"));
    }
    if let Some((token, bias)) = p
        .logit_bias
        .iter()
        .find(|(t, b)| t.parse::<u32>().is_err() || !(-100..=100).contains(*b))
    {
        return Err(invalid(format!(
            "'logit_bias' maps token ids to biases between -100 and 100, got {token:?}: {bias}"
        ))
        .with_param("logit_bias"));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct OaiMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<OaiContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<OaiToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OaiContent {
    Text(String),
    Parts(Vec<OaiPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OaiPart {
    Text { text: String },
    ImageUrl { image_url: OaiImageUrl },
}

#[derive(Debug, Deserialize)]
pub struct OaiImageUrl {
    pub url: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct OaiToolCall {
    pub id: String,
    pub function: OaiFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct OaiFunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub struct OaiTool {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: OaiFunction,
}

#[derive(Debug, Deserialize)]
pub struct OaiFunction {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// OpenAI's `response_format`: `{"type": "text" | "json_object" | "json_schema",
/// "json_schema"?: {...}}`.
#[derive(Debug, Deserialize)]
pub struct OaiResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<OaiJsonSchema>,
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize)]
pub struct OaiJsonSchema {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The longest schema name OpenAI accepts.
const MAX_SCHEMA_NAME: usize = 64;

/// `response_format` checked the way OpenAI documents it, normalized; `text` (the
/// default) is no format at all.
pub(crate) fn response_format(
    raw: Option<OaiResponseFormat>,
) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.kind.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(ResponseFormat::JsonObject)),
        "json_schema" => {
            let spec = raw.json_schema.ok_or_else(|| {
                invalid("missing required parameter: 'response_format.json_schema'")
                    .with_param("response_format.json_schema")
            })?;
            let name = spec.name.unwrap_or_default();
            if name.is_empty()
                || name.len() > MAX_SCHEMA_NAME
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid(format!(
                    "'response_format.json_schema.name' must be 1 to {MAX_SCHEMA_NAME} letters, digits, '_' or '-'"
                ))
                .with_param("response_format.json_schema.name"));
            }
            let schema = match spec.schema {
                Some(schema @ Value::Object(_)) => schema,
                _ => {
                    return Err(invalid(
                        "'response_format.json_schema.schema' must be a JSON Schema object",
                    )
                    .with_param("response_format.json_schema.schema"));
                }
            };
            Ok(Some(ResponseFormat::JsonSchema {
                name,
                description: spec.description,
                schema_json: schema.to_string(),
                strict: spec.strict,
            }))
        }
        other => Err(invalid(format!(
            "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\", got {other:?}"
        ))
        .with_param("response_format.type")),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message)
}

/// Parses a request body; every failure is a 400 naming the field at fault.
pub fn parse_body(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    parse_json(body)
}

/// Parses a JSON object body into `T`; every failure is a 400 naming the field at
/// fault. Shared by every route that takes JSON.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde would read a struct from a JSON array by position: accept objects only.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[' | b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => {
            return Err(invalid("request body must be a JSON object"));
        }
        _ => {
            return Err(invalid(
                "request body is not valid JSON: expected an object",
            ));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            invalid(format!("request body is not valid JSON: {inner}"))
        } else if path == "." {
            invalid(format!("request body must be a JSON object: {inner}"))
        } else if inner.to_string().starts_with("unknown field") {
            // OpenAI's wording; serde's lists every known field.
            invalid(format!("Unrecognized request argument supplied: {path}")).with_param(path)
        } else {
            invalid(format!("invalid value for '{path}': {inner}")).with_param(path)
        }
    })
}

fn role(name: &str, index: usize) -> Result<Role, ApiError> {
    Ok(match name {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(invalid(format!(
                "messages[{index}].role: unknown role {other:?} (system, developer, user, assistant or tool)"
            ))
            .with_param(format!("messages[{index}].role")));
        }
    })
}

pub(crate) fn tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    match value {
        Value::String(s) if s == "auto" => Ok(ToolChoice::Auto),
        Value::String(s) if s == "none" => Ok(ToolChoice::None),
        Value::String(s) if s == "required" => Ok(ToolChoice::Required),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| ToolChoice::Function { name: name.to_string() })
            .ok_or_else(|| invalid("tool_choice object needs function.name").with_param("tool_choice")),
        _ => Err(invalid("tool_choice must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}")
            .with_param("tool_choice")),
    }
}

/// OpenAI-style message objects to normalized messages; errors name `messages[i]…`.
pub(crate) fn convert_messages(raw: Vec<OaiMessage>) -> Result<Vec<Message>, ApiError> {
    let mut messages = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let content = match m.content {
            None => Vec::new(),
            Some(OaiContent::Text(text)) => vec![ContentPart::Text { text }],
            Some(OaiContent::Parts(parts)) => parts
                .into_iter()
                .map(|p| match p {
                    OaiPart::Text { text } => ContentPart::Text { text },
                    OaiPart::ImageUrl { image_url } => ContentPart::Image {
                        url: image_url.url,
                        detail: image_url.detail,
                    },
                })
                .collect(),
        };
        messages.push(Message {
            role: role(&m.role, i)?,
            content,
            name: m.name,
            tool_calls: m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: c.function.arguments,
                })
                .collect(),
            tool_call_id: m.tool_call_id,
        });
    }
    Ok(messages)
}

/// OpenAI-style tool definitions to normalized tools; errors name `tools[i]…`.
pub(crate) fn convert_tools(raw: Vec<OaiTool>) -> Result<Vec<Tool>, ApiError> {
    let mut tools = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        if t.kind.as_deref().is_some_and(|k| k != "function") {
            return Err(invalid(format!("tools[{i}].type must be \"function\""))
                .with_param(format!("tools[{i}].type")));
        }
        tools.push(Tool {
            name: t.function.name,
            description: t.function.description,
            parameters_json: t.function.parameters.map(|p| p.to_string()),
        });
    }
    Ok(tools)
}

/// `stop` as one string or a list, as a list.
pub(crate) fn stop_list(stop: Option<Stop>) -> Vec<String> {
    match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    }
}

/// What the ingress needs beyond the normalized request.
#[derive(Debug)]
pub struct Normalized {
    pub request: ChatRequest,
    pub include_usage: bool,
}

/// Validates the request and converts it to the normalized form.
pub fn normalize(req: ChatCompletionRequest) -> Result<Normalized, ApiError> {
    if req.base_url.is_some() {
        return Err(base_url_override("base_url"));
    }
    not_implemented(&req)?;
    let model = match req.model {
        Some(m) if !m.trim().is_empty() => m,
        _ => return Err(invalid("you must provide a model parameter").with_param("model")),
    };
    let raw_messages = req
        .messages
        .ok_or_else(|| invalid("missing required parameter: 'messages'").with_param("messages"))?;
    if raw_messages.is_empty() {
        return Err(invalid("'messages' must contain at least one message").with_param("messages"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(invalid("only n = 1 is supported").with_param("n"));
    }
    let messages = convert_messages(raw_messages)?;
    let tools = convert_tools(req.tools.unwrap_or_default())?;
    let tool_choice = req.tool_choice.as_ref().map(tool_choice).transpose()?;
    let stop = stop_list(req.stop);
    let fallback_models = fallbacks(&model, req.models)?;
    let response_format = response_format(req.response_format)?;
    let stream = req.stream.unwrap_or(false);
    let metadata = metadata(req.metadata)?;
    let logit_bias = logit_bias(req.logit_bias)?;
    Ok(Normalized {
        include_usage: stream
            && req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        request: ChatRequest {
            model,
            messages,
            params: Params {
                temperature: req.temperature,
                top_p: req.top_p,
                top_k: req.top_k,
                max_tokens: req.max_completion_tokens.or(req.max_tokens),
                stop,
                seed: req.seed,
                presence_penalty: req.presence_penalty,
                frequency_penalty: req.frequency_penalty,
                user: req.user,
                reasoning_effort: req.reasoning_effort,
                parallel_tool_calls: req.parallel_tool_calls,
                service_tier: req.service_tier,
                store: req.store,
                metadata,
                logit_bias,
                prompt_cache_key: req.prompt_cache_key,
                safety_identifier: req.safety_identifier,
                verbosity: req.verbosity,
            },
            tools,
            tool_choice,
            stream,
            fallback_models,
            response_format,
        },
    })
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Other => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

pub fn usage_json(usage: &Usage) -> Value {
    let mut v = json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    });
    if let Some(cached) = usage.cached_input_tokens {
        v["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    v
}

/// Everything a non-streaming answer needs, accumulated from chunks: the same
/// assembly batch results use.
pub use schemas::batch::Assembly as Completion;

/// The `chat.completion` object.
pub fn completion_json(
    c: &Completion,
    id: &str,
    created: i64,
    model: &str,
    provider: Option<&str>,
) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if c.saw_content || c.tool_calls.is_empty() { Value::String(c.content.clone()) } else { Value::Null },
        "refusal": null,
    });
    if !c.tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(
            c.tool_calls
                .iter()
                .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}))
                .collect(),
        );
    }
    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(c.finish_reason.unwrap_or(FinishReason::Stop)),
        }],
    });
    if let Some(u) = &c.usage {
        body["usage"] = usage_json(u);
    }
    if let Some(p) = provider {
        body["provider"] = Value::String(p.to_string());
    }
    if !c.dropped_params.is_empty() {
        body["dropped_params"] = json!(c.dropped_params);
    }
    with_service_tier(&mut body, c.service_tier.as_deref());
    body
}

/// `service_tier`, when the provider reported one.
fn with_service_tier(body: &mut Value, tier: Option<&str>) {
    if let Some(tier) = tier {
        body["service_tier"] = Value::String(tier.to_string());
    }
}

/// One `chat.completion.chunk` with a single choice.
pub fn chunk_json(
    id: &str,
    created: i64,
    model: &str,
    service_tier: Option<&str>,
    delta: Value,
    finish: Option<FinishReason>,
) -> Value {
    let mut body = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish.map(finish_reason),
        }],
    });
    with_service_tier(&mut body, service_tier);
    body
}

/// The final usage chunk OpenAI sends when `stream_options.include_usage` is set.
pub fn usage_chunk_json(
    id: &str,
    created: i64,
    model: &str,
    service_tier: Option<&str>,
    usage: &Usage,
) -> Value {
    let mut body = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_json(usage),
    });
    with_service_tier(&mut body, service_tier);
    body
}

/// The `delta` object of a streamed chunk.
pub fn delta_json(delta: &schemas::Delta) -> Value {
    let mut v = json!({});
    if let Some(role) = delta.role {
        v["role"] = json!(match role {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        });
    }
    if let Some(c) = &delta.content {
        v["content"] = Value::String(c.clone());
    }
    if !delta.tool_calls.is_empty() {
        v["tool_calls"] = Value::Array(
            delta
                .tool_calls
                .iter()
                .map(|d| {
                    let mut call = json!({ "index": d.index });
                    if let Some(id) = &d.id {
                        call["id"] = json!(id);
                        call["type"] = json!("function");
                    }
                    let mut function = json!({});
                    if let Some(name) = &d.name {
                        function["name"] = json!(name);
                    }
                    if let Some(args) = &d.arguments {
                        function["arguments"] = json!(args);
                    }
                    call["function"] = function;
                    call
                })
                .collect(),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::ToolCallDelta;

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse_body(br#"{"model":"openai/x","messages":[{"role":"user","content":5}]}"#)
            .unwrap_err();
        assert_eq!(err.0.kind, ErrorKind::InvalidRequest);
        assert_eq!(err.0.param.as_deref(), Some("messages[0].content"));
        let err = parse_body(br#"{"model": 7}"#).unwrap_err();
        assert_eq!(err.0.param.as_deref(), Some("model"));
        let err = parse_body(b"{not json").unwrap_err();
        assert!(
            err.0.message.contains("not valid JSON"),
            "{}",
            err.0.message
        );
        let err = parse_body(b"[1,2]").unwrap_err();
        assert!(err.0.message.contains("JSON object"), "{}", err.0.message);
    }

    #[test]
    fn normalizes_parts_tools_and_params() {
        let req = parse_body(
            br#"{"model":"openai/gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},
                "max_tokens":5,"max_completion_tokens":9,"stop":"END","temperature":0.2,
                "messages":[{"role":"system","content":"be brief"},
                            {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]},
                            {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                            {"role":"tool","tool_call_id":"c1","content":"42"}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
                "tool_choice":{"type":"function","function":{"name":"f"}}}"#,
        )
        .unwrap();
        let n = normalize(req).unwrap();
        assert!(n.include_usage);
        let r = n.request;
        assert!(r.stream);
        assert_eq!(r.params.max_tokens, Some(9));
        assert_eq!(r.params.stop, ["END"]);
        assert_eq!(r.params.temperature, Some(0.2));
        assert_eq!(r.messages.len(), 4);
        assert_eq!(
            r.messages[1].content[1],
            ContentPart::Image {
                url: "https://x/y.png".into(),
                detail: Some("low".into())
            }
        );
        assert_eq!(r.messages[2].tool_calls[0].name, "f");
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(
            r.tools[0].parameters_json.as_deref(),
            Some(r#"{"type":"object"}"#)
        );
        assert_eq!(
            r.tool_choice,
            Some(ToolChoice::Function { name: "f".into() })
        );
    }

    fn format_of(json: &str) -> Result<Option<ResponseFormat>, ApiError> {
        let body = format!(
            r#"{{"model":"openai/x","messages":[{{"role":"user","content":"x"}}],"response_format":{json}}}"#
        );
        normalize(parse_body(body.as_bytes())?).map(|n| n.request.response_format)
    }

    #[test]
    fn response_formats_normalize_and_bad_ones_name_the_field() {
        assert_eq!(format_of(r#"{"type":"text"}"#).unwrap(), None);
        assert_eq!(
            format_of(r#"{"type":"json_object"}"#).unwrap(),
            Some(ResponseFormat::JsonObject)
        );
        // The schema's text keeps the caller's property order: OpenAI answers in it.
        assert_eq!(
            format_of(
                r#"{"type":"json_schema","json_schema":{"name":"ev-1","description":"an event","strict":true,
                    "schema":{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}}}"#
            )
            .unwrap(),
            Some(ResponseFormat::JsonSchema {
                name: "ev-1".into(),
                description: Some("an event".into()),
                schema_json:
                    r#"{"type":"object","properties":{"zeta":{"type":"string"},"alpha":{"type":"integer"}}}"#
                        .into(),
                strict: Some(true),
            })
        );
        for (json, param) in [
            (r#"{"type":"yaml"}"#, "response_format.type"),
            (r#"{"type":"json_schema"}"#, "response_format.json_schema"),
            (
                r#"{"type":"json_schema","json_schema":{"schema":{}}}"#,
                "response_format.json_schema.name",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"name":"has space","schema":{}}}"#,
                "response_format.json_schema.name",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"name":"n","schema":[1]}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#"{"type":"json_schema","json_schema":{"name":"n"}}"#,
                "response_format.json_schema.schema",
            ),
            (r#"{"json_schema":{}}"#, "response_format"),
        ] {
            let e = format_of(json).unwrap_err();
            assert_eq!(e.0.kind, ErrorKind::InvalidRequest, "{json}");
            assert_eq!(e.0.param.as_deref(), Some(param), "{json}: {}", e.0.message);
        }
    }

    #[test]
    fn unknown_fields_are_400s_naming_them_as_openai_does() {
        let e = parse_body(br#"{"model":"openai/x","messages":[],"max_token":5}"#).unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::InvalidRequest);
        assert_eq!(e.0.param.as_deref(), Some("max_token"), "{}", e.0.message);
        assert_eq!(
            e.0.message,
            "Unrecognized request argument supplied: max_token"
        );
        // Nested objects keep their own (lenient) rules: only the top level is checked.
        let e = parse_body(
            br#"{"model":"openai/x","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true},"extra":1}"#,
        )
        .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("extra"));
    }

    /// The normalized parameters of a request with `extra` fields, checked as the
    /// route checks them.
    fn params_with(extra: &str) -> Result<Params, ApiError> {
        let body = format!(
            r#"{{"model":"openai/x","messages":[{{"role":"user","content":"x"}}],{extra}}}"#
        );
        let params = normalize(parse_body(body.as_bytes())?)?.request.params;
        validate_params(&params)?;
        Ok(params)
    }

    #[test]
    fn reasoning_effort_and_parallel_tool_calls_are_carried_and_checked() {
        let body = br#"{"model":"openai/x","messages":[{"role":"user","content":"x"}],
                        "reasoning_effort":"minimal","parallel_tool_calls":false}"#;
        let n = normalize(parse_body(body).unwrap()).unwrap();
        assert_eq!(
            n.request.params.reasoning_effort.as_deref(),
            Some("minimal")
        );
        assert_eq!(n.request.params.parallel_tool_calls, Some(false));
        let mut params = n.request.params;
        assert!(validate_params(&params).is_ok());
        params.reasoning_effort = Some("extreme".into());
        let e = validate_params(&params).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("reasoning_effort"));
        assert!(e.0.message.contains("minimal"), "{}", e.0.message);
    }

    #[test]
    fn unimplemented_parameters_are_refused() {
        for (extra, param) in [
            (r#""logprobs":true"#, "logprobs"),
            (r#""top_logprobs":3"#, "top_logprobs"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""audio":{"voice":"alloy","format":"wav"}"#, "audio"),
            (
                r#""prediction":{"type":"content","content":"x"}"#,
                "prediction",
            ),
            (r#""web_search_options":{}"#, "web_search_options"),
            (r#""functions":[{"name":"f"}]"#, "functions"),
            (r#""function_call":"auto""#, "function_call"),
        ] {
            let e = params_with(extra).unwrap_err();
            assert_eq!(e.0.param.as_deref(), Some(param), "{extra}");
            assert!(e.0.message.contains("not supported"), "{}", e.0.message);
        }
        // Their defaults (and nulls) are accepted.
        let p = params_with(
            r#""logprobs":false,"modalities":["text"],"audio":null,"reasoning_effort":null"#,
        )
        .unwrap();
        assert_eq!(p, Params::default());
    }

    #[test]
    fn openai_options_are_carried_and_checked() {
        let p = params_with(
            r#""verbosity":"high","logit_bias":{"50256":-100,"13":5},
               "service_tier":"flex","store":true,"metadata":{"team":"a","run":"7"},
               "prompt_cache_key":"p-1","safety_identifier":"h-42""#,
        )
        .unwrap();
        assert_eq!(p.verbosity.as_deref(), Some("high"));
        assert_eq!(
            p.logit_bias.into_iter().collect::<Vec<_>>(),
            [("13".to_string(), 5), ("50256".to_string(), -100)]
        );
        assert_eq!(p.service_tier.as_deref(), Some("flex"));
        assert_eq!(p.store, Some(true));
        assert_eq!(
            p.metadata.into_iter().collect::<Vec<_>>(),
            [("run".into(), "7".into()), ("team".into(), "a".into())]
        );
        assert_eq!(p.prompt_cache_key.as_deref(), Some("p-1"));
        assert_eq!(p.safety_identifier.as_deref(), Some("h-42"));

        let long_key = "k".repeat(65);
        let long_value = "v".repeat(513);
        let many: Vec<String> = (0..17).map(|i| format!(r#""k{i}":"v""#)).collect();
        for (extra, says) in [
            (
                r#""service_tier":"fast""#.to_string(),
                "one of auto, default, flex",
            ),
            (r#""verbosity":"loud""#.into(), "one of low, medium, high"),
            (r#""metadata":{"k":1}"#.into(), "'k' is a number"),
            (
                format!(r#""metadata":{{{}}}"#, many.join(",")),
                "at most 16 pairs, got 17",
            ),
            (
                format!(r#""metadata":{{"{long_key}":"v"}}"#),
                "keys are at most 64",
            ),
            (
                format!(r#""metadata":{{"k":"{long_value}"}}"#),
                "values are at most 512",
            ),
            (
                r#""logit_bias":{"50256":0.5}"#.into(),
                "to integers; '50256' has 0.5",
            ),
            (
                r#""logit_bias":{"50256":101}"#.into(),
                "between -100 and 100",
            ),
            (r#""logit_bias":{"the":1}"#.into(), r#"got "the": 1"#),
        ] {
            let e = params_with(&extra).unwrap_err();
            let param = extra.split('"').nth(1).unwrap();
            assert_eq!(e.0.param.as_deref(), Some(param), "{extra}");
            assert!(e.0.message.contains(says), "{extra}: {}", e.0.message);
        }
    }

    #[test]
    fn rejects_missing_model_and_messages() {
        let e = normalize(parse_body(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap())
            .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("model"));
        let e = normalize(parse_body(br#"{"model":"openai/x"}"#).unwrap()).unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("messages"));
        let e = normalize(
            parse_body(br#"{"model":"openai/x","messages":[{"role":"robot","content":"x"}]}"#)
                .unwrap(),
        )
        .unwrap_err();
        assert_eq!(e.0.param.as_deref(), Some("messages[0].role"));
    }

    #[test]
    fn completion_assembles_tool_calls_by_index() {
        let mut c = Completion::default();
        // Fragments of two calls, interleaved: assembled by index, in order.
        schemas::batch::add_tool_deltas(
            &mut c.tool_calls,
            &[
                ToolCallDelta {
                    index: 0,
                    id: Some("a".into()),
                    name: Some("f".into()),
                    arguments: Some("{\"x\"".into()),
                },
                ToolCallDelta {
                    index: 1,
                    id: Some("b".into()),
                    name: Some("g".into()),
                    arguments: Some("{}".into()),
                },
                ToolCallDelta {
                    index: 0,
                    id: None,
                    name: None,
                    arguments: Some(":1}".into()),
                },
            ],
        );
        c.finish_reason = Some(FinishReason::ToolCalls);
        let v = completion_json(&c, "id", 1, "m", None);
        let calls = &v["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls[0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(calls[1]["id"], "b");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }
}
