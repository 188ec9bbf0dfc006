//! The ingress's one error type: an HTTP status and an OpenAI-style body (or the
//! unified route's body, [`ApiError::unified_body`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemas::{ErrorBody, ErrorKind};

/// An error answered to the caller as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(kind, message))
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.0.param = Some(param.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body OpenAI's SDKs read.
    pub fn openai_body(&self) -> serde_json::Value {
        let (kind, code) = openai_type(self.0.kind);
        serde_json::json!({
            "error": {
                "message": self.0.message,
                "type": kind,
                "param": self.0.param,
                "code": code,
            }
        })
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
        error
    }

    /// The whole error body of the unified route: the same top-level fields as its
    /// answers, with `output` and `usage` null.
    pub fn unified_body(&self, provider: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "error": self.unified_error(),
            "output": null,
            "provider": provider,
            "usage": null,
        })
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
        Self(body)
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
        let response = ApiError(body).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
    }

    #[test]
    fn unified_body_names_the_kind() {
        let mut body = ErrorBody::new(ErrorKind::RateLimited, "slow down");
        body.retry_after_ms = Some(1500);
        let err = ApiError(body);
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
}
