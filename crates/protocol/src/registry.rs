//! The agent registry's model (`docs/coordination.md`): what an agent registers (what it can
//! do, how long it lives without a heartbeat), how `discover` shows a live agent, and the
//! events that record joins, leaves and expiries in the log: `agent.registry.joined`,
//! `.updated`, `.left` and `.expired`, in the tenant's registry session
//! `<tenant>:agentwire.registry:agents` (subscribe to it to watch the registry).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ProtocolError;
use crate::ids::{AgentId, AgentType, Capability, SessionId, SessionKey, Tenant};

/// How long a registration lives without a heartbeat, unless it says otherwise.
pub const DEFAULT_TTL_MS: u64 = 30_000;
/// The shortest and longest TTL a registration may ask for.
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 3_600_000;
/// Most capabilities one agent registers.
pub const MAX_CAPABILITIES: usize = 64;
/// Largest `metadata`, as JSON.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Longest `version`.
pub const MAX_VERSION_LEN: usize = 64;
/// The agent type and session id of a tenant's registry session.
pub const REGISTRY_AGENT_TYPE: &str = "agentwire.registry";
pub const REGISTRY_SESSION_ID: &str = "agents";

/// A `register` as a client sends it (HTTP body or WebSocket frame fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    /// The tenant (needed only with authentication off; else the token's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Tenant>,
    pub agent_id: AgentId,
    pub capabilities: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The most tasks the agent takes at once (shown by `discover`; advisory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A registration as stored and logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub tenant: Tenant,
    pub agent_id: AgentId,
    pub capabilities: Vec<Capability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    pub ttl_ms: u64,
    /// The token subject that registered it (absent with authentication off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    pub registered_at_ms: u64,
}

impl RegisterSpec {
    /// Validates the spec into a registration of `tenant`, made now by `principal`.
    pub fn into_registration(
        self,
        tenant: Tenant,
        principal: Option<String>,
        now_ms: u64,
    ) -> Result<Registration, ProtocolError> {
        if self.capabilities.len() > MAX_CAPABILITIES {
            return Err(ProtocolError::invalid(
                "capabilities",
                format!("at most {MAX_CAPABILITIES}"),
            ));
        }
        let mut capabilities = self.capabilities;
        capabilities.sort();
        capabilities.dedup();
        if self
            .version
            .as_ref()
            .is_some_and(|v| v.len() > MAX_VERSION_LEN)
        {
            return Err(ProtocolError::invalid(
                "version",
                format!("at most {MAX_VERSION_LEN} bytes"),
            ));
        }
        let metadata_len = self
            .metadata
            .as_ref()
            .map_or(0, |m| Value::Object(m.clone()).to_string().len());
        if metadata_len > MAX_METADATA_BYTES {
            return Err(ProtocolError::invalid(
                "metadata",
                format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
            ));
        }
        let ttl_ms = self.ttl_ms.unwrap_or(DEFAULT_TTL_MS);
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(ProtocolError::invalid(
                "ttl_ms",
                format!("must be {MIN_TTL_MS} to {MAX_TTL_MS}"),
            ));
        }
        Ok(Registration {
            tenant,
            agent_id: self.agent_id,
            capabilities,
            version: self.version,
            metadata: self.metadata,
            max_concurrency: self.max_concurrency,
            ttl_ms,
            principal,
            registered_at_ms: now_ms,
        })
    }
}

/// A live agent as `discover` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    #[serde(flatten)]
    pub registration: Registration,
    /// When the registration expires unless the agent heartbeats (Unix ms).
    pub expires_at_ms: u64,
    /// Tasks the agent holds now, as its last heartbeat reported (its connection's, when it
    /// registered over WebSocket).
    pub in_flight: u32,
}

/// What a registry event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryEventKind {
    /// A new registration (or one after the previous expired or left).
    Joined,
    /// A live registration registered again with another document (capabilities…).
    Updated,
    /// The agent deregistered, or its connection ended.
    Left,
    /// No heartbeat within the TTL: the sweeper removed it.
    Expired,
}

impl RegistryEventKind {
    /// The event's CloudEvents type.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Joined => "agent.registry.joined",
            Self::Updated => "agent.registry.updated",
            Self::Left => "agent.registry.left",
            Self::Expired => "agent.registry.expired",
        }
    }
}

/// The session a tenant's registry events are appended to.
pub fn registry_session(tenant: &Tenant) -> SessionKey {
    // Both names are constants that pass validation.
    SessionKey::new(
        tenant.clone(),
        AgentType::new(REGISTRY_AGENT_TYPE).unwrap_or_else(|_| unreachable!()),
        SessionId::new(REGISTRY_SESSION_ID).unwrap_or_else(|_| unreachable!()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Registration, ProtocolError> {
        let spec: RegisterSpec = serde_json::from_str(json)
            .map_err(|e| ProtocolError::invalid("body", e.to_string()))?;
        spec.into_registration(Tenant::new("acme")?, Some("bot".into()), 5)
    }

    #[test]
    fn a_registration_is_validated_and_its_capabilities_deduplicated() {
        let r =
            spec(r#"{"agent_id":"a-1","capabilities":["search","code","search"]}"#).expect("valid");
        assert_eq!(r.ttl_ms, DEFAULT_TTL_MS);
        let caps: Vec<&str> = r.capabilities.iter().map(Capability::as_str).collect();
        assert_eq!(caps, ["code", "search"]);
        assert_eq!(r.principal.as_deref(), Some("bot"));
        assert!(spec(r#"{"agent_id":"a 1","capabilities":[]}"#).is_err());
        let err = spec(r#"{"agent_id":"a","capabilities":[],"ttl_ms":10}"#).expect_err("ttl");
        assert_eq!(err.field(), Some("ttl_ms"));
        let big = format!(
            r#"{{"agent_id":"a","capabilities":[],"metadata":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_METADATA_BYTES)
        );
        assert_eq!(spec(&big).expect_err("metadata").field(), Some("metadata"));
        assert!(spec(r#"{"agent_id":"a","capabilities":[],"colour":1}"#).is_err());
    }

    #[test]
    fn the_registry_session_is_a_valid_session_of_the_tenant() {
        let tenant = Tenant::new("acme").expect("tenant");
        let session = registry_session(&tenant);
        assert_eq!(session.to_string(), "acme:agentwire.registry:agents");
        assert_eq!(
            RegistryEventKind::Expired.event_type(),
            "agent.registry.expired"
        );
    }
}
