//! The error every service reports, in replies and in dead-letter entries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What went wrong, in a form the ingress can turn into an HTTP answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    /// A message for the caller. Never contains a prompt, an output or a key.
    pub message: String,
    /// The request parameter at fault, when one is.
    #[serde(default)]
    pub param: Option<String>,
    /// How long the caller should wait before retrying.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// The HTTP status the upstream provider answered, when it answered.
    #[serde(default)]
    pub provider_status: Option<u16>,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            retry_after_ms: None,
            provider_status: None,
        }
    }
}

/// The kinds of failure, each with one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or names something impossible (400).
    InvalidRequest,
    /// Missing or wrong credentials — ours or the provider's (401).
    Authentication,
    /// The account's spend limit is reached: no new paid work until it is raised or
    /// the month ends (402).
    PaymentRequired,
    /// The credentials may not do this (403).
    PermissionDenied,
    /// No such model or resource (404).
    NotFound,
    /// The body is over the size limit (413).
    PayloadTooLarge,
    /// Too many requests; see `retry_after_ms` (429).
    RateLimited,
    /// Something failed on our side (500).
    Internal,
    /// The provider failed or answered nonsense (502).
    Upstream,
    /// Temporarily unable to serve; retry later (503).
    Unavailable,
    /// The deadline passed before an answer (504).
    Timeout,
    /// A kind a newer peer knows and this build does not (500).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The HTTP status this kind is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PaymentRequired => 402,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal | ErrorKind::Unknown => 500,
            ErrorKind::Upstream => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// Whether trying the same request again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Upstream
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
        )
    }

    /// The stable snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PaymentRequired => "payment_required",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Internal => "internal",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unknown => "unknown",
        }
    }
}
