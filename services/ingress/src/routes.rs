//! The HTTP routes and the request pipeline behind them.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use schemas::catalog::{Catalog, CatalogModel, Task};
use schemas::subjects::{self, ModelRoute};
use schemas::{
    ErrorBody, ErrorKind, ReplyChunk, ReplyTarget, RequestEnvelope, SealKey, SealedRequest,
    TaskInput, TaskOutput, Usage,
};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::openai::{self, Completion};
use crate::replies::{Registration, Replies};

/// Everything a handler needs.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub seal: SealKey,
    pub replies: Replies,
    pub auth: crate::auth::Auth,
    pub catalog: schemas::catalog::Catalog,
    pub metrics: Metrics,
    pub clusters: crate::clusters::Clusters,
    pub spend: std::sync::Arc<switchyard_store::spend::SpendLimits>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

pub(crate) type Shared = Arc<AppState>;

/// The caller's header carrying their own provider key.
pub const PROVIDER_KEY_HEADER: &str = "provider-key";

pub fn router(state: Shared) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(crate::embeddings::embeddings))
        .route("/models/v2/{*model_id}", post(crate::unified::unified))
        .route("/v1/models", get(crate::models::list))
        .route("/v1/catalog", get(crate::models::catalog))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(crate::clusters::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such route").with_param("path")
}

async fn healthz(State(state): State<Shared>) -> Response {
    match state.client.connection_state() {
        async_nats::connection::State::Connected => {
            axum::Json(serde_json::json!({"status": "ok"})).into_response()
        }
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "unavailable", "nats": other.to_string()})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            switchyard_telemetry::METRICS_CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Checks `Authorization: Bearer <key>` (or `Key <key>`) — the dev key, or an
/// account's key through [`crate::auth`] — and the key's rate limit; returns the account.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<String, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            ErrorKind::Authentication,
            "missing API key: send 'Authorization: Bearer <your Switchyard API key>'",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .or_else(|| v.strip_prefix("Key "))
                .or_else(|| v.strip_prefix("key "))
        })
        .map(str::trim)
        .unwrap_or_default();
    let caller = state.auth.check(presented).await?;
    state.auth.limit(&caller)?;
    Ok(caller.account)
}

async fn chat_completions(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    state.metrics.in_flight.inc();
    let (response, stream) = match handle_chat(&state, &headers, body, started).await {
        Ok((response, stream)) => (response, stream),
        Err(e) => (e.into_response(), false),
    };
    state.metrics.in_flight.dec();
    record(
        &state,
        "chat_completions",
        response.status(),
        stream,
        started,
    );
    response
}

/// Counts an answered request by route and status, and observes a non-streaming
/// answer's duration (a stream's is observed when it ends).
pub(crate) fn record(
    state: &AppState,
    route: &str,
    status: StatusCode,
    stream: bool,
    started: Instant,
) {
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.to_string(),
            status: status.as_u16(),
            stream,
        })
        .inc();
    if !stream {
        state
            .metrics
            .duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The OpenAI-compatible route: parse, run through the pipeline, answer JSON or SSE.
async fn handle_chat(
    state: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    started: Instant,
) -> Result<(Response, bool), ApiError> {
    let account = authenticate(state, headers).await?;
    let body = read_body(state, body)?;
    let normalized = openai::normalize(openai::parse_body(&body)?)?;
    let include_usage = normalized.include_usage;
    let mut prepared = prepare(state, headers, normalized.request, None, account)?;
    let span = tracing::info_span!(
        "chat",
        request_id = %prepared.request_id,
        model = %prepared.model,
        stream = prepared.stream
    );
    async move {
        let Dispatched {
            mut registration,
            first,
            mut cancel,
        } = dispatch(state, &mut prepared, "chat_completions", started).await?;
        let context = ReplyContext {
            id: format!("chatcmpl-{}", prepared.request_id.simple()),
            created: prepared.created_at.timestamp(),
            model: prepared.model.clone(),
            provider: first.provider.clone(),
            service_tier: first.service_tier.clone(),
        };
        let headers = answer_headers(prepared.request_id, &first);
        if prepared.stream {
            // The forwarding task takes over noticing a caller who leaves.
            cancel.disarm();
            let events = stream_events(
                state,
                registration,
                first,
                context,
                include_usage,
                prepared.deadline,
                started,
            );
            Ok((
                (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response(),
                true,
            ))
        } else {
            let completion = collect(&mut registration, first, prepared.deadline).await?;
            cancel.disarm();
            let body = openai::completion_json(
                &completion,
                &context.id,
                context.created,
                &context.model,
                context.provider.as_deref(),
            );
            Ok(((headers, axum::Json(body)).into_response(), false))
        }
    }
    .instrument(span)
    .await
}

/// The body, or a 413 / 400 saying why it could not be read.
pub(crate) fn read_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request body is larger than the {} byte limit",
                    state.config.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("cannot read request body: {rejection}"),
            )
        }
    })
}

/// A request sealed into its envelope, ready to publish.
pub(crate) struct Prepared {
    pub(crate) request_id: Uuid,
    subject: String,
    envelope: RequestEnvelope,
    /// Open models: the cluster it runs on (made on first use; bounds a cold start).
    cluster: Option<crate::clusters::OpenRun>,
    traceparent: Option<String>,
    pub(crate) model: String,
    pub(crate) stream: bool,
    pub(crate) created_at: chrono::DateTime<Utc>,
    pub(crate) deadline: TokioInstant,
}

/// Where a model id goes.
pub(crate) enum Target<'a> {
    /// `openai/…`, `anthropic/…`, `google/…`: the translator, with the caller's key.
    Closed(subjects::Provider),
    /// A catalog model run by our own inference workers on `req.open.<token>`.
    Open {
        model: &'a CatalogModel,
        token: String,
    },
}

/// Routes a model id: closed models by their provider prefix (listed or not), open
/// models only when the catalog lists them. `param` names the field in errors.
pub(crate) fn resolve<'a>(
    catalog: &'a Catalog,
    model: &str,
    param: &str,
) -> Result<Target<'a>, ApiError> {
    match subjects::route_model(model)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.to_string()).with_param(param))?
    {
        ModelRoute::Closed { provider, .. } => Ok(Target::Closed(provider)),
        ModelRoute::Open { token } => match catalog.get(model).filter(|m| m.open.is_some()) {
            Some(entry) => Ok(Target::Open {
                model: entry,
                token,
            }),
            None => Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "the model '{model}' does not exist: open models are the ones GET /v1/models lists (owned_by \"switchyard\"); closed models are named openai/<model>, anthropic/<model> or google/<model>"
                ),
            )
            .with_param(param)),
        },
    }
}

/// The catalog task a request asks for: chat unless it carries another task.
pub(crate) fn task_of(task: Option<&TaskInput>) -> Task {
    schemas::catalog::task_of(task)
}

/// `a, b and c`.
fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A 400 unless `target` serves `task`; the message says what the model does and
/// which models do `task`.
pub(crate) fn check_task(
    catalog: &Catalog,
    target: &Target<'_>,
    model: &str,
    task: Task,
    param: &str,
) -> Result<(), ApiError> {
    let why = match target {
        Target::Closed(_) if task == Task::Chat => return Ok(()),
        Target::Open { model: entry, .. } if entry.serves(task) => return Ok(()),
        Target::Closed(_) => "closed models are served for chat only".to_string(),
        Target::Open { model: entry, .. } => {
            let tasks: Vec<&str> = std::iter::once(entry.task)
                .chain(entry.other_tasks.iter().copied())
                .map(Task::as_str)
                .collect();
            format!("it serves {}", tasks.join(", "))
        }
    };
    let doers: Vec<&str> = catalog
        .filtered(Some(task))
        .map(|m| m.id.as_str())
        .take(4)
        .collect();
    let hint = match doers.len() {
        0 => format!("no model in the catalog does {}", task.as_str()),
        1..=3 => format!(
            "{} {} (GET /v1/catalog?task={})",
            and_list(&doers),
            if doers.len() == 1 { "does" } else { "do" },
            task.as_str()
        ),
        _ => format!(
            "GET /v1/catalog?task={} lists the models that do",
            task.as_str()
        ),
    };
    Err(ApiError::new(
        ErrorKind::InvalidRequest,
        format!(
            "the model '{model}' does not do {}; {why}; {hint}",
            task.as_str()
        ),
    )
    .with_param(param))
}

/// Why `target` cannot honour the request's response format (see
/// [`schemas::ResponseFormat::refusal`]; answering in free text instead would break
/// the caller's parsing), or `None` when it can or there is none.
fn format_refusal(format: Option<&schemas::ResponseFormat>, target: &Target<'_>) -> Option<String> {
    let provider = match target {
        Target::Closed(p) => Some(*p),
        Target::Open { .. } => None,
    };
    format.and_then(|f| f.refusal(provider))
}

/// Routes the model (closed: the translator, with the caller's `provider-key`; open:
/// the catalog's models, no provider key, never forwarded), checks the model serves the
/// request's task, and seals the request into an envelope. Every route of the API
/// goes through here, for closed and open models alike; `task` is `None` for chat.
pub(crate) fn prepare(
    state: &AppState,
    headers: &HeaderMap,
    request: schemas::ChatRequest,
    task: Option<TaskInput>,
    account: String,
) -> Result<Prepared, ApiError> {
    let kind = task_of(task.as_ref());
    let target = resolve(&state.catalog, &request.model, "model")?;
    check_task(&state.catalog, &target, &request.model, kind, "model")?;
    if let Some(why) = format_refusal(request.response_format.as_ref(), &target) {
        return Err(ApiError::new(ErrorKind::InvalidRequest, why).with_param("response_format"));
    }
    if let Some(name) = headers
        .keys()
        .map(|n| n.as_str())
        .find(|n| openai::is_base_url_header(n))
    {
        return Err(openai::base_url_override(name));
    }
    openai::validate_params(&request.params)?;
    let mut cluster = None;
    let (subject, primary, provider_key) = match target {
        Target::Closed(provider) => {
            let key = header_text(headers, PROVIDER_KEY_HEADER).ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Authentication,
                    "missing provider-key header: closed models are called with your own provider API key",
                )
            })?;
            (
                subjects::closed_request(provider),
                Some(provider),
                Some(key.to_string()),
            )
        }
        // Our own workers need no provider key: one sent anyway stays here.
        Target::Open { token, model } => {
            state.spend.check(&account).map_err(ApiError::from)?;
            cluster = Some(crate::clusters::OpenRun::new(headers, &account, model)?);
            (
                subjects::open_request(&token, &subjects::model_token(&account).map_err(internal)?),
                None,
                None,
            )
        }
    };
    let traceparent = headers
        .get(schemas::headers::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| schemas::headers::is_traceparent(v))
        .map(str::to_string);

    let provider_keys = fallback_keys(
        &state.catalog,
        headers,
        &request.fallback_models,
        kind,
        request.response_format.as_ref(),
        primary,
    )?;

    let request_id = Uuid::now_v7();
    let model = request.model.clone();
    let stream = request.stream;
    let created_at = Utc::now();
    let timeout = state.config.request_timeout();
    let sealed_plain = schemas::encode(&SealedRequest {
        request,
        provider_key,
        provider_keys,
        task,
    })
    .map_err(internal)?;
    let body = state
        .seal
        .seal(request_id, &sealed_plain)
        .map_err(internal)?;
    let envelope = RequestEnvelope {
        schema_version: schemas::SCHEMA_VERSION,
        request_id,
        account,
        created_at,
        deadline: created_at + chrono::Duration::from_std(timeout).map_err(internal)?,
        reply: ReplyTarget::Stream {
            subject: state.replies.subject(request_id),
        },
        model: model.clone(),
        body,
        start_by: None,
        enqueue_by: None,
    };
    Ok(Prepared {
        request_id,
        subject,
        envelope,
        cluster,
        traceparent,
        model,
        stream,
        created_at,
        deadline: TokioInstant::now() + timeout,
    })
}

/// A header's value, trimmed, when it is present, text and not empty.
fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks the fallback models — closed models, or catalog models serving the same
/// task and able to honour the response `format` — and collects the caller's key for each provider they need beyond the
/// primary one, from `provider-key-<provider>`. With an open primary model (no
/// `primary` provider) every closed fallback needs its `provider-key-<provider>`:
/// `provider-key` itself is never forwarded with an open model.
fn fallback_keys(
    catalog: &Catalog,
    headers: &HeaderMap,
    fallbacks: &[String],
    task: Task,
    format: Option<&schemas::ResponseFormat>,
    primary: Option<subjects::Provider>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut keys = std::collections::BTreeMap::new();
    for (i, model) in fallbacks.iter().enumerate() {
        let param = format!("models[{i}]");
        let target = resolve(catalog, model, &param)?;
        check_task(catalog, &target, model, task, &param)?;
        if let Some(why) = format_refusal(format, &target) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("the fallback model '{model}' cannot be used: {why}"),
            )
            .with_param(param));
        }
        let Target::Closed(provider) = target else {
            continue;
        };
        if Some(provider) == primary || keys.contains_key(provider.as_str()) {
            continue;
        }
        let header = format!("{PROVIDER_KEY_HEADER}-{}", provider.as_str());
        let key = header_text(headers, &header).ok_or_else(|| {
            let also = if primary.is_none() {
                " (provider-key is not forwarded with an open model)"
            } else {
                ""
            };
            ApiError::new(
                ErrorKind::Authentication,
                format!(
                    "the fallback model '{model}' needs your {} key: send it in the {header} header{also}",
                    provider.as_str()
                ),
            )
            .with_param(param)
        })?;
        keys.insert(provider.as_str().to_string(), key.to_string());
    }
    Ok(keys)
}

/// A published request whose first reply chunk arrived (and was not an error).
pub(crate) struct Dispatched {
    pub(crate) registration: Registration,
    pub(crate) first: ReplyChunk,
    pub(crate) cancel: CancelOnDrop,
}

/// Publishes the request and waits for its first chunk; an error chunk becomes the
/// answer's status. `route` labels the first-chunk latency metric.
pub(crate) async fn dispatch(
    state: &AppState,
    prepared: &mut Prepared,
    route: &str,
    started: Instant,
) -> Result<Dispatched, ApiError> {
    // Register before publishing, so no reply can arrive unrouted.
    let mut registration = state.replies.register(prepared.request_id);
    // An open model's cluster is made on first use; with no instance running, the
    // request may only start within the caller's max wait (`start_by`).
    let cold = match &prepared.cluster {
        Some(run) => crate::clusters::before_publish(state, run, prepared.deadline).await,
        None => None,
    };
    // The publish has until `enqueue_by` to be acknowledged; a worker drops the request
    // if the stream stored it later than that (the caller was told to retry by then).
    let publish_timeout = state.config.publish_timeout();
    let enqueue_by = Utc::now() + chrono::Duration::from_std(publish_timeout).map_err(internal)?;
    prepared.envelope.enqueue_by = Some(enqueue_by);
    prepared.envelope.start_by = cold.as_ref().map(|cold| cold.start_by);
    let payload = schemas::encode(&prepared.envelope).map_err(internal)?;
    publish(
        state,
        &prepared.subject,
        prepared.request_id,
        Bytes::from(payload),
        prepared.traceparent.as_deref(),
        TokioInstant::now() + publish_timeout,
    )
    .await?;
    // From here on a worker may be running it: if the caller goes away (this future
    // is dropped) or the deadline passes, tell the worker to stop.
    let mut cancel = CancelOnDrop::new(state, prepared.request_id);
    let mut first = match &cold {
        None => next_chunk(&mut registration, prepared.deadline).await?,
        Some(cold) => crate::clusters::first_chunk(state, &mut registration, cold).await?,
    };
    state
        .metrics
        .first_chunk
        .get_or_create(&RouteLabels {
            route: route.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    if let Some(error) = first.error.take() {
        cancel.disarm();
        return Err(ApiError::from(error));
    }
    Ok(Dispatched {
        registration,
        first,
        cancel,
    })
}

/// `x-request-id`, and who served the answer.
pub(crate) fn answer_headers(request_id: Uuid, first: &ReplyChunk) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&request_id.to_string()) {
        headers.insert("x-request-id", v);
    }
    if let Some(p) = first
        .provider
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert("x-switchyard-provider", p);
    }
    if let Some(m) = first
        .model
        .as_deref()
        .and_then(|m| HeaderValue::from_str(m).ok())
    {
        headers.insert("x-switchyard-served-model", m);
    }
    // Parameters the provider has no equivalent for, so the caller knows they were
    // not applied.
    if !first.dropped_params.is_empty()
        && let Ok(v) = HeaderValue::from_str(&first.dropped_params.join(","))
    {
        headers.insert("x-switchyard-dropped-params", v);
    }
    headers
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "internal error");
    ApiError::new(ErrorKind::Internal, "internal error")
}

/// Publishes `cancel.<request>` when dropped while armed.
pub(crate) struct CancelOnDrop {
    client: async_nats::Client,
    tracker: TaskTracker,
    request_id: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    fn new(state: &AppState, request_id: Uuid) -> Self {
        Self {
            client: state.client.clone(),
            tracker: state.tracker.clone(),
            request_id,
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let client = self.client.clone();
            let subject = subjects::cancel(self.request_id);
            self.tracker.spawn(async move {
                let _ = client.publish(subject, Bytes::new()).await;
            });
        }
    }
}

/// JetStream publish with an awaited PubAck by `ack_by` (handing the message to the
/// NATS client included: it may be holding messages while the server is away);
/// `Nats-Msg-Id` deduplicates retries.
async fn publish(
    state: &AppState,
    subject: &str,
    id: Uuid,
    payload: Bytes,
    traceparent: Option<&str>,
    ack_by: TokioInstant,
) -> Result<(), ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "cannot queue request");
        let mut body = ErrorBody::new(
            ErrorKind::Unavailable,
            "the request queue is unavailable; retry shortly",
        );
        body.retry_after_ms = Some(1000);
        ApiError::from(body)
    };
    let mut message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .message_id(id.to_string());
    if let Some(tp) = traceparent {
        message = message.header(schemas::headers::TRACEPARENT, tp);
    }
    let acked = async {
        let ack = state
            .js
            .send_publish(subject.to_string(), message)
            .await
            .map_err(|e| unavailable(&e))?;
        ack.await.map_err(|e| unavailable(&e))
    };
    match tokio::time::timeout_at(ack_by, acked).await {
        Ok(Ok(_ack)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(unavailable(
            &"timed out waiting for the JetStream acknowledgement",
        )),
    }
}

/// The next chunk, or a 504 when the deadline passes first.
pub(crate) async fn next_chunk(
    registration: &mut Registration,
    deadline: TokioInstant,
) -> Result<ReplyChunk, ApiError> {
    match tokio::time::timeout_at(deadline, registration.rx.recv()).await {
        Ok(Some(chunk)) => Ok(chunk),
        Ok(None) => Err(ApiError::new(
            ErrorKind::Unavailable,
            "the ingress is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            ErrorKind::Timeout,
            "no answer from a worker before the request deadline",
        )),
    }
}

/// Fields every chunk of one answer repeats.
#[derive(Debug, Clone)]
struct ReplyContext {
    id: String,
    created: i64,
    model: String,
    provider: Option<String>,
    /// The tier the provider reports having used (OpenAI's `service_tier`).
    service_tier: Option<String>,
}

/// Checks the chunk order: `seq` grows by one; an error chunk ends the reply whatever its seq.
pub(crate) fn in_order(chunk: &ReplyChunk, expected: u32) -> Result<(), ApiError> {
    if chunk.error.is_none() && chunk.seq != expected {
        return Err(ApiError::new(
            ErrorKind::Internal,
            format!(
                "reply chunks were lost (expected {expected}, got {})",
                chunk.seq
            ),
        ));
    }
    Ok(())
}

/// Reads chunks to the last one and assembles a non-streaming answer
/// ([`schemas::batch::Assembly`], as batch results are). A redelivered request starts
/// over from seq 0: the fresh answer replaces what came before.
pub(crate) async fn collect(
    registration: &mut Registration,
    first: ReplyChunk,
    deadline: TokioInstant,
) -> Result<Completion, ApiError> {
    let mut answer = Completion::default();
    let mut chunk = first;
    let mut expected = 0u32;
    loop {
        if chunk.seq == 0 && chunk.error.is_none() {
            expected = 0;
        }
        in_order(&chunk, expected)?;
        if let Some(error) = chunk.error {
            return Err(ApiError::from(error));
        }
        answer.add(&chunk);
        if chunk.last {
            return Ok(answer);
        }
        expected += 1;
        chunk = next_chunk(registration, deadline).await?;
    }
}

/// The result of a task request (embeddings, zero-shot classification).
#[derive(Debug)]
pub(crate) struct TaskReply {
    pub(crate) output: TaskOutput,
    pub(crate) usage: Option<Usage>,
}

/// Reads a task request's reply to its last chunk. The worker sends the result whole,
/// in `output` (one chunk: seq 0, `last`); a reply that ends without one is an
/// internal error.
pub(crate) async fn collect_output(
    registration: &mut Registration,
    first: ReplyChunk,
    deadline: TokioInstant,
) -> Result<TaskReply, ApiError> {
    let answer = collect(registration, first, deadline).await?;
    let usage = answer.usage;
    answer
        .output
        .map(|output| TaskReply { output, usage })
        .ok_or_else(|| internal("a worker ended a task reply without its output"))
}

fn event(value: &serde_json::Value) -> Event {
    Event::default().data(value.to_string())
}

/// Turns reply chunks into OpenAI SSE events, ending with `data: [DONE]`. A task
/// forwards them so a caller who goes away is noticed (the send fails) and the worker
/// is told to stop (`cancel.<request>`).
fn stream_events(
    state: &Shared,
    mut registration: Registration,
    first: ReplyChunk,
    ctx: ReplyContext,
    include_usage: bool,
    deadline: TokioInstant,
    started: Instant,
) -> impl futures::Stream<Item = Result<Event, Infallible>> + use<> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let client = state.client.clone();
    let shared = state.clone();
    let request_id = registration.id;
    state.tracker.spawn(
        async move {
            let mut chunk = first;
            let mut order = crate::resume::StreamOrder::default();
            let mut usage = None;
            let finished = loop {
                if let Err(e) = order.admit(&mut chunk) {
                    break Err(e);
                }
                if let Some(error) = chunk.error.take() {
                    break Err(ApiError::from(error));
                }
                if chunk.usage.is_some() {
                    usage = chunk.usage;
                }
                let delta = chunk.delta.as_ref().map(openai::delta_json);
                let has_delta = delta
                    .as_ref()
                    .is_some_and(|d| d.as_object().is_some_and(|o| !o.is_empty()));
                if has_delta || chunk.finish_reason.is_some() {
                    let body = openai::chunk_json(
                        &ctx.id,
                        ctx.created,
                        &ctx.model,
                        ctx.service_tier.as_deref(),
                        delta.unwrap_or_else(|| serde_json::json!({})),
                        chunk.finish_reason,
                    );
                    if tx.send(event(&body)).await.is_err() {
                        break Ok(false);
                    }
                }
                if chunk.last {
                    break Ok(true);
                }
                chunk = match next_chunk(&mut registration, deadline).await {
                    Ok(c) => c,
                    Err(e) => break Err(e),
                };
            };
            match finished {
                Ok(true) => {
                    if include_usage && let Some(u) = &usage {
                        let _ = tx
                            .send(event(&openai::usage_chunk_json(
                                &ctx.id,
                                ctx.created,
                                &ctx.model,
                                ctx.service_tier.as_deref(),
                                u,
                            )))
                            .await;
                    }
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                }
                Ok(false) => {
                    tracing::info!("caller went away; cancelling");
                    let _ = client
                        .publish(subjects::cancel(request_id), Bytes::new())
                        .await;
                }
                Err(e) => {
                    // OpenAI's SDKs raise on an event carrying `error`.
                    let _ = tx.send(event(&e.openai_body())).await;
                }
            }
            shared
                .metrics
                .duration
                .get_or_create(&RouteLabels {
                    route: "chat_completions".into(),
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
