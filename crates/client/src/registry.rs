//! The agent registry over HTTP: register an agent (`POST /v1/agents`), keep it alive
//! (`POST /v1/agents/{tenant}/{agent_id}/heartbeat`), deregister it (`DELETE …`) and
//! discover the live agents of a capability (`GET /v1/agents/{tenant}?capability=…`).
//!
//! A registration lives while its agent heartbeats (its TTL, 30 s by default); a heartbeat
//! answering `None` means the registration is gone (expired, or Valkey lost it): register
//! again. A [`crate::Worker`] built with [`crate::WorkerBuilder::register_as`] does all of
//! this over its WebSocket instead.

use agentwire_protocol::{AgentId, AgentView, Capability, ErrorCode, RegisterSpec, Tenant};
use reqwest::Method;

use crate::Result;
use crate::error::ClientError;
use crate::http::HttpClient;

/// The answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Registered {
    pub tenant: Tenant,
    pub agent_id: AgentId,
    /// `joined`, `updated` (its document changed) or `renewed`.
    pub kind: String,
    /// When it expires without a heartbeat (Unix ms).
    pub expires_at_ms: u64,
}

#[derive(serde::Deserialize)]
struct ExpiresIn {
    expires_at_ms: u64,
}

#[derive(serde::Deserialize)]
struct AgentsIn {
    agents: Vec<AgentView>,
}

fn gone(err: &ClientError) -> bool {
    err.code() == Some(ErrorCode::NotFound)
}

impl HttpClient {
    /// Registers (or renews, or updates) an agent.
    pub async fn register(&self, spec: &RegisterSpec) -> Result<Registered> {
        let request = self.request(Method::POST, "/v1/agents").json(spec);
        self.send(request).await
    }

    /// Keeps a registration alive, reporting the tasks the agent holds. `None`: the
    /// registration is gone; register again.
    pub async fn heartbeat_agent(
        &self,
        tenant: &Tenant,
        agent: &AgentId,
        in_flight: Option<u32>,
    ) -> Result<Option<u64>> {
        let path = format!("/v1/agents/{tenant}/{agent}/heartbeat");
        let body = serde_json::json!({ "in_flight": in_flight });
        match self
            .send::<ExpiresIn>(self.request(Method::POST, &path).json(&body))
            .await
        {
            Ok(answer) => Ok(Some(answer.expires_at_ms)),
            Err(err) if gone(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Deregisters an agent. `false`: it was not registered (or had expired).
    pub async fn deregister(&self, tenant: &Tenant, agent: &AgentId) -> Result<bool> {
        let path = format!("/v1/agents/{tenant}/{agent}");
        match self.send_empty(self.request(Method::DELETE, &path)).await {
            Ok(()) => Ok(true),
            Err(err) if gone(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The tenant's live agents that registered `capability` (every live agent with
    /// `None`), ordered by agent id, each with its load.
    pub async fn discover(
        &self,
        tenant: &Tenant,
        capability: Option<&Capability>,
    ) -> Result<Vec<AgentView>> {
        // Tenants and capabilities are validated names: nothing to encode.
        let path = match capability {
            Some(capability) => format!("/v1/agents/{tenant}?capability={capability}"),
            None => format!("/v1/agents/{tenant}"),
        };
        let request = self.request(Method::GET, &path);
        Ok(self.send::<AgentsIn>(request).await?.agents)
    }
}
