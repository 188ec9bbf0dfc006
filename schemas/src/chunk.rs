//! The streamed reply: workers send a request's answer as numbered chunks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chat::Role;
use crate::error::ErrorBody;

/// One piece of a reply. `seq` starts at 0 and grows by one; the chunk with
/// `last: true` ends the reply (it may also carry content, usage or an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReplyChunk {
    pub request_id: Uuid,
    pub seq: u32,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Set when the request failed; the chunk is then the last one.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// This chunk ends the reply.
    #[serde(default)]
    pub last: bool,
    /// Who served the request (`openai`, `anthropic`, `google`, `switchyard`); set on seq 0.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model that served it, as the provider named it; set on seq 0 when known.
    #[serde(default)]
    pub model: Option<String>,
    /// Request parameters the provider has no equivalent for, left out of the call
    /// (e.g. `seed` for Anthropic); set on seq 0, so callers learn of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_params: Vec<String>,
    /// The result of a non-chat task (embeddings, classification); in one chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::task::TaskOutput>,
    /// The processing tier the provider reports having used, in OpenAI's names
    /// (`default`, `flex`, `scale`, `priority`); set on seq 0 when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<String>,
}

impl ReplyChunk {
    /// An empty chunk; fill in what it carries.
    pub fn new(request_id: Uuid, seq: u32) -> Self {
        Self {
            request_id,
            seq,
            delta: None,
            finish_reason: None,
            usage: None,
            error: None,
            last: false,
            provider: None,
            model: None,
            dropped_params: Vec::new(),
            output: None,
            service_tier: None,
        }
    }

    /// A final chunk reporting `error`.
    pub fn failure(request_id: Uuid, seq: u32, error: ErrorBody) -> Self {
        Self {
            error: Some(error),
            last: true,
            ..Self::new(request_id, seq)
        }
    }
}

/// New output since the previous chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delta {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub content: Option<String>,
    /// Tool-call fragments; fragments with the same `index` belong to one call.
    #[serde(default)]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A fragment of a tool call; `arguments` pieces are concatenated in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Natural end or a stop sequence.
    Stop,
    /// The token limit was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Output withheld by a safety filter.
    ContentFilter,
    /// A reason a newer peer knows and this build does not.
    #[serde(other)]
    Other,
}

/// Token counts for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache, when reported.
    #[serde(default)]
    pub cached_input_tokens: Option<u64>,
}
