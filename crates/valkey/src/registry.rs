//! The agent registry: registrations that live while their agent heartbeats, through
//! `lua/registry.lua` (one script per tenant slot, Valkey's clock for every expiry).
//!
//! A cache like everything here: joins, leaves and expiries are events of the log (appended
//! by the gateway), and after Valkey lost its data every live agent is back within one
//! heartbeat (a heartbeat of an unknown registration answers [`None`] and the agent, or its
//! connection, registers again).

use agentwire_protocol::{AgentId, AgentView, Capability, Registration, Tenant};
use redis::{Script, Value};

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

static REGISTRY: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/registry.lua")));

/// Most registrations one sweep removes per tenant (the rest go on the next sweep).
const SWEEP_BATCH: usize = 500;
/// Most agents one `discover` lists.
pub const MAX_DISCOVER: usize = 1000;

/// What a register did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterKind {
    /// A new registration.
    Joined,
    /// A live registration whose document changed (capabilities, metadata…).
    Updated,
    /// The same document again: only the expiry moved.
    Renewed,
}

/// The answer to a register.
#[derive(Clone, Debug, PartialEq)]
pub struct Registered {
    pub kind: RegisterKind,
    pub expires_at_ms: u64,
    /// A registration of the same agent that had expired but was not swept yet: removed now,
    /// to be recorded as expired before this one joins.
    pub expired: Option<Registration>,
}

/// What a deregister removed.
#[derive(Clone, Debug, PartialEq)]
pub enum Deregistered {
    /// A live registration: the agent left.
    Left(Registration),
    /// One already past its expiry (not swept yet).
    Expired(Registration),
}

/// The registries of every tenant.
#[derive(Clone)]
pub struct RegistryStore {
    conn: Connection,
    /// The log topic whose tenants this store lists ([`keys::registry_tenants`]).
    topic: String,
}

impl std::fmt::Debug for RegistryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryStore").finish_non_exhaustive()
    }
}

fn bad(what: impl std::fmt::Display) -> ValkeyError {
    ValkeyError::Reply(format!("registry script: {what}"))
}

fn text(value: &Value) -> Result<String, ValkeyError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(bad),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(bad(format!("expected a string, got {other:?}"))),
    }
}

fn list(value: &Value) -> Result<&[Value], ValkeyError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(bad(format!("expected an array, got {other:?}"))),
    }
}

fn field(items: &[Value], i: usize) -> Result<String, ValkeyError> {
    items
        .get(i)
        .map(text)
        .transpose()
        .map(Option::unwrap_or_default)
}

fn number(items: &[Value], i: usize) -> Result<u64, ValkeyError> {
    let raw = field(items, i)?;
    // Scores come back as text, sometimes with a fraction.
    raw.parse::<u64>()
        .or_else(|_| raw.parse::<f64>().map(|f| f as u64))
        .map_err(|e| bad(format!("{raw:?} is not a number: {e}")))
}

/// A stored document (`registered_at_ms` kept apart, in `since`) back to a registration.
fn registration(doc: &str, since: &str) -> Result<Option<Registration>, ValkeyError> {
    if doc.is_empty() {
        return Ok(None);
    }
    let mut registration: Registration = serde_json::from_str(doc).map_err(bad)?;
    registration.registered_at_ms = since.parse().unwrap_or(0);
    Ok(Some(registration))
}

/// `{doc, since, expires, load}` to a view.
fn agent_view(items: &[Value]) -> Result<Option<AgentView>, ValkeyError> {
    let Some(registration) = registration(&field(items, 0)?, &field(items, 1)?)? else {
        return Ok(None);
    };
    Ok(Some(AgentView {
        registration,
        expires_at_ms: number(items, 2)?,
        in_flight: u32::try_from(number(items, 3)?).unwrap_or(u32::MAX),
    }))
}

impl RegistryStore {
    pub fn new(conn: Connection, topic: impl Into<String>) -> Self {
        Self {
            conn,
            topic: topic.into(),
        }
    }

    fn call(tenant: &Tenant, op: &str) -> redis::ScriptInvocation<'static> {
        let mut call = REGISTRY.key(keys::registry_expiry(tenant));
        call.arg(op);
        call
    }

    async fn invoke(&self, call: &redis::ScriptInvocation<'_>) -> Result<Value, ValkeyError> {
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// Registers (or renews, or updates) `registration` until its TTL passes without a
    /// heartbeat.
    pub async fn register(&self, registration: &Registration) -> Result<Registered, ValkeyError> {
        let tenant = &registration.tenant;
        let _: () = redis::cmd("SADD")
            .arg(keys::registry_tenants(&self.topic))
            .arg(tenant.as_str())
            .query_async(&mut self.conn.clone())
            .await?;
        // Stored without its join time, so a renewal with the same document is recognised.
        let stored = Registration {
            registered_at_ms: 0,
            ..registration.clone()
        };
        let mut call = Self::call(tenant, "register");
        call.arg(registration.agent_id.as_str())
            .arg(serde_json::to_string(&stored).map_err(bad)?)
            .arg(registration.ttl_ms);
        for capability in &registration.capabilities {
            call.arg(capability.as_str());
        }
        let reply = self.invoke(&call).await?;
        let items = list(&reply)?;
        let kind = match field(items, 0)?.as_str() {
            "joined" => RegisterKind::Joined,
            "updated" => RegisterKind::Updated,
            "renewed" => RegisterKind::Renewed,
            other => return Err(bad(format!("unknown register answer {other:?}"))),
        };
        Ok(Registered {
            kind,
            expires_at_ms: number(items, 1)?,
            expired: registration_of(tenant, &field(items, 2)?, &field(items, 3)?)?,
        })
    }

    /// Extends a live registration by its TTL, recording `in_flight` when given. `None`: the
    /// registration is unknown or expired (register again).
    pub async fn heartbeat(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        in_flight: Option<u32>,
    ) -> Result<Option<u64>, ValkeyError> {
        let mut call = Self::call(tenant, "heartbeat");
        call.arg(agent.as_str())
            .arg(in_flight.map_or(-1, i64::from));
        let reply = self.invoke(&call).await?;
        let items = list(&reply)?;
        if field(items, 0)? == "ok" {
            Ok(Some(number(items, 1)?))
        } else {
            Ok(None)
        }
    }

    /// Removes a registration. `None`: there was none.
    pub async fn deregister(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
    ) -> Result<Option<Deregistered>, ValkeyError> {
        let mut call = Self::call(tenant, "deregister");
        call.arg(agent.as_str());
        let reply = self.invoke(&call).await?;
        let items = list(&reply)?;
        let kind = field(items, 0)?;
        let Some(registration) = registration_of(tenant, &field(items, 1)?, &field(items, 2)?)?
        else {
            return Ok(None);
        };
        Ok(Some(if kind == "expired" {
            Deregistered::Expired(registration)
        } else {
            Deregistered::Left(registration)
        }))
    }

    /// Removes the tenant's registrations past their expiry and returns them (each to exactly
    /// one caller, however many gateways sweep).
    pub async fn sweep(&self, tenant: &Tenant) -> Result<Vec<Registration>, ValkeyError> {
        let mut call = Self::call(tenant, "sweep");
        call.arg(SWEEP_BATCH);
        let reply = self.invoke(&call).await?;
        let mut gone = Vec::new();
        for entry in list(&reply)? {
            let items = list(entry)?;
            if let Some(r) = registration_of(tenant, &field(items, 1)?, &field(items, 2)?)? {
                gone.push(r);
            }
        }
        Ok(gone)
    }

    /// The tenant's live agents, of `capability` or all, ordered by agent id (at most
    /// [`MAX_DISCOVER`]).
    pub async fn discover(
        &self,
        tenant: &Tenant,
        capability: Option<&Capability>,
    ) -> Result<Vec<AgentView>, ValkeyError> {
        let mut call = Self::call(tenant, "discover");
        call.arg(capability.map_or("", Capability::as_str))
            .arg(MAX_DISCOVER);
        let reply = self.invoke(&call).await?;
        let mut agents = Vec::new();
        for entry in list(&reply)? {
            if let Some(view) = agent_view(list(entry)?)? {
                agents.push(view);
            }
        }
        agents.sort_by(|a, b| a.registration.agent_id.cmp(&b.registration.agent_id));
        Ok(agents)
    }

    /// One live agent.
    pub async fn get(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
    ) -> Result<Option<AgentView>, ValkeyError> {
        let mut call = Self::call(tenant, "get");
        call.arg(agent.as_str());
        agent_view(list(&self.invoke(&call).await?)?)
    }

    /// Every tenant that has registered an agent.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, ValkeyError> {
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::registry_tenants(&self.topic))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(names
            .into_iter()
            .filter_map(|n| Tenant::new(n).ok())
            .collect())
    }
}

/// A stored registration of `tenant`, checked to be the tenant's.
fn registration_of(
    tenant: &Tenant,
    doc: &str,
    since: &str,
) -> Result<Option<Registration>, ValkeyError> {
    let registration = registration(doc, since)?;
    if registration.as_ref().is_some_and(|r| &r.tenant != tenant) {
        return Err(bad("a registration stored under another tenant"));
    }
    Ok(registration)
}
