//! Authentication and tenant isolation: a JWT on every request (`Authorization: Bearer …`; on
//! the WebSocket upgrade only, where browsers cannot set headers, also a `token` query
//! parameter), verified with HS256, RS256 or a JWKS file; its claims name the tenant, the
//! session patterns the client may subscribe to and publish into and the producer ids it owns
//! (`claims.rs`). With `AGENTWIRE_AUTH=off` anyone may do anything, logged loudly at start.
//!
//! Tokens never reach the logs: request URIs are logged with the `token` parameter redacted
//! ([`redact_uri`]).

mod claims;
mod config;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Query};
use axum::http::header::{AUTHORIZATION, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use agentwire_protocol::{ErrorCode, Tenant};

use crate::error::ApiError;
use crate::state::AppState;

pub use claims::{Claims, Principal};
pub use config::{AuthArgs, AuthMode};

/// Verifies tokens.
pub struct Authenticator {
    mode: AuthMode,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    jwks: Option<JwkSet>,
    args: AuthArgs,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("jwks", &self.jwks.as_ref().map(|j| j.keys.len()))
            .finish_non_exhaustive()
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

impl Authenticator {
    /// Loads the configured keys. With `jwt` at least one key source is required.
    pub fn new(args: &AuthArgs) -> Result<Self, String> {
        let hs256 = args
            .hs256_secret
            .as_deref()
            .map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let rs256 = match &args.rs256_public_key {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--jwt-rs256-public-key {}: {e}", path.display()))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!(
                        "--jwt-rs256-public-key {} is not an RSA public key in PEM: {e}",
                        path.display()
                    )
                })?)
            }
            None => None,
        };
        let jwks = match &args.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--jwks-file {}: {e}", path.display()))?;
                Some(serde_json::from_str::<JwkSet>(&text).map_err(|e| {
                    format!(
                        "--jwks-file {} is not a JSON Web Key Set: {e}",
                        path.display()
                    )
                })?)
            }
            None => None,
        };
        if args.mode == AuthMode::Jwt && hs256.is_none() && rs256.is_none() && jwks.is_none() {
            return Err("authentication is on (AGENTWIRE_AUTH=jwt) but no key is configured: set AGENTWIRE_JWT_HS256_SECRET, AGENTWIRE_JWT_RS256_PUBLIC_KEY or AGENTWIRE_JWKS_FILE, or AGENTWIRE_AUTH=off for local development".into());
        }
        if args.mode == AuthMode::Off {
            tracing::warn!(
                "AUTHENTICATION IS OFF (AGENTWIRE_AUTH=off): every client may read and write every tenant. Use this for local development only."
            );
        }
        Ok(Self {
            mode: args.mode,
            hs256,
            rs256,
            jwks,
            args: args.clone(),
        })
    }

    pub fn is_off(&self) -> bool {
        self.mode == AuthMode::Off
    }

    /// Verifies `token`: signature, `exp` (required), `nbf`, and `iss`/`aud` when configured.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if self.is_off() {
            return Ok(Principal::anyone());
        }
        let header =
            decode_header(token).map_err(|e| unauthorized(format!("malformed token: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone(),
            Algorithm::RS256 => match (&self.jwks, &header.kid) {
                (Some(jwks), Some(kid)) => {
                    let jwk = jwks
                        .find(kid)
                        .ok_or_else(|| unauthorized(format!("no key {kid:?} in the key set")))?;
                    Some(DecodingKey::from_jwk(jwk).map_err(|e| {
                        unauthorized(format!("the key {kid:?} cannot verify tokens: {e}"))
                    })?)
                }
                _ => self.rs256.clone(),
            },
            other => {
                return Err(unauthorized(format!(
                    "tokens signed with {other:?} are not accepted (HS256 or RS256)"
                )));
            }
        }
        .ok_or_else(|| unauthorized(format!("no {:?} key is configured", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.args.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.args.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.args.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => unauthorized("the token expired"),
                ErrorKind::ImmatureSignature => unauthorized("the token is not valid yet (nbf)"),
                _ => unauthorized(format!("invalid token: {e}")),
            }
        })?;
        Principal::from_claims(data.claims)
    }

    /// The principal of a request: its bearer token, else (WebSocket upgrades only) its
    /// `token` query parameter.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Principal, ApiError> {
        if self.is_off() {
            return Ok(Principal::anyone());
        }
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let token = bearer.or(query_token).ok_or_else(|| {
            unauthorized(if query_token.is_some() {
                "a token is required: Authorization: Bearer <jwt> or ?token=<jwt>"
            } else {
                "a token is required: Authorization: Bearer <jwt> (?token=<jwt> only on the WebSocket upgrade)"
            })
        })?;
        self.verify(token.trim())
    }

    /// Whether a browser `Origin` may open a WebSocket.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        let allowed = &self.args.allowed_origins;
        if allowed.is_empty() || allowed.iter().any(|a| a == origin) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("origin {origin} is not allowed"),
            ))
        }
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The `token` query parameter of `uri`, if any.
pub fn query_token(uri: &Uri) -> Option<String> {
    Query::<TokenQuery>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.token)
}

/// `uri` as it may be logged: its path and its decoded query with the value of every `token`
/// parameter replaced by `REDACTED` (a query that does not parse is left out).
pub fn redact_uri(uri: &Uri) -> String {
    if uri.query().is_none() {
        return uri.path().to_owned();
    }
    match Query::<Vec<(String, String)>>::try_from_uri(uri) {
        Ok(Query(pairs)) => {
            let pairs: Vec<String> = pairs
                .into_iter()
                .map(|(name, value)| {
                    let value = if name == "token" { "REDACTED" } else { &value };
                    format!("{name}={value}")
                })
                .collect();
            format!("{}?{}", uri.path(), pairs.join("&"))
        }
        Err(_) => format!("{}?<query not logged>", uri.path()),
    }
}

/// The principal of an HTTP request: a bearer token only. Query tokens end up in proxies'
/// and servers' access logs, so they are accepted on the WebSocket upgrade alone
/// ([`WsPrincipal`]), where browsers have no other way.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth().authenticate(&parts.headers, None)
    }
}

/// The principal of a WebSocket upgrade: a bearer token, else the `token` query parameter.
#[derive(Debug)]
pub struct WsPrincipal(pub Principal);

impl FromRequestParts<AppState> for WsPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let query = query_token(&parts.uri);
        state
            .auth()
            .authenticate(&parts.headers, query.as_deref())
            .map(WsPrincipal)
    }
}

/// WebSocket connections per tenant on this gateway.
#[derive(Debug)]
pub struct TenantConnections {
    max: usize,
    counts: Arc<Mutex<HashMap<Tenant, usize>>>,
}

/// One connection's place in its tenant's count; released on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    tenant: Option<Tenant>,
    counts: Arc<Mutex<HashMap<Tenant, usize>>>,
}

impl TenantConnections {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::default(),
        }
    }

    /// Takes a place for a connection of `tenant` (`None`: authentication off, not counted).
    pub fn acquire(&self, tenant: Option<&Tenant>) -> Result<ConnectionPermit, ApiError> {
        if let Some(tenant) = tenant {
            let mut counts = self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = counts.entry(tenant.clone()).or_insert(0);
            if *count >= self.max {
                return Err(ApiError::new(
                    ErrorCode::TooManyConnections,
                    format!(
                        "tenant {tenant} already has {} WebSocket connections on this gateway",
                        self.max
                    ),
                ));
            }
            *count += 1;
        }
        Ok(ConnectionPermit {
            tenant: tenant.cloned(),
            counts: self.counts.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let Some(tenant) = &self.tenant else { return };
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(tenant) {
            *count -= 1;
            if *count == 0 {
                counts.remove(tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_tenant_and_release_on_drop() {
        let limit = TenantConnections::new(2);
        let acme = Tenant::new("acme").expect("tenant");
        let other = Tenant::new("other").expect("tenant");
        let a = limit.acquire(Some(&acme)).expect("first");
        let _b = limit.acquire(Some(&acme)).expect("second");
        let err = limit.acquire(Some(&acme)).expect_err("third");
        assert_eq!(err.code, ErrorCode::TooManyConnections);
        assert!(
            limit.acquire(Some(&other)).is_ok(),
            "other tenants are not affected"
        );
        drop(a);
        assert!(
            limit.acquire(Some(&acme)).is_ok(),
            "a released place is reused"
        );
        assert!(
            limit.acquire(None).is_ok(),
            "uncounted without authentication"
        );
    }

    #[test]
    fn logged_uris_never_carry_the_token() {
        let uri: Uri = "/v1/ws?after=3&token=eyJ.secret.sig&x=token"
            .parse()
            .expect("uri");
        let logged = redact_uri(&uri);
        assert_eq!(logged, "/v1/ws?after=3&token=REDACTED&x=token");
        let encoded: Uri = "/v1/ws?tok%65n=eyJ.secret.sig".parse().expect("uri");
        assert_eq!(redact_uri(&encoded), "/v1/ws?token=REDACTED");
        let plain: Uri = "/v1/events".parse().expect("uri");
        assert_eq!(redact_uri(&plain), "/v1/events");
        assert_eq!(query_token(&uri).as_deref(), Some("eyJ.secret.sig"));
    }

    #[test]
    fn jwt_mode_without_a_key_refuses_to_start() {
        let args = AuthArgs {
            mode: AuthMode::Jwt,
            ..AuthArgs::off()
        };
        assert!(Authenticator::new(&args).is_err());
    }

    #[test]
    fn origins_outside_the_allow_list_are_forbidden() {
        let args = AuthArgs {
            allowed_origins: vec!["https://app.example".into()],
            ..AuthArgs::off()
        };
        let auth = Authenticator::new(&args).expect("auth");
        let mut headers = HeaderMap::new();
        assert!(
            auth.check_origin(&headers).is_ok(),
            "no origin: not a browser"
        );
        headers.insert(ORIGIN, "https://app.example".parse().expect("value"));
        assert!(auth.check_origin(&headers).is_ok());
        headers.insert(ORIGIN, "https://evil.example".parse().expect("value"));
        assert_eq!(
            auth.check_origin(&headers).expect_err("evil").code,
            ErrorCode::Forbidden
        );
    }
}
