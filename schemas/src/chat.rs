//! The normalized chat request: one shape for every provider and open model.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A chat request as Switchyard understands it, whatever API it came in through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChatRequest {
    /// The full model id the caller asked for, e.g. `openai/gpt-4o-mini`.
    pub model: String,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Sampling and length parameters.
    #[serde(default)]
    pub params: Params,
    /// Functions the model may call.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// How the model may use `tools`; provider default when absent.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the caller reads the reply as a stream of chunks.
    #[serde(default)]
    pub stream: bool,
    /// Models to try, in order, when `model` fails before any byte reached the caller.
    #[serde(default)]
    pub fallback_models: Vec<String>,
    /// The shape the answer's text must have; plain text when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub role: Role,
    /// Text and image parts, in order. Empty for an assistant message that only calls tools.
    #[serde(default)]
    pub content: Vec<ContentPart>,
    /// Optional participant name.
    #[serde(default)]
    pub name: Option<String>,
    /// Tool calls the assistant made (role `assistant`).
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// The call this message answers (role `tool`).
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of `role` with these content parts (no name, tool calls or call id).
    pub fn with_parts(role: Role, content: Vec<ContentPart>) -> Self {
        Self {
            role,
            content,
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    /// A message holding a single text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self::with_parts(role, vec![ContentPart::Text { text: text.into() }])
    }

    /// The text parts joined with newlines (images skipped).
    pub fn joined_text(&self) -> String {
        let mut out = String::new();
        for part in &self.content {
            if let ContentPart::Text { text } = part {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(text);
            }
        }
        out
    }
}

/// A part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Plain text.
    Text { text: String },
    /// An image by URL; a `data:image/...;base64,...` URL carries the bytes inline.
    Image {
        url: String,
        /// Provider hint such as `low`, `high`, `auto`.
        #[serde(default)]
        detail: Option<String>,
    },
}

/// Sampling and length parameters. Absent means "provider default".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Params {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Sample only from the `top_k` most likely tokens (open models; Anthropic and
    /// Gemini take it too).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Upper bound on generated tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sequences that end generation.
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// End-user id for the provider's abuse monitoring.
    #[serde(default)]
    pub user: Option<String>,
    /// How hard a reasoning model thinks (OpenAI's `reasoning_effort`: `none`,
    /// `minimal`, `low`, `medium`, `high`, `xhigh`); OpenAI only, reported dropped elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Whether the model may call several tools in one turn (OpenAI's
    /// `parallel_tool_calls`); absent means the provider's default (yes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    // OpenAI's request options below: forwarded to OpenAI as given; elsewhere mapped
    // where the provider has an equivalent, otherwise reported dropped when set
    // ([`Params::openai_options`]).
    /// Processing tier: `auto`, `default`, `flex`, `scale`, `priority`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
    /// Whether OpenAI keeps the completion (its `store`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<bool>,
    /// Up to 16 string pairs attached to the completion (OpenAI's `metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Token id (in the model's tokenizer, as a decimal string) → bias in −100..=100.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<String, i32>,
    /// Groups requests that share a long prefix, for the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
    /// A stable (hashed) end-user id for the provider's abuse detection; Anthropic
    /// takes it as `metadata.user_id`, ahead of `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_identifier: Option<String>,
    /// How long the answer should be: `low`, `medium`, `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<String>,
}

impl Params {
    /// OpenAI's own request options, each with whether it is set to something a
    /// provider without it would ignore (a tier other than `auto`/`default`, `store:
    /// true`, a non-empty map, any text): what a worker lists as dropped when its
    /// provider has no equivalent.
    pub fn openai_options(&self) -> [(&'static str, bool); 7] {
        [
            (
                "service_tier",
                self.service_tier
                    .as_deref()
                    .is_some_and(|t| t != "auto" && t != "default"),
            ),
            ("store", self.store == Some(true)),
            ("metadata", !self.metadata.is_empty()),
            ("logit_bias", !self.logit_bias.is_empty()),
            ("prompt_cache_key", self.prompt_cache_key.is_some()),
            ("safety_identifier", self.safety_identifier.is_some()),
            ("verbosity", self.verbosity.is_some()),
        ]
    }
}

/// The names whose flag is set, in order: how every worker lists the parameters it
/// dropped (`ReplyChunk::dropped_params`).
pub fn names_set<'a>(flags: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<String> {
    flags
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tool {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the arguments, as a JSON text (kept as text so the MessagePack
    /// form stays language-neutral and byte-exact).
    #[serde(default)]
    pub parameters_json: Option<String>,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Arguments as a JSON text, exactly as the model wrote them.
    pub arguments: String,
}

/// The shape the answer's text must have (OpenAI's `response_format`). Providers with
/// an equivalent get theirs; a worker that cannot honour it fails the request as
/// invalid rather than answer in free text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Any valid JSON object ("JSON mode").
    JsonObject,
    /// JSON that matches a schema ("structured outputs").
    JsonSchema {
        /// The schema's name (OpenAI requires one; others ignore it).
        name: String,
        #[serde(default)]
        description: Option<String>,
        /// The JSON Schema, as a JSON text (like [`Tool::parameters_json`]).
        schema_json: String,
        /// Whether the provider must follow the schema exactly (OpenAI's `strict`).
        #[serde(default)]
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    /// The wire name of this format (`json_object`, `json_schema`).
    pub fn kind(&self) -> &'static str {
        match self {
            ResponseFormat::JsonObject => "json_object",
            ResponseFormat::JsonSchema { .. } => "json_schema",
        }
    }

    /// Why this format cannot be honoured by `provider` (`None`: our own open-model
    /// workers), or `None` when it can. Anthropic takes a schema but has no schema-less
    /// JSON mode; open models generate free text only.
    pub fn refusal(&self, provider: Option<crate::subjects::Provider>) -> Option<String> {
        use crate::subjects::Provider;
        match (provider, self) {
            (None, _) => Some(format!(
                "response_format {} is not supported by open models: they answer in free text",
                self.kind()
            )),
            (Some(Provider::Anthropic), ResponseFormat::JsonObject) => Some(
                "response_format json_object is not supported by anthropic (it has no JSON mode without a schema): send a json_schema"
                    .into(),
            ),
            (Some(_), _) => None,
        }
    }
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// Must call this function.
    Function {
        name: String,
    },
}
