//! Mock OpenAI provider: `POST /v1/chat/completions` in OpenAI's real wire format.
//!
//! Deterministic: the reply is `"echo: " + <last user text>`, cut into
//! [`MockConfig::chunks`] pieces when streaming. A last user message `call:<name> <args>`
//! in a request with `tools` gets a tool call instead. Magic model names select failures:
//! `mock-error-<status>` (OpenAI error body, 429 with `retry-after`), `mock-truncated`
//! (the stream is cut after two content chunks, no `[DONE]`) and `mock-truncated-clean`
//! (the body ends cleanly after two content chunks, still no `[DONE]`).
//!
//! Built for benchmarks: a reply is a few small serialisations, logging is one DEBUG
//! line per request, and prompts, outputs and keys are never logged.

// The other mocks share its splitting and key masking.
pub(crate) mod reply;
mod stream;
mod wire;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use reply::{Magic, Reply};
use wire::{
    ChatRequest, Completion, CompletionChoice, ErrorBody, ErrorDetail, FunctionCall,
    ResponseMessage, SYSTEM_FINGERPRINT, ToolCall, Usage,
};

/// How the mock behaves. The same for every request; per-request behaviour comes from
/// magic model names.
#[derive(Clone)]
pub struct MockConfig {
    /// Delay before the response (non-streaming) or before the first chunk (streaming).
    pub latency: Duration,
    /// Number of content chunks when streaming (at least 1). It is also the reply's
    /// `completion_tokens`, streaming or not.
    pub chunks: usize,
    /// Delay between consecutive content chunks.
    pub chunk_delay: Duration,
    /// Error mode: every request is answered with this status in OpenAI's error format.
    pub fail_status: Option<StatusCode>,
    /// When set, requests must carry `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            chunks: 4,
            chunk_delay: Duration::ZERO,
            fail_status: None,
            api_key: None,
        }
    }
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("latency", &self.latency)
            .field("chunks", &self.chunks)
            .field("chunk_delay", &self.chunk_delay)
            .field("fail_status", &self.fail_status)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

struct Shared {
    config: MockConfig,
    next_id: AtomicU64,
    /// Requests seen with a `mock-flaky-*` model.
    flaky: AtomicU64,
    /// Streams the client stopped reading before their end (`GET /mock/stats`).
    dropped_streams: Arc<AtomicU64>,
}

/// The OpenAI routes (no fallback: [`super::router`] adds one for every provider).
pub fn router(config: MockConfig) -> Router {
    let shared = Arc::new(Shared {
        config: MockConfig {
            chunks: config.chunks.max(1),
            ..config
        },
        next_id: AtomicU64::new(1),
        flaky: AtomicU64::new(0),
        dropped_streams: Arc::default(),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/mock/stats", axum::routing::get(stats))
        .with_state(shared)
}

/// Serves every mock provider ([`super::router`]) on `listener` until `shutdown` completes, then lets open requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = super::router(config);
    // Without TCP_NODELAY, Nagle holds back each small SSE chunk until the previous one is
    // acknowledged (up to the 40 ms delayed-ACK timer), which ruins chunk timing.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// What the mock observed: `{"dropped_streams": n}`, streams whose client stopped
/// reading before the end (a cancelled upstream call closes its connection).
async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({
        "dropped_streams": shared.dropped_streams.load(Ordering::Relaxed),
    }))
    .into_response()
}

pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!("Invalid URL ({method} {})", uri.path());
    error_response(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        None,
        None,
    )
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = &shared.config;
    if let Some(status) = config.fail_status {
        tracing::debug!(status = status.as_u16(), "fail-status mode");
        return status_error(status);
    }
    if let Some(expected) = &config.api_key
        && let Err(response) = check_key(&headers, expected)
    {
        tracing::debug!(status = 401, "rejected api key");
        return response;
    }
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            tracing::debug!(status = 400, category = ?err.classify(), "bad request body");
            return bad_body(&err);
        }
    };
    if request.messages.is_empty() {
        return error_response(
            StatusCode::BAD_REQUEST,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, \
             but got an empty array instead.",
            "invalid_request_error",
            Some("messages"),
            Some("empty_array"),
        );
    }
    if let Some((message, param)) = request.problem() {
        return error_response(
            StatusCode::BAD_REQUEST,
            &message,
            "invalid_request_error",
            Some(param),
            None,
        );
    }
    let stream = request.stream.unwrap_or(false);
    let magic = reply::magic(&request.model);
    tracing::debug!(model = %request.model, stream, ?magic, "chat completion");
    match magic {
        Magic::Error(status) => {
            return status_error(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST));
        }
        Magic::BadError => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "mock-error-<status> needs a status between 400 and 599.",
                "invalid_request_error",
                Some("model"),
                None,
            );
        }
        Magic::Flaky(status) => {
            if shared.flaky.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                return status_error(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                );
            }
        }
        Magic::None
        | Magic::Truncated
        | Magic::TruncatedClean
        | Magic::Slow
        | Magic::EchoParams => {}
    }

    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: format!("chatcmpl-mock{n:016x}"),
        created: unix_now(),
        prompt_tokens: reply::prompt_tokens(&request.messages),
        service_tier: request.served_tier(),
    };
    let reply = if magic == Magic::EchoParams {
        let conversation = ["model", "messages", "stream", "stream_options"];
        Reply::Text(super::echo_params(&body, &conversation))
    } else {
        reply::plan(&request)
    };
    let request_id = request_id_header(n);
    if stream {
        let include_usage = request
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let ending = match magic {
            Magic::Truncated => stream::Ending::Abort,
            Magic::TruncatedClean => stream::Ending::Clean,
            _ => stream::Ending::Done,
        };
        let slow;
        let config = if magic == Magic::Slow {
            slow = MockConfig {
                chunks: 50,
                chunk_delay: Duration::from_millis(100),
                ..config.clone()
            };
            &slow
        } else {
            config
        };
        let body = stream::body(
            config,
            &meta,
            &request.model,
            &reply,
            include_usage,
            ending,
            shared.dropped_streams.clone(),
        );
        return (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                (header::HeaderName::from_static("x-request-id"), request_id),
            ],
            body,
        )
            .into_response();
    }

    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let json = completion_json(config, &meta, &request.model, &reply);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::HeaderName::from_static("x-request-id"), request_id),
        ],
        json,
    )
        .into_response()
}

/// Per-request values shared by every chunk of one reply.
pub(crate) struct Meta {
    pub id: String,
    pub created: u64,
    pub prompt_tokens: u64,
    /// The tier the answer reports having used.
    pub service_tier: &'static str,
}

fn completion_json(config: &MockConfig, meta: &Meta, model: &str, reply: &Reply) -> Vec<u8> {
    let (content, tool_calls, finish_reason, pieces) = match reply {
        Reply::Text(text) => (Some(text.as_str()), None, "stop", config.chunks),
        Reply::ToolCall { name, arguments } => (
            None,
            Some([ToolCall {
                id: reply::TOOL_CALL_ID,
                kind: "function",
                function: FunctionCall { name, arguments },
            }]),
            "tool_calls",
            stream::tool_argument_pieces(config, arguments),
        ),
    };
    let completion = Completion {
        id: &meta.id,
        object: "chat.completion",
        created: meta.created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: ResponseMessage {
                role: "assistant",
                content,
                refusal: (),
                tool_calls,
                annotations: [],
            },
            logprobs: (),
            finish_reason,
        }],
        usage: Usage::new(meta.prompt_tokens, count(pieces)),
        service_tier: meta.service_tier,
        system_fingerprint: SYSTEM_FINGERPRINT,
    };
    serde_json::to_vec(&completion).unwrap_or_default()
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id_header(n: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("req_mock{n:016x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("req_mock"))
}

#[allow(clippy::result_large_err)]
fn check_key(headers: &HeaderMap, expected: &str) -> Result<(), Response> {
    let provided = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match provided {
        Some(key) if key == expected => Ok(()),
        Some(key) if !key.is_empty() => {
            let message = format!(
                "Incorrect API key provided: {}. You can find your API key at \
                 https://platform.openai.com/account/api-keys.",
                reply::mask_key(key)
            );
            Err(error_response(
                StatusCode::UNAUTHORIZED,
                &message,
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ))
        }
        _ => Err(error_response(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), \
             or as the password field (i.e. basic auth: <user>:YOUR_KEY), or as the \
             password field (i.e. basic auth: :YOUR_KEY). You can obtain an API key from \
             https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
            None,
        )),
    }
}

fn bad_body(err: &serde_json::Error) -> Response {
    use serde_json::error::Category;
    // Never quote the body back: serde's data errors can contain prompt text.
    let message = match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON. If you have trouble figuring out how to \
             fix this, please contact us through our help center at help.openai.com.)"
                .to_owned()
        }
        Category::Data => format!(
            "Invalid request body: a required parameter is missing or has the wrong type \
             (line {}, column {}).",
            err.line(),
            err.column()
        ),
    };
    error_response(
        StatusCode::BAD_REQUEST,
        &message,
        "invalid_request_error",
        None,
        None,
    )
}

/// OpenAI's error body for `status`, with the headers OpenAI sends alongside it.
fn status_error(status: StatusCode) -> Response {
    let (message, kind, code): (&str, &'static str, Option<&'static str>) = match status.as_u16() {
        401 => (
            "Incorrect API key provided: ********. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        403 => (
            "Country, region, or territory not supported",
            "request_forbidden",
            Some("unsupported_country_region_territory"),
        ),
        404 => (
            "The model `mock` does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        ),
        429 => (
            "Rate limit reached for mock in organization org-mock on requests per min \
             (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s. Visit \
             https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500 => (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        502 => ("Bad gateway.", "server_error", None),
        503 => (
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
        ),
        504 => ("Gateway timeout.", "server_error", None),
        400..=499 => (
            "Invalid request (mock error).",
            "invalid_request_error",
            None,
        ),
        _ => (
            "The server had an error while processing your request (mock error).",
            "server_error",
            None,
        ),
    };
    let mut response = error_response(status, message, kind, None, code);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let headers = response.headers_mut();
        for (name, value) in [
            ("retry-after", "1"),
            ("retry-after-ms", "1000"),
            ("x-ratelimit-limit-requests", "3"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
        ] {
            headers.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
    }
    response
}

fn error_response(
    status: StatusCode,
    message: &str,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(json),
    )
        .into_response()
}
