//! Switchyard's own route: `POST /models/v2/{model id}`, one request shape for every
//! model. The model id is the rest of the path and may contain `/`
//! (`/models/v2/anthropic/claude-sonnet-4-5`); it is checked like any model id, so
//! `*`, `>`, spaces and the like are a 400, and an open-model id the catalog does not
//! list is a 404. Authentication (`Authorization: Bearer <key>` or `Authorization: Key
//! <key>`), the `provider-key` header (closed models only; never forwarded with an open
//! one) and the pipeline behind it (route, seal, publish, reply chunks) are those of
//! `/v1/chat/completions`.
//!
//! Request body, a JSON object:
//!
//! ```json
//! {"messages": [{"role": "user", "content": "hi"}],   // OpenAI-style messages, or
//!  "text": "hi",                                      // one user message: exactly one of the two
//!  "inputs": "a text" | ["text", …],                  // texts to embed (feature-extraction)
//!  "params": {"temperature", "top_p", "top_k", "max_tokens", "stop", "seed",
//!             "presence_penalty", "frequency_penalty", "user",    // chat
//!             "candidate_labels", "multi_label"},     // zero-shot classification
//!                                                     // all optional; others are a 400
//!  "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],
//!  "tool_choice": "auto" | "none" | "required" | {"type": "function", "function": {"name"}},
//!  "models": ["<fallback model id>", …],
//!  "stream": false}
//! ```
//!
//! What the request asks for follows from the body and the model (the catalog says what
//! each open model serves):
//!
//! 1. `params.candidate_labels` (a non-empty list of distinct, non-empty labels;
//!    `params.multi_label` optional) → zero-shot classification of `text`, if the model
//!    serves `zero-shot-classification`;
//! 2. else `inputs`, or a model whose task is `feature-extraction` → embeddings of
//!    `inputs` (a string or a list of up to 2048) or of `text`;
//! 3. else chat, as for closed models.
//!
//! A field or parameter the chosen task does not take is a 400 naming it
//! (`params.candidate_labels` on a chat model, `messages` or `params.temperature` for
//! embeddings, `stream: true` for a task that answers in one piece, …), and so is a
//! task the model does not serve. A `model` field in the body is a 400 (the path names
//! the model). Every 4xx names the field at fault in `error.param`.
//!
//! Chat answer (`stream` false or absent), 200:
//!
//! ```json
//! {"output": {"role": "assistant", "content": "…", "tool_calls": [{"id", "type": "function",
//!             "function": {"name", "arguments"}}]},   // tool_calls only when the model called tools
//!  "finish_reason": "stop" | "length" | "tool_calls" | "content_filter",
//!  "provider": "openai", "model": "<model id>", "served_model": "<upstream name>" | null,
//!  "usage": {"input_tokens", "output_tokens", "cached_input_tokens"?} | null,
//!  "error": null, "request_id": "<uuid>",
//!  "dropped_params"?: ["seed"]}   // only when the provider has no equivalent for a param
//! ```
//!
//! Task answers, 200, the same fields around another `output`:
//!
//! ```json
//! {"output": {"embeddings": [[0.01, …], …]},                        // one per input, in order
//!  "output": {"labels": ["sport", …], "scores": [0.93, …]},          // best first
//!  "provider": "switchyard", "model": "<model id>", "served_model": "<model id>" | null,
//!  "usage": {"input_tokens", "output_tokens": 0}, "error": null, "request_id": "<uuid>"}
//! ```
//!
//! Both forms carry the headers of every route: `x-request-id`, `x-switchyard-provider`,
//! `x-switchyard-served-model` and `x-switchyard-dropped-params` when there are any.
//!
//! Errors answer the status of their kind (400, 401, 404, 413, 429, 502, 503, 504, …),
//! with `Retry-After` (and `retry-after-ms`) when the caller should wait:
//!
//! ```json
//! {"error": {"kind": "rate_limited", "message": "…", "param": null, "retry_after_ms"?: 2500},
//!  "output": null, "provider": "openai" | "switchyard" | null, "usage": null}
//! ```
//!
//! Streaming chat (`"stream": true`) answers `text/event-stream` with named events,
//! once the first chunk arrived (so an error before any output is still a real status):
//!
//! ```text
//! event: chunk
//! data: {"delta": {"content"?: "…", "tool_calls"?: [{"index", "id"?, "type"?, "function": {"name"?, "arguments"?}}]}, "finish_reason"?: "stop"}
//!
//! event: done
//! data: {"usage": {…} | null, "provider": "openai", "finish_reason": "stop"}
//! ```
//!
//! `chunk` repeats zero or more times; exactly one `done` or one
//! `error` (`data: {"error": {"kind", "message", "param", "retry_after_ms"?}}`) ends the
//! stream. Keep-alive comments (`:`) may come in between.

use std::convert::Infallible;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use schemas::catalog::{Catalog, CatalogModel, Task};
use schemas::{
    ChatRequest, ErrorKind, FinishReason, Message, Params, ReplyChunk, Role, TaskInput, TaskOutput,
    Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ApiError;
use crate::metrics::RouteLabels;
use crate::openai::{self, Completion, OaiMessage, OaiResponseFormat, OaiTool, Stop};
use crate::replies::Registration;
use crate::routes::{self, CancelOnDrop, Dispatched, Shared, Target};

/// The `route` label of this route's metrics.
const ROUTE: &str = "unified";

/// The body of `POST /models/v2/{model id}`; an unknown field is a 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedRequest {
    /// Not allowed: the path names the model. Read only to say so.
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub messages: Option<Vec<OaiMessage>>,
    /// Shorthand for one user message; the text to classify; or one text to embed.
    #[serde(default)]
    pub text: Option<String>,
    /// Texts to embed: a string or a list of strings.
    #[serde(default)]
    pub inputs: Option<Value>,
    #[serde(default)]
    pub params: Option<UnifiedParams>,
    #[serde(default)]
    pub tools: Option<Vec<OaiTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Chat: JSON mode or structured outputs, as OpenAI's `response_format`.
    #[serde(default)]
    pub response_format: Option<OaiResponseFormat>,
    /// Fallbacks: tried in order when the path's model fails before the first byte.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Refused: provider endpoints are the operator's.
    #[serde(
        default,
        alias = "api_base",
        alias = "baseURL",
        alias = "api_url",
        alias = "endpoint"
    )]
    pub base_url: Option<serde::de::IgnoredAny>,
}

/// Sampling and length parameters; absent means the provider's default.
// Unknown names are a 400: this API is ours, and a misspelt `max_token` silently
// ignored would be worse than an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnifiedParams {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
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
    /// Chat with a reasoning model: OpenAI's `reasoning_effort` levels.
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Chat with tools: whether several may be called in one turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Zero-shot classification: the labels to score.
    #[serde(default)]
    pub candidate_labels: Option<Vec<String>>,
    /// Zero-shot classification: score each label on its own instead of as one
    /// distribution.
    #[serde(default)]
    pub multi_label: Option<bool>,
}

impl UnifiedParams {
    /// The first chat (sampling or length) parameter set, by name.
    fn chat_param(&self) -> Option<&'static str> {
        [
            ("temperature", self.temperature.is_some()),
            ("top_p", self.top_p.is_some()),
            ("top_k", self.top_k.is_some()),
            ("max_tokens", self.max_tokens.is_some()),
            ("stop", self.stop.is_some()),
            ("seed", self.seed.is_some()),
            ("presence_penalty", self.presence_penalty.is_some()),
            ("frequency_penalty", self.frequency_penalty.is_some()),
            ("reasoning_effort", self.reasoning_effort.is_some()),
            ("parallel_tool_calls", self.parallel_tool_calls.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }
}

/// Labels one zero-shot request may score.
pub const MAX_CANDIDATE_LABELS: usize = 100;

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// What a unified request becomes: the normalized request for the envelope, and the
/// task when it is not chat.
#[derive(Debug)]
pub struct Job {
    pub request: ChatRequest,
    pub task: Option<TaskInput>,
}

/// What the request asks the model to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Embeddings,
    ZeroShot,
}

/// `feature-extraction, zero-shot-classification`: the tasks `served` serves.
fn tasks_of(served: Option<&CatalogModel>) -> String {
    match served {
        Some(m) => std::iter::once(m.task)
            .chain(m.other_tasks.iter().copied())
            .map(Task::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        None => "chat (closed models are served for chat only)".into(),
    }
}

/// Chooses the task from the body and what the model serves (`served` is the catalog
/// entry of an open model; `None` for a closed one).
fn choose(
    model_id: &str,
    served: Option<&CatalogModel>,
    req: &UnifiedRequest,
    params: &UnifiedParams,
) -> Result<Kind, ApiError> {
    let serves = |task| served.is_some_and(|m| m.serves(task));
    let not_for = |param: &str, task: Task| {
        invalid(
            format!(
                "'{param}' is for {}, which the model '{model_id}' does not do; it serves {}",
                task.as_str(),
                tasks_of(served)
            ),
            param,
        )
    };
    if params.candidate_labels.is_some() || params.multi_label.is_some() {
        let param = if params.candidate_labels.is_some() {
            "params.candidate_labels"
        } else {
            "params.multi_label"
        };
        return if serves(Task::ZeroShotClassification) {
            Ok(Kind::ZeroShot)
        } else {
            Err(not_for(param, Task::ZeroShotClassification))
        };
    }
    if req.inputs.is_some() {
        return if serves(Task::FeatureExtraction) {
            Ok(Kind::Embeddings)
        } else {
            Err(not_for("inputs", Task::FeatureExtraction))
        };
    }
    Ok(match served.map(|m| m.task) {
        Some(Task::FeatureExtraction) => Kind::Embeddings,
        Some(Task::ZeroShotClassification) => Kind::ZeroShot,
        // Chat; for a model that does not chat, routing says so.
        _ => Kind::Chat,
    })
}

/// Validates the body and converts it, with the model id from the path, to the
/// normalized request and task. `served` is the catalog entry of an open model (what
/// it serves decides the task), `None` for a closed model.
pub fn normalize(
    model_id: String,
    mut req: UnifiedRequest,
    served: Option<&CatalogModel>,
) -> Result<Job, ApiError> {
    if req.base_url.is_some() {
        return Err(crate::openai::base_url_override("base_url"));
    }
    if req.model.is_some() {
        return Err(invalid(
            "'model' is not allowed in the body: the path names the model (/models/v2/<model id>)",
            "model",
        ));
    }
    let params = req.params.take().unwrap_or_default();
    match choose(&model_id, served, &req, &params)? {
        Kind::Chat => chat(model_id, req, params).map(|request| Job {
            request,
            task: None,
        }),
        Kind::Embeddings => embeddings(model_id, req, params, served),
        Kind::ZeroShot => zero_shot(model_id, req, params, served),
    }
}

fn chat(
    model_id: String,
    req: UnifiedRequest,
    params: UnifiedParams,
) -> Result<ChatRequest, ApiError> {
    let messages = match (req.messages, req.text) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "send either 'messages' or 'text', not both",
                "text",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "missing 'messages' (a list of messages) or 'text' (one user message)",
                "messages",
            ));
        }
        (Some(raw), None) => {
            if raw.is_empty() {
                return Err(invalid(
                    "'messages' must contain at least one message",
                    "messages",
                ));
            }
            openai::convert_messages(raw)?
        }
        (None, Some(text)) => vec![Message::text(Role::User, text)],
    };
    let fallback_models = openai::fallbacks(&model_id, req.models)?;
    Ok(ChatRequest {
        model: model_id,
        messages,
        params: Params {
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            max_tokens: params.max_tokens,
            stop: openai::stop_list(params.stop),
            seed: params.seed,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            user: params.user,
            reasoning_effort: params.reasoning_effort,
            parallel_tool_calls: params.parallel_tool_calls,
            // OpenAI's own options belong to its route, /v1/chat/completions.
            ..Params::default()
        },
        tools: openai::convert_tools(req.tools.unwrap_or_default())?,
        tool_choice: req
            .tool_choice
            .as_ref()
            .map(openai::tool_choice)
            .transpose()?,
        stream: req.stream.unwrap_or(false),
        fallback_models,
        response_format: openai::response_format(req.response_format)?,
    })
}

/// Refuses what only chat takes: `messages` (saying what the model does instead),
/// tools, streaming and the sampling parameters.
fn refuse_chat_fields(
    model_id: &str,
    req: &UnifiedRequest,
    params: &UnifiedParams,
    served: Option<&CatalogModel>,
    task: Task,
    instead: &str,
) -> Result<(), ApiError> {
    if req.messages.is_some() {
        let chats = served.is_some_and(|m| m.serves(Task::Chat));
        let message = if chats {
            format!("'messages' is for chat; {} takes {instead}", task.as_str())
        } else {
            format!(
                "the model '{model_id}' does not do chat; it serves {}: send {instead}",
                tasks_of(served)
            )
        };
        return Err(invalid(message, "messages"));
    }
    for (field, set) in [
        ("tools", req.tools.is_some()),
        ("tool_choice", req.tool_choice.is_some()),
        ("response_format", req.response_format.is_some()),
    ] {
        if set {
            return Err(invalid(
                format!("'{field}' is for chat; {} takes none", task.as_str()),
                field,
            ));
        }
    }
    if req.stream == Some(true) {
        return Err(invalid(
            format!(
                "{} answers in one piece, not as a stream: leave 'stream' out or set it to false",
                task.as_str()
            ),
            "stream",
        ));
    }
    if let Some(name) = params.chat_param() {
        return Err(invalid(
            format!(
                "'params.{name}' is a chat parameter; {} does not take it",
                task.as_str()
            ),
            &format!("params.{name}"),
        ));
    }
    Ok(())
}

/// The envelope's request for a task: model, `user` and fallbacks; no messages.
fn task_request(
    model_id: String,
    models: Option<Vec<String>>,
    user: Option<String>,
) -> Result<ChatRequest, ApiError> {
    let fallback_models = openai::fallbacks(&model_id, models)?;
    Ok(ChatRequest {
        model: model_id,
        messages: Vec::new(),
        params: Params {
            user,
            ..Params::default()
        },
        tools: Vec::new(),
        tool_choice: None,
        stream: false,
        fallback_models,
        response_format: None,
    })
}

fn embeddings(
    model_id: String,
    req: UnifiedRequest,
    params: UnifiedParams,
    served: Option<&CatalogModel>,
) -> Result<Job, ApiError> {
    refuse_chat_fields(
        &model_id,
        &req,
        &params,
        served,
        Task::FeatureExtraction,
        "'inputs' (a string or a list of strings) or 'text' to embed",
    )?;
    let inputs = match (req.inputs, req.text) {
        (Some(_), Some(_)) => {
            return Err(invalid("send either 'inputs' or 'text', not both", "text"));
        }
        (None, None) => {
            return Err(invalid(
                "missing 'inputs' (a string or a list of strings to embed) or 'text' (one text)",
                "inputs",
            ));
        }
        (Some(inputs), None) => crate::embeddings::texts(inputs, "inputs")?,
        (None, Some(text)) if text.is_empty() => {
            return Err(invalid("'text' must not be an empty string", "text"));
        }
        (None, Some(text)) => vec![text],
    };
    Ok(Job {
        request: task_request(model_id, req.models, params.user)?,
        task: Some(TaskInput::FeatureExtraction { inputs }),
    })
}

fn zero_shot(
    model_id: String,
    req: UnifiedRequest,
    params: UnifiedParams,
    served: Option<&CatalogModel>,
) -> Result<Job, ApiError> {
    refuse_chat_fields(
        &model_id,
        &req,
        &params,
        served,
        Task::ZeroShotClassification,
        "'text' and params.candidate_labels",
    )?;
    if req.inputs.is_some() {
        return Err(invalid(
            "'inputs' is for embeddings; zero-shot-classification classifies one 'text'",
            "inputs",
        ));
    }
    let text = match req.text {
        Some(text) if !text.is_empty() => text,
        _ => {
            return Err(invalid(
                "zero-shot-classification needs 'text': the text to classify",
                "text",
            ));
        }
    };
    let labels = params.candidate_labels.unwrap_or_default();
    if labels.is_empty() {
        return Err(invalid(
            "zero-shot-classification needs params.candidate_labels: a non-empty list of labels to score",
            "params.candidate_labels",
        ));
    }
    if labels.len() > MAX_CANDIDATE_LABELS {
        return Err(invalid(
            format!(
                "params.candidate_labels takes at most {MAX_CANDIDATE_LABELS} labels, got {}",
                labels.len()
            ),
            "params.candidate_labels",
        ));
    }
    for (i, label) in labels.iter().enumerate() {
        let at = format!("params.candidate_labels[{i}]");
        if label.trim().is_empty() {
            return Err(invalid(format!("{at} must not be empty"), &at));
        }
        if labels[..i].contains(label) {
            return Err(invalid(format!("{at} repeats the label {label:?}"), &at));
        }
    }
    Ok(Job {
        request: task_request(model_id, req.models, params.user)?,
        task: Some(TaskInput::ZeroShotClassification {
            text,
            candidate_labels: labels,
            multi_label: params.multi_label.unwrap_or(false),
        }),
    })
}

/// Who serves a model id, for error bodies written before any worker answered.
fn provider_of(catalog: &Catalog, model_id: &str) -> Option<&'static str> {
    match routes::resolve(catalog, model_id, "model") {
        Ok(Target::Closed(provider)) => Some(provider.as_str()),
        Ok(Target::Open { .. }) => Some("switchyard"),
        Err(_) => None,
    }
}

/// `POST /models/v2/{*model_id}`.
pub(crate) async fn unified(
    State(state): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let provider = path
        .as_ref()
        .ok()
        .and_then(|Path(m)| provider_of(&state.catalog, m));
    let (response, stream) = match handle(&state, path, &headers, body, started).await {
        Ok((response, stream)) => (response, stream),
        Err(e) => (e.response_with(e.unified_body(provider)), false),
    };
    state.metrics.in_flight.dec();
    routes::record(&state, ROUTE, response.status(), stream, started);
    response
}

/// What a task's answer must hold: one vector per input, or a score per label.
#[derive(Debug, Clone, Copy)]
enum Expected {
    Embeddings(usize),
    Labels(usize),
}

impl Expected {
    fn of(task: &TaskInput) -> Self {
        match task {
            TaskInput::FeatureExtraction { inputs } => Expected::Embeddings(inputs.len()),
            TaskInput::ZeroShotClassification {
                candidate_labels, ..
            } => Expected::Labels(candidate_labels.len()),
        }
    }
}

/// A task answer's `output`. Typed so f32s are written in their shortest form.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum TaskOutputBody {
    Embeddings {
        embeddings: Vec<Vec<f32>>,
    },
    Labels {
        labels: Vec<String>,
        scores: Vec<f32>,
    },
}

/// The `output` of a task answer, checked against what was asked.
fn task_output_body(output: TaskOutput, expected: Expected) -> Result<TaskOutputBody, ApiError> {
    match (expected, output) {
        (Expected::Embeddings(n), output) => Ok(TaskOutputBody::Embeddings {
            embeddings: crate::embeddings::vectors_of(output, n)?,
        }),
        (Expected::Labels(n), TaskOutput::ZeroShotClassification { labels, scores })
            if labels.len() == n && scores.len() == n =>
        {
            Ok(TaskOutputBody::Labels { labels, scores })
        }
        (Expected::Labels(n), other) => Err(routes::internal(format!(
            "a worker answered {other:?} to a classification with {n} labels"
        ))),
    }
}

/// A task's non-streaming answer.
#[derive(Debug, Serialize)]
struct TaskAnswer<'a> {
    output: TaskOutputBody,
    provider: Option<&'a str>,
    model: &'a str,
    served_model: Option<&'a str>,
    usage: Option<Value>,
    /// Always null: errors have their own body.
    error: (),
    request_id: String,
}

async fn handle(
    state: &Shared,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> Result<(Response, bool), ApiError> {
    let account = routes::authenticate(state, headers).await?;
    let Path(model_id) = path.map_err(|rejection| {
        invalid(
            format!("invalid model id in the path: {rejection}"),
            "model",
        )
    })?;
    let body = routes::read_body(state, body)?;
    // Before the body: an unknown model is a 404 whatever the body says, and what an
    // open model serves decides how the body is read.
    let served = match routes::resolve(&state.catalog, &model_id, "model")? {
        Target::Open { model, .. } => Some(model),
        Target::Closed(_) => None,
    };
    let Job { request, task } = normalize(model_id, openai::parse_json(&body)?, served)?;
    let expected = task.as_ref().map(Expected::of);
    let mut prepared = routes::prepare(state, headers, request, task, account)?;
    let span = tracing::info_span!(
        "unified",
        request_id = %prepared.request_id,
        model = %prepared.model,
        stream = prepared.stream
    );
    async move {
        let Dispatched {
            mut registration,
            first,
            mut cancel,
        } = routes::dispatch(state, &mut prepared, ROUTE, started).await?;
        let headers = routes::answer_headers(prepared.request_id, &first);
        if let Some(expected) = expected {
            let provider = first.provider.clone();
            let served_model = first.model.clone();
            let reply = routes::collect_output(&mut registration, first, prepared.deadline).await?;
            cancel.disarm();
            let body = TaskAnswer {
                output: task_output_body(reply.output, expected)?,
                provider: provider.as_deref(),
                model: &prepared.model,
                served_model: served_model.as_deref(),
                usage: reply.usage.as_ref().map(usage_json),
                error: (),
                request_id: prepared.request_id.to_string(),
            };
            Ok(((headers, axum::Json(body)).into_response(), false))
        } else if prepared.stream {
            // The forwarding task owns the cancel guard from here on.
            let events = stream_events(
                state,
                registration,
                first,
                cancel,
                prepared.deadline,
                started,
            );
            Ok((
                (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response(),
                true,
            ))
        } else {
            let provider = first.provider.clone();
            let served_model = first.model.clone();
            let completion = routes::collect(&mut registration, first, prepared.deadline).await?;
            cancel.disarm();
            let body = answer_json(
                &completion,
                provider.as_deref(),
                &prepared.model,
                served_model.as_deref(),
                prepared.request_id,
            );
            Ok(((headers, axum::Json(body)).into_response(), false))
        }
    }
    .instrument(span)
    .await
}

/// `{"input_tokens", "output_tokens", "cached_input_tokens"?}`.
fn usage_json(usage: &Usage) -> Value {
    let mut v = json!({
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    });
    if let Some(cached) = usage.cached_input_tokens {
        v["cached_input_tokens"] = json!(cached);
    }
    v
}

/// The assistant message, in the same shape as the request's messages so a caller
/// can append it to the conversation as is.
fn output_json(c: &Completion) -> Value {
    let content = if c.saw_content || c.tool_calls.is_empty() {
        Value::String(c.content.clone())
    } else {
        Value::Null
    };
    let mut output = json!({ "role": "assistant", "content": content });
    if !c.tool_calls.is_empty() {
        output["tool_calls"] = c
            .tool_calls
            .iter()
            .map(|t| json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}))
            .collect();
    }
    output
}

/// The non-streaming answer.
fn answer_json(
    c: &Completion,
    provider: Option<&str>,
    model: &str,
    served_model: Option<&str>,
    request_id: Uuid,
) -> Value {
    let mut body = json!({
        "output": output_json(c),
        "finish_reason": openai::finish_reason(c.finish_reason.unwrap_or(FinishReason::Stop)),
        "provider": provider,
        "model": model,
        "served_model": served_model,
        "usage": c.usage.as_ref().map(usage_json),
        "error": null,
        "request_id": request_id.to_string(),
    });
    if !c.dropped_params.is_empty() {
        body["dropped_params"] = json!(c.dropped_params);
    }
    body
}

/// `event: chunk` for a chunk that carries output or a finish reason.
fn chunk_event(chunk: &ReplyChunk) -> Option<Event> {
    let mut delta = chunk
        .delta
        .as_ref()
        .map(openai::delta_json)
        .unwrap_or_else(|| json!({}));
    if let Some(o) = delta.as_object_mut() {
        o.remove("role");
    }
    let has_delta = delta.as_object().is_some_and(|o| !o.is_empty());
    if !has_delta && chunk.finish_reason.is_none() {
        return None;
    }
    let mut data = json!({ "delta": delta });
    if let Some(reason) = chunk.finish_reason {
        data["finish_reason"] = json!(openai::finish_reason(reason));
    }
    Some(named("chunk", &data))
}

fn named(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Relays reply chunks as `chunk` events, then `done` or `error`. A task forwards
/// them so a caller who goes away is noticed (the send fails); the cancel guard then
/// tells the worker to stop, as it does when the deadline passes or chunks are lost.
fn stream_events(
    state: &Shared,
    mut registration: Registration,
    first: ReplyChunk,
    mut cancel: CancelOnDrop,
    deadline: TokioInstant,
    started: Instant,
) -> impl futures::Stream<Item = Result<Event, Infallible>> + use<> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let shared = state.clone();
    state.tracker.spawn(
        async move {
            let provider = first.provider.clone();
            let mut chunk = first;
            let mut order = crate::resume::StreamOrder::default();
            let mut usage = None;
            let mut finish = None;
            let finished = loop {
                if let Err(e) = order.admit(&mut chunk) {
                    break Err(e);
                }
                if let Some(error) = chunk.error.take() {
                    // The worker ended the reply itself: nothing to cancel.
                    cancel.disarm();
                    break Err(ApiError::from(error));
                }
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
                if chunk.finish_reason.is_some() {
                    finish = chunk.finish_reason;
                }
                if let Some(event) = chunk_event(&chunk)
                    && tx.send(event).await.is_err()
                {
                    break Ok(false);
                }
                if chunk.last {
                    break Ok(true);
                }
                chunk = match routes::next_chunk(&mut registration, deadline).await {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                };
            };
            match finished {
                Ok(true) => {
                    cancel.disarm();
                    let done = json!({
                        "usage": usage.as_ref().map(usage_json),
                        "provider": provider,
                        "finish_reason": openai::finish_reason(finish.unwrap_or(FinishReason::Stop)),
                    });
                    let _ = tx.send(named("done", &done)).await;
                }
                Ok(false) => tracing::info!("caller went away; cancelling"),
                Err(e) => {
                    let _ = tx
                        .send(named("error", &json!({ "error": e.unified_error() })))
                        .await;
                }
            }
            // Still armed unless the reply ended: publishes `cancel.<request>`.
            drop(cancel);
            shared
                .metrics
                .duration
                .get_or_create(&RouteLabels {
                    route: ROUTE.into(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
        .in_current_span(),
    );
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{ContentPart, Delta, ToolCallDelta, ToolChoice};

    fn parse(body: &str) -> Result<ChatRequest, ApiError> {
        let job = normalize(
            "openai/gpt-4o-mini".into(),
            openai::parse_json(body.as_bytes())?,
            None,
        )?;
        assert!(job.task.is_none());
        Ok(job.request)
    }

    #[test]
    fn text_is_one_user_message() {
        let r = parse(r#"{"text":"hi there","params":{"max_tokens":5,"stop":"END","seed":7}}"#)
            .unwrap();
        assert_eq!(r.model, "openai/gpt-4o-mini");
        assert_eq!(r.messages, [Message::text(Role::User, "hi there")]);
        assert_eq!(r.params.max_tokens, Some(5));
        assert_eq!(r.params.stop, ["END"]);
        assert_eq!(r.params.seed, Some(7));
        assert!(!r.stream);
    }

    #[test]
    fn messages_tools_and_tool_choice_are_openai_shaped() {
        let r = parse(
            r#"{"stream":true,"messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],
                "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
                "tool_choice":"required","params":{"stop":["a","b"],"temperature":0.5}}"#,
        )
        .unwrap();
        assert!(r.stream);
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(
            r.messages[1].content[1],
            ContentPart::Image {
                url: "https://x/y.png".into(),
                detail: None
            }
        );
        assert_eq!(r.tools[0].name, "f");
        assert_eq!(r.tool_choice, Some(ToolChoice::Required));
        assert_eq!(r.params.stop, ["a", "b"]);
        assert_eq!(r.params.temperature, Some(0.5));
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let param = |body: &str| parse(body).unwrap_err().0.param;
        assert_eq!(
            param(r#"{"text":"x","messages":[{"role":"user","content":"x"}]}"#).as_deref(),
            Some("text")
        );
        assert_eq!(param(r#"{"stream":true}"#).as_deref(), Some("messages"));
        assert_eq!(param(r#"{"messages":[]}"#).as_deref(), Some("messages"));
        assert_eq!(
            param(r#"{"model":"openai/x","text":"x"}"#).as_deref(),
            Some("model")
        );
        assert_eq!(param(r#"{"text":5}"#).as_deref(), Some("text"));
        assert_eq!(
            param(r#"{"text":"x","params":{"temperature":"hot"}}"#).as_deref(),
            Some("params.temperature")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"robot","content":"x"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        let e = parse(r#"{"text":"x","params":{"max_token":5}}"#).unwrap_err();
        assert!(e.0.message.contains("max_token"), "{}", e.0.message);
        assert!(e.0.param.is_some_and(|p| p.starts_with("params")));
    }

    const EMBEDDER: &str = "sentence-transformers/all-MiniLM-L6-v2";
    const CHATTER: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

    /// Normalizes `body` for `model` as the route does, with the shipped catalog.
    fn open_job(model: &str, body: Value) -> Result<Job, ApiError> {
        let catalog = Catalog::embedded().unwrap();
        let served = catalog.get(model);
        normalize(
            model.into(),
            openai::parse_json(body.to_string().as_bytes())?,
            served,
        )
    }

    fn open_param(model: &str, body: Value) -> (Option<String>, String) {
        let e = open_job(model, body).unwrap_err();
        (e.0.param, e.0.message)
    }

    #[test]
    fn the_model_and_the_body_choose_the_task() {
        let j = open_job(EMBEDDER, json!({"text": "hello"})).unwrap();
        assert_eq!(
            j.task,
            Some(TaskInput::FeatureExtraction {
                inputs: vec!["hello".into()]
            })
        );
        assert!(j.request.messages.is_empty());
        let j = open_job(
            EMBEDDER,
            json!({"inputs": ["a", "b"], "params": {"user": "u"}}),
        )
        .unwrap();
        assert_eq!(
            j.task,
            Some(TaskInput::FeatureExtraction {
                inputs: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(j.request.params.user.as_deref(), Some("u"));
        let j = open_job(
            EMBEDDER,
            json!({"text": "2-1 after extra time", "params": {"candidate_labels": ["sport", "cooking"], "multi_label": true}}),
        )
        .unwrap();
        assert_eq!(
            j.task,
            Some(TaskInput::ZeroShotClassification {
                text: "2-1 after extra time".into(),
                candidate_labels: vec!["sport".into(), "cooking".into()],
                multi_label: true,
            })
        );
        let j = open_job(CHATTER, json!({"text": "hi", "params": {"top_k": 20}})).unwrap();
        assert!(j.task.is_none());
        assert_eq!(j.request.params.top_k, Some(20));
        assert_eq!(j.request.messages, [Message::text(Role::User, "hi")]);
    }

    #[test]
    fn fields_a_task_does_not_take_are_named() {
        let (param, message) = open_param(
            EMBEDDER,
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(param.as_deref(), Some("messages"));
        assert!(
            message.contains(
                "does not do chat; it serves feature-extraction, zero-shot-classification"
            ),
            "{message}"
        );
        let cases = [
            (
                EMBEDDER,
                json!({"text": "x", "params": {"candidate_labels": []}}),
                "params.candidate_labels",
            ),
            (
                EMBEDDER,
                json!({"text": "x", "params": {"multi_label": true}}),
                "params.candidate_labels",
            ),
            (
                EMBEDDER,
                json!({"text": "x", "params": {"candidate_labels": ["a", ""]}}),
                "params.candidate_labels[1]",
            ),
            (
                EMBEDDER,
                json!({"text": "x", "params": {"candidate_labels": ["a", "b", "a"]}}),
                "params.candidate_labels[2]",
            ),
            (
                EMBEDDER,
                json!({"params": {"candidate_labels": ["a"]}}),
                "text",
            ),
            (
                EMBEDDER,
                json!({"inputs": ["x"], "params": {"candidate_labels": ["a"]}}),
                "inputs",
            ),
            (
                EMBEDDER,
                json!({"text": "x", "params": {"temperature": 0.5}}),
                "params.temperature",
            ),
            (EMBEDDER, json!({"text": "x", "stream": true}), "stream"),
            (
                EMBEDDER,
                json!({"text": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}),
                "tools",
            ),
            (EMBEDDER, json!({"text": "x", "inputs": "y"}), "text"),
            (EMBEDDER, json!({"inputs": [[1, 2]]}), "inputs"),
            (EMBEDDER, json!({"inputs": []}), "inputs"),
            (EMBEDDER, json!({}), "inputs"),
            (EMBEDDER, json!({"text": ""}), "text"),
            (
                CHATTER,
                json!({"text": "x", "params": {"candidate_labels": ["a"]}}),
                "params.candidate_labels",
            ),
            (CHATTER, json!({"inputs": "x"}), "inputs"),
            (
                "openai/gpt-4o-mini",
                json!({"text": "x", "params": {"candidate_labels": ["a"]}}),
                "params.candidate_labels",
            ),
        ];
        for (model, body, want) in cases {
            let (param, message) = open_param(model, body.clone());
            assert_eq!(param.as_deref(), Some(want), "{model} {body}: {message}");
        }
        let (_, message) = open_param(
            CHATTER,
            json!({"text": "x", "params": {"candidate_labels": ["a"]}}),
        );
        assert!(
            message.contains("zero-shot-classification") && message.contains("it serves chat"),
            "{message}"
        );
    }

    #[test]
    fn task_answers_are_checked_and_shaped() {
        let out = task_output_body(
            TaskOutput::ZeroShotClassification {
                labels: vec!["sport".into(), "cooking".into()],
                scores: vec![0.75, 0.25],
            },
            Expected::Labels(2),
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            json!({"labels": ["sport", "cooking"], "scores": [0.75, 0.25]})
        );
        assert!(
            task_output_body(
                TaskOutput::ZeroShotClassification {
                    labels: vec!["sport".into()],
                    scores: vec![1.0],
                },
                Expected::Labels(2),
            )
            .is_err()
        );
        assert!(
            task_output_body(
                TaskOutput::FeatureExtraction {
                    embeddings: vec![vec![1.0]]
                },
                Expected::Labels(1),
            )
            .is_err()
        );
        let out = task_output_body(
            TaskOutput::FeatureExtraction {
                embeddings: vec![vec![0.5, 1.0]],
            },
            Expected::Embeddings(1),
        )
        .unwrap();
        let answer = TaskAnswer {
            output: out,
            provider: Some("switchyard"),
            model: EMBEDDER,
            served_model: None,
            usage: Some(json!({"input_tokens": 3, "output_tokens": 0})),
            error: (),
            request_id: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"output": {"embeddings": [[0.5, 1.0]]}, "provider": "switchyard",
                   "model": EMBEDDER, "served_model": null,
                   "usage": {"input_tokens": 3, "output_tokens": 0}, "error": null, "request_id": "r"})
        );
    }

    #[test]
    fn answer_carries_output_usage_and_tool_calls() {
        let mut c = Completion::default();
        schemas::batch::add_tool_deltas(
            &mut c.tool_calls,
            &[ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("f".into()),
                arguments: Some("{}".into()),
            }],
        );
        c.finish_reason = Some(FinishReason::ToolCalls);
        c.usage = Some(Usage {
            input_tokens: 3,
            output_tokens: 2,
            cached_input_tokens: None,
        });
        let id = Uuid::now_v7();
        let v = answer_json(&c, Some("openai"), "openai/x", None, id);
        assert_eq!(v["output"]["content"], Value::Null);
        assert_eq!(v["output"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(v["finish_reason"], "tool_calls");
        assert_eq!(v["usage"], json!({"input_tokens": 3, "output_tokens": 2}));
        assert_eq!(v["served_model"], Value::Null);
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["request_id"], id.to_string());
        assert!(v.get("dropped_params").is_none());
        c.dropped_params = vec!["seed".into()];
        let v = answer_json(&c, Some("anthropic"), "anthropic/x", None, id);
        assert_eq!(v["dropped_params"], json!(["seed"]));
    }

    #[test]
    fn chunks_without_output_send_no_event() {
        let mut c = ReplyChunk::new(Uuid::now_v7(), 0);
        c.delta = Some(Delta {
            role: Some(Role::Assistant),
            content: None,
            tool_calls: vec![],
        });
        assert!(chunk_event(&c).is_none());
        c.finish_reason = Some(FinishReason::Length);
        assert!(chunk_event(&c).is_some());
    }
}
