//! The gateway's error type, mapped once to the wire: HTTP status + `{"error":{…}}` body,
//! or a WebSocket `error` frame, through [`ErrorCode`]'s one table.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use agentwire_protocol::{ErrorCode, ErrorFrame, ProtocolError, SessionKey};

use crate::history::HistoryError;

/// A failure a client can see.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
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

    pub fn frame(&self) -> ErrorFrame {
        ErrorFrame {
            code: self.code,
            message: self.message.clone(),
            field: self.field.clone(),
            session: None,
            id: None,
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
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(err: ProtocolError) -> Self {
        Self {
            code: err.code(),
            message: err.message().to_owned(),
            field: err.field().map(str::to_owned),
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
    (
        status,
        Json(Body {
            error: err.frame(),
            acks,
        }),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(&self, None)
    }
}
