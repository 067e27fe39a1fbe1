//! Error codes: the one table that maps every failure a client can see to its wire code,
//! HTTP status and (where the failure ends the connection) WebSocket close code.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Every error code a client can receive, in HTTP bodies and WebSocket `error` frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not valid JSON / protobuf, or not of the expected shape.
    Malformed,
    /// A WebSocket frame names an `op` the server does not know.
    UnknownOp,
    /// A field is missing or has an invalid value; the error names the field.
    InvalidField,
    /// No valid token (missing, malformed, badly signed or expired).
    Unauthorized,
    /// The token does not allow this tenant, session or origin.
    Forbidden,
    /// The tenant already has as many WebSocket connections on this gateway as it may.
    TooManyConnections,
    /// The body or frame exceeds the configured size limit.
    PayloadTooLarge,
    /// The request's Content-Type is not one the endpoint accepts.
    UnsupportedMediaType,
    /// No such route or resource.
    NotFound,
    /// The route exists but not with this HTTP method.
    MethodNotAllowed,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// The cursor is older than the history the server can still serve.
    HistoryUnavailable,
    /// The cursor's epoch is not the log's current one: the log was reset, its offsets mean
    /// something else now. Drop the cursor and subscribe again without `after`.
    EpochChanged,
    /// The connection already follows that session.
    AlreadySubscribed,
    /// The connection does not follow that session.
    NotSubscribed,
    /// The connection already follows as many sessions as it may.
    TooManySubscriptions,
    /// Over a rate limit; `retry_after_ms` says when to try again.
    RateLimited,
    /// A `producer_seq` skipped ahead of the next expected one (`expected_seq`); nothing was written.
    SequenceGap,
    /// A publish from an older `producer_epoch` than the producer's current one; nothing was written.
    StaleEpoch,
    /// A retry of a `producer_seq` accepted so long ago that its ack left the dedupe window:
    /// it was written once, nothing more was written, but its offset is no longer known.
    SequenceTooOld,
    /// Kafka or Valkey is unreachable; nothing was written. Retry later.
    Unavailable,
    /// Kafka did not confirm the append in time: the event may or may not be in the log.
    /// Retry with the same `producerseq` to learn which; the retry never writes a second copy
    /// (an unsequenced publish cannot be told apart from its retry).
    OutcomeUnknown,
    /// A task op named a lease that is not the task's current one: it expired (and the task
    /// was handed out again), was released, or the task moved on. Drop the task.
    StaleLease,
    /// The task is not in a state that allows the op (a requeue of a task that is not a dead
    /// letter, a cancel of a finished task).
    WrongState,
    /// A compare-and-set found the session state at another version than `expect_version`:
    /// nothing changed; read the state and try again.
    VersionConflict,
    /// A `consume` would pass its counter's limit: nothing changed.
    BudgetExceeded,
    /// A bug or an unexpected failure inside agentwire.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 27] = [
        ErrorCode::Malformed,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidField,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::TooManyConnections,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::HistoryUnavailable,
        ErrorCode::EpochChanged,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::SequenceGap,
        ErrorCode::StaleEpoch,
        ErrorCode::SequenceTooOld,
        ErrorCode::Unavailable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::StaleLease,
        ErrorCode::WrongState,
        ErrorCode::VersionConflict,
        ErrorCode::BudgetExceeded,
        ErrorCode::Internal,
    ];

    /// The wire name, e.g. `invalid_field`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::HistoryUnavailable => "history_unavailable",
            ErrorCode::EpochChanged => "epoch_changed",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::SequenceGap => "sequence_gap",
            ErrorCode::StaleEpoch => "stale_epoch",
            ErrorCode::SequenceTooOld => "sequence_too_old",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::StaleLease => "stale_lease",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status an HTTP endpoint answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Malformed | ErrorCode::UnknownOp | ErrorCode::InvalidField => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::AlreadySubscribed
            | ErrorCode::NotSubscribed
            | ErrorCode::SequenceGap
            | ErrorCode::StaleEpoch
            | ErrorCode::SequenceTooOld
            | ErrorCode::EpochChanged
            | ErrorCode::StaleLease
            | ErrorCode::WrongState
            | ErrorCode::VersionConflict
            | ErrorCode::BudgetExceeded => 409,
            ErrorCode::HistoryUnavailable => 410,
            ErrorCode::TooManySubscriptions
            | ErrorCode::TooManyConnections
            | ErrorCode::RateLimited => 429,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable | ErrorCode::OutcomeUnknown => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoding or validation failure of client input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    code: ErrorCode,
    message: String,
    field: Option<Cow<'static, str>>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An invalid or missing field; `message` completes the sentence "<field> …".
    pub fn invalid(field: &'static str, message: impl fmt::Display) -> Self {
        Self {
            code: ErrorCode::InvalidField,
            message: format!("{field} {message}"),
            field: Some(Cow::Borrowed(field)),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Malformed, message)
    }

    /// Re-attributes the error to `field` (e.g. a session key part to `session`).
    pub fn with_field(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serialises_to_its_wire_name() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialise");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
