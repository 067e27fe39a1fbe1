//! The gateway's error type, mapped once to the wire: HTTP status + `{"error":{…}}` body,
//! or a WebSocket `error` frame, through [`ErrorCode`]'s one table.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use agentwire_protocol::{ErrorCode, ErrorFrame, ProtocolError, SessionKey};

use crate::history::HistoryError;

/// How long a client should wait before retrying a publish the log did not take.
pub const KAFKA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A failure a client can see.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// With `rate_limited`, `unavailable` (Kafka) and `outcome_unknown`: when to retry (a
    /// `Retry-After` header over HTTP).
    pub retry_after_ms: Option<u64>,
    /// With `sequence_gap`: the `producer_seq` expected next.
    pub expected_seq: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after_ms: None,
            expected_seq: None,
        }
    }

    pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable, nothing was written: {err}"),
        )
    }

    /// The error frame answering a request about `session`.
    pub fn frame_for(&self, session: &SessionKey) -> ErrorFrame {
        ErrorFrame {
            session: Some(session.clone()),
            ..self.frame()
        }
    }

    /// The log did not take (or confirm) an append: a 503 that says when to try again, so
    /// clients back off instead of piling requests onto a broker that is behind.
    pub fn kafka_unavailable(err: impl std::fmt::Display) -> Self {
        Self::unavailable("kafka", err).retry_after(KAFKA_RETRY_AFTER)
    }

    /// The same error, telling the client when to retry (`retry_after_ms`, `Retry-After`).
    pub fn retry_after(self, after: std::time::Duration) -> Self {
        Self {
            retry_after_ms: Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1)),
            ..self
        }
    }

    /// Over a rate limit; retry after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self {
            retry_after_ms: Some(
                u64::try_from(retry_after.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            ),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    pub fn frame(&self) -> ErrorFrame {
        ErrorFrame {
            code: self.code,
            message: self.message.clone(),
            field: self.field.clone(),
            session: None,
            id: None,
            retry_after_ms: self.retry_after_ms,
            expected_seq: self.expected_seq,
        }
    }
}

impl From<HistoryError> for ApiError {
    fn from(err: HistoryError) -> Self {
        match err {
            HistoryError::Valkey(e) => Self::unavailable("valkey", e),
            HistoryError::Kafka(e) => Self::unavailable("kafka", e),
            HistoryError::NoPartitions => {
                Self::unavailable("kafka", "the log topic has no partitions")
            }
            retention @ HistoryError::Retention { .. } => {
                Self::new(ErrorCode::HistoryUnavailable, retention.to_string())
            }
            HistoryError::ScanQuota { wait } => Self::rate_limited(
                "the tenant is over its log-scan quota (history read from the log); retry later",
                wait,
            ),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(err: ProtocolError) -> Self {
        Self {
            code: err.code(),
            message: err.message().to_owned(),
            field: err.field().map(str::to_owned),
            retry_after_ms: None,
            expected_seq: None,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: ErrorFrame,
    #[serde(skip_serializing_if = "Option::is_none")]
    acks: Option<&'a [serde_json::Value]>,
}

/// Renders an error body, optionally with the acknowledgements of a partly written batch.
pub fn error_response(err: &ApiError, acks: Option<&[serde_json::Value]>) -> Response {
    metrics::counter!(crate::metrics::ERRORS, "code" => err.code.as_str()).increment(1);
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        Json(Body {
            error: err.frame(),
            acks,
        }),
    )
        .into_response();
    if err.code == ErrorCode::Unauthorized {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    if let Some(ms) = err.retry_after_ms {
        // Retry-After is in whole seconds; round up so a client never retries too early.
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, ms.div_ceil(1000).into());
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self, None)
    }
}
