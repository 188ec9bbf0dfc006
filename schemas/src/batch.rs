//! Batch jobs: requests published straight to NATS, results kept in RESULTS.
//!
//! The contract for publishers in any language is `schemas/BATCH.md`; the JSON Schema
//! of both messages is in `schemas/json/` (`batch_request`, `batch_result`).
//!
//! - A job of account `acct` publishes each [`BatchRequest`] to `batch.<acct>.<job>`
//!   (stream BATCH) with JetStream (awaiting the PubAck) and the header
//!   `Nats-Msg-Id: <request_id>`, so a re-published request is stored once.
//! - The batch router checks it, seals it and queues it for the workers
//!   (`breq.closed.<provider>`, `breq.open.<model>.<acct>`; stream BATCHWORK). Workers take
//!   batch work only with idle capacity: interactive requests go first.
//! - Exactly one [`BatchResult`] per request id lands on `res.<acct>.<job>.<request_id>`
//!   (stream RESULTS, deduplicated by request id): the answer, or an error with the reason.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chat::{ChatRequest, ContentPart, Message, Role, ToolCall};
use crate::chunk::{FinishReason, ReplyChunk, ToolCallDelta, Usage};
use crate::error::ErrorBody;
use crate::task::{TaskInput, TaskOutput};

/// Longest job id accepted (it is a subject token).
pub const MAX_JOB_LEN: usize = 64;

/// A batch request, as a job publishes it to `batch.<account>.<job>`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchRequest {
    /// Schema version the publisher wrote (1).
    pub schema_version: u16,
    /// Any UUID, unique within the job (a UUIDv5 of the job and the row makes re-runs
    /// idempotent); also the `Nats-Msg-Id` header and the last token of the result's
    /// subject.
    pub request_id: Uuid,
    /// The account id; must be the account whose subject (`batch.<account>.…`) it is
    /// published to.
    pub account: String,
    /// The job deadline: work not started by then is not run, and its result says so.
    pub deadline: DateTime<Utc>,
    /// When the publisher made the request (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// The request: `request.model` names the model; chat uses `request.messages`.
    /// `request.stream` is ignored (a result is always whole).
    pub request: ChatRequest,
    /// A task other than chat for an open model (embeddings, zero-shot classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInput>,
    /// The caller's key for a closed model's provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_key: Option<String>,
    /// Keys for the providers of `request.fallback_models`, by provider token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provider_keys: BTreeMap<String, String>,
}

impl std::fmt::Debug for BatchRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Prompts and keys never reach a log, even by accident.
        f.debug_struct("BatchRequest")
            .field("request_id", &self.request_id)
            .field("account", &self.account)
            .field("model", &self.request.model)
            .field("task", &self.task.as_ref().map(TaskInput::name))
            .finish_non_exhaustive()
    }
}

/// The one result of a batch request, on `res.<account>.<job>.<request_id>`.
///
/// `error` absent means success: `message` holds a chat answer, `output` a task's.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BatchResult {
    pub schema_version: u16,
    pub request_id: Uuid,
    pub account: String,
    pub job: String,
    /// The model the request named.
    pub model: String,
    /// Who served it (`openai`, `anthropic`, `google`, `switchyard`), when it ran.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model that served it (a fallback, or the provider's name for it).
    #[serde(default)]
    pub served_model: Option<String>,
    /// The assistant's answer to a chat request: its text and tool calls.
    #[serde(default)]
    pub message: Option<Message>,
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// The result of a task request (embeddings, classification).
    #[serde(default)]
    pub output: Option<TaskOutput>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Why the request has no answer.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// Request parameters the provider has no equivalent for, left out of the call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_params: Vec<String>,
    pub finished_at: DateTime<Utc>,
}

impl std::fmt::Debug for BatchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Outputs are never logged.
        f.debug_struct("BatchResult")
            .field("request_id", &self.request_id)
            .field("job", &self.job)
            .field("model", &self.model)
            .field("provider", &self.provider)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl BatchResult {
    /// A result that reports `error` (nothing ran, or it failed).
    pub fn failure(
        request_id: Uuid,
        account: &str,
        job: &str,
        model: &str,
        error: ErrorBody,
    ) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            request_id,
            account: account.to_string(),
            job: job.to_string(),
            model: model.to_string(),
            provider: None,
            served_model: None,
            message: None,
            finish_reason: None,
            output: None,
            usage: None,
            error: Some(error),
            dropped_params: Vec::new(),
            finished_at: Utc::now(),
        }
    }
}

/// A job id that cannot be a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "job id {0:?} is not allowed: 1 to {MAX_JOB_LEN} letters, digits, '-' or '_' (it is a subject token)"
)]
pub struct JobIdError(pub String);

/// Checks a job id: 1–[`MAX_JOB_LEN`] ASCII letters, digits, `-`, `_`.
pub fn check_job(job: &str) -> Result<(), JobIdError> {
    let ok = !job.is_empty()
        && job.len() <= MAX_JOB_LEN
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(JobIdError(job.chars().take(MAX_JOB_LEN + 1).collect()))
    }
}

/// A reply assembled from its chunks: what a whole (non-streaming) answer holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assembly {
    pub content: String,
    /// Whether any chunk carried content (an answer of only tool calls has none).
    pub saw_content: bool,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    pub output: Option<TaskOutput>,
    pub error: Option<ErrorBody>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub dropped_params: Vec<String>,
    pub service_tier: Option<String>,
}

/// Adds tool-call fragments to `calls`: fragments with the same index build one call
/// (its id and name as first given, its arguments concatenated in order).
pub fn add_tool_deltas(calls: &mut Vec<ToolCall>, deltas: &[ToolCallDelta]) {
    for d in deltas {
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
            call.name.push_str(name);
        }
        if let Some(args) = &d.arguments {
            call.arguments.push_str(args);
        }
    }
}

impl Assembly {
    /// Adds `chunk`. A chunk with seq 0 starts the answer over (a redelivered request
    /// is run again from the start).
    pub fn add(&mut self, chunk: &ReplyChunk) {
        if chunk.seq == 0 {
            *self = Self::default();
            self.provider.clone_from(&chunk.provider);
            self.model.clone_from(&chunk.model);
            self.dropped_params.clone_from(&chunk.dropped_params);
            self.service_tier.clone_from(&chunk.service_tier);
        }
        if let Some(delta) = &chunk.delta {
            if let Some(c) = &delta.content {
                self.content.push_str(c);
                self.saw_content = true;
            }
            add_tool_deltas(&mut self.tool_calls, &delta.tool_calls);
        }
        if chunk.finish_reason.is_some() {
            self.finish_reason = chunk.finish_reason;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        if chunk.output.is_some() {
            self.output.clone_from(&chunk.output);
        }
        if chunk.error.is_some() {
            self.error.clone_from(&chunk.error);
        }
    }

    /// The assistant message of a chat answer; `None` for a task or a failure.
    pub fn message(&self) -> Option<Message> {
        if self.error.is_some() || self.output.is_some() {
            return None;
        }
        let content = if self.saw_content || self.tool_calls.is_empty() {
            vec![ContentPart::Text {
                text: self.content.clone(),
            }]
        } else {
            Vec::new()
        };
        Some(Message {
            tool_calls: self.tool_calls.clone(),
            ..Message::with_parts(Role::Assistant, content)
        })
    }

    /// The batch result this assembly makes for `request_id`.
    pub fn into_result(
        self,
        request_id: Uuid,
        account: &str,
        job: &str,
        model: &str,
    ) -> BatchResult {
        let message = self.message();
        BatchResult {
            schema_version: crate::SCHEMA_VERSION,
            request_id,
            account: account.to_string(),
            job: job.to_string(),
            model: model.to_string(),
            provider: self.provider,
            served_model: self.model,
            message,
            finish_reason: if self.error.is_some() {
                None
            } else {
                self.finish_reason
            },
            output: self.output,
            usage: self.usage,
            error: self.error,
            dropped_params: self.dropped_params,
            finished_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Delta;
    use crate::error::ErrorKind;

    fn chunk(seq: u32) -> ReplyChunk {
        ReplyChunk::new(Uuid::nil(), seq)
    }

    #[test]
    fn job_ids_are_single_safe_tokens() {
        assert!(check_job("nightly-2026_11").is_ok());
        for bad in [
            "",
            "a.b",
            "a*",
            "a>",
            "a b",
            "ü",
            &"x".repeat(MAX_JOB_LEN + 1),
        ] {
            assert!(check_job(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_job(&"x".repeat(MAX_JOB_LEN)).is_ok());
    }

    #[test]
    fn chunks_assemble_into_one_answer_with_tool_calls() {
        let mut a = Assembly::default();
        let mut first = chunk(0);
        first.provider = Some("anthropic".into());
        first.model = Some("claude-x".into());
        first.dropped_params = vec!["seed".into()];
        first.delta = Some(Delta {
            content: Some("Hel".into()),
            ..Delta::default()
        });
        a.add(&first);
        let mut second = chunk(1);
        second.delta = Some(Delta {
            content: Some("lo".into()),
            tool_calls: vec![
                ToolCallDelta {
                    index: 0,
                    id: Some("call_1".into()),
                    name: Some("get_weather".into()),
                    arguments: Some("{\"city\":".into()),
                },
                ToolCallDelta {
                    index: 0,
                    arguments: Some("\"Paris\"}".into()),
                    ..ToolCallDelta::default()
                },
            ],
            ..Delta::default()
        });
        a.add(&second);
        let mut last = chunk(2);
        last.finish_reason = Some(FinishReason::ToolCalls);
        last.usage = Some(Usage {
            input_tokens: 7,
            output_tokens: 3,
            cached_input_tokens: None,
        });
        last.last = true;
        a.add(&last);
        let r = a.into_result(Uuid::nil(), "acme", "job1", "anthropic/claude-x");
        let m = r.message.unwrap();
        assert_eq!(m.joined_text(), "Hello");
        assert_eq!(m.role, Role::Assistant);
        assert_eq!(m.tool_calls.len(), 1);
        assert_eq!(m.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
        assert_eq!(m.tool_calls[0].name, "get_weather");
        assert_eq!(r.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(r.usage.unwrap().output_tokens, 3);
        assert_eq!(r.provider.as_deref(), Some("anthropic"));
        assert_eq!(r.served_model.as_deref(), Some("claude-x"));
        assert_eq!(r.dropped_params, vec!["seed".to_string()]);
        assert!(r.error.is_none());
    }

    #[test]
    fn a_redelivery_starts_over_and_failures_carry_no_message() {
        let mut a = Assembly::default();
        let mut c = chunk(0);
        c.delta = Some(Delta {
            content: Some("half an answ".into()),
            ..Delta::default()
        });
        a.add(&c);
        let mut again = chunk(0);
        again.error = Some(ErrorBody::new(ErrorKind::Upstream, "provider down"));
        again.last = true;
        a.add(&again);
        assert_eq!(a.content, "");
        let r = a.into_result(Uuid::nil(), "acme", "j", "openai/x");
        assert!(r.message.is_none());
        assert_eq!(r.error.unwrap().kind, ErrorKind::Upstream);
    }

    #[test]
    fn requests_and_results_round_trip_and_never_show_prompts() {
        let req = BatchRequest {
            schema_version: 1,
            request_id: Uuid::now_v7(),
            account: "acme".into(),
            deadline: Utc::now(),
            created_at: None,
            request: ChatRequest {
                model: "openai/gpt-4o-mini".into(),
                messages: vec![Message::text(Role::User, "secret prompt")],
                params: Default::default(),
                tools: vec![],
                tool_choice: None,
                stream: false,
                fallback_models: vec![],
                response_format: None,
            },
            task: None,
            provider_key: Some("sk-secret".into()),
            provider_keys: BTreeMap::new(),
        };
        let back: BatchRequest = crate::decode(&crate::encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let shown = format!("{req:?}");
        assert!(!shown.contains("secret"), "{shown}");
        let res = BatchResult::failure(
            req.request_id,
            "acme",
            "j",
            "openai/gpt-4o-mini",
            ErrorBody::new(ErrorKind::NotFound, "no such model"),
        );
        let back: BatchResult = crate::decode(&crate::encode(&res).unwrap()).unwrap();
        assert_eq!(back, res);
    }
}
