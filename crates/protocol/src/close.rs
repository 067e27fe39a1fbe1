//! Why the server ends a WebSocket connection: one table of close codes (RFC 6455 §7.4.1 and
//! the 4000–4999 private range), each with whether a client should reconnect.
//!
//! `docs/protocol.md` ("Close codes") lists the same table for clients.

use std::fmt;

/// A WebSocket close code the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// The gateway is shutting down; acks of publishes already sent to Kafka were sent first.
    GoingAway,
    /// Invalid WebSocket data (e.g. a text message that is not UTF-8).
    ProtocolError,
    /// Refused messages in a row past the abuse limit: the client ignored `rate_limited`.
    PolicyViolation,
    /// A message larger than the frame limit.
    TooBig,
    /// An internal error.
    Internal,
    /// The connection's token expired and was not refreshed.
    TokenExpired,
}

impl CloseCode {
    /// Every code, in the order of the table.
    pub const ALL: [CloseCode; 6] = [
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::TokenExpired,
    ];

    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::PolicyViolation => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TokenExpired => 4001,
        }
    }

    /// The code a number names, if the server sends it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect (and resume from its cursor) after this close:
    /// `false` when the same connection would be closed again for the same reason.
    pub fn reconnect(self) -> Reconnect {
        match self {
            CloseCode::GoingAway | CloseCode::Internal => Reconnect::Yes,
            CloseCode::ProtocolError | CloseCode::PolicyViolation | CloseCode::TooBig => {
                Reconnect::AfterFixing
            }
            CloseCode::TokenExpired => Reconnect::WithNewToken,
        }
    }
}

/// What a client should do after a close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect (with backoff) and resume from the cursor.
    Yes,
    /// Reconnect only with a fresh token.
    WithNewToken,
    /// The client sent something wrong; reconnecting as is repeats the close.
    AfterFixing,
}

/// A close the server sends: its code and a human-readable reason (at most 123 bytes on the
/// wire; longer reasons are cut at a character boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: CloseCode,
    pub reason: String,
}

/// Longest close reason RFC 6455 allows (a control frame's 125 bytes less the code).
pub const MAX_REASON_BYTES: usize = 123;

impl CloseReason {
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Self { code, reason }
    }

    pub fn going_away() -> Self {
        Self::new(CloseCode::GoingAway, "the gateway is shutting down")
    }

    pub fn token_expired() -> Self {
        Self::new(CloseCode::TokenExpired, "token expired")
    }

    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(CloseCode::Internal, reason)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code.code(), self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(1000), None);
        assert_eq!(CloseCode::TokenExpired.code(), 4001);
        assert_eq!(CloseCode::TokenExpired.reconnect(), Reconnect::WithNewToken);
        assert_eq!(CloseCode::TooBig.reconnect(), Reconnect::AfterFixing);
        assert_eq!(CloseCode::GoingAway.reconnect(), Reconnect::Yes);
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let reason = CloseReason::new(CloseCode::Internal, "é".repeat(100));
        assert!(reason.reason.len() <= MAX_REASON_BYTES);
        assert_eq!(reason.reason.len() % 2, 0, "no half character");
    }
}
