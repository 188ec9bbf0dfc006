//! Mock Google Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent` in Gemini's real wire format.
//!
//! Deterministic like the OpenAI mock: the reply is `"echo: " + <last user text>`, cut
//! into [`MockConfig::chunks`] pieces when streaming (`candidatesTokenCount` = chunks,
//! `promptTokenCount` = words over `systemInstruction` and every text part). A last user
//! text `call:<name> <json args>` in a request with `tools` gets a `functionCall` part
//! with `finishReason: "STOP"` (Gemini reports STOP for function calls too); a last user
//! turn holding only `functionResponse` parts is answered `"echo: " + <response JSON>`.
//!
//! Streaming with `?alt=sse` is SSE, `data: <GenerateContentResponse>` events separated
//! by CRLF CRLF; every chunk carries `usageMetadata` (prompt counts only) and the last
//! one the `finishReason` and full counts. There is no `[DONE]`: the chunk with a
//! `finishReason` is the end. Without `alt=sse` the stream is one JSON array of the same
//! chunks, as the real API sends it.
//!
//! Auth mirrors the real API: the key comes in `x-goog-api-key` (or `?key=`); a wrong key
//! is **400 `INVALID_ARGUMENT`** with `reason: API_KEY_INVALID` (not 401), a missing key
//! 403 `PERMISSION_DENIED`. Magic models: `mock-error-<status>` (Google's error envelope
//! `{"error":{"code","message","status","details"}}`; 429 adds `retry-after: 1` and a
//! `RetryInfo` detail), `mock-truncated` (two chunks, then the connection is cut) and
//! `mock-truncated-clean` (two chunks, then a clean end without any `finishReason`).
//! Prompts, outputs and keys are never logged.

mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};

use super::MockConfig;
use super::openai::reply::{Magic, magic};
use reply::{GenerateRequest, Reply};

struct Shared {
    config: MockConfig,
    next_id: AtomicU64,
}

/// Adds this provider's routes to `router`.
pub fn mount(router: Router, config: &MockConfig) -> Router {
    let shared = Arc::new(Shared {
        config: MockConfig {
            chunks: config.chunks.max(1),
            ..config.clone()
        },
        next_id: AtomicU64::new(1),
    });
    // matchit (axum 0.8) captures whole segments only, so `{model}:{method}` is one
    // capture split on its last ':'.
    let gemini = Router::new()
        .route("/v1beta/models/{model_and_method}", post(generate))
        .with_state(shared);
    router.merge(gemini)
}

#[derive(Debug, Default, Deserialize)]
struct QueryParams {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    alt: Option<String>,
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    Path(model_and_method): Path<String>,
    Query(query): Query<QueryParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &shared.config;
    if let Some(status) = config.fail_status {
        tracing::debug!(status = status.as_u16(), "fail-status mode");
        return status_error(status.as_u16(), "mock");
    }
    if let Some(expected) = &config.api_key {
        let provided = headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .or(query.key.as_deref())
            .map(str::trim)
            .filter(|k| !k.is_empty());
        match provided {
            Some(key) if key == expected => {}
            Some(_) => {
                tracing::debug!(status = 400, "rejected api key");
                return error_response(
                    400,
                    "API key not valid. Please pass a valid API key.",
                    json!([
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com",
                            "metadata": {"service": "generativelanguage.googleapis.com"}
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                            "locale": "en-US",
                            "message": "API key not valid. Please pass a valid API key."
                        }
                    ]),
                );
            }
            None => {
                tracing::debug!(status = 403, "missing api key");
                return error_response(
                    403,
                    "Method doesn't allow unregistered callers (callers without established \
                     identity). Please use API key or other form of API consumer identity to \
                     call this API.",
                    Value::Null,
                );
            }
        }
    }
    let Some((model, method)) = model_and_method.rsplit_once(':') else {
        return not_found_model(&model_and_method, "generateContent");
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            return error_response(404, &format!("Method not found: {method}."), Value::Null);
        }
    };
    let request: GenerateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            // Never quote the body back: serde's data errors can contain prompt text.
            tracing::debug!(status = 400, category = ?err.classify(), "bad request body");
            return error_response(
                400,
                &format!(
                    "Invalid JSON payload received (line {}, column {}).",
                    err.line(),
                    err.column()
                ),
                Value::Null,
            );
        }
    };
    if request.contents.is_empty() {
        return error_response(
            400,
            "* GenerateContentRequest.contents: contents is not specified\n",
            Value::Null,
        );
    }
    let magic = magic(model);
    tracing::debug!(%model, stream, ?magic, "generate content");
    let ending = match magic {
        Magic::Error(status) => return status_error(status, model),
        Magic::BadError => {
            return error_response(
                400,
                "mock-error-<status> needs a status between 400 and 599.",
                Value::Null,
            );
        }
        // Flaky models are only for the OpenAI mock's retry tests.
        Magic::None | Magic::Flaky(_) | Magic::Slow | Magic::EchoParams => Ending::Finish,
        Magic::Truncated => Ending::Abort,
        Magic::TruncatedClean => Ending::Clean,
    };
    let reply = match reply::plan(&request) {
        Ok(_) if magic == Magic::EchoParams => {
            let conversation = ["contents", "systemInstruction"];
            Reply::Text(super::echo_params(&body, &conversation))
        }
        Ok(reply) => reply,
        Err(message) => return error_response(400, &message, Value::Null),
    };
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        response_id: format!("mock{n:016x}"),
        model,
        prompt_tokens: reply::prompt_tokens(&request),
        candidates_tokens: u64::try_from(config.chunks).unwrap_or(u64::MAX),
    };

    if !stream {
        if !config.latency.is_zero() {
            tokio::time::sleep(config.latency).await;
        }
        let parts = match &reply {
            Reply::Text(text) => json!([{"text": text}]),
            Reply::FunctionCall { name, args } => {
                json!([{"functionCall": {"name": name, "args": args}}])
            }
        };
        let body = meta.response(parts, true);
        return json_response(StatusCode::OK, &body);
    }

    let events = stream_events(config, &meta, &reply, ending);
    if query.alt.as_deref() == Some("sse") {
        let frames = events
            .into_iter()
            .map(|(delay, event)| {
                let mut bytes = b"data: ".to_vec();
                bytes.extend_from_slice(event.to_string().as_bytes());
                bytes.extend_from_slice(b"\r\n\r\n");
                (delay, Bytes::from(bytes))
            })
            .collect();
        return (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            super::paced_body(frames, ending == Ending::Abort, None),
        )
            .into_response();
    }
    // Without alt=sse Gemini streams one JSON array, an element per chunk.
    let mut frames = Vec::with_capacity(events.len() + 1);
    for (i, (delay, event)) in events.into_iter().enumerate() {
        let sep = if i == 0 { "[" } else { ",\r\n" };
        frames.push((delay, Bytes::from(format!("{sep}{event}"))));
    }
    if ending == Ending::Finish {
        frames.push((Duration::ZERO, Bytes::from_static(b"]")));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        )],
        super::paced_body(frames, ending == Ending::Abort, None),
    )
        .into_response()
}

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The last chunk carries `finishReason` and the full `usageMetadata`.
    Finish,
    /// After two chunks the connection is cut mid-body.
    Abort,
    /// After two chunks the body ends normally, without any `finishReason`.
    Clean,
}

/// Per-request values shared by every chunk of one reply.
struct Meta<'a> {
    response_id: String,
    model: &'a str,
    prompt_tokens: u64,
    candidates_tokens: u64,
}

impl Meta<'_> {
    /// A `GenerateContentResponse` with one candidate holding `parts`; `last` adds the
    /// `finishReason` and the full usage counts.
    fn response(&self, parts: Value, last: bool) -> Value {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        let mut usage = json!({
            "promptTokenCount": self.prompt_tokens,
            "totalTokenCount": self.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt_tokens}],
        });
        if last {
            candidate["finishReason"] = json!("STOP");
            usage["candidatesTokenCount"] = json!(self.candidates_tokens);
            usage["totalTokenCount"] = json!(self.prompt_tokens + self.candidates_tokens);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.response_id,
        })
    }
}

/// The stream's chunks with the delay before each.
fn stream_events(
    config: &MockConfig,
    meta: &Meta<'_>,
    reply: &Reply,
    ending: Ending,
) -> Vec<(Duration, Value)> {
    let mut events = Vec::new();
    match reply {
        Reply::Text(text) => {
            let pieces = super::openai::reply::split_even(text, config.chunks);
            let sent = if ending == Ending::Finish {
                pieces.len()
            } else {
                pieces.len().min(2)
            };
            for (i, piece) in pieces.iter().take(sent).enumerate() {
                let delay = if i == 0 {
                    config.latency
                } else {
                    config.chunk_delay
                };
                let last = ending == Ending::Finish && i + 1 == pieces.len();
                events.push((delay, meta.response(json!([{"text": piece}]), last)));
            }
        }
        // Gemini sends a function call whole, in one chunk.
        Reply::FunctionCall { name, args } => {
            let parts = json!([{"functionCall": {"name": name, "args": args}}]);
            events.push((
                config.latency,
                meta.response(parts, ending == Ending::Finish),
            ));
        }
    }
    events
}

fn not_found_model(model: &str, method: &str) -> Response {
    let message = format!(
        "models/{model} is not found for API version v1beta, or is not supported for \
         {method}. Call ListModels to see the list of available models and their \
         supported methods."
    );
    error_response(404, &message, Value::Null)
}

/// Google's canonical status name for an HTTP status (google.rpc.Code mapping).
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if (400..500).contains(&status) => "FAILED_PRECONDITION",
        _ => "UNKNOWN",
    }
}

/// Gemini's error body for `status` (fail-status mode and `mock-error-<status>`).
fn status_error(status: u16, model: &str) -> Response {
    match status {
        404 => return not_found_model(model, "generateContent"),
        429 => {
            let mut response = error_response(
                429,
                "You exceeded your current quota, please check your plan and billing details. \
                 For more information on this error, head to: \
                 https://ai.google.dev/gemini-api/docs/rate-limits.",
                json!([
                    {
                        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                        "violations": [{
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaValue": "15"
                        }]
                    },
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": "1s"
                    }
                ]),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        _ => {}
    }
    let message = match status {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "The caller does not have permission",
        500 => {
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting"
        }
        503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        _ => "The mock was asked to fail.",
    };
    error_response(status, message, Value::Null)
}

/// `{"error": {"code", "message", "status", "details"?}}`, Google's error envelope.
fn error_response(status: u16, message: &str, details: Value) -> Response {
    let mut error = json!({
        "code": status,
        "message": message,
        "status": status_name(status),
    });
    if !details.is_null() {
        error["details"] = details;
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(code, &json!({ "error": error }))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        )],
        Body::from(body.to_string()),
    )
        .into_response()
}
