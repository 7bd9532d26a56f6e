//! The gateway's one error type: every failure a client can cause or see,
//! mapped to a status code and `{"error":{"code","message"}}` (docs/PROTOCOL.md),
//! or to an `error` frame on a socket.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::frames::ControlFrame;
use protocol::{ErrorCode, MessageId};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong token")]
    Unauthorized,
    /// A socket's token did not come as its first frame (`unauthorized` too).
    #[error("{0}")]
    NoAuthFrame(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    /// A per-user quota (`GATEWAY_AUTH=jwt`): `rate_limited`, with the time
    /// after which the same call can succeed.
    #[error("{message}")]
    Quota {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Overloaded(String),
    /// NATS is unreachable or answered with an error. The detail is logged,
    /// never sent: clients get a generic message.
    #[error("the message service is unavailable")]
    Unavailable(String),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized | ApiError::NoAuthFrame(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::RateLimited(_) | ApiError::Quota { .. } => ErrorCode::RateLimited,
            ApiError::Overloaded(_) => ErrorCode::Overloaded,
            ApiError::Unavailable(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::NoAuthFrame(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) | ApiError::Quota { .. } | ApiError::Overloaded(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A failed NATS call; `e` is logged when the error is answered.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        ApiError::Unavailable(e.to_string())
    }

    /// The `error` frame a socket gets for this failure (counted once here).
    pub fn frame(&self, message_id: Option<MessageId>) -> ControlFrame {
        self.log();
        crate::metrics::error(self.code());
        ControlFrame::Error {
            message_id,
            code: self.code(),
            message: self.to_string(),
        }
    }

    fn log(&self) {
        if let ApiError::Unavailable(detail) = self {
            tracing::warn!(%detail, "NATS call failed");
        }
    }

    /// When a client should try again: it is told, so it does not hammer.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited(_) => Some(Duration::from_secs(1)),
            ApiError::Quota { retry_after, .. } => Some(*retry_after),
            ApiError::Overloaded(_) => Some(Duration::from_secs(5)),
            ApiError::Unavailable(_) => Some(Duration::from_secs(2)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        crate::metrics::error(self.code());
        let body = serde_json::json!({
            "error": {"code": self.code().as_str(), "message": self.to_string()}
        });
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: never "try again" before it can work.
            let secs = after.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}
