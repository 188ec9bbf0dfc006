//! The ingress's one error type: an HTTP status and an OpenAI-style body.

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
        let mut response = (self.status(), axum::Json(self.openai_body())).into_response();
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
    fn body_has_openai_shape() {
        let err = ApiError::new(ErrorKind::InvalidRequest, "bad").with_param("messages");
        let body = err.openai_body();
        assert_eq!(body["error"]["message"], "bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }
}
