//! `GET /v1/models` (OpenAI's list) and `GET /v1/catalog?task=…` (ours, richer), both
//! from the catalog in `schemas/catalog/models.json`. Listing is for discovery: any
//! `<provider>/<model>` id is forwarded, listed or not.

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

/// The catalog, optionally filtered by `?task=chat|feature-extraction|text-classification`.
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
                format!("unknown task {name:?}: chat, feature-extraction or text-classification"),
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
                "owner": m.owner(),
                "kind": if m.owner() == "switchyard" { "open" } else { "closed" },
                "description": m.description,
                "context_window": m.context_window,
            })
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}
