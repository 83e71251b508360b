//! Why a request could not be served, which side caused it, and what the client is told.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The kinds of failure on the request path. Each maps to one status code and one
/// `kind` label in metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ProxyErrorKind {
    /// No route matches the host and path (404).
    NoRoute,
    /// The service has no instance that can take the request (503).
    NoInstance,
    /// `serve = "primary"` and no instance reports the primary role (503).
    NoPrimary,
    /// The TCP connection to an instance was refused or failed (502).
    ConnectFailed,
    /// The TCP connection to an instance did not complete in time (504).
    ConnectTimeout,
    /// The instance closed or reset the connection before a complete response head (502).
    UpstreamReset,
    /// The instance answered something that is not valid HTTP (502).
    BadResponse,
    /// No response head within `response_header` (504).
    ResponseHeaderTimeout,
    /// The request's `total` deadline passed (504).
    DeadlineExceeded,
    /// The client stalled while sending the request body (408).
    ClientBodyTimeout,
    /// The client's request body was malformed or aborted (400).
    ClientBodyError,
    /// The route's `allow`/`deny` rules refuse the client's address (403).
    AccessDenied,
    /// The client's key is over the route's `rate_limit` (429).
    RateLimited,
    /// The service has `max_in_flight` requests in flight and no room to queue this one, or
    /// none came free in time (503).
    Overloaded,
    /// The route's `request` policy could not answer (trapped, timed out, not loaded, answered
    /// something invalid) and fails closed (503).
    PolicyFailed,
}

impl ProxyErrorKind {
    /// Number of kinds (for per-kind arrays).
    pub const COUNT: usize = 15;

    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoInstance | Self::NoPrimary | Self::Overloaded | Self::PolicyFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::ConnectFailed | Self::UpstreamReset | Self::BadResponse => {
                StatusCode::BAD_GATEWAY
            }
            Self::ConnectTimeout | Self::ResponseHeaderTimeout | Self::DeadlineExceeded => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::ClientBodyError => StatusCode::BAD_REQUEST,
            Self::AccessDenied => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Stable snake_case name for metrics, logs and the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoInstance => "no_healthy_instance",
            Self::NoPrimary => "no_primary",
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::UpstreamReset => "upstream_reset",
            Self::BadResponse => "bad_upstream_response",
            Self::ResponseHeaderTimeout => "response_header_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ClientBodyTimeout => "client_body_timeout",
            Self::ClientBodyError => "client_body_error",
            Self::AccessDenied => "access_denied",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::PolicyFailed => "policy_failed",
        }
    }

    /// Whether the failure is the instance's fault (counts towards passive ejection).
    pub fn blames_instance(self) -> bool {
        matches!(
            self,
            Self::ConnectFailed
                | Self::ConnectTimeout
                | Self::UpstreamReset
                | Self::BadResponse
                | Self::ResponseHeaderTimeout
        )
    }
}

impl fmt::Display for ProxyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt or a failed request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ProxyErrorKind,
    /// Human-readable detail (the instance address, the OS error, the timeout).
    pub detail: String,
    /// Whether any byte of the request may have reached the instance. When false, any method
    /// may be retried safely.
    pub request_sent: bool,
}

impl ProxyError {
    pub(crate) fn new(kind: ProxyErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            request_sent: false,
        }
    }

    pub(crate) fn sent(mut self) -> Self {
        self.request_sent = true;
        self
    }

    /// The fields and JSON body the client receives: `{"error", "detail", "service",
    /// "request_id"}` (the status is the kind's; `x-request-id` is added when the head is
    /// written).
    pub(crate) fn to_response(
        &self,
        service: Option<&str>,
        request_id: &str,
    ) -> (HeaderMap, Bytes) {
        let body = serde_json::json!({
            "error": self.kind.as_str(),
            "detail": self.detail,
            "service": service,
            "request_id": request_id,
        });
        let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
        bytes.push(b'\n');
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        (headers, Bytes::from(bytes))
    }
}

/// The client stalled while sending its request body; carried as the body's error so the
/// handler can tell it from an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("client request body timed out")]
pub(crate) struct ClientBodyTimedOut;
