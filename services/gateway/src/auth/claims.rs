//! What a verified token allows: one tenant, and the sessions of it the client may subscribe
//! to and publish into, as glob patterns over `agent_type:session_id` (`*` matches anything).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use agentwire_protocol::{ErrorCode, SessionKey, Tenant};

use crate::error::ApiError;

/// The claims agentwire reads (others are ignored).
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub tenant: String,
    pub exp: u64,
    /// Session patterns the client may follow; absent: every session of the tenant.
    pub subscribe: Option<Vec<String>>,
    /// Session patterns the client may publish into; absent: every session of the tenant.
    pub publish: Option<Vec<String>>,
    #[serde(default)]
    pub sub: Option<String>,
}

/// Who is calling and what they may do.
#[derive(Clone, Debug)]
pub struct Principal {
    /// `None` only with authentication off: any tenant.
    tenant: Option<Tenant>,
    subscribe: Option<GlobSet>,
    publish: Option<GlobSet>,
    /// When the token stops being valid; `None` with authentication off.
    expires_at: Option<SystemTime>,
    pub subject: Option<String>,
}

fn patterns(list: Option<Vec<String>>, claim: &str) -> Result<Option<GlobSet>, ApiError> {
    let Some(list) = list else {
        return Ok(None);
    };
    let mut set = GlobSetBuilder::new();
    for pattern in list {
        let glob = Glob::new(&pattern).map_err(|e| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("the token's {claim} pattern {pattern:?} is invalid: {e}"),
            )
        })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|e| {
        ApiError::new(
            ErrorCode::Unauthorized,
            format!("bad {claim} patterns: {e}"),
        )
    })
}

impl Principal {
    /// Anyone, anything: authentication is off.
    pub fn anyone() -> Self {
        Self {
            tenant: None,
            subscribe: None,
            publish: None,
            expires_at: None,
            subject: None,
        }
    }

    pub fn from_claims(claims: Claims) -> Result<Self, ApiError> {
        let tenant = Tenant::new(claims.tenant).map_err(|e| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("the token's tenant is invalid: {e}"),
            )
        })?;
        Ok(Self {
            tenant: Some(tenant),
            subscribe: patterns(claims.subscribe, "subscribe")?,
            publish: patterns(claims.publish, "publish")?,
            expires_at: Some(UNIX_EPOCH + Duration::from_secs(claims.exp)),
            subject: claims.sub,
        })
    }

    /// The token's tenant (`None` with authentication off).
    pub fn tenant(&self) -> Option<&Tenant> {
        self.tenant.as_ref()
    }

    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether `tenant` is this principal's.
    pub fn check_tenant(&self, tenant: &Tenant) -> Result<(), ApiError> {
        match &self.tenant {
            Some(own) if own != tenant => Err(forbidden(format!(
                "the token is for tenant {own}, not {tenant}"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the client may follow `session`.
    pub fn check_subscribe(&self, session: &SessionKey) -> Result<(), ApiError> {
        self.check(session, self.subscribe.as_ref(), "subscribe to")
    }

    /// Whether the client may publish into `session`.
    pub fn check_publish(&self, session: &SessionKey) -> Result<(), ApiError> {
        self.check(session, self.publish.as_ref(), "publish into")
    }

    fn check(
        &self,
        session: &SessionKey,
        set: Option<&GlobSet>,
        what: &str,
    ) -> Result<(), ApiError> {
        self.check_tenant(&session.tenant)?;
        let local = format!("{}:{}", session.agent_type, session.session_id);
        match set {
            Some(set) if !set.is_match(&local) => {
                Err(forbidden(format!("the token may not {what} {session}")))
            }
            _ => Ok(()),
        }
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subscribe: Option<&[&str]>, publish: Option<&[&str]>) -> Principal {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        Principal::from_claims(Claims {
            tenant: "acme".into(),
            exp: 4_000_000_000,
            subscribe: list(subscribe),
            publish: list(publish),
            sub: None,
        })
        .expect("principal")
    }

    fn key(text: &str) -> SessionKey {
        text.parse().expect("session key")
    }

    #[test]
    fn another_tenant_is_always_forbidden() {
        let p = principal(None, None);
        assert!(p.check_subscribe(&key("acme:planner:s1")).is_ok());
        let err = p
            .check_subscribe(&key("other:planner:s1"))
            .expect_err("tenant");
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(p.check_publish(&key("other:planner:s1")).is_err());
    }

    #[test]
    fn patterns_limit_sessions_within_the_tenant() {
        let p = principal(Some(&["planner:*"]), Some(&["planner:s1"]));
        assert!(p.check_subscribe(&key("acme:planner:s9")).is_ok());
        assert!(p.check_subscribe(&key("acme:coder:s1")).is_err());
        assert!(p.check_publish(&key("acme:planner:s1")).is_ok());
        assert!(p.check_publish(&key("acme:planner:s2")).is_err());
    }

    #[test]
    fn with_authentication_off_anything_goes() {
        let p = Principal::anyone();
        assert!(p.check_publish(&key("any:planner:s1")).is_ok());
        assert!(p.tenant().is_none());
    }
}
