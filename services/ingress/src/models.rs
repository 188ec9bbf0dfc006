//! `GET /v1/models` (OpenAI's list) and `GET /v1/catalog?task=…` (ours, richer), both
//! from the catalog in `schemas/catalog/models.json`: closed models (listed for
//! discovery: any `<provider>/<model>` id is forwarded, listed or not) and open models
//! (served by our own workers, `owned_by` "switchyard"; only listed ones are served).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use schemas::ErrorKind;
use schemas::catalog::Task;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::routes::{Shared, authenticate};

/// OpenAI's model list.
pub async fn list(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authenticate(&state, &headers).await {
        return e.into_response();
    }
    let data: Vec<Value> = state
        .catalog
        .models
        .iter()
        .map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.owner()}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The catalog, optionally filtered by `?task=` (a model matches when it serves the
/// task, as its main task or one of `other_tasks`).
pub async fn catalog(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = authenticate(&state, &headers).await {
        return e.into_response();
    }
    let task = match query.get("task").map(|t| (t, Task::parse(t))) {
        None => None,
        Some((_, Some(task))) => Some(task),
        Some((name, None)) => {
            return ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "unknown task {name:?}: chat, feature-extraction, text-classification or zero-shot-classification"
                ),
            )
            .with_param("task")
            .into_response();
        }
    };
    let models: Vec<Value> = state
        .catalog
        .filtered(task)
        .map(|m| {
            json!({
                "id": m.id,
                "task": m.task.as_str(),
                "other_tasks": m.other_tasks.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "owner": m.owner(),
                "kind": if m.open.is_some() { "open" } else { "closed" },
                "instance_type": m.open.as_ref().map(|o| o.instance_type.as_str()),
                "description": m.description,
                "context_window": m.context_window,
            })
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}
