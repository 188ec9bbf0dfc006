//! Switchyard's own route: `POST /models/v2/{model id}`, one request shape for every
//! model. The model id is the rest of the path and may contain `/`
//! (`/models/v2/anthropic/claude-sonnet-4-5`); it is checked like any model id, so
//! `*`, `>`, spaces and the like are a 400. Authentication (`Authorization: Bearer
//! <key>` or `Authorization: Key <key>`), the `provider-key` header and the pipeline
//! behind it (seal, publish, reply chunks) are those of `/v1/chat/completions`.
//!
//! Request body, a JSON object:
//!
//! ```json
//! {"messages": [{"role": "user", "content": "hi"}],   // OpenAI-style messages, or
//!  "text": "hi",                                      // one user message: exactly one of the two
//!  "params": {"temperature", "top_p", "max_tokens", "stop", "seed",
//!             "presence_penalty", "frequency_penalty", "user"},  // all optional; others are a 400
//!  "tools": [{"type": "function", "function": {"name", "description", "parameters"}}],
//!  "tool_choice": "auto" | "none" | "required" | {"type": "function", "function": {"name"}},
//!  "stream": false}
//! ```
//!
//! A `model` field in the body is a 400 (the path names the model). Every 4xx names
//! the field at fault in `error.param`.
//!
//! Answer (`stream` false or absent), 200:
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
//! Both forms carry the headers of every route: `x-request-id`, `x-switchyard-provider`,
//! `x-switchyard-served-model` and `x-switchyard-dropped-params` when there are any.
//!
//! Errors answer the status of their kind (400, 401, 404, 413, 429, 502, 503, 504, …),
//! with `Retry-After` (and `retry-after-ms`) when the caller should wait:
//!
//! ```json
//! {"error": {"kind": "rate_limited", "message": "…", "param": null, "retry_after_ms"?: 2500},
//!  "output": null, "provider": "openai" | null, "usage": null}
//! ```
//!
//! Streaming (`"stream": true`) answers `text/event-stream` with named events, once the
//! first chunk arrived (so an error before any output is still a real status):
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
use schemas::subjects::{self, ModelRoute};
use schemas::{ChatRequest, ErrorKind, FinishReason, Message, Params, ReplyChunk, Role, Usage};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::ApiError;
use crate::metrics::{RequestLabels, RouteLabels};
use crate::openai::{self, Completion, OaiMessage, OaiTool, Stop};
use crate::replies::Registration;
use crate::routes::{self, CancelOnDrop, Dispatched, Shared};

/// The `route` label of this route's metrics.
const ROUTE: &str = "unified";

/// The body of `POST /models/v2/{model id}`.
#[derive(Debug, Deserialize)]
pub struct UnifiedRequest {
    /// Not allowed: the path names the model. Read only to say so.
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub messages: Option<Vec<OaiMessage>>,
    /// Shorthand for one user message.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub params: Option<UnifiedParams>,
    #[serde(default)]
    pub tools: Option<Vec<OaiTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
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
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

/// Validates the body and converts it, with the model id from the path, to the
/// normalized request.
pub fn normalize(model_id: String, req: UnifiedRequest) -> Result<ChatRequest, ApiError> {
    if req.base_url.is_some() {
        return Err(crate::openai::base_url_override("base_url"));
    }
    if req.model.is_some() {
        return Err(invalid(
            "'model' is not allowed in the body: the path names the model (/models/v2/<model id>)",
            "model",
        ));
    }
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
    let params = req.params.unwrap_or_default();
    let fallback_models = openai::fallbacks(&model_id, req.models)?;
    Ok(ChatRequest {
        model: model_id,
        messages,
        params: Params {
            temperature: params.temperature,
            top_p: params.top_p,
            max_tokens: params.max_tokens,
            stop: openai::stop_list(params.stop),
            seed: params.seed,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            user: params.user,
        },
        tools: openai::convert_tools(req.tools.unwrap_or_default())?,
        tool_choice: req
            .tool_choice
            .as_ref()
            .map(openai::tool_choice)
            .transpose()?,
        stream: req.stream.unwrap_or(false),
        fallback_models,
    })
}

/// The provider a model id routes to, for error bodies written before any worker
/// answered.
fn provider_of(model_id: &str) -> Option<&'static str> {
    match subjects::route_model(model_id) {
        Ok(ModelRoute::Closed { provider, .. }) => Some(provider.as_str()),
        _ => None,
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
    let provider = path.as_ref().ok().and_then(|Path(m)| provider_of(m));
    let (response, stream) = match handle(&state, path, &headers, body, started).await {
        Ok((response, stream)) => (response, stream),
        Err(e) => (e.response_with(e.unified_body(provider)), false),
    };
    state.metrics.in_flight.dec();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: ROUTE.into(),
            status: response.status().as_u16(),
            stream,
        })
        .inc();
    if !stream {
        state
            .metrics
            .duration
            .get_or_create(&RouteLabels {
                route: ROUTE.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
    response
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
    let request = normalize(model_id, openai::parse_json(&body)?)?;
    let prepared = routes::prepare(state, headers, request, account)?;
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
        } = routes::dispatch(state, &prepared, ROUTE, started).await?;
        let headers = routes::answer_headers(prepared.request_id, &first);
        if prepared.stream {
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
            let mut expected = 0u32;
            let mut usage = None;
            let mut finish = None;
            let finished = loop {
                if let Err(e) = routes::in_order(&chunk, expected) {
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
                expected += 1;
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
        normalize(
            "openai/gpt-4o-mini".into(),
            openai::parse_json(body.as_bytes())?,
        )
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

    #[test]
    fn answer_carries_output_usage_and_tool_calls() {
        let mut c = Completion::default();
        c.add_tool_deltas(&[ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            name: Some("f".into()),
            arguments: Some("{}".into()),
        }]);
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
