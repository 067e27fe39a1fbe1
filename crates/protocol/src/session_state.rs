//! A session's small shared state (`docs/coordination.md`): a run `status`, counters such as
//! token budgets (`consume(n)` refused past the limit) and free fields, changed atomically
//! with compare-and-set by `version`. Every change is an `agent.session.state` event in the
//! session itself (the whole state, so any offset's state is that of the last such event
//! at or before it), delivered to subscribers in order with the session's other events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ProtocolError;
use crate::ids::SessionKey;

/// The event type of a state change.
pub const STATE_EVENT_TYPE: &str = "agent.session.state";
/// Most fields, and most counters, one session's state holds.
pub const MAX_FIELDS: usize = 64;
pub const MAX_COUNTERS: usize = 32;
/// Largest value of one field, as JSON.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Longest field or counter name.
pub const MAX_NAME_LEN: usize = 64;

/// Where a session's run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Waiting,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One counter: how much was consumed, and the most that may be (none: unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub used: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// A session's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionState {
    pub session: SessionKey,
    /// Bumped by every change; 0 for a session whose state was never set.
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(default)]
    pub counters: BTreeMap<String, Counter>,
    /// Free fields, each value kept as the client's exact JSON.
    #[serde(default)]
    pub fields: BTreeMap<String, Box<RawValue>>,
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl SessionState {
    /// The state of a session that never had one.
    pub fn empty(session: SessionKey) -> Self {
        Self {
            session,
            version: 0,
            status: None,
            counters: BTreeMap::new(),
            fields: BTreeMap::new(),
            updated_at_ms: 0,
        }
    }
}

/// One atomic change: applied whole or not at all. With `expect_version` it applies only
/// if the state is still at that version (`version_conflict` otherwise); a `consume` past
/// its counter's limit refuses the whole change (`budget_exceeded`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Fields to set; a `null` value removes the field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Box<RawValue>>,
    /// Counter limits to set; `null` removes the limit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Option<u64>>,
    /// Amounts to consume, each checked against its counter's limit (limits set by the same
    /// update count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consume: BTreeMap<String, u64>,
}

fn check_name(field: &'static str, name: &str) -> Result<(), ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            field,
            format!("names are 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

impl StateUpdate {
    /// Checks names and sizes; an update that changes nothing is refused.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.status.is_none()
            && self.fields.is_empty()
            && self.limits.is_empty()
            && self.consume.is_empty()
        {
            return Err(ProtocolError::invalid(
                "status",
                "an update sets at least one of status, fields, limits, consume",
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(ProtocolError::invalid(
                "fields",
                format!("at most {MAX_FIELDS}"),
            ));
        }
        for (name, value) in &self.fields {
            check_name("fields", name)?;
            if value.get().len() > MAX_FIELD_BYTES {
                return Err(ProtocolError::invalid(
                    "fields",
                    format!("field {name} is over {MAX_FIELD_BYTES} bytes of JSON"),
                ));
            }
        }
        if self.limits.len() + self.consume.len() > 2 * MAX_COUNTERS {
            return Err(ProtocolError::invalid(
                "limits",
                format!("at most {MAX_COUNTERS} counters"),
            ));
        }
        for name in self.limits.keys() {
            check_name("limits", name)?;
        }
        for name in self.consume.keys() {
            check_name("consume", name)?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// The state an event of `session` (CloudEvents JSON) carries, if it is a state event of
/// that session.
pub fn state_in_event(session: &SessionKey, event_json: &str) -> Option<SessionState> {
    // Cheap test first: most events are not state events.
    if !event_json.contains(STATE_EVENT_TYPE) {
        return None;
    }
    let envelope: Envelope<'_> = serde_json::from_str(event_json).ok()?;
    if envelope.event_type != STATE_EVENT_TYPE {
        return None;
    }
    let state: SessionState = serde_json::from_str(envelope.data?.get()).ok()?;
    (&state.session == session).then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_state_event_of_the_same_session_carries_a_state() {
        let session: SessionKey = "acme:planner:s1".parse().expect("session");
        let state = r#"{"session":"acme:planner:s1","version":3,"status":"running","counters":{},"fields":{"a":1},"updated_at_ms":5}"#;
        let event =
            format!(r#"{{"specversion":"1.0","type":"agent.session.state","data":{state}}}"#);
        let got = state_in_event(&session, &event).expect("a state");
        assert_eq!((got.version, got.fields["a"].get()), (3, "1"));
        let other: SessionKey = "acme:planner:s2".parse().expect("session");
        assert!(
            state_in_event(&other, &event).is_none(),
            "another session's state is not taken"
        );
        let plain =
            r#"{"specversion":"1.0","type":"agent.message","data":{"text":"agent.session.state"}}"#;
        assert!(state_in_event(&session, plain).is_none());
    }

    #[test]
    fn an_update_is_checked_and_names_its_bad_field() {
        let ok: StateUpdate = serde_json::from_str(
            r#"{"expect_version":3,"status":"waiting","fields":{"plan":{"step":2},"old":null},"limits":{"tokens":1000},"consume":{"tokens":10}}"#,
        )
        .expect("update");
        ok.validate().expect("valid");
        assert_eq!(ok.fields["old"].get(), "null");
        let empty = StateUpdate::default();
        assert!(empty.validate().is_err());
        let bad: StateUpdate =
            serde_json::from_str(r#"{"consume":{"to kens":1}}"#).expect("parses");
        assert_eq!(bad.validate().expect_err("name").field(), Some("consume"));
        assert!(serde_json::from_str::<StateUpdate>(r#"{"colour":1}"#).is_err());
        assert!(serde_json::from_str::<StateUpdate>(r#"{"status":"sleeping"}"#).is_err());
        assert_eq!(RunStatus::parse("cancelled"), Some(RunStatus::Cancelled));
    }
}
