//! A session's state (`lua/session_state.lua`): one hash per session on the session's slot,
//! changed atomically (compare-and-set by version, budgets never overspent).
//!
//! A cache of the log like everything here: every change is an `agent.session.state` event
//! in the session (appended by the gateway) holding the whole state, and
//! [`SessionStateStore::restore`] puts such a state back when it is newer than Valkey's.

use std::collections::BTreeMap;

use agentwire_protocol::SessionKey;
use agentwire_protocol::session_state::{
    Counter, MAX_COUNTERS, MAX_FIELDS, RunStatus, SessionState, StateUpdate,
};
use redis::{Script, Value};
use serde_json::value::RawValue;

use crate::connection::Connection;
use crate::error::ValkeyError;
use crate::keys;

static STATE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/session_state.lua")));

/// What an update did.
#[derive(Clone, Debug)]
pub enum Updated {
    /// Applied: the new state.
    Applied(SessionState),
    /// `expect_version` was not the state's version (this one).
    Conflict(u64),
    /// A consume would pass its counter's limit; nothing changed.
    OverBudget {
        counter: String,
        used: u64,
        limit: u64,
    },
    /// The state would hold too many fields or counters (`what`); nothing changed.
    TooMany(&'static str),
}

#[derive(Clone)]
pub struct SessionStateStore {
    conn: Connection,
}

impl std::fmt::Debug for SessionStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStateStore").finish_non_exhaustive()
    }
}

fn bad(what: impl std::fmt::Display) -> ValkeyError {
    ValkeyError::Reply(format!("session state script: {what}"))
}

fn strings(value: &Value) -> Result<Vec<String>, ValkeyError> {
    let Value::Array(items) = value else {
        return Err(bad(format!("expected an array, got {value:?}")));
    };
    items
        .iter()
        .map(|item| match item {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).map_err(bad),
            Value::SimpleString(s) => Ok(s.clone()),
            Value::Int(n) => Ok(n.to_string()),
            other => Err(bad(format!("expected a string, got {other:?}"))),
        })
        .collect()
}

fn number(text: &str) -> Result<u64, ValkeyError> {
    text.parse()
        .map_err(|e| bad(format!("{text:?} is not a number: {e}")))
}

/// A session's hash (`HGETALL` pairs) as its state.
fn from_pairs(session: &SessionKey, pairs: &[String]) -> Result<SessionState, ValkeyError> {
    let mut state = SessionState::empty(session.clone());
    let mut counters: BTreeMap<String, Counter> = BTreeMap::new();
    for pair in pairs.chunks(2) {
        let [name, value] = pair else {
            return Err(bad("an odd number of hash entries"));
        };
        match name.split_once(':') {
            Some(("f", field)) => {
                let raw = RawValue::from_string(value.clone()).map_err(bad)?;
                state.fields.insert(field.to_owned(), raw);
            }
            Some(("u", counter)) => {
                counters.entry(counter.to_owned()).or_default().used = number(value)?
            }
            Some(("l", counter)) => {
                counters.entry(counter.to_owned()).or_default().limit = Some(number(value)?);
            }
            _ => match name.as_str() {
                "v" => state.version = number(value)?,
                "upd" => state.updated_at_ms = number(value)?,
                "status" => state.status = RunStatus::parse(value),
                _ => {}
            },
        }
    }
    state.counters = counters;
    Ok(state)
}

/// A state back to the hash's pairs (without its version).
fn to_pairs(state: &SessionState) -> Vec<String> {
    let mut pairs = Vec::new();
    if let Some(status) = state.status {
        pairs.extend(["status".to_owned(), status.as_str().to_owned()]);
    }
    pairs.extend(["upd".to_owned(), state.updated_at_ms.to_string()]);
    for (name, value) in &state.fields {
        pairs.extend([format!("f:{name}"), value.get().to_owned()]);
    }
    for (name, counter) in &state.counters {
        pairs.extend([format!("u:{name}"), counter.used.to_string()]);
        if let Some(limit) = counter.limit {
            pairs.extend([format!("l:{name}"), limit.to_string()]);
        }
    }
    pairs
}

impl SessionStateStore {
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    async fn invoke(&self, call: &redis::ScriptInvocation<'_>) -> Result<Value, ValkeyError> {
        Ok(call.invoke_async(&mut self.conn.clone()).await?)
    }

    /// The session's state (version 0 when it never had one).
    pub async fn get(&self, session: &SessionKey) -> Result<SessionState, ValkeyError> {
        let mut call = STATE.key(keys::session_state(session));
        call.arg("get");
        from_pairs(session, &strings(&self.invoke(&call).await?)?)
    }

    /// Applies `update` whole or not at all (see [`Updated`]).
    pub async fn update(
        &self,
        session: &SessionKey,
        update: &StateUpdate,
    ) -> Result<Updated, ValkeyError> {
        let mut call = STATE.key(keys::session_state(session));
        call.arg("update")
            .arg(
                update
                    .expect_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
            .arg(update.status.map(RunStatus::as_str).unwrap_or_default())
            .arg(MAX_FIELDS)
            .arg(MAX_COUNTERS);
        for (name, value) in &update.fields {
            if value.get() == "null" {
                call.arg("d").arg(name).arg("");
            } else {
                call.arg("f").arg(name).arg(value.get());
            }
        }
        for (name, limit) in &update.limits {
            match limit {
                Some(limit) => call.arg("l").arg(name).arg(*limit),
                None => call.arg("L").arg(name).arg(""),
            };
        }
        for (name, amount) in &update.consume {
            call.arg("c").arg(name).arg(*amount);
        }
        let reply = strings(&self.invoke(&call).await?)?;
        let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
        Ok(match field(0).as_str() {
            "ok" => Updated::Applied(from_pairs(session, &reply[1..])?),
            "conflict" => Updated::Conflict(number(&field(1))?),
            "budget" => Updated::OverBudget {
                counter: field(1),
                used: number(&field(2))?,
                limit: number(&field(3))?,
            },
            "too_many" if field(1) == "fields" => Updated::TooMany("fields"),
            "too_many" => Updated::TooMany("counters"),
            other => return Err(bad(format!("unknown update answer {other:?}"))),
        })
    }

    /// Puts `state` back (from the log) if it is newer than Valkey's; `true` when stored.
    pub async fn restore(&self, state: &SessionState) -> Result<bool, ValkeyError> {
        let mut call = STATE.key(keys::session_state(&state.session));
        call.arg("restore").arg(state.version);
        for part in to_pairs(state) {
            call.arg(part);
        }
        let stored: i64 = redis::from_redis_value(self.invoke(&call).await?).map_err(bad)?;
        Ok(stored == 1)
    }
}
