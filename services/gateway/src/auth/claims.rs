//! What a verified token allows: one tenant, the sessions of it the client may subscribe to
//! and publish into, as glob patterns over `agent_type:session_id` (`*` matches anything),
//! and the producer ids it may publish under and take epochs for (`producers`, glob patterns
//! over producer ids).
//!
//! Work queues: `enqueue` and `consume` are glob patterns over capability names (absent:
//! every capability of the tenant); an empty list forbids it.
//!
//! Producer ids are owned: a producer's sequence and epoch are shared state of the tenant, so
//! whoever may use an id can burn its next sequence or fence it. A token without `producers`
//! may use every producer id only when it may publish into every session of the tenant (no
//! `publish` claim): it can already write anything anywhere in the tenant. A token narrowed by
//! `publish` patterns needs a `producers` claim to name a producer id at all.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use agentwire_protocol::{Capability, ErrorCode, Event, ProducerId, SessionKey, Tenant};

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
    /// Producer id patterns the client may publish under and take epochs for; absent: every
    /// producer id when `publish` is absent too, none otherwise (see the module docs).
    #[serde(default)]
    pub producers: Option<Vec<String>>,
    /// Capability patterns the client may enqueue tasks to; absent: every capability.
    #[serde(default)]
    pub enqueue: Option<Vec<String>>,
    /// Capability patterns the client may take tasks of (claim, consume, dead letters);
    /// absent: every capability.
    #[serde(default)]
    pub consume: Option<Vec<String>>,
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
    producers: Option<GlobSet>,
    enqueue: Option<GlobSet>,
    consume: Option<GlobSet>,
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
            producers: None,
            enqueue: None,
            consume: None,
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
            producers: patterns(claims.producers, "producers")?,
            enqueue: patterns(claims.enqueue, "enqueue")?,
            consume: patterns(claims.consume, "consume")?,
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

    /// Whether the client may publish `event`: into its session, under its producer id.
    pub fn check_publish_event(&self, event: &Event) -> Result<(), ApiError> {
        self.check_publish(&event.session)?;
        match &event.producer_id {
            Some(producer) => self.check_producer(producer),
            None => Ok(()),
        }
    }

    /// Whether the client may take a new epoch for `producer` of `tenant`: it must be allowed
    /// to publish at all (not read-only) and own the producer id.
    pub fn check_epoch(&self, tenant: &Tenant, producer: &ProducerId) -> Result<(), ApiError> {
        self.check_tenant(tenant)?;
        if self.publish.as_ref().is_some_and(GlobSet::is_empty) {
            return Err(forbidden(
                "the token may not publish, so it may not take producer epochs".into(),
            ));
        }
        self.check_producer(producer)
    }

    /// Whether the client owns `producer` (see the module docs).
    pub fn check_producer(&self, producer: &ProducerId) -> Result<(), ApiError> {
        match (&self.producers, &self.publish) {
            (Some(set), _) if set.is_match(producer.as_str()) => Ok(()),
            (Some(_), _) => Err(forbidden(format!(
                "the token may not use producer id {producer}"
            ))),
            (None, None) => Ok(()),
            (None, Some(_)) => Err(forbidden(format!(
                "the token's publish patterns narrow it to some sessions and it has no producers claim, so it may not use producer id {producer}"
            ))),
        }
    }

    /// Whether the client may enqueue tasks to `capability` of `tenant`.
    pub fn check_enqueue(&self, tenant: &Tenant, capability: &Capability) -> Result<(), ApiError> {
        self.check_capability(tenant, capability, self.enqueue.as_ref(), "enqueue to")
    }

    /// Whether the client may take tasks of `capability` of `tenant` (claim, consume, dead
    /// letters).
    pub fn check_consume(&self, tenant: &Tenant, capability: &Capability) -> Result<(), ApiError> {
        self.check_capability(tenant, capability, self.consume.as_ref(), "consume from")
    }

    /// Whether the client may see `capability`'s tasks at all (enqueue or consume).
    pub fn check_task_reader(
        &self,
        tenant: &Tenant,
        capability: &Capability,
    ) -> Result<(), ApiError> {
        self.check_enqueue(tenant, capability)
            .or_else(|_| self.check_consume(tenant, capability))
    }

    /// Whether the client may act as a worker of `tenant` at all (it holds a lease id, which
    /// names one task and is unguessable).
    pub fn check_worker(&self, tenant: &Tenant) -> Result<(), ApiError> {
        self.check_tenant(tenant)?;
        match &self.consume {
            Some(set) if set.is_empty() => Err(forbidden("the token may not consume tasks".into())),
            _ => Ok(()),
        }
    }

    fn check_capability(
        &self,
        tenant: &Tenant,
        capability: &Capability,
        set: Option<&GlobSet>,
        what: &str,
    ) -> Result<(), ApiError> {
        self.check_tenant(tenant)?;
        match set {
            Some(set) if !set.is_match(capability.as_str()) => Err(forbidden(format!(
                "the token may not {what} capability {capability}"
            ))),
            _ => Ok(()),
        }
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
        owner(subscribe, publish, None)
    }

    fn owner(
        subscribe: Option<&[&str]>,
        publish: Option<&[&str]>,
        producers: Option<&[&str]>,
    ) -> Principal {
        let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        Principal::from_claims(Claims {
            tenant: "acme".into(),
            exp: 4_000_000_000,
            subscribe: list(subscribe),
            publish: list(publish),
            producers: list(producers),
            enqueue: None,
            consume: Some(vec!["search*".into()]),
            sub: None,
        })
        .expect("principal")
    }

    fn producer(id: &str) -> ProducerId {
        ProducerId::new(id).expect("producer id")
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
    fn producer_ids_are_owned_through_the_producers_claim() {
        let acme = Tenant::new("acme").expect("tenant");
        let p = owner(None, None, Some(&["planner-*"]));
        assert!(p.check_producer(&producer("planner-1")).is_ok());
        let err = p
            .check_producer(&producer("billing"))
            .expect_err("not owned");
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(p.check_epoch(&acme, &producer("planner-1")).is_ok());
        assert!(p.check_epoch(&acme, &producer("billing")).is_err());
        let other = Tenant::new("other").expect("tenant");
        assert!(p.check_epoch(&other, &producer("planner-1")).is_err());
    }

    #[test]
    fn without_the_claim_only_tenant_wide_publishers_use_any_producer_id() {
        let acme = Tenant::new("acme").expect("tenant");
        let wide = principal(None, None);
        assert!(wide.check_producer(&producer("anything")).is_ok());
        assert!(wide.check_epoch(&acme, &producer("anything")).is_ok());
        let narrow = principal(None, Some(&["planner:s1"]));
        assert!(narrow.check_producer(&producer("anything")).is_err());
        let mut event = Event::new(
            key("acme:planner:s1"),
            agentwire_protocol::EventType::new("agent.message").expect("type"),
        );
        assert!(narrow.check_publish_event(&event).is_ok(), "no producer id");
        event.producer_id = Some(producer("p"));
        assert!(narrow.check_publish_event(&event).is_err());
    }

    #[test]
    fn read_only_tokens_take_no_epochs() {
        let acme = Tenant::new("acme").expect("tenant");
        let read_only = owner(None, Some(&[]), Some(&["*"]));
        let err = read_only
            .check_epoch(&acme, &producer("p"))
            .expect_err("read only");
        assert_eq!(err.code, ErrorCode::Forbidden);
    }

    #[test]
    fn capabilities_are_scoped_by_the_consume_claim() {
        let acme = Tenant::new("acme").expect("tenant");
        let p = principal(None, None);
        let search = Capability::new("search_web").expect("cap");
        let billing = Capability::new("billing").expect("cap");
        assert!(p.check_consume(&acme, &search).is_ok());
        assert_eq!(
            p.check_consume(&acme, &billing).expect_err("scoped").code,
            ErrorCode::Forbidden
        );
        assert!(
            p.check_enqueue(&acme, &billing).is_ok(),
            "no enqueue claim: all"
        );
        let other = Tenant::new("other").expect("tenant");
        assert!(p.check_enqueue(&other, &billing).is_err());
        assert!(p.check_worker(&other).is_err());
    }

    #[test]
    fn with_authentication_off_anything_goes() {
        let p = Principal::anyone();
        assert!(p.check_publish(&key("any:planner:s1")).is_ok());
        assert!(p.tenant().is_none());
    }
}
