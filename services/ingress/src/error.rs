//! The ingress's one error type: an HTTP status and an OpenAI-style body (or the
//! unified route's body, [`ApiError::unified_body`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemas::{ErrorBody, ErrorKind};

/// An error answered to the caller as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError(pub ErrorBody, Option<Box<Detail>>);

/// What a few errors say beyond their kind: a status or OpenAI `code` of their own
/// (409 `cluster_exists`, 503 `cold_start`) and fields next to `error` in the body
/// (the cluster's status).
#[derive(Debug, Clone, Default)]
struct Detail {
    status: Option<StatusCode>,
    code: Option<&'static str>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(kind, message), None)
    }

    fn detail(&mut self) -> &mut Detail {
        self.1.get_or_insert_with(Box::default)
    }

    /// Answers with `status` instead of the kind's (e.g. 409 for an invalid request
    /// that conflicts with what exists).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.detail().status = Some(status);
        self
    }

    /// OpenAI's `code` (and the unified error's `code`) instead of the kind's.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.detail().code = Some(code);
        self
    }

    /// A top-level field next to `error` in the body.
    pub fn with_field(mut self, name: &str, value: serde_json::Value) -> Self {
        self.detail().fields.insert(name.to_string(), value);
        self
    }

    fn code(&self) -> Option<&'static str> {
        self.1.as_ref().and_then(|d| d.code)
    }

    /// `body` with the extra top-level fields.
    fn with_fields(&self, mut body: serde_json::Value) -> serde_json::Value {
        if let (Some(detail), Some(object)) = (&self.1, body.as_object_mut()) {
            for (name, value) in &detail.fields {
                object.insert(name.clone(), value.clone());
            }
        }
        body
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.0.param = Some(param.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        if let Some(status) = self.1.as_ref().and_then(|d| d.status) {
            return status;
        }
        StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body OpenAI's SDKs read.
    pub fn openai_body(&self) -> serde_json::Value {
        let (kind, code) = openai_type(self.0.kind);
        self.with_fields(serde_json::json!({
            "error": {
                "message": self.0.message,
                "type": kind,
                "param": self.0.param,
                "code": self.code().or(code),
            }
        }))
    }
}

impl ApiError {
    /// The `error` object of the unified route (`/models/v2/…`), in JSON bodies and
    /// in SSE `error` events: `{"kind", "message", "param"}`, plus `retry_after_ms`
    /// when the caller should wait.
    pub fn unified_error(&self) -> serde_json::Value {
        let mut error = serde_json::json!({
            "kind": self.0.kind.as_str(),
            "message": self.0.message,
            "param": self.0.param,
        });
        if let Some(ms) = self.0.retry_after_ms {
            error["retry_after_ms"] = ms.into();
        }
        if let Some(code) = self.code() {
            error["code"] = code.into();
        }
        error
    }

    /// The whole error body of the unified route: the same top-level fields as its
    /// answers, with `output` and `usage` null.
    pub fn unified_body(&self, provider: Option<&str>) -> serde_json::Value {
        self.with_fields(serde_json::json!({
            "error": self.unified_error(),
            "output": null,
            "provider": provider,
            "usage": null,
        }))
    }

    /// This error's status and `Retry-After` headers around `body`.
    pub fn response_with(&self, body: serde_json::Value) -> Response {
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(ms) = self.0.retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                response.headers_mut().insert("retry-after-ms", v);
            }
        }
        response
    }
}

/// OpenAI's `type` and `code` for each kind.
fn openai_type(kind: ErrorKind) -> (&'static str, Option<&'static str>) {
    match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", None),
        ErrorKind::Authentication => ("invalid_request_error", Some("invalid_api_key")),
        ErrorKind::PaymentRequired => ("insufficient_quota", Some("spend_limit_reached")),
        ErrorKind::PermissionDenied => ("invalid_request_error", Some("permission_denied")),
        ErrorKind::NotFound => ("invalid_request_error", Some("model_not_found")),
        ErrorKind::PayloadTooLarge => ("invalid_request_error", Some("request_too_large")),
        ErrorKind::RateLimited => ("rate_limit_error", Some("rate_limit_exceeded")),
        ErrorKind::Timeout => ("timeout_error", Some("timeout")),
        ErrorKind::Upstream => ("upstream_error", Some("upstream_error")),
        ErrorKind::Unavailable => ("service_unavailable", Some("unavailable")),
        ErrorKind::Internal | ErrorKind::Unknown => ("server_error", None),
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self(body, None)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response_with(self.openai_body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_carry_retry_after() {
        let mut body = ErrorBody::new(ErrorKind::RateLimited, "slow down");
        body.retry_after_ms = Some(1500);
        let response = ApiError::from(body).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
    }

    #[test]
    fn unified_body_names_the_kind() {
        let mut body = ErrorBody::new(ErrorKind::RateLimited, "slow down");
        body.retry_after_ms = Some(1500);
        let err = ApiError::from(body);
        let v = err.unified_body(Some("openai"));
        assert_eq!(v["error"]["kind"], "rate_limited");
        assert_eq!(v["error"]["message"], "slow down");
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["retry_after_ms"], 1500);
        assert_eq!(v["output"], serde_json::Value::Null);
        assert_eq!(v["usage"], serde_json::Value::Null);
        assert_eq!(v["provider"], "openai");
        let response = err.response_with(v);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn body_has_openai_shape() {
        let err = ApiError::new(ErrorKind::InvalidRequest, "bad").with_param("messages");
        let body = err.openai_body();
        assert_eq!(body["error"]["message"], "bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn details_change_status_code_and_add_fields() {
        let mut body = ErrorBody::new(ErrorKind::Unavailable, "cold");
        body.retry_after_ms = Some(5000);
        let err = ApiError::from(body)
            .with_code("cold_start")
            .with_field("cluster", serde_json::json!({"status": "scaling"}));
        let v = err.openai_body();
        assert_eq!(v["error"]["code"], "cold_start");
        assert_eq!(v["error"]["type"], "service_unavailable");
        assert_eq!(v["cluster"]["status"], "scaling");
        let u = err.unified_body(None);
        assert_eq!(u["error"]["code"], "cold_start");
        assert_eq!(u["cluster"]["status"], "scaling");
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");

        let conflict = ApiError::new(ErrorKind::InvalidRequest, "exists")
            .with_status(StatusCode::CONFLICT)
            .with_code("cluster_exists");
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        assert_eq!(
            conflict.openai_body()["error"]["type"],
            "invalid_request_error"
        );
    }
}
