//! The client's one error type. Server-reported failures keep the wire error code, so a
//! caller (or a test) can match on [`ErrorCode`] instead of parsing messages.

use std::fmt;
use std::time::Duration;

use agentwire_protocol::{ErrorCode, ErrorFrame, ProtocolError};
use tokio_tungstenite::tungstenite;

/// Everything that can go wrong talking to agentwire.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base or WebSocket URL cannot be used.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },

    /// A setting given to the client is out of the range the server accepts (e.g. a
    /// [`crate::Worker`]'s prefetch or lease); nothing was sent.
    #[error("invalid setting {setting}: {reason}")]
    InvalidConfig {
        setting: &'static str,
        reason: String,
    },

    /// An HTTP endpoint answered with a non-success status; the server's error body, when it
    /// had the documented shape, is parsed into `code`, `message` and `field`.
    #[error("server answered http {status}: {message}")]
    Http {
        status: u16,
        code: Option<ErrorCode>,
        message: String,
        field: Option<String>,
    },

    /// The WebSocket server answered a request (or reported on a session) with an `error` frame.
    #[error("server reported {}: {}", .0.code, .0.message)]
    Server(Box<ErrorFrame>),

    /// The HTTP request could not be sent or its answer not read.
    #[error("http request failed")]
    Transport(#[from] reqwest::Error),

    /// The WebSocket handshake, a read or a write failed.
    #[error("websocket failed")]
    WebSocket(#[source] Box<tungstenite::Error>),

    /// The server sent something the protocol does not allow.
    #[error("server broke the protocol: {0}")]
    Protocol(String),

    /// The server closed the WebSocket connection, or it was already closed.
    #[error("connection closed{}", describe_close(*.code, .reason))]
    Closed { code: Option<u16>, reason: String },

    /// No answer arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),

    /// A request (request–reply) got no reply within its timeout (code `request_timeout`).
    #[error("no reply within {0:?}")]
    RequestTimedOut(Duration),
}

fn describe_close(code: Option<u16>, reason: &str) -> String {
    match (code, reason.is_empty()) {
        (None, _) => String::new(),
        (Some(code), true) => format!(" with code {code}"),
        (Some(code), false) => format!(" with code {code}: {reason}"),
    }
}

impl ClientError {
    /// The wire error code, when the server reported one (HTTP body or `error` frame).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Http { code, .. } => *code,
            ClientError::Server(frame) => Some(frame.code),
            ClientError::RequestTimedOut(_) => Some(ErrorCode::RequestTimeout),
            _ => None,
        }
    }

    /// The field the server blamed, when it named one.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Http { field, .. } => field.as_deref(),
            ClientError::Server(frame) => frame.field.as_deref(),
            _ => None,
        }
    }

    /// Whether the error means the WebSocket connection is gone (so a resuming subscriber
    /// reconnects) rather than one bad frame or a refused request on a live connection.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::WebSocket(_) | ClientError::Closed { .. } | ClientError::Timeout(_)
        )
    }
}

impl From<tungstenite::Error> for ClientError {
    fn from(err: tungstenite::Error) -> Self {
        match err {
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                ClientError::Closed {
                    code: None,
                    reason: String::new(),
                }
            }
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}

impl From<ErrorFrame> for ClientError {
    fn from(frame: ErrorFrame) -> Self {
        ClientError::Server(Box::new(frame))
    }
}

impl From<ProtocolError> for ClientError {
    fn from(err: ProtocolError) -> Self {
        ClientError::Protocol(err.to_string())
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(err: serde_json::Error) -> Self {
        ClientError::Protocol(format!("reply is not the documented JSON: {err}"))
    }
}

/// Displays an error with its whole `source()` chain, for log lines.
pub(crate) struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_reads_as_a_sentence() {
        let plain = ClientError::Closed {
            code: None,
            reason: String::new(),
        };
        assert_eq!(plain.to_string(), "connection closed");
        let coded = ClientError::Closed {
            code: Some(1011),
            reason: "internal".into(),
        };
        assert_eq!(
            coded.to_string(),
            "connection closed with code 1011: internal"
        );
    }

    #[test]
    fn server_errors_expose_their_code_and_field() {
        let err = ClientError::from(ErrorFrame {
            code: ErrorCode::InvalidField,
            message: "tenant is required".into(),
            field: Some("tenant".into()),
            session: None,
            id: None,
            retry_after_ms: None,
            expected_seq: None,
        });
        assert_eq!(err.code(), Some(ErrorCode::InvalidField));
        assert_eq!(err.field(), Some("tenant"));
        assert_eq!(
            err.to_string(),
            "server reported invalid_field: tenant is required"
        );
        assert!(!err.is_connection_lost());
    }
}
