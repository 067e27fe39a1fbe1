//! The agent registry (`docs/coordination.md`): agents register what they can do and live
//! while they heartbeat; `discover` lists the live agents of a capability with their load.
//!
//! Valkey holds the live registrations (`agentwire_valkey::RegistryStore`); the log holds
//! their history: every join, update, leave and expiry is an `agent.registry.*` event in the
//! tenant's registry session (`<tenant>:agentwire.registry:agents`), so the registry is
//! auditable and can be watched with `subscribe`. A join is answered only once its event is
//! in the log (if the append fails the registration is taken back and the client told
//! `unavailable`); a leave or expiry has already happened in Valkey when it is appended, so
//! a failed append is retried a few times and then counted
//! (`agentwire_gateway_registry_unrecorded_total`).
//!
//! Expiry does not depend on a polite client: every gateway runs [`sweeper::run`], and the
//! script hands each expired registration to exactly one sweep.

pub(crate) mod http;
pub mod sweeper;

use std::time::Duration;

use agentwire_kafka::EventLog;
use agentwire_protocol::registry::registry_session;
use agentwire_protocol::{
    AgentId, AgentView, Capability, Event, EventType, Registration, RegistryEventKind, Tenant,
};
use agentwire_valkey::{Deregistered, RegisterKind, RegistryStore, ValkeyError};
use serde_json::value::RawValue;

pub use http::routes;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics as m;

/// Appends of a leave or an expiry tried before it is given up (counted).
const RECORD_TRIES: u32 = 3;
/// The wait between them.
const RECORD_RETRY: Duration = Duration::from_millis(200);

fn valkey(err: ValkeyError) -> ApiError {
    ApiError::unavailable("valkey", err)
}

/// What a register answers.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegisterAck {
    pub tenant: Tenant,
    pub agent_id: AgentId,
    /// `joined`, `updated` or `renewed`.
    pub kind: &'static str,
    pub expires_at_ms: u64,
}

/// The registry of every tenant: Valkey for the live view, the log for its history.
#[derive(Clone, Debug)]
pub struct Registry {
    store: RegistryStore,
    events: EventLog,
}

/// Whether `principal` may act on `registration` (heartbeat, deregister): the same token
/// subject registered it, or it was registered without one.
pub fn check_owner(principal: &Principal, registration: &Registration) -> Result<(), ApiError> {
    match (&registration.principal, &principal.subject) {
        (Some(owner), Some(subject)) if owner != subject => Err(ApiError::new(
            agentwire_protocol::ErrorCode::Forbidden,
            format!(
                "agent {} was registered by another principal",
                registration.agent_id
            ),
        )),
        _ => Ok(()),
    }
}

impl Registry {
    pub fn new(store: RegistryStore, events: EventLog) -> Self {
        Self { store, events }
    }

    pub fn store(&self) -> &RegistryStore {
        &self.store
    }

    /// Registers `registration` (or renews or updates it). A join or an update is in the log
    /// before this answers.
    pub async fn register(&self, registration: &Registration) -> Result<RegisterAck, ApiError> {
        let registered = self.store.register(registration).await.map_err(valkey)?;
        if let Some(expired) = &registered.expired {
            self.record(RegistryEventKind::Expired, expired).await;
        }
        let kind = match registered.kind {
            RegisterKind::Joined => Some(RegistryEventKind::Joined),
            RegisterKind::Updated => Some(RegistryEventKind::Updated),
            RegisterKind::Renewed => None,
        };
        if let Some(kind) = kind {
            if let Err(err) = self.append(kind, registration).await {
                // Taken back, so the client's retry is a join the log sees.
                let _ = self
                    .store
                    .deregister(&registration.tenant, &registration.agent_id)
                    .await;
                return Err(ApiError::kafka_unavailable(err));
            }
            metrics::counter!(m::REGISTRY_EVENTS, "kind" => kind_name(kind)).increment(1);
        }
        Ok(RegisterAck {
            tenant: registration.tenant.clone(),
            agent_id: registration.agent_id.clone(),
            kind: match registered.kind {
                RegisterKind::Joined => "joined",
                RegisterKind::Updated => "updated",
                RegisterKind::Renewed => "renewed",
            },
            expires_at_ms: registered.expires_at_ms,
        })
    }

    /// Extends a live registration. `None`: unknown or expired (register again).
    pub async fn heartbeat(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        in_flight: Option<u32>,
    ) -> Result<Option<u64>, ApiError> {
        self.store
            .heartbeat(tenant, agent, in_flight)
            .await
            .map_err(valkey)
    }

    /// Removes a registration and records the leave. `false`: there was none.
    pub async fn deregister(&self, tenant: &Tenant, agent: &AgentId) -> Result<bool, ApiError> {
        match self.store.deregister(tenant, agent).await.map_err(valkey)? {
            Some(Deregistered::Left(r)) => self.record(RegistryEventKind::Left, &r).await,
            Some(Deregistered::Expired(r)) => self.record(RegistryEventKind::Expired, &r).await,
            None => return Ok(false),
        }
        Ok(true)
    }

    pub async fn discover(
        &self,
        tenant: &Tenant,
        capability: Option<&Capability>,
    ) -> Result<Vec<AgentView>, ApiError> {
        self.store
            .discover(tenant, capability)
            .await
            .map_err(valkey)
    }

    pub async fn get(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
    ) -> Result<Option<AgentView>, ApiError> {
        self.store.get(tenant, agent).await.map_err(valkey)
    }

    /// Appends a change Valkey already made (a leave, an expiry), retrying a little; a
    /// failure is counted and logged.
    pub(crate) async fn record(&self, kind: RegistryEventKind, registration: &Registration) {
        metrics::counter!(m::REGISTRY_EVENTS, "kind" => kind_name(kind)).increment(1);
        for attempt in 1..=RECORD_TRIES {
            match self.append(kind, registration).await {
                Ok(()) => return,
                Err(err) if attempt == RECORD_TRIES => {
                    metrics::counter!(m::REGISTRY_UNRECORDED).increment(1);
                    tracing::warn!(error = %err, agent = %registration.agent_id, kind = kind_name(kind), "a registry change was not recorded in the log");
                }
                Err(_) => tokio::time::sleep(RECORD_RETRY).await,
            }
        }
    }

    async fn append(
        &self,
        kind: RegistryEventKind,
        registration: &Registration,
    ) -> Result<(), agentwire_kafka::KafkaError> {
        let mut event = Event::new(
            registry_session(&registration.tenant),
            EventType::new(kind.event_type()).unwrap_or_else(|_| unreachable!()),
        );
        event.subject = Some(registration.agent_id.to_string());
        event.content_type = Some("application/json".into());
        event.data = serde_json::to_string(registration)
            .ok()
            .and_then(|json| RawValue::from_string(json).ok())
            .map(agentwire_protocol::Data::Json);
        let record = crate::publish::server_record(event);
        self.events.append(&record).await.map(drop)
    }
}

fn kind_name(kind: RegistryEventKind) -> &'static str {
    match kind {
        RegistryEventKind::Joined => "joined",
        RegistryEventKind::Updated => "updated",
        RegistryEventKind::Left => "left",
        RegistryEventKind::Expired => "expired",
    }
}
