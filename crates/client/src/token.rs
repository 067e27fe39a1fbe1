//! Where a client's JWT comes from: a [`TokenProvider`] asked for the current token on every
//! (re)connection and before the connection's token expires, so a long-lived
//! [`crate::Subscriber`] outlives any one token.
//!
//! Tokens are secrets: they travel in the `Authorization` header of the WebSocket upgrade (not
//! in the URL) and in `refresh` frames, and nothing here prints them (`Debug` is redacted).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Returns the token to use now; called on every connection attempt and every refresh.
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

impl TokenProvider {
    /// A provider that calls `current` for each token (e.g. to read a file your identity
    /// provider rotates, or to mint a short-lived token).
    pub fn new(current: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self(Arc::new(current))
    }

    /// Always the same token (it is not refreshed; the connection ends at its expiry).
    pub fn fixed(token: impl Into<String>) -> Self {
        let token = token.into();
        Self::new(move || token.clone())
    }

    /// The current token.
    pub fn token(&self) -> String {
        (self.0)()
    }
}

/// The `exp` claim of a JWT, read without verifying it (the client only schedules its own
/// refresh with it; the server verifies). `None` when the token has no readable `exp`.
pub fn expiry(token: &str) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Exp = serde_json::from_slice(&bytes).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp))
}

/// Below this much validity left a refresh is not attempted: the server closes the connection
/// at expiry and the reconnection asks the provider for a new token.
const MIN_LEFT: Duration = Duration::from_secs(1);

/// How long after `now` to refresh a token expiring at `exp`: `margin` before expiry, but
/// never before half its remaining validity (so short-lived tokens are not refreshed in a
/// loop); `None` without an expiry or with too little validity left.
pub(crate) fn refresh_after(
    exp: Option<SystemTime>,
    now: SystemTime,
    margin: Duration,
) -> Option<Duration> {
    let left = exp?.duration_since(now).ok()?;
    if left < MIN_LEFT {
        return None;
    }
    Some(left.saturating_sub(margin).max(left / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn the_expiry_is_read_from_the_payload() {
        let token = token_with(r#"{"tenant":"t","exp":1700000000}"#);
        assert_eq!(
            expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(expiry(&token_with(r#"{"tenant":"t"}"#)), None);
        assert_eq!(expiry("not a jwt"), None);
    }

    #[test]
    fn refreshes_happen_a_margin_before_expiry_but_not_in_a_loop() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let margin = Duration::from_secs(30);
        let hour = Some(now + Duration::from_secs(3600));
        assert_eq!(
            refresh_after(hour, now, margin),
            Some(Duration::from_secs(3570))
        );
        let short = Some(now + Duration::from_secs(4));
        assert_eq!(
            refresh_after(short, now, margin),
            Some(Duration::from_secs(2))
        );
        assert_eq!(refresh_after(Some(now), now, margin), None, "expired");
        assert_eq!(refresh_after(None, now, margin), None);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let provider = TokenProvider::fixed("secret.token.value");
        assert_eq!(format!("{provider:?}"), "TokenProvider(..)");
        assert_eq!(provider.token(), "secret.token.value");
    }
}
