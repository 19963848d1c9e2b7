//! The one error type of the HTTP API and its JSON envelope:
//! `{"error": {"code": "snake_case_code", "message": "human sentence"}}`.
//!
//! Internal failures are logged once, here, inside the request span, and answered with a generic
//! message: database or Redis error text never reaches a client.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { code: &'static str, message: &'static str },
    #[error("{0}")]
    Forbidden(&'static str),
    /// Forbidden for a reason with a code of its own.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// An API key without the scope an endpoint needs.
    #[error("{0}")]
    MissingScope(&'static str),
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    PayloadTooLarge { code: &'static str, message: String },
    #[error("{message}")]
    Unsupported { code: &'static str, message: String },
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after: Duration },
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The one error shape of every path: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct Envelope {
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// snake_case and stable: what a program matches on
    #[schema(example = "invalid_token")]
    pub code: String,
    /// a sentence for people (never the text of an internal error)
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
    }
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound { code, message: message.into() }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unprocessable { code, message: message.into() }
    }

    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused { code, message: message.into() }
    }

    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self::TooManyRequests { code: "rate_limited", message: message.into(), retry_after }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::MissingScope(_) | Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unsupported { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Redis(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(e) if is_connectivity(e) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. }
            | Self::PayloadTooLarge { code, .. }
            | Self::Unsupported { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::TooManyRequests { code, .. }
            | Self::Refused { code, .. } => code,
            Self::Forbidden(_) => "forbidden",
            Self::MissingScope(_) => "insufficient_scope",
            Self::Unavailable(_) | Self::Redis(_) => "service_unavailable",
            Self::Database(e) if is_connectivity(e) => "service_unavailable",
            Self::Database(_) | Self::Internal(_) => "internal_error",
        }
    }

    /// The sentence shown to the client: never the text of an internal error.
    fn public_message(&self) -> String {
        match self {
            Self::Database(e) if is_connectivity(e) => "the database is unavailable, try again shortly".into(),
            Self::Redis(_) => "a backing service is unavailable, try again shortly".into(),
            Self::Unavailable(what) => format!("{what} is unavailable, try again shortly"),
            Self::Database(_) | Self::Internal(_) => "an internal error occurred".into(),
            other => other.to_string(),
        }
    }
}

/// Whether a database error means Postgres cannot be reached (or is going down), as opposed to
/// a statement that failed: the first is `503 service_unavailable`, the second a bug.
pub fn is_connectivity(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        // connection exceptions (class 08); admin, crash and start-up shutdowns (57P01..57P03)
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

/// Whether an error somewhere in `e`'s chain is Postgres (or Redis) being out of reach.
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(db) = cause.downcast_ref::<sqlx::Error>() {
            return is_connectivity(db);
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return api.status_code() == StatusCode::SERVICE_UNAVAILABLE;
        }
        cause.downcast_ref::<fred::error::Error>().is_some()
    })
}

/// Builds the envelope response; also used by handlers that are not `ApiError`s (fallbacks,
/// middleware rejections).
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(Envelope { error: ErrorBody::new(code, message) })).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if matches!(self, Self::Redis(_)) {
            crate::metrics::get().redis_errors.inc();
        }
        if status.is_server_error() {
            // logged once, inside the request span (which carries the request id)
            tracing::error!(error = %self, debug = ?self, "request failed");
        } else {
            tracing::debug!(code = self.code(), "request rejected: {self}");
        }
        let mut response = error_response(status, self.code(), &self.public_message());
        if let Self::TooManyRequests { retry_after, .. } = &self {
            // rounded up: a client that waits exactly this long must not be refused again
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak_their_text() {
        let err = ApiError::Internal(anyhow::anyhow!("relation \"secret_table\" does not exist"));
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(resp).await;
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("secret_table"));
    }

    #[tokio::test]
    async fn rate_limited_carries_retry_after() {
        let resp = ApiError::rate_limited("slow down", Duration::from_millis(2500)).into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        let body = body_of(resp).await;
        assert_eq!(body["error"]["code"], "rate_limited");
        assert_eq!(body["error"]["message"], "slow down");
    }
}
