//! Anthropic Messages wire types: the part of the request the mock reads. Responses
//! and events are written with `serde_json::json!` in Anthropic's field order.

use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    pub model: String,
    pub messages: Vec<InputMessage>,
    /// Required by Anthropic; `Option` so its absence gets Anthropic's own 400.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub system: Option<Content>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<IgnoredAny>>,
    /// Structured outputs: `{"format": {"type": "json_schema", "schema": {...}}}`.
    #[serde(default)]
    pub output_config: Option<OutputConfig>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OutputConfig {
    #[serde(default)]
    pub format: Option<OutputFormat>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OutputFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InputMessage {
    pub role: String,
    pub content: Content,
}

/// `content` (and `system`) is either a plain string or an array of typed blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    /// A `tool_use` block's id.
    #[serde(default)]
    pub id: Option<String>,
    /// The `tool_use` a `tool_result` block answers.
    #[serde(default)]
    pub tool_use_id: Option<String>,
    /// A `tool_result` block's content: a string or an array of text blocks.
    #[serde(default)]
    pub content: Option<serde_json::Value>,
}

impl Block {
    /// The text of a `tool_result` block's content.
    pub(crate) fn result_text(&self) -> String {
        match &self.content {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.get("text").and_then(serde_json::Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

impl Content {
    /// The text blocks, in order (images, tool uses and tool results are skipped).
    pub(crate) fn texts(&self) -> impl Iterator<Item = &str> {
        let (single, blocks) = match self {
            Content::Text(text) => (Some(text.as_str()), &[][..]),
            Content::Blocks(blocks) => (None, blocks.as_slice()),
        };
        single.into_iter().chain(
            blocks
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref()),
        )
    }

    pub(crate) fn blocks(&self) -> &[Block] {
        match self {
            Content::Text(_) => &[],
            Content::Blocks(blocks) => blocks,
        }
    }
}
