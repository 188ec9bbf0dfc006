//! OpenAI chat completions wire types: the part of the request the mock reads, and the
//! response, chunk and error bodies it writes, with OpenAI's field names and order.
//!
//! Response types borrow everything so a reply is serialised without copying text.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

// ---- request (only what the mock needs; everything else is ignored) ----

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub tools: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub verbosity: Option<String>,
    // Typed as OpenAI types them, so a wrongly shaped forward is a 400 here.
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<u32, i32>>,
}

impl ChatRequest {
    /// The tier OpenAI reports having used: the one asked for, `default` for `auto`
    /// or none (a project without Scale Tier).
    pub(crate) fn served_tier(&self) -> &'static str {
        match self.service_tier.as_deref() {
            Some("flex") => "flex",
            Some("scale") => "scale",
            Some("priority") => "priority",
            _ => "default",
        }
    }

    /// OpenAI's 400 for parameters it refuses in this combination, with the parameter.
    pub(crate) fn problem(&self) -> Option<(String, &'static str)> {
        if self.parallel_tool_calls.is_some() && self.tools.as_ref().is_none_or(Vec::is_empty) {
            return Some((
                "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' are specified.".into(),
                "parallel_tool_calls",
            ));
        }
        let enums: [(&'static str, &Option<String>, &[&str]); 3] = [
            (
                "reasoning_effort",
                &self.reasoning_effort,
                &["none", "minimal", "low", "medium", "high", "xhigh"],
            ),
            (
                "service_tier",
                &self.service_tier,
                &["auto", "default", "flex", "scale", "priority"],
            ),
            ("verbosity", &self.verbosity, &["low", "medium", "high"]),
        ];
        for (param, value, supported) in enums {
            if let Some(value) = value
                && !supported.contains(&value.as_str())
            {
                let mut quoted: Vec<String> = supported.iter().map(|v| format!("'{v}'")).collect();
                let last = quoted.pop().unwrap_or_default();
                return Some((
                    format!(
                        "Invalid value: '{value}'. Supported values are: {}, and {last}.",
                        quoted.join(", ")
                    ),
                    param,
                ));
            }
        }
        if let Some(metadata) = &self.metadata
            && metadata.len() > 16
        {
            return Some((
                format!(
                    "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with {} properties instead.",
                    metadata.len()
                ),
                "metadata",
            ));
        }
        if let Some((token, bias)) = self
            .logit_bias
            .iter()
            .flatten()
            .find(|(_, b)| !(-100..=100).contains(*b))
        {
            return Some((
                format!(
                    "Invalid 'logit_bias': the bias of token {token} is {bias}, outside -100 to 100."
                ),
                "logit_bias",
            ));
        }

        self.response_format
            .as_ref()
            .and_then(ResponseFormat::problem)
    }
}

/// `response_format`: `text`, `json_object` or `json_schema` with its `json_schema`.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaSpec>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JsonSchemaSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

impl ResponseFormat {
    /// OpenAI's 400 message for a format it would refuse, with the parameter at fault.
    pub(crate) fn problem(&self) -> Option<(String, &'static str)> {
        match self.kind.as_str() {
            "text" | "json_object" => None,
            "json_schema" => match &self.json_schema {
                None => Some((
                    "Missing required parameter: 'response_format.json_schema'.".into(),
                    "response_format.json_schema",
                )),
                Some(spec) if spec.name.as_deref().is_none_or(str::is_empty) => Some((
                    "Missing required parameter: 'response_format.json_schema.name'.".into(),
                    "response_format.json_schema.name",
                )),
                Some(_) => None,
            },
            other => Some((
                format!(
                    "Invalid value: '{other}'. Supported values are: 'text', 'json_object', and 'json_schema'."
                ),
                "response_format.type",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `content` is either a plain string or an array of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text parts, in order (non-text parts such as images are skipped).
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        let (single, parts) = match self {
            Content::Text(text) => (Some(text.as_str()), &[][..]),
            Content::Parts(parts) => (None, parts.as_slice()),
        };
        single.into_iter().chain(parts.iter().filter_map(|part| {
            match (part.kind.as_deref(), part.text.as_deref()) {
                (Some("text") | None, Some(text)) => Some(text),
                _ => None,
            }
        }))
    }
}

// ---- responses ----

pub(crate) const SYSTEM_FINGERPRINT: &str = "fp_mock0001";

/// `object: "chat.completion"`.
#[derive(Serialize)]
pub(crate) struct Completion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [CompletionChoice<'a>; 1],
    pub usage: Usage,
    pub service_tier: &'static str,
    pub system_fingerprint: &'static str,
}

#[derive(Serialize)]
pub(crate) struct CompletionChoice<'a> {
    pub index: u32,
    pub message: ResponseMessage<'a>,
    /// Always `null`.
    pub logprobs: (),
    pub finish_reason: &'static str,
}

#[derive(Serialize)]
pub(crate) struct ResponseMessage<'a> {
    pub role: &'static str,
    /// `null` when the reply is a tool call.
    pub content: Option<&'a str>,
    /// Always `null`.
    pub refusal: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCall<'a>; 1]>,
    /// Always `[]`.
    pub annotations: [(); 0],
}

#[derive(Serialize)]
pub(crate) struct ToolCall<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionCall<'a> {
    pub name: &'a str,
    pub arguments: &'a str,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

impl Usage {
    pub(crate) fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
            completion_tokens_details: CompletionTokensDetails::default(),
        }
    }
}

#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct PromptTokensDetails {
    pub cached_tokens: u64,
    pub audio_tokens: u64,
}

#[derive(Serialize, Clone, Copy, Default)]
pub(crate) struct CompletionTokensDetails {
    pub reasoning_tokens: u64,
    pub audio_tokens: u64,
    pub accepted_prediction_tokens: u64,
    pub rejected_prediction_tokens: u64,
}

/// `object: "chat.completion.chunk"`.
#[derive(Serialize)]
pub(crate) struct Chunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub service_tier: &'static str,
    pub system_fingerprint: &'static str,
    pub choices: &'a [ChunkChoice<'a>],
    /// Absent without `include_usage`; with it `null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
pub(crate) struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    /// Always `null`.
    pub logprobs: (),
    pub finish_reason: Option<&'static str>,
}

/// Every field is optional on the wire: absent means "no change".
#[derive(Serialize, Default)]
pub(crate) struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// `Some(None)` writes `"content": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Option<&'a str>>,
    /// `Some(())` writes `"refusal": null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
pub(crate) struct ToolCallDelta<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta<'a>,
}

#[derive(Serialize)]
pub(crate) struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

/// `{"error": {...}}`, OpenAI's error envelope.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}
