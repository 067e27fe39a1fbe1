//! The coordination side of one WebSocket connection: `register`, `deregister` and
//! `discover`, answered with `registered`, `deregistered`, `agents` or `error` frames, and
//! `get_state` and `update_state` (a session's shared state), answered with `state`.
//!
//! The connection heartbeats for the agents it registered (every third of their shortest
//! TTL, reporting the tasks the connection holds as their load) and deregisters them when it
//! ends, so an agent lives exactly as long as its connection; if the gateway itself dies,
//! the registrations expire on their own TTL. A heartbeat that finds its registration gone
//! (Valkey lost it, or the connection stalled past the TTL and it expired) registers it
//! again, which the log records as a new join.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentwire_protocol::coord_frames::answer_json;
use agentwire_protocol::{
    AgentId, CoordOp, ErrorCode, ErrorFrame, Registration, ServerFrame, Tenant,
};
use futures::stream::FuturesUnordered;
use tokio::task::JoinHandle;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::registry::http::{admit, tenant_of};
use crate::registry::{Registry, check_owner};
use crate::state::AppState;

/// Most agents one connection registers.
const MAX_AGENTS: usize = 64;
/// Bounds on the heartbeat interval (a third of the shortest TTL).
const MIN_BEAT: Duration = Duration::from_millis(300);
const MAX_BEAT: Duration = Duration::from_secs(10);

type Reply = Pin<Box<dyn Future<Output = String> + Send>>;
/// The tasks the connection holds now (its worker side's count).
pub type Load = Arc<dyn Fn() -> u32 + Send + Sync>;
type Agents = Arc<Mutex<HashMap<(Tenant, AgentId), Registration>>>;

fn lock(agents: &Agents) -> std::sync::MutexGuard<'_, HashMap<(Tenant, AgentId), Registration>> {
    agents.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error_json(request: Option<&str>, err: &ApiError) -> String {
    metrics::counter!(crate::metrics::ERRORS, "code" => err.code.as_str()).increment(1);
    ServerFrame::Error(ErrorFrame {
        id: request.map(str::to_owned),
        ..err.frame()
    })
    .to_json()
}

/// One connection's coordination side.
pub struct Coordinator {
    app: AppState,
    replies: FuturesUnordered<Reply>,
    agents: Agents,
    load: Load,
    heartbeats: Option<JoinHandle<()>>,
}

impl Coordinator {
    pub fn new(app: AppState, load: Load) -> Self {
        Self {
            app,
            replies: FuturesUnordered::new(),
            agents: Arc::default(),
            load,
            heartbeats: None,
        }
    }

    /// The next answer to send. Pending while there is none.
    pub async fn next(&mut self) -> String {
        use futures::StreamExt as _;
        match self.replies.next().await {
            Some(reply) => reply,
            None => std::future::pending().await,
        }
    }

    /// Starts `op`; its answer comes out of [`Self::next`].
    pub fn handle(&mut self, op: CoordOp, principal: &Principal) {
        let request = op.id().map(str::to_owned);
        let reply: Reply = match self.start(op, principal) {
            Ok(reply) => reply,
            Err(err) => Box::pin(std::future::ready(error_json(request.as_deref(), &err))),
        };
        self.replies.push(reply);
    }

    fn start(&mut self, op: CoordOp, principal: &Principal) -> Result<Reply, ApiError> {
        let registry = self.app.registry().clone();
        let principal = principal.clone();
        match op {
            CoordOp::Register { id, spec } => {
                let registration = admit(&principal, *spec)?;
                let key = (registration.tenant.clone(), registration.agent_id.clone());
                if !lock(&self.agents).contains_key(&key) && lock(&self.agents).len() >= MAX_AGENTS
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidField,
                        format!("a connection registers at most {MAX_AGENTS} agents"),
                    ));
                }
                self.start_heartbeats();
                let agents = self.agents.clone();
                Ok(Box::pin(async move {
                    let answer = async {
                        if let Some(live) = registry.get(&key.0, &key.1).await? {
                            check_owner(&principal, &live.registration)?;
                        }
                        let ack = registry.register(&registration).await?;
                        lock(&agents).insert(key, registration);
                        Ok::<_, ApiError>(ack)
                    };
                    match answer.await {
                        Ok(ack) => answer_json(
                            "registered",
                            id.as_deref(),
                            serde_json::to_value(ack).unwrap_or_default(),
                        ),
                        Err(err) => error_json(id.as_deref(), &err),
                    }
                }))
            }
            CoordOp::Deregister {
                id,
                tenant,
                agent_id,
            } => {
                let tenant = tenant_of(&principal, tenant)?;
                let agents = self.agents.clone();
                Ok(Box::pin(async move {
                    let answer = async {
                        if let Some(live) = registry.get(&tenant, &agent_id).await? {
                            check_owner(&principal, &live.registration)?;
                        }
                        lock(&agents).remove(&(tenant.clone(), agent_id.clone()));
                        if registry.deregister(&tenant, &agent_id).await? {
                            Ok(())
                        } else {
                            Err(ApiError::new(
                                ErrorCode::NotFound,
                                format!("no live registration of agent {agent_id}"),
                            ))
                        }
                    };
                    match answer.await {
                        Ok(()) => answer_json(
                            "deregistered",
                            id.as_deref(),
                            serde_json::json!({ "tenant": tenant, "agent_id": agent_id }),
                        ),
                        Err(err) => error_json(id.as_deref(), &err),
                    }
                }))
            }
            CoordOp::GetState { id, session } => {
                principal.check_subscribe(&session)?;
                let states = self.app.session_states().clone();
                Ok(Box::pin(async move {
                    match states.get(&session).await {
                        Ok(state) => answer_json(
                            "state",
                            id.as_deref(),
                            serde_json::json!({ "session": session, "state": state }),
                        ),
                        Err(err) => error_json(id.as_deref(), &err),
                    }
                }))
            }
            CoordOp::UpdateState {
                id,
                session,
                update,
            } => {
                principal.check_publish(&session)?;
                let states = self.app.session_states().clone();
                Ok(Box::pin(async move {
                    match states.update(&session, &update).await {
                        Ok(ack) => answer_json(
                            "state",
                            id.as_deref(),
                            serde_json::json!({
                                "session": session,
                                "state": ack.state,
                                "partition": ack.partition,
                                "offset": ack.offset,
                            }),
                        ),
                        Err(err) => error_json(id.as_deref(), &err),
                    }
                }))
            }
            CoordOp::Discover {
                id,
                tenant,
                capability,
            } => {
                let tenant = tenant_of(&principal, tenant)?;
                Ok(Box::pin(async move {
                    match registry.discover(&tenant, capability.as_ref()).await {
                        Ok(agents) => answer_json(
                            "agents",
                            id.as_deref(),
                            serde_json::json!({ "tenant": tenant, "agents": agents }),
                        ),
                        Err(err) => error_json(id.as_deref(), &err),
                    }
                }))
            }
        }
    }

    fn start_heartbeats(&mut self) {
        if self.heartbeats.is_some() {
            return;
        }
        let (registry, agents, load) = (
            self.app.registry().clone(),
            self.agents.clone(),
            self.load.clone(),
        );
        self.heartbeats = Some(tokio::spawn(heartbeat_loop(registry, agents, load)));
    }
}

/// Keeps the connection's registrations alive: looks every [`MIN_BEAT`] and heartbeats each
/// agent a third of its TTL (at most [`MAX_BEAT`]) after its last beat, so an agent
/// registered later with a short TTL is never left waiting on a longer one's interval;
/// registers again one found gone.
async fn heartbeat_loop(registry: Registry, agents: Agents, load: Load) {
    let mut last: HashMap<(Tenant, AgentId), tokio::time::Instant> = HashMap::new();
    loop {
        tokio::time::sleep(MIN_BEAT).await;
        let now = tokio::time::Instant::now();
        let registered: Vec<Registration> = lock(&agents).values().cloned().collect();
        last.retain(|key, _| {
            registered
                .iter()
                .any(|r| (&r.tenant, &r.agent_id) == (&key.0, &key.1))
        });
        let in_flight = load();
        for registration in registered {
            let key = (registration.tenant.clone(), registration.agent_id.clone());
            let every = Duration::from_millis(registration.ttl_ms / 3).clamp(MIN_BEAT, MAX_BEAT);
            let beaten = *last.entry(key.clone()).or_insert(now);
            if now.duration_since(beaten) < every {
                continue;
            }
            last.insert(key, now);
            let beat = registry
                .heartbeat(
                    &registration.tenant,
                    &registration.agent_id,
                    Some(in_flight),
                )
                .await;
            match beat {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::info!(agent = %registration.agent_id, "a connection's registration was gone; registering it again");
                    if let Err(err) = registry.register(&registration).await {
                        tracing::debug!(error = %err.message, "registering again failed");
                    }
                }
                Err(err) => tracing::debug!(error = %err.message, "registry heartbeat failed"),
            }
        }
    }
}

impl Drop for Coordinator {
    /// Deregisters every agent the connection registered (recorded as leaves).
    fn drop(&mut self) {
        if let Some(heartbeats) = self.heartbeats.take() {
            heartbeats.abort();
        }
        let registered: Vec<(Tenant, AgentId)> =
            lock(&self.agents).drain().map(|(k, _)| k).collect();
        if registered.is_empty() {
            return;
        }
        let registry = self.app.registry().clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for (tenant, agent) in registered {
                if let Err(err) = registry.deregister(&tenant, &agent).await {
                    tracing::debug!(error = %err.message, %agent, "deregistering a gone connection's agent failed");
                }
            }
        });
    }
}
