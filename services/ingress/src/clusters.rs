//! Clusters: the cluster API (`/v1/clusters`), and what an open-model request does
//! about its cluster — create it on first use, and bound a cold start's wait.
//!
//! A cluster is the instances serving one open model for one account. Its spec
//! ([`ClusterSpec`]) lives in the JetStream KV bucket `clusters` under
//! `spec.<account-token>.<model-token>`, written only here (JSON); its status
//! ([`ClusterStatus`]) under `status.<…>`, written only by the autoscaler. Every write
//! is revision-checked (`create`, `update` with the revision read), so concurrent
//! PATCHes never lose one another's changes and a POST never overwrites.
//!
//! Routes (the caller's account only; another account's cluster is a 404):
//! `POST /v1/clusters`, `GET /v1/clusters`, and `PUT` / `GET` / `PATCH` / `DELETE`
//! `/v1/clusters/{model id}`.
//!
//! The request path ([`OpenRun`], [`before_publish`], [`first_chunk`]): an open-model
//! request makes sure its cluster exists (creating it with the defaults), and when the
//! cluster has no instance it carries `start_by` and the ingress waits for the first
//! chunk at most the caller's `x-switchyard-max-wait`, then answers 503 with
//! `Retry-After`. A small per-ingress cache keeps the hot path off KV: a cluster known
//! to exist is not looked up again for [`SPEC_TTL`], its status for [`STATUS_TTL`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use schemas::catalog::{Catalog, CatalogModel};
use schemas::cluster::{
    self, ClusterSpec, ClusterStatus, DEFAULT_BATCH_INSTANCES, DEFAULT_MAX_INSTANCES,
    DEFAULT_TARGET_CONCURRENCY, DEFAULT_TIMEOUT_MINUTES, MAX_INSTANCES, MAX_TARGET_CONCURRENCY,
    MAX_TIMEOUT_MINUTES,
};
use schemas::subjects::CLUSTERS_BUCKET;
use schemas::{ErrorBody, ErrorKind, ReplyChunk};
use serde_json::{Map, Value, json};
use tokio::time::Instant as TokioInstant;

use crate::error::ApiError;
use crate::metrics::{ClusterApiLabels, OutcomeLabels};
use crate::replies::Registration;
use crate::routes::{self, AppState, Shared, Target};

/// The header with which a caller bounds a cold start's wait, in whole seconds.
pub const MAX_WAIT_HEADER: &str = "x-switchyard-max-wait";
/// The wait without the header.
pub const DEFAULT_MAX_WAIT_SECS: u64 = 60;
/// The longest wait the header may ask for (the REQUESTS stream keeps a request 300 s).
pub const MAX_MAX_WAIT_SECS: u64 = 300;
/// `Retry-After` of a cold start's 503: an instance is on its way by then.
pub const COLD_START_RETRY_AFTER_MS: u64 = 5_000;
/// A worker may start a cold request until this long before the ingress stops
/// waiting (a quarter of the wait when that is shorter), so a request started just in
/// time has a moment to send its first chunk instead of being cancelled by the 503.
const START_MARGIN: Duration = Duration::from_secs(1);
/// How long this ingress trusts that a cluster exists without asking KV again (a
/// DELETE through another ingress is noticed after this long).
pub const SPEC_TTL: Duration = Duration::from_secs(30);
/// How long a cluster's status is trusted (the autoscaler writes it about every second).
pub const STATUS_TTL: Duration = Duration::from_secs(1);
/// Most clusters the cache holds.
const CACHE_SIZE: usize = 10_000;
/// The longest the request path waits for KV before going on without it.
const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// Revision-checked writes retried this often when someone else wrote in between.
const WRITE_ATTEMPTS: usize = 8;

/// Fields the cluster reports and no body may set.
const READ_ONLY: [&str; 7] = [
    "object",
    "status",
    "instances",
    "inferences",
    "last_inference_at",
    "created",
    "modified",
];

/// The bucket, and what this ingress knows about clusters.
#[derive(Debug, Default)]
pub struct Clusters {
    store: tokio::sync::OnceCell<kv::Store>,
    known: Mutex<HashMap<String, Known>>,
}

/// A cluster as this ingress last saw it.
#[derive(Debug, Clone, Default)]
struct Known {
    /// When its spec was last seen (or written) here.
    spec_at: Option<Instant>,
    /// Its status (None: none yet) and when that was read.
    status: Option<(Option<ClusterStatus>, Instant)>,
}

impl Clusters {
    /// The `clusters` bucket, looked up once (so the ingress starts before `apply`).
    async fn store(&self, js: &async_nats::jetstream::Context) -> Result<&kv::Store, ApiError> {
        self.store
            .get_or_try_init(|| js.get_key_value(CLUSTERS_BUCKET))
            .await
            .map_err(|e| unavailable(&e))
    }

    fn lookup(&self, key: &str) -> Known {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, key: &str, f: impl FnOnce(&mut Known)) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= CACHE_SIZE && !known.contains_key(key) {
            let now = Instant::now();
            known.retain(|_, k| k.spec_at.is_some_and(|t| now.duration_since(t) < SPEC_TTL));
            if known.len() >= CACHE_SIZE {
                known.clear();
            }
        }
        f(known.entry(key.to_string()).or_default());
    }

    fn remember_spec(&self, key: &str) {
        self.update(key, |k| k.spec_at = Some(Instant::now()));
    }

    fn remember_status(&self, key: &str, status: Option<ClusterStatus>) {
        self.update(key, |k| k.status = Some((status, Instant::now())));
    }

    fn forget(&self, key: &str) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "cluster store unavailable");
    let mut body = ErrorBody::new(
        ErrorKind::Unavailable,
        "the cluster store is unavailable; retry shortly",
    );
    body.retry_after_ms = Some(1000);
    ApiError::from(body)
}

fn invalid(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
}

// ---------------------------------------------------------------------------------
// The request path.

/// An open-model request's cluster and how long its caller waits for a cold start;
/// made by `routes::prepare` for every open-model request.
#[derive(Debug, Clone)]
pub(crate) struct OpenRun {
    account: String,
    model_id: String,
    instance_type: String,
    /// `<account-token>.<model-token>`.
    key: String,
    max_wait: Duration,
}

impl OpenRun {
    /// Reads `x-switchyard-max-wait` (400 naming it when it is not 1–300 whole seconds).
    pub(crate) fn new(
        headers: &HeaderMap,
        account: &str,
        model: &CatalogModel,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            account: account.to_string(),
            model_id: model.id.clone(),
            instance_type: model
                .open
                .as_ref()
                .map(|o| o.instance_type.clone())
                .unwrap_or_default(),
            key: cluster::cluster_key(account, &model.id).map_err(routes::internal)?,
            max_wait: max_wait(headers)?,
        })
    }
}

/// The caller's `x-switchyard-max-wait`, or the default.
pub(crate) fn max_wait(headers: &HeaderMap) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(MAX_WAIT_HEADER) else {
        return Ok(Duration::from_secs(DEFAULT_MAX_WAIT_SECS));
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|secs| (1..=MAX_MAX_WAIT_SECS).contains(secs))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            invalid(
                format!(
                    "{MAX_WAIT_HEADER} must be a whole number of seconds from 1 to {MAX_MAX_WAIT_SECS}: how long to wait for an open model's cluster to start an instance (default {DEFAULT_MAX_WAIT_SECS})"
                ),
                MAX_WAIT_HEADER,
            )
        })
}

/// Whether a request to a cluster in this state waits for an instance to start: no
/// status yet (just created, or the store could not be read) or no instance ready
/// (none running, or all still loading their model).
pub(crate) fn is_cold(status: Option<&ClusterStatus>) -> bool {
    status.is_none_or(|s| s.ready == 0)
}

/// A request published to a cluster with no instance.
#[derive(Debug)]
pub(crate) struct ColdStart<'a> {
    run: &'a OpenRun,
    /// The envelope's `start_by`: a worker taking it later drops it unrun.
    pub(crate) start_by: DateTime<Utc>,
    /// When the ingress stops waiting for the first chunk.
    until: TokioInstant,
    wait: Duration,
}

/// Before an open-model request is published: makes sure its cluster exists
/// (creating it with the defaults when it does not), and when the cluster has no
/// instance, says until when the request may start and the caller waits (the
/// caller's max wait, at most until `deadline`). `None`: instances are running, only
/// the deadline applies. Never fails the request: when KV cannot be read the request
/// is treated as a cold start.
pub(crate) async fn before_publish<'a>(
    state: &AppState,
    run: &'a OpenRun,
    deadline: TokioInstant,
) -> Option<ColdStart<'a>> {
    let status = ensure(state, run).await;
    if !is_cold(status.as_ref()) {
        return None;
    }
    let now = TokioInstant::now();
    let wait = run.max_wait.min(deadline.saturating_duration_since(now));
    let startable = wait.saturating_sub(START_MARGIN.min(wait / 4));
    Some(ColdStart {
        run,
        start_by: Utc::now()
            + chrono::Duration::from_std(startable).unwrap_or(chrono::Duration::zero()),
        until: now + wait,
        wait,
    })
}

/// The cluster's status as last seen, after making sure the cluster exists.
async fn ensure(state: &AppState, run: &OpenRun) -> Option<ClusterStatus> {
    let known = state.clusters.lookup(&run.key);
    let now = Instant::now();
    let spec_known = known
        .spec_at
        .is_some_and(|t| now.duration_since(t) < SPEC_TTL);
    let cached = known
        .status
        .filter(|(_, at)| now.duration_since(*at) < STATUS_TTL)
        .map(|(status, _)| status);
    if spec_known && let Some(status) = &cached {
        return status.clone();
    }
    let store = state.clusters.store(&state.js).await.ok()?;
    let create = async {
        if spec_known {
            return;
        }
        let spec =
            ClusterSpec::with_defaults(&run.account, &run.model_id, &run.instance_type, now_ms());
        let Ok(key) = cluster::spec_key(&run.account, &run.model_id) else {
            return;
        };
        let created = tokio::time::timeout(KV_TIMEOUT, store.create(&key, json_bytes(&spec))).await;
        match created {
            Ok(Ok(_)) => {
                state.metrics.clusters_auto_created.inc();
                tracing::info!(model = %run.model_id, account = %run.account, "created a cluster with the defaults for a first request");
                state.clusters.remember_spec(&run.key);
            }
            Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                state.clusters.remember_spec(&run.key);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, model = %run.model_id, "cannot create the cluster")
            }
            Err(_) => tracing::warn!(model = %run.model_id, "timed out creating the cluster"),
        }
    };
    let status = async {
        if let Some(status) = cached {
            return status;
        }
        match tokio::time::timeout(KV_TIMEOUT, read_status(store, &run.account, &run.model_id))
            .await
        {
            Ok(Ok(status)) => {
                state.clusters.remember_status(&run.key, status.clone());
                status
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e.0.message, model = %run.model_id, "cannot read the cluster's status");
                None
            }
            Err(_) => None,
        }
    };
    let ((), status) = tokio::join!(create, status);
    status
}

/// The first chunk of a cold-started request, or — when none came within the caller's
/// max wait — a 503 with `Retry-After` and the cluster's status. The caller of
/// [`crate::routes::dispatch`] then publishes `cancel.<request>` as for any caller who
/// stops waiting; a worker that takes the request later drops it unrun (`start_by`).
pub(crate) async fn first_chunk(
    state: &AppState,
    registration: &mut Registration,
    cold: &ColdStart<'_>,
) -> Result<ReplyChunk, ApiError> {
    match routes::next_chunk(registration, cold.until).await {
        Err(e) if e.0.kind == ErrorKind::Timeout => {
            cold_outcome(state, "gave_up");
            Err(gave_up(state, cold).await)
        }
        other => {
            if other.is_ok() {
                cold_outcome(state, "started");
            }
            other
        }
    }
}

fn cold_outcome(state: &AppState, outcome: &str) {
    state
        .metrics
        .cold_starts
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_string(),
        })
        .inc();
}

/// The 503 of a cold start the caller stopped waiting for, with the status read now.
async fn gave_up(state: &AppState, cold: &ColdStart<'_>) -> ApiError {
    let run = cold.run;
    let status = match state.clusters.store(&state.js).await {
        Ok(store) => {
            tokio::time::timeout(KV_TIMEOUT, read_status(store, &run.account, &run.model_id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
        Err(_) => None,
    };
    state.clusters.remember_status(&run.key, status.clone());
    let state_name = status.as_ref().map_or("creating", |s| s.state.as_str());
    let instances = status.as_ref().map_or(0, |s| s.instances);
    let mut body = ErrorBody::new(
        ErrorKind::Unavailable,
        format!(
            "the cluster for '{}' has no instance ready yet (status {state_name}, {instances} instances); waited {:.1} s ({MAX_WAIT_HEADER}). This request will not run: retry it after Retry-After",
            run.model_id,
            cold.wait.as_secs_f64()
        ),
    );
    body.retry_after_ms = Some(COLD_START_RETRY_AFTER_MS);
    ApiError::from(body).with_code("cold_start").with_field(
        "cluster",
        json!({
            "model_id": run.model_id,
            "status": state_name,
            "instances": instances,
            "desired": status.as_ref().map_or(0, |s| s.desired),
            "load": status.as_ref().map_or(0, |s| s.load),
        }),
    )
}

// ---------------------------------------------------------------------------------
// KV.

fn json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    // Plain structs of numbers, strings and timestamps always serialize.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Now, to the millisecond (timestamps in answers stay short).
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

fn key_error(e: schemas::subjects::ModelIdError) -> ApiError {
    invalid(e.to_string(), "model_id")
}

/// A cluster's spec and its revision; `None` when there is none (or it was deleted).
async fn read_spec(
    store: &kv::Store,
    account: &str,
    model_id: &str,
) -> Result<Option<(ClusterSpec, u64)>, ApiError> {
    let key = cluster::spec_key(account, model_id).map_err(key_error)?;
    read_spec_at(store, account, &key).await
}

async fn read_spec_at(
    store: &kv::Store,
    account: &str,
    key: &str,
) -> Result<Option<(ClusterSpec, u64)>, ApiError> {
    let Some(entry) = store.entry(key).await.map_err(|e| unavailable(&e))? else {
        return Ok(None);
    };
    if entry.operation != Operation::Put {
        return Ok(None);
    }
    let spec: ClusterSpec = serde_json::from_slice(&entry.value)
        .map_err(|e| routes::internal(format!("cluster spec {key} is not readable: {e}")))?;
    // The key holds the account already; never show another's, whatever the value says.
    Ok((spec.account == account).then_some((spec, entry.revision)))
}

/// A cluster's status; `None` when the autoscaler has written none.
async fn read_status(
    store: &kv::Store,
    account: &str,
    model_id: &str,
) -> Result<Option<ClusterStatus>, ApiError> {
    let key = cluster::status_key(account, model_id).map_err(key_error)?;
    let Some(entry) = store
        .entry(key.as_str())
        .await
        .map_err(|e| unavailable(&e))?
    else {
        return Ok(None);
    };
    if entry.operation != Operation::Put {
        return Ok(None);
    }
    match serde_json::from_slice(&entry.value) {
        Ok(status) => Ok(Some(status)),
        Err(e) => {
            tracing::warn!(error = %e, key, "unreadable cluster status");
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------------------------
// The API.

/// `/v1/clusters` and `/v1/clusters/{model id}`.
pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/v1/clusters", get(list).post(create))
        .route(
            "/v1/clusters/{*model_id}",
            get(read).put(put).patch(patch).delete(delete),
        )
}

/// The answer, counted by route and status.
fn answer(
    state: &AppState,
    route: &str,
    result: Result<(StatusCode, Value), ApiError>,
) -> Response {
    let response = match result {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    };
    state
        .metrics
        .cluster_api
        .get_or_create(&ClusterApiLabels {
            route: route.to_string(),
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The model id in the path, checked for characters a key cannot hold.
fn path_model(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(model_id) =
        path.map_err(|r| invalid(format!("invalid model id in the path: {r}"), "model_id"))?;
    schemas::subjects::model_token(&model_id).map_err(key_error)?;
    Ok(model_id)
}

/// The catalog's open model `model_id`: a closed model is a 400 (clusters are for open
/// models), an unknown one a 404.
fn open_model<'a>(catalog: &'a Catalog, model_id: &str) -> Result<&'a CatalogModel, ApiError> {
    match routes::resolve(catalog, model_id, "model_id")? {
        Target::Open { model, .. } => Ok(model),
        Target::Closed(provider) => Err(invalid(
            format!(
                "'{model_id}' is a closed model, served by {} with your own key: clusters are for open models, which run on Switchyard's instances (GET /v1/catalog lists them as kind \"open\")",
                provider.as_str()
            ),
            "model_id",
        )),
    }
}

fn not_found(model_id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!(
            "your account has no cluster for '{model_id}': PUT /v1/clusters/{model_id} creates one (a first request to the model does too)"
        ),
    )
    .with_param("model_id")
    .with_code("cluster_not_found")
}

fn too_busy(model_id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!("the cluster for '{model_id}' kept changing while this write was tried; retry"),
    )
    .with_status(StatusCode::CONFLICT)
    .with_code("cluster_busy")
}

/// The cluster as the API shows it. `capacity.desired` is the autoscaler's current
/// target once it has acted on the latest spec, else what the spec asks for; a status
/// older than the spec's creation belongs to a cluster deleted before and is ignored.
fn view(spec: &ClusterSpec, status: Option<&ClusterStatus>) -> Value {
    let status = status.filter(|s| s.updated >= spec.created);
    let desired = match status {
        Some(s) if s.updated >= spec.modified => s.desired,
        _ => spec.capacity.desired,
    };
    json!({
        "object": "cluster",
        "model_id": spec.model_id,
        "capacity": {
            "min": spec.capacity.min,
            "desired": desired,
            "max": spec.capacity.max,
        },
        "timeout": spec.timeout_minutes,
        "instance_type": spec.instance_type,
        "target_concurrency": spec.target_concurrency,
        "batch_instances": spec.batch_instances,
        "status": status.map_or("creating", |s| s.state.as_str()),
        "instances": status.map_or(0, |s| s.instances),
        "ready_instances": status.map_or(0, |s| s.ready),
        "load": status.map_or(0, |s| s.load),
        "batch_load": status.map_or(0, |s| s.batch_load),
        "inferences": status.map_or(0, |s| s.inferences),
        "last_inference_at": status.and_then(|s| s.last_inference_at),
        "created": spec.created,
        "modified": spec.modified,
    })
}

/// What a body may set; `None`: not given.
#[derive(Debug, Default, PartialEq)]
struct Fields {
    model_id: Option<String>,
    min: Option<u64>,
    desired: Option<u64>,
    max: Option<u64>,
    timeout: Option<u64>,
    instance_type: Option<String>,
    target_concurrency: Option<u64>,
    batch_instances: Option<u64>,
}

fn whole(value: &Value, param: &str) -> Result<u64, ApiError> {
    value.as_u64().ok_or_else(|| {
        invalid(
            format!("'{param}' must be a whole number, not {value}"),
            param,
        )
    })
}

fn text(value: &Value, param: &str) -> Result<String, ApiError> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("'{param}' must be a string, not {value}"), param))
}

/// Reads a cluster body: a JSON object of known fields (an empty body is `{}`).
fn parse_fields(body: &[u8]) -> Result<Fields, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("request body is not valid JSON: {e}"),
            )
        })?
    };
    let Value::Object(object) = value else {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        ));
    };
    let mut fields = Fields::default();
    for (name, value) in &object {
        match name.as_str() {
            "model_id" => fields.model_id = Some(text(value, "model_id")?),
            "capacity" => {
                let Value::Object(capacity) = value else {
                    return Err(invalid(
                        format!(
                            "'capacity' must be an object {{\"min\", \"desired\", \"max\"}}, not {value}"
                        ),
                        "capacity",
                    ));
                };
                for (name, value) in capacity {
                    let param = format!("capacity.{name}");
                    let slot = match name.as_str() {
                        "min" => &mut fields.min,
                        "desired" => &mut fields.desired,
                        "max" => &mut fields.max,
                        _ => {
                            return Err(invalid(
                                format!(
                                    "unknown field '{param}': capacity has min, desired and max"
                                ),
                                &param,
                            ));
                        }
                    };
                    *slot = Some(whole(value, &param)?);
                }
            }
            "timeout" => fields.timeout = Some(whole(value, "timeout")?),
            "instance_type" => fields.instance_type = Some(text(value, "instance_type")?),
            "target_concurrency" => {
                fields.target_concurrency = Some(whole(value, "target_concurrency")?);
            }
            "batch_instances" => {
                fields.batch_instances = Some(whole(value, "batch_instances")?);
            }
            name if READ_ONLY.contains(&name) => {
                return Err(invalid(
                    format!("'{name}' is read-only: the cluster reports it"),
                    name,
                ));
            }
            name => {
                return Err(invalid(
                    format!(
                        "unknown field '{name}': a cluster has model_id, capacity {{min, desired, max}}, timeout, instance_type, target_concurrency and batch_instances"
                    ),
                    name,
                ));
            }
        }
    }
    Ok(fields)
}

fn in_range(value: u64, low: u64, high: u64, param: &str, what: &str) -> Result<u32, ApiError> {
    if (low..=high).contains(&value) {
        u32::try_from(value).map_err(routes::internal)
    } else {
        Err(invalid(
            format!("'{param}' must be from {low} to {high} ({what}), not {value}"),
            param,
        ))
    }
}

/// The spec `fields` ask for: over `base` (PATCH: unset fields keep their values, and
/// a desired count or `batch_instances` left unset is moved into the new [min, max] or
/// below the new max) or over the defaults (POST, PUT: `max` defaults to 4, or to `min`
/// when that is larger; `desired` to `min`; `batch_instances` to 1). Validates the
/// result; errors name the field.
fn build(
    base: Option<&ClusterSpec>,
    fields: &Fields,
    account: &str,
    model: &CatalogModel,
    now: DateTime<Utc>,
) -> Result<ClusterSpec, ApiError> {
    let catalog_type = model
        .open
        .as_ref()
        .map(|o| o.instance_type.as_str())
        .unwrap_or_default();
    let mut spec = match base {
        Some(base) => base.clone(),
        None => ClusterSpec::with_defaults(account, &model.id, catalog_type, now),
    };
    let max = match (fields.max, base) {
        (Some(max), _) => max,
        (None, Some(base)) => u64::from(base.capacity.max),
        (None, None) => fields
            .min
            .unwrap_or(0)
            .max(u64::from(DEFAULT_MAX_INSTANCES)),
    };
    spec.capacity.max = in_range(
        max,
        1,
        u64::from(MAX_INSTANCES),
        "capacity.max",
        "instances at most",
    )?;
    let min = fields.min.unwrap_or(u64::from(spec.capacity.min));
    if min > max {
        let param = if fields.min.is_some() {
            "capacity.min"
        } else {
            "capacity.max"
        };
        return Err(invalid(
            format!("capacity.min ({min}) must not be greater than capacity.max ({max})"),
            param,
        ));
    }
    spec.capacity.min = u32::try_from(min).map_err(routes::internal)?;
    spec.capacity.desired = match (fields.desired, base) {
        (Some(desired), _) => in_range(
            desired,
            min,
            max,
            "capacity.desired",
            "between capacity.min and capacity.max",
        )?,
        (None, Some(base)) => base
            .capacity
            .desired
            .clamp(spec.capacity.min, spec.capacity.max),
        (None, None) => spec.capacity.min,
    };
    if let Some(timeout) = fields.timeout {
        spec.timeout_minutes = in_range(
            timeout,
            1,
            u64::from(MAX_TIMEOUT_MINUTES),
            "timeout",
            "idle minutes before scaling down to capacity.min",
        )?;
    } else if base.is_none() {
        spec.timeout_minutes = DEFAULT_TIMEOUT_MINUTES;
    }
    if let Some(tc) = fields.target_concurrency {
        spec.target_concurrency = in_range(
            tc,
            1,
            u64::from(MAX_TARGET_CONCURRENCY),
            "target_concurrency",
            "concurrent requests per instance",
        )?;
    } else if base.is_none() {
        spec.target_concurrency = DEFAULT_TARGET_CONCURRENCY;
    }
    spec.batch_instances = match (fields.batch_instances, base) {
        (Some(batch), _) => in_range(
            batch,
            0,
            max,
            "batch_instances",
            "instances pending batch work alone may keep running, at most capacity.max",
        )?,
        (None, Some(base)) => base.batch_instances.min(spec.capacity.max),
        (None, None) => DEFAULT_BATCH_INSTANCES.min(spec.capacity.max),
    };
    if let Some(instance_type) = &fields.instance_type {
        if instance_type != catalog_type {
            return Err(invalid(
                format!(
                    "instance_type '{instance_type}' is not available for '{}': it runs on '{catalog_type}' here. Other instance types (GPUs) are deployment configuration this installation cannot run yet",
                    model.id
                ),
                "instance_type",
            ));
        }
        spec.instance_type = instance_type.clone();
    }
    spec.modified = now;
    Ok(spec)
}

/// Whether two specs ask for the same thing (timestamps aside).
fn same_settings(a: &ClusterSpec, b: &ClusterSpec) -> bool {
    a.capacity == b.capacity
        && a.timeout_minutes == b.timeout_minutes
        && a.instance_type == b.instance_type
        && a.target_concurrency == b.target_concurrency
        && a.batch_instances == b.batch_instances
}

/// `Result<Bytes, BytesRejection>` → the body, or 413 / 400.
fn body_of(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    routes::read_body(state, body)
}

/// `GET /v1/clusters/{model id}`.
async fn read(
    State(state): State<Shared>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let model_id = path_model(path)?;
        let store = state.clusters.store(&state.js).await?;
        let (spec, status) = tokio::join!(
            read_spec(store, &account, &model_id),
            read_status(store, &account, &model_id)
        );
        let (spec, _) = spec?.ok_or_else(|| not_found(&model_id))?;
        Ok((StatusCode::OK, view(&spec, status?.as_ref())))
    }
    .await;
    answer(&state, "get", result)
}

/// `GET /v1/clusters`: the account's clusters, by model id.
async fn list(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let account_token = schemas::subjects::model_token(&account).map_err(routes::internal)?;
        let store = state.clusters.store(&state.js).await?;
        // The account's spec keys (deleted ones too: their markers are messages).
        let filter = format!("{}spec.{account_token}.*", store.prefix);
        let mut subjects = store
            .stream
            .info_with_subjects(&filter)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects.try_next().await.map_err(|e| unavailable(&e))? {
            if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
                keys.push(key.to_string());
            }
        }
        let clusters = futures::future::try_join_all(keys.iter().map(|key| {
            let account = account.as_str();
            async move {
                let Some((spec, _)) = read_spec_at(store, account, key).await? else {
                    return Ok::<_, ApiError>(None);
                };
                let status = read_status(store, account, &spec.model_id).await?;
                Ok(Some(view(&spec, status.as_ref())))
            }
        }))
        .await?;
        let mut data: Vec<Value> = clusters.into_iter().flatten().collect();
        data.sort_by(|a, b| a["model_id"].as_str().cmp(&b["model_id"].as_str()));
        Ok((StatusCode::OK, json!({"object": "list", "data": data})))
    }
    .await;
    answer(&state, "list", result)
}

/// `POST /v1/clusters`: creates the cluster of the body's `model_id`; 409 when the
/// account has one already.
async fn create(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let fields = parse_fields(&body_of(&state, body)?)?;
        let Some(model_id) = fields.model_id.clone() else {
            return Err(invalid(
                "'model_id' is required: the open model the cluster runs",
                "model_id",
            ));
        };
        let model = open_model(&state.catalog, &model_id)?;
        let spec = build(None, &fields, &account, model, now_ms())?;
        let key = cluster::spec_key(&account, &model_id).map_err(key_error)?;
        let store = state.clusters.store(&state.js).await?;
        match store.create(&key, json_bytes(&spec)).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                return Err(invalid(
                    format!(
                        "your account has a cluster for '{model_id}' already: PATCH or PUT /v1/clusters/{model_id} changes it"
                    ),
                    "model_id",
                )
                .with_status(StatusCode::CONFLICT)
                .with_code("cluster_exists"));
            }
            Err(e) => return Err(unavailable(&e)),
        }
        remember_written(&state, &account, &model_id);
        Ok((StatusCode::CREATED, view(&spec, None)))
    }
    .await;
    answer(&state, "create", result)
}

fn remember_written(state: &AppState, account: &str, model_id: &str) {
    if let Ok(key) = cluster::cluster_key(account, model_id) {
        state.clusters.remember_spec(&key);
    }
}

/// `PUT /v1/clusters/{model id}`: creates the cluster or replaces its settings (fields
/// left out take their defaults); 201 when created, 200 when it existed. The same PUT
/// twice changes nothing the second time (`modified` stays).
async fn put(
    State(state): State<Shared>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let model_id = path_model(path)?;
        let fields = parse_fields(&body_of(&state, body)?)?;
        check_body_model(&fields, &model_id)?;
        let model = open_model(&state.catalog, &model_id)?;
        let wanted = build(None, &fields, &account, model, now_ms())?;
        let key = cluster::spec_key(&account, &model_id).map_err(key_error)?;
        let store = state.clusters.store(&state.js).await?;
        for _ in 0..WRITE_ATTEMPTS {
            let written = match read_spec_at(store, &account, &key).await? {
                Some((old, _)) if same_settings(&old, &wanted) => {
                    let status = read_status(store, &account, &model_id).await?;
                    return Ok((StatusCode::OK, view(&old, status.as_ref())));
                }
                Some((old, revision)) => {
                    let spec = ClusterSpec {
                        created: old.created,
                        ..wanted.clone()
                    };
                    match store.update(&key, json_bytes(&spec), revision).await {
                        Ok(_) => Some((StatusCode::OK, spec)),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(unavailable(&e)),
                    }
                }
                None => match store.create(&key, json_bytes(&wanted)).await {
                    Ok(_) => Some((StatusCode::CREATED, wanted.clone())),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                    Err(e) => return Err(unavailable(&e)),
                },
            };
            if let Some((code, spec)) = written {
                remember_written(&state, &account, &model_id);
                let status = read_status(store, &account, &model_id).await?;
                return Ok((code, view(&spec, status.as_ref())));
            }
        }
        Err(too_busy(&model_id))
    }
    .await;
    answer(&state, "put", result)
}

/// A `model_id` in a PUT or PATCH body must be the path's (a cluster's model never
/// changes).
fn check_body_model(fields: &Fields, model_id: &str) -> Result<(), ApiError> {
    match &fields.model_id {
        Some(other) if other != model_id => Err(invalid(
            format!(
                "'model_id' ({other}) differs from the path's ({model_id}): a cluster's model cannot change; create a cluster for '{other}' instead"
            ),
            "model_id",
        )),
        _ => Ok(()),
    }
}

/// `PATCH /v1/clusters/{model id}`: changes the fields given, keeps the others.
async fn patch(
    State(state): State<Shared>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let model_id = path_model(path)?;
        let fields = parse_fields(&body_of(&state, body)?)?;
        check_body_model(&fields, &model_id)?;
        let model = open_model(&state.catalog, &model_id)?;
        let key = cluster::spec_key(&account, &model_id).map_err(key_error)?;
        let store = state.clusters.store(&state.js).await?;
        for _ in 0..WRITE_ATTEMPTS {
            let Some((old, revision)) = read_spec_at(store, &account, &key).await? else {
                return Err(not_found(&model_id));
            };
            let spec = build(Some(&old), &fields, &account, model, now_ms())?;
            if same_settings(&old, &spec) {
                let status = read_status(store, &account, &model_id).await?;
                return Ok((StatusCode::OK, view(&old, status.as_ref())));
            }
            match store.update(&key, json_bytes(&spec), revision).await {
                Ok(_) => {
                    remember_written(&state, &account, &model_id);
                    let status = read_status(store, &account, &model_id).await?;
                    return Ok((StatusCode::OK, view(&spec, status.as_ref())));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(too_busy(&model_id))
    }
    .await;
    answer(&state, "patch", result)
}

/// `DELETE /v1/clusters/{model id}`: removes the spec; the autoscaler then stops the
/// cluster's instances (each finishes what it holds). A later request to the model
/// creates the cluster again, with the defaults.
async fn delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let account = routes::authenticate(&state, &headers).await?;
        let model_id = path_model(path)?;
        let key = cluster::spec_key(&account, &model_id).map_err(key_error)?;
        let store = state.clusters.store(&state.js).await?;
        for _ in 0..WRITE_ATTEMPTS {
            let Some((_, revision)) = read_spec_at(store, &account, &key).await? else {
                return Err(not_found(&model_id));
            };
            match store.delete_expect_revision(&key, Some(revision)).await {
                Ok(()) => {
                    if let Ok(cluster_key) = cluster::cluster_key(&account, &model_id) {
                        state.clusters.forget(&cluster_key);
                    }
                    return Ok((
                        StatusCode::OK,
                        json!({"object": "cluster", "model_id": model_id, "deleted": true}),
                    ));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Err(too_busy(&model_id))
    }
    .await;
    answer(&state, "delete", result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::cluster::ClusterState;

    fn model() -> CatalogModel {
        Catalog::embedded()
            .unwrap()
            .get("HuggingFaceTB/SmolLM2-135M-Instruct")
            .unwrap()
            .clone()
    }

    fn fields(body: &str) -> Result<Fields, ApiError> {
        parse_fields(body.as_bytes())
    }

    fn param_of(e: ApiError) -> String {
        e.0.param.unwrap_or_default()
    }

    #[test]
    fn defaults_and_the_friendly_max() {
        let m = model();
        let now = now_ms();
        let spec = build(None, &fields("").unwrap(), "acme", &m, now).unwrap();
        assert_eq!(spec, ClusterSpec::with_defaults("acme", &m.id, "cpu", now));
        assert_eq!(
            (spec.capacity.min, spec.capacity.desired, spec.capacity.max),
            (0, 0, 4)
        );
        assert_eq!(spec.batch_instances, 1);
        let spec = build(
            None,
            &fields(r#"{"capacity":{"min":6}}"#).unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap();
        assert_eq!(
            (spec.capacity.min, spec.capacity.desired, spec.capacity.max),
            (6, 6, 6)
        );
    }

    #[test]
    fn patch_keeps_and_clamps() {
        let m = model();
        let now = now_ms();
        let base = build(
            None,
            &fields(
                r#"{"capacity":{"min":1,"desired":3,"max":5},"timeout":20,"target_concurrency":4}"#,
            )
            .unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap();
        let spec = build(
            Some(&base),
            &fields(r#"{"capacity":{"max":2}}"#).unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap();
        assert_eq!(
            (spec.capacity.min, spec.capacity.desired, spec.capacity.max),
            (1, 2, 2)
        );
        assert_eq!((spec.timeout_minutes, spec.target_concurrency), (20, 4));
        assert_eq!(spec.batch_instances, 1);
        let e = build(
            Some(&base),
            &fields(r#"{"capacity":{"min":6}}"#).unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap_err();
        assert_eq!(param_of(e), "capacity.min");
    }

    #[test]
    fn batch_instances_is_kept_set_and_moved_below_a_lower_max() {
        let m = model();
        let now = now_ms();
        let base = build(
            None,
            &fields(r#"{"capacity":{"max":5},"batch_instances":4}"#).unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap();
        assert_eq!(base.batch_instances, 4);
        let patch = |body: &str| build(Some(&base), &fields(body).unwrap(), "acme", &m, now);
        assert_eq!(patch(r#"{"timeout":3}"#).unwrap().batch_instances, 4);
        assert_eq!(
            patch(r#"{"batch_instances":0}"#).unwrap().batch_instances,
            0
        );
        assert_eq!(
            patch(r#"{"batch_instances":5}"#).unwrap().batch_instances,
            5
        );
        // Lowering max moves it along, like desired; naming both checks both.
        assert_eq!(
            patch(r#"{"capacity":{"max":2}}"#).unwrap().batch_instances,
            2
        );
        let e = patch(r#"{"capacity":{"max":2},"batch_instances":3}"#).unwrap_err();
        assert_eq!(param_of(e), "batch_instances");
        // PUT / POST: a max of 1 leaves the default of 1; an explicit 0 stays.
        let spec = build(
            None,
            &fields(r#"{"capacity":{"max":1},"batch_instances":0}"#).unwrap(),
            "acme",
            &m,
            now,
        )
        .unwrap();
        assert_eq!(spec.batch_instances, 0);
        assert!(!same_settings(
            &spec,
            &ClusterSpec {
                batch_instances: 1,
                ..spec.clone()
            }
        ));
    }

    #[test]
    fn every_bad_field_is_named() {
        let m = model();
        let now = now_ms();
        for (body, param) in [
            (r#"{"capacity":{"max":0}}"#, "capacity.max"),
            (r#"{"capacity":{"max":65}}"#, "capacity.max"),
            (r#"{"capacity":{"min":3,"max":2}}"#, "capacity.min"),
            (
                r#"{"capacity":{"min":1,"desired":0,"max":2}}"#,
                "capacity.desired",
            ),
            (r#"{"capacity":{"desired":5}}"#, "capacity.desired"),
            (r#"{"timeout":0}"#, "timeout"),
            (r#"{"timeout":1441}"#, "timeout"),
            (r#"{"target_concurrency":0}"#, "target_concurrency"),
            (r#"{"target_concurrency":257}"#, "target_concurrency"),
            (r#"{"instance_type":"gpu-a100-40gb"}"#, "instance_type"),
            (r#"{"batch_instances":5}"#, "batch_instances"),
            (
                r#"{"capacity":{"max":2},"batch_instances":3}"#,
                "batch_instances",
            ),
        ] {
            let e = build(None, &fields(body).unwrap(), "acme", &m, now).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(param_of(e), param, "{body}");
        }
        for (body, param) in [
            (r#"{"capacity":{"max":-1}}"#, "capacity.max"),
            (r#"{"capacity":{"max":1.5}}"#, "capacity.max"),
            (r#"{"capacity":{"maximum":1}}"#, "capacity.maximum"),
            (r#"{"capacity":4}"#, "capacity"),
            (r#"{"timeout":"10"}"#, "timeout"),
            (r#"{"instance_type":7}"#, "instance_type"),
            (r#"{"batch_instances":-1}"#, "batch_instances"),
            (r#"{"batch_instances":"1"}"#, "batch_instances"),
            (r#"{"status":"running"}"#, "status"),
            (r#"{"replicas":2}"#, "replicas"),
        ] {
            assert_eq!(param_of(fields(body).unwrap_err()), param, "{body}");
        }
        assert!(fields("[1]").unwrap_err().0.message.contains("JSON object"));
        assert!(
            fields("{")
                .unwrap_err()
                .0
                .message
                .contains("not valid JSON")
        );
    }

    #[test]
    fn max_wait_header_is_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(max_wait(&h).unwrap(), Duration::from_secs(60));
        for ok in ["1", " 300 ", "45"] {
            h.insert(MAX_WAIT_HEADER, ok.parse().unwrap());
            assert_eq!(
                max_wait(&h).unwrap().as_secs(),
                ok.trim().parse::<u64>().unwrap()
            );
        }
        for bad in ["0", "301", "-1", "1.5", "soon", ""] {
            h.insert(MAX_WAIT_HEADER, bad.parse().unwrap());
            assert_eq!(
                param_of(max_wait(&h).unwrap_err()),
                MAX_WAIT_HEADER,
                "{bad}"
            );
        }
    }

    #[test]
    fn cold_means_no_status_or_no_instance() {
        let status = |instances| ClusterStatus {
            state: ClusterState::Running,
            instances,
            ready: instances,
            desired: 1,
            load: 0,
            batch_load: 0,
            inferences: 0,
            last_inference_at: None,
            updated: Utc::now(),
        };
        assert!(is_cold(None));
        assert!(is_cold(Some(&status(0))));
        assert!(!is_cold(Some(&status(1))));
        let starting = ClusterStatus {
            ready: 0,
            ..status(1)
        };
        assert!(
            is_cold(Some(&starting)),
            "an instance still loading is a cold start"
        );
    }

    #[test]
    fn view_ignores_a_status_from_before_the_cluster() {
        let m = model();
        let now = now_ms();
        let spec = build(None, &fields("").unwrap(), "acme", &m, now).unwrap();
        let old = ClusterStatus {
            state: ClusterState::Running,
            instances: 2,
            ready: 2,
            desired: 2,
            load: 1,
            batch_load: 4,
            inferences: 9,
            last_inference_at: None,
            updated: now - chrono::Duration::seconds(5),
        };
        let v = view(&spec, Some(&old));
        assert_eq!(v["status"], "creating");
        assert_eq!(v["instances"], 0);
        let fresh = ClusterStatus {
            updated: now + chrono::Duration::seconds(1),
            ..old
        };
        let v = view(&spec, Some(&fresh));
        assert_eq!(v["status"], "running");
        assert_eq!(v["capacity"]["desired"], 2);
        assert_eq!(v["inferences"], 9);
        assert_eq!(
            (v["load"].as_u64(), v["batch_load"].as_u64()),
            (Some(1), Some(4))
        );
        assert_eq!(v["batch_instances"], 1);
    }
}
