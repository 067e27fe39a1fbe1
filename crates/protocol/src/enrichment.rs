//! What the enricher learns about an event: the durable `agent.enriched` record and the
//! realtime `enriched` annotation derived from it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{Offset, SessionKey};

/// Where the annotated event sits in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: Offset,
}

/// One zero-shot label and its cosine score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// A record of the `agent.enriched` topic, keyed like its source event
/// (`tenant:agent_type:session_id`), so it lands in the same partition number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    pub session: SessionKey,
    pub source: SourceRef,
    pub event_id: Option<Uuid>,
    /// Best labels first; only labels at or above the enricher's minimum score.
    pub labels: Vec<LabelScore>,
    /// An earlier event of the same session whose text is a near duplicate of this one.
    #[serde(default)]
    pub duplicate_of: Option<Offset>,
    #[serde(default)]
    pub duplicate_score: Option<f32>,
    pub model: String,
    /// What produced this enrichment: the model and a digest of the label set and thresholds
    /// (`<model>@<8 hex digits>`, see [`crate::ModelVersion`]). Records written before
    /// versions existed have none: read it with [`Enrichment::version`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `cpu`, `wgpu-gpu` or `wgpu-software`.
    pub device: String,
    /// The sentence embedding (384 floats, unit length). Kept out of realtime annotations.
    #[serde(default)]
    pub embedding: Vec<f32>,
}

impl Enrichment {
    /// The enrichment's version; for a record written before versions existed, its model
    /// (such enrichers had one label set per model).
    pub fn version(&self) -> &str {
        if self.version.is_empty() {
            &self.model
        } else {
            &self.version
        }
    }

    /// The realtime `enriched` frame for session subscribers and label feeds: everything
    /// but the embedding, which stays in the log.
    pub fn annotation_json(&self) -> String {
        let frame = Annotation {
            op: "enriched",
            session: &self.session,
            offset: self.source.offset,
            event_id: self.event_id,
            labels: &self.labels,
            duplicate_of: self.duplicate_of,
            duplicate_score: self.duplicate_score,
            model: &self.model,
            version: self.version(),
            device: &self.device,
        };
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(&frame).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct Annotation<'a> {
    op: &'static str,
    session: &'a SessionKey,
    offset: Offset,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<Uuid>,
    labels: &'a [LabelScore],
    duplicate_of: Option<Offset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate_score: Option<f32>,
    model: &'a str,
    version: &'a str,
    device: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_carries_the_source_offset_and_no_embedding() {
        let e = Enrichment {
            session: "acme:planner:s1".parse().expect("key"),
            source: SourceRef {
                topic: "agent.events".into(),
                partition: 3,
                offset: Offset(42),
            },
            event_id: None,
            labels: vec![LabelScore {
                label: "billing".into(),
                score: 0.5,
            }],
            duplicate_of: Some(Offset(40)),
            duplicate_score: Some(0.97),
            model: "m".into(),
            version: "m@0123abcd".into(),
            device: "cpu".into(),
            embedding: vec![0.1; 384],
        };
        let v: serde_json::Value = serde_json::from_str(&e.annotation_json()).expect("json");
        assert_eq!(v["op"], "enriched");
        assert_eq!(v["session"], "acme:planner:s1");
        assert_eq!(v["offset"], 42);
        assert_eq!(v["duplicate_of"], 40);
        assert_eq!(v["labels"][0]["label"], "billing");
        assert_eq!(v["model"], "m");
        assert_eq!(v["version"], "m@0123abcd");
        assert!(v.get("embedding").is_none());
        let back: Enrichment =
            serde_json::from_str(&serde_json::to_string(&e).expect("ser")).expect("de");
        assert_eq!(back, e);
    }

    #[test]
    fn a_record_without_a_version_reads_as_its_model() {
        let old = r#"{"session":"acme:planner:s1","source":{"topic":"agent.events","partition":0,"offset":7},"event_id":null,"labels":[],"model":"m","device":"cpu"}"#;
        let e: Enrichment = serde_json::from_str(old).expect("an old record parses");
        assert_eq!(e.version(), "m");
        let v: serde_json::Value = serde_json::from_str(&e.annotation_json()).expect("json");
        assert_eq!(v["version"], "m", "the frame always names a version");
        let again: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).expect("ser")).expect("json");
        assert!(again.get("version").is_none(), "re-encoded as it was read");
    }
}
