//! The protobuf form of the contract (generated from `proto/agentwire/v1`) and its
//! conversions to and from the domain [`Event`].

use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::ProtocolError;
use crate::event::{Data, Event as DomainEvent, is_json_media_type};
use crate::ids::{AgentType, EventType, ProducerId, SessionId, SessionKey, Tenant};

#[allow(missing_debug_implementations, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/agentwire.v1.rs"));
}

pub use generated::*;

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

impl TryFrom<generated::Event> for DomainEvent {
    type Error = ProtocolError;

    fn try_from(pb: generated::Event) -> Result<Self, Self::Error> {
        let session = SessionKey::new(
            Tenant::new(pb.tenant)?,
            AgentType::new(pb.agent_type)?,
            SessionId::new(pb.session_id)?,
        );
        let id = match pb.id.as_str() {
            "" => None,
            id => Some(
                Uuid::parse_str(id).map_err(|_| ProtocolError::invalid("id", "must be a UUID"))?,
            ),
        };
        let producer_id = non_empty(pb.producer_id).map(ProducerId::new).transpose()?;
        let producer_seq = (pb.producer_seq != 0).then_some(pb.producer_seq);
        let producer_epoch = pb.producer_epoch;
        let traceparent = non_empty(pb.traceparent);
        let tracestate = non_empty(pb.tracestate);
        let content_type = non_empty(pb.content_type);
        let data = match (&content_type, pb.data.is_empty()) {
            (_, true) => None,
            (Some(ct), false) if is_json_media_type(ct) => {
                let text = String::from_utf8(pb.data)
                    .map_err(|_| ProtocolError::invalid("data", "must be UTF-8 JSON"))?;
                Some(Data::Json(RawValue::from_string(text).map_err(|_| {
                    ProtocolError::invalid("data", "must be valid JSON")
                })?))
            }
            (_, false) => Some(Data::Binary(pb.data)),
        };
        let event = DomainEvent {
            id,
            session,
            event_type: EventType::new(pb.r#type)?,
            source: pb.source,
            subject: None,
            producer_id,
            producer_seq,
            producer_epoch,
            correlation_id: non_empty(pb.correlation_id),
            causation_id: non_empty(pb.causation_id),
            time: pb.time,
            content_type,
            data,
            text: pb.text,
            traceparent,
            tracestate,
        };
        event.validate()?;
        Ok(event)
    }
}

impl From<&DomainEvent> for generated::Event {
    fn from(event: &DomainEvent) -> Self {
        let data = match &event.data {
            Some(Data::Json(raw)) => raw.get().as_bytes().to_vec(),
            Some(Data::Binary(bytes)) => bytes.clone(),
            None => Vec::new(),
        };
        generated::Event {
            id: event.id.map(|id| id.to_string()).unwrap_or_default(),
            tenant: event.session.tenant.to_string(),
            agent_type: event.session.agent_type.to_string(),
            session_id: event.session.session_id.to_string(),
            r#type: event.event_type.to_string(),
            producer_id: event
                .producer_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            producer_seq: event.producer_seq.unwrap_or(0),
            producer_epoch: event.producer_epoch,
            correlation_id: event.correlation_id.clone().unwrap_or_default(),
            causation_id: event.causation_id.clone().unwrap_or_default(),
            time: event.time,
            content_type: event
                .effective_content_type()
                .unwrap_or_default()
                .to_owned(),
            data,
            text: event.text.clone(),
            traceparent: event.traceparent.clone().unwrap_or_default(),
            tracestate: event.tracestate.clone().unwrap_or_default(),
            source: event.source.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents;

    #[test]
    fn protobuf_and_json_forms_carry_the_same_event() {
        let json = r#"{"id":"0190b8a4-7c1e-7000-8000-000000000001","source":"/x","type":"agent.message","time":"2026-11-25T10:00:00.5Z","tenant":"t","agenttype":"a","sessionid":"s","producerid":"p","producerseq":"3","text":"hi","datacontenttype":"application/json","data":{"k":[1,"two"]}}"#;
        let event = cloudevents::from_json(json).expect("valid");
        let pb = generated::Event::from(&event);
        let back = DomainEvent::try_from(pb).expect("valid pb");
        assert_eq!(cloudevents::to_json(&back), cloudevents::to_json(&event));
    }

    #[test]
    fn protobuf_applies_the_same_limits_as_json() {
        let long = "x".repeat(crate::event::MAX_ATTRIBUTE_LEN + 1);
        let base = generated::Event {
            tenant: "t".into(),
            agent_type: "a".into(),
            session_id: "s".into(),
            r#type: "agent.x".into(),
            ..Default::default()
        };
        let cases = [
            (
                "text",
                generated::Event {
                    text: Some(long.clone()),
                    ..base.clone()
                },
            ),
            (
                "source",
                generated::Event {
                    source: long.clone(),
                    ..base.clone()
                },
            ),
            (
                "correlationid",
                generated::Event {
                    correlation_id: long.clone(),
                    ..base.clone()
                },
            ),
            (
                "causationid",
                generated::Event {
                    causation_id: long.clone(),
                    ..base.clone()
                },
            ),
            (
                "traceparent",
                generated::Event {
                    traceparent: "x".into(),
                    ..base.clone()
                },
            ),
        ];
        for (field, pb) in cases {
            let err = DomainEvent::try_from(pb).expect_err(field);
            assert_eq!(err.field(), Some(field));
        }
        // Whatever protobuf accepts, the JSON form of the log (the relay's strict re-read)
        // accepts too.
        let ok = generated::Event {
            text: Some("x".repeat(crate::event::MAX_ATTRIBUTE_LEN)),
            ..base
        };
        let event = DomainEvent::try_from(ok).expect("at the limit");
        cloudevents::from_json(&cloudevents::to_json(&event)).expect("json accepts it");
    }

    #[test]
    fn invalid_protobuf_json_data_is_rejected() {
        let pb = generated::Event {
            tenant: "t".into(),
            agent_type: "a".into(),
            session_id: "s".into(),
            r#type: "agent.x".into(),
            content_type: "application/json".into(),
            data: b"{not json".to_vec(),
            ..Default::default()
        };
        let err = DomainEvent::try_from(pb).expect_err("invalid");
        assert_eq!(err.field(), Some("data"));
    }
}
