//! Identifier newtypes. Each one validates on construction, so a value of one of these types
//! is always safe to embed in a Kafka key, a Valkey key or a hash tag.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ProtocolError;

/// Longest tenant, agent type, session id or producer id accepted.
pub const MAX_NAME_LEN: usize = 128;

fn validate_name(field: &'static str, value: &str) -> Result<(), ProtocolError> {
    let ok_len = !value.is_empty() && value.len() <= MAX_NAME_LEN;
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"),
        ))
    }
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, ProtocolError> {
                let value = value.into();
                validate_name($field, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_newtype!(
    /// The tenant that owns a session; the isolation boundary.
    Tenant,
    "tenant"
);
name_newtype!(
    /// The kind of agent, e.g. `planner`.
    AgentType,
    "agenttype"
);
name_newtype!(
    /// One run of one agent within a tenant.
    SessionId,
    "sessionid"
);
name_newtype!(
    /// A zero-shot label of the enricher (`billing`, `incident`, …): a tenant's label feed.
    Label,
    "label"
);
name_newtype!(
    /// What a task needs done (`web_search`, `summarise`): the queue a task waits in.
    Capability,
    "capability"
);
name_newtype!(
    /// One agent in a tenant's registry (`register`, `discover`).
    AgentId,
    "agent_id"
);
name_newtype!(
    /// A producer that numbers its events with `producer_seq`.
    ProducerId,
    "producerid"
);

/// `tenant:agent_type:session_id`: the Kafka record key, the Valkey hash tag, the unit of order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub tenant: Tenant,
    pub agent_type: AgentType,
    pub session_id: SessionId,
}

impl SessionKey {
    pub fn new(tenant: Tenant, agent_type: AgentType, session_id: SessionId) -> Self {
        Self {
            tenant,
            agent_type,
            session_id,
        }
    }

    /// Builds a key from its three parts, validating each.
    pub fn parse_parts(
        tenant: &str,
        agent_type: &str,
        session_id: &str,
    ) -> Result<Self, ProtocolError> {
        Ok(Self::new(
            Tenant::new(tenant)?,
            AgentType::new(agent_type)?,
            SessionId::new(session_id)?,
        ))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.tenant, self.agent_type, self.session_id)
    }
}

impl FromStr for SessionKey {
    type Err = ProtocolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(a), Some(s), None) => {
                Self::parse_parts(t, a, s).map_err(|e| e.with_field("session"))
            }
            _ => Err(ProtocolError::invalid(
                "session",
                "must be \"tenant:agent_type:session_id\"",
            )),
        }
    }
}

impl Serialize for SessionKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// An event type in the open set `agent\.[a-z_]+(\.[a-z_]+)*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 256;

    pub fn new(value: impl Into<String>) -> Result<Self, ProtocolError> {
        let value = value.into();
        let mut segments = value.split('.');
        let head_ok = segments.next() == Some("agent");
        let mut count = 0;
        let rest_ok = segments.all(|s| {
            count += 1;
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        if head_ok && rest_ok && count >= 1 && value.len() <= Self::MAX_LEN {
            Ok(Self(value))
        } else {
            Err(ProtocolError::invalid(
                "type",
                "must match agent\\.[a-z_]+(\\.[a-z_]+)*",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Kafka offset within the partition that holds a session: the client's cursor everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The largest offset Kafka can assign (offsets are non-negative `i64`s).
    pub const MAX: Offset = Offset(i64::MAX as u64);

    /// A client's cursor (`after`): any offset Kafka can assign. Larger values can never
    /// name an event and are refused, so no arithmetic on a cursor can overflow.
    pub fn cursor(after: u64) -> Result<Offset, ProtocolError> {
        if after > Self::MAX.0 {
            return Err(ProtocolError::invalid(
                "after",
                format!("must be a Kafka offset, at most {}", Self::MAX.0),
            ));
        }
        Ok(Offset(after))
    }

    /// The offset after this one; `None` past [`Offset::MAX`].
    pub fn next(self) -> Option<Offset> {
        self.0
            .checked_add(1)
            .map(Offset)
            .filter(|o| *o <= Self::MAX)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_key_round_trips_through_its_string_form() {
        let key: SessionKey = "acme:planner:s-1.a_b".parse().expect("valid key");
        assert_eq!(key.tenant.as_str(), "acme");
        assert_eq!(key.to_string(), "acme:planner:s-1.a_b");
    }

    #[test]
    fn session_key_rejects_extra_separators_and_hash_tag_characters() {
        for bad in [
            "acme:planner",
            "a:b:c:d",
            "a{b}:c:d",
            "a:b:",
            ":b:c",
            "a b:c:d",
        ] {
            let err = bad.parse::<SessionKey>().expect_err(bad);
            assert_eq!(err.field(), Some("session"), "{bad}");
        }
    }

    #[test]
    fn cursors_are_kafka_offsets() {
        assert_eq!(Offset::cursor(0), Ok(Offset(0)));
        assert_eq!(Offset::cursor(i64::MAX as u64), Ok(Offset::MAX));
        for absurd in [i64::MAX as u64 + 1, u64::MAX] {
            let err = Offset::cursor(absurd).expect_err("refused");
            assert_eq!(
                (err.code(), err.field()),
                (crate::ErrorCode::InvalidField, Some("after"))
            );
        }
        assert_eq!(Offset(41).next(), Some(Offset(42)));
        assert_eq!(Offset::MAX.next(), None);
        assert_eq!(Offset(u64::MAX).next(), None);
    }

    #[test]
    fn event_type_accepts_the_open_agent_set_only() {
        for good in ["agent.message", "agent.tool_called", "agent.a.b_c"] {
            EventType::new(good).expect(good);
        }
        for bad in [
            "agent",
            "agent.",
            "agent..x",
            "Agent.x",
            "agent.X",
            "user.message",
            "agent.x-y",
            "",
        ] {
            assert!(EventType::new(bad).is_err(), "{bad}");
        }
    }
}
