//! The WebSocket ops of agent coordination (`docs/coordination.md`), JSON only:
//!
//! - `register` (the fields of [`RegisterSpec`]) → `registered`: the connection heartbeats
//!   for the registration and deregisters it when it ends.
//! - `deregister` `{agent_id}` → `deregistered`.
//! - `discover` `{capability?}` → `agents` `{agents: [AgentView…]}`.
//! - `get_state` `{session}` → `state` `{state}`; `update_state` `{session, expect_version?,
//!   status?, fields?, limits?, consume?}` → `state` `{state, partition, offset}` (see
//!   [`crate::session_state`]).
//!
//! Every op may carry a request `id`, echoed by its answer or its `error` frame.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::ProtocolError;
use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::ids::{AgentId, Capability, SessionKey, Tenant};
use crate::registry::RegisterSpec;
use crate::session_state::{RunStatus, StateUpdate};

fn session(text: Option<String>) -> Result<SessionKey, ProtocolError> {
    text.ok_or_else(|| ProtocolError::invalid("session", "is required"))?
        .parse()
}

/// The WebSocket ops of coordination.
pub const COORD_OPS: [&str; 5] = [
    "register",
    "deregister",
    "discover",
    "get_state",
    "update_state",
];

/// A coordination op from a client.
#[derive(Clone, Debug)]
pub enum CoordOp {
    Register {
        id: Option<String>,
        spec: Box<RegisterSpec>,
    },
    Deregister {
        id: Option<String>,
        tenant: Option<Tenant>,
        agent_id: AgentId,
    },
    Discover {
        id: Option<String>,
        tenant: Option<Tenant>,
        capability: Option<Capability>,
    },
    GetState {
        id: Option<String>,
        session: SessionKey,
    },
    UpdateState {
        id: Option<String>,
        session: SessionKey,
        update: Box<StateUpdate>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CoordOpIn {
    op: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    capability: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    max_concurrency: Option<u32>,
    #[serde(default)]
    ttl_ms: Option<u64>,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    expect_version: Option<u64>,
    #[serde(default)]
    status: Option<RunStatus>,
    #[serde(default)]
    fields: BTreeMap<String, Box<RawValue>>,
    #[serde(default)]
    limits: BTreeMap<String, Option<u64>>,
    #[serde(default)]
    consume: BTreeMap<String, u64>,
}

impl CoordOp {
    /// Whether a JSON frame's `op` is a coordination op.
    pub fn is_coord_op(op: &str) -> bool {
        COORD_OPS.contains(&op)
    }

    /// Decodes a JSON frame whose `op` is one of [`COORD_OPS`]. On an error, the request id
    /// (when it could be read) comes with it.
    pub fn from_json(text: &str) -> Result<Self, (Option<String>, ProtocolError)> {
        let raw: CoordOpIn = serde_json::from_str(text).map_err(|e| {
            (
                None,
                ProtocolError::malformed(format!("not a valid coordination frame: {e}")),
            )
        })?;
        let id = raw.id.clone();
        Self::from_raw(raw).map_err(|e| (id, e))
    }

    fn from_raw(raw: CoordOpIn) -> Result<Self, ProtocolError> {
        let tenant = raw.tenant.map(Tenant::new).transpose()?;
        let agent_id = || -> Result<AgentId, ProtocolError> {
            AgentId::new(
                raw.agent_id
                    .clone()
                    .ok_or_else(|| ProtocolError::invalid("agent_id", "is required"))?,
            )
        };
        Ok(match raw.op.as_str() {
            "register" => {
                let capabilities = raw
                    .capabilities
                    .clone()
                    .ok_or_else(|| ProtocolError::invalid("capabilities", "is required"))?
                    .into_iter()
                    .map(Capability::new)
                    .collect::<Result<Vec<_>, _>>()?;
                CoordOp::Register {
                    spec: Box::new(RegisterSpec {
                        tenant,
                        agent_id: agent_id()?,
                        capabilities,
                        version: raw.version,
                        metadata: raw.metadata,
                        max_concurrency: raw.max_concurrency,
                        ttl_ms: raw.ttl_ms,
                    }),
                    id: raw.id,
                }
            }
            "deregister" => CoordOp::Deregister {
                agent_id: agent_id()?,
                tenant,
                id: raw.id,
            },
            "discover" => CoordOp::Discover {
                capability: raw.capability.map(Capability::new).transpose()?,
                tenant,
                id: raw.id,
            },
            "get_state" => CoordOp::GetState {
                session: session(raw.session)?,
                id: raw.id,
            },
            "update_state" => {
                let update = StateUpdate {
                    expect_version: raw.expect_version,
                    status: raw.status,
                    fields: raw.fields,
                    limits: raw.limits,
                    consume: raw.consume,
                };
                update.validate()?;
                CoordOp::UpdateState {
                    session: session(raw.session)?,
                    update: Box::new(update),
                    id: raw.id,
                }
            }
            other => {
                return Err(ProtocolError::invalid(
                    "op",
                    format!("{other} is not a coordination op"),
                ));
            }
        })
    }

    /// The request id, echoed by the answer.
    pub fn id(&self) -> Option<&str> {
        match self {
            CoordOp::Register { id, .. }
            | CoordOp::Deregister { id, .. }
            | CoordOp::Discover { id, .. }
            | CoordOp::GetState { id, .. }
            | CoordOp::UpdateState { id, .. } => id.as_deref(),
        }
    }
}

/// An answer frame `{"op": <op>, "id": <request>, …fields}`.
pub fn answer_json(op: &str, request: Option<&str>, fields: Value) -> String {
    let mut frame = match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    frame.insert("op".into(), op.into());
    frame.remove("id");
    if let Some(request) = request {
        frame.insert("id".into(), request.into());
    }
    Value::Object(frame).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_register_deregister_and_discover() {
        let op = CoordOp::from_json(
            r#"{"op":"register","id":"r1","agent_id":"a-1","capabilities":["search"],"ttl_ms":5000,"metadata":{"zone":"eu"}}"#,
        )
        .expect("register");
        let CoordOp::Register { id, spec } = op else {
            panic!("not a register")
        };
        assert_eq!(id.as_deref(), Some("r1"));
        assert_eq!(spec.agent_id.as_str(), "a-1");
        assert_eq!(spec.ttl_ms, Some(5000));
        assert!(matches!(
            CoordOp::from_json(r#"{"op":"discover","capability":"search"}"#),
            Ok(CoordOp::Discover {
                capability: Some(_),
                ..
            })
        ));
        let (id, err) =
            CoordOp::from_json(r#"{"op":"deregister","id":"r2"}"#).expect_err("no agent");
        assert_eq!((id.as_deref(), err.field()), (Some("r2"), Some("agent_id")));
        let (_, err) =
            CoordOp::from_json(r#"{"op":"register","agent_id":"a","capabilities":["no spaces"]}"#)
                .expect_err("bad capability");
        assert_eq!(err.field(), Some("capability"));
        assert!(CoordOp::from_json(r#"{"op":"discover","colour":"red"}"#).is_err());
        assert!(CoordOp::is_coord_op("register") && !CoordOp::is_coord_op("heartbeat"));
        let op = CoordOp::from_json(
            r#"{"op":"update_state","id":"u1","session":"acme:planner:s1","expect_version":2,"consume":{"tokens":5},"fields":{"plan":[1, 2]}}"#,
        )
        .expect("update_state");
        let CoordOp::UpdateState {
            session, update, ..
        } = op
        else {
            panic!("not an update")
        };
        assert_eq!(session.to_string(), "acme:planner:s1");
        assert_eq!(
            (update.expect_version, update.consume["tokens"]),
            (Some(2), 5)
        );
        assert_eq!(update.fields["plan"].get(), "[1, 2]");
        let (id, err) =
            CoordOp::from_json(r#"{"op":"update_state","id":"u2","session":"acme:planner:s1"}"#)
                .expect_err("changes nothing");
        assert_eq!((id.as_deref(), err.field()), (Some("u2"), Some("status")));
    }

    #[test]
    fn an_answer_echoes_the_request_id_and_never_lets_a_field_replace_it() {
        let text = answer_json(
            "registered",
            Some("r1"),
            serde_json::json!({"id":"x","agent_id":"a"}),
        );
        let value: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["op"], "registered");
        assert_eq!(value["id"], "r1");
        assert_eq!(value["agent_id"], "a");
    }
}
