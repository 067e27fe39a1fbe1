//! What a drill reads: which partitions, which offsets of each (`--from`/`--to` as offsets or
//! RFC 3339 times), and which records of them (`--tenant`, `--session`).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use agentwire_kafka::{
    KafkaSettings, PartitionRange, Watermarks, offsets_for_time, partition_count, partition_for,
};
use agentwire_protocol::{Offset, SessionKey, Tenant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::DrillError;

/// One end of a range: `--from`/`--to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The same offset in every partition (`1200`).
    Offset(u64),
    /// Offsets per partition (`0:1200,3:90`); partitions not named are not bounded.
    PerPartition(BTreeMap<i32, u64>),
    /// The first record at or after this time (RFC 3339), in milliseconds since the epoch.
    Time(i64),
}

impl FromStr for Bound {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
            let ms = at.unix_timestamp_nanos() / 1_000_000;
            return i64::try_from(ms)
                .map(Bound::Time)
                .map_err(|_| format!("{text:?} is out of range"));
        }
        if let Ok(offset) = text.parse::<u64>() {
            return Ok(Bound::Offset(offset));
        }
        let mut offsets = BTreeMap::new();
        for part in text.split(',') {
            let parsed = part.split_once(':').and_then(|(p, o)| {
                Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<u64>().ok()?))
            });
            match parsed {
                Some((p, o)) if p >= 0 => {
                    offsets.insert(p, o);
                }
                _ => {
                    return Err(format!(
                        "{text:?} is neither an offset (1200), offsets per partition (0:1200,3:90) nor an RFC 3339 time (2026-11-01T00:00:00Z)"
                    ));
                }
            }
        }
        Ok(Bound::PerPartition(offsets))
    }
}

/// The scope flags every drill command shares.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ScopeArgs {
    /// Only records of this tenant (repeatable).
    #[arg(long = "tenant", value_parser = parse_tenant)]
    pub tenants: Vec<Tenant>,
    /// Only records of this session, `tenant:agent_type:session_id` (repeatable).
    #[arg(long = "session")]
    pub sessions: Vec<SessionKey>,
    /// First record (inclusive): an offset for every partition, `partition:offset,…`, or an
    /// RFC 3339 time. Default: the first record each partition still holds.
    #[arg(long)]
    pub from: Option<Bound>,
    /// End of the range (exclusive), in the same forms. Default: the end of each partition
    /// when the drill starts (records written later are not read).
    #[arg(long)]
    pub to: Option<Bound>,
}

fn parse_tenant(text: &str) -> Result<Tenant, String> {
    Tenant::new(text).map_err(|e| e.to_string())
}

/// A resolved scope: the ranges to read and the filter on record keys.
#[derive(Clone, Debug)]
pub struct Scope {
    pub topic: String,
    pub partitions: usize,
    pub ranges: Vec<PartitionRange>,
    tenants: BTreeSet<Tenant>,
    sessions: BTreeSet<SessionKey>,
    /// Whether every range starts at its partition's first retained record and no session
    /// filter applies: only then does the log tell a producer's whole state.
    pub whole_partitions: bool,
}

impl Scope {
    /// Resolves `args` against `topic` as it is now.
    pub async fn resolve(
        kafka: &KafkaSettings,
        topic: &str,
        args: &ScopeArgs,
    ) -> Result<Self, DrillError> {
        let partitions = partition_count(kafka, topic).await?;
        if partitions == 0 {
            return Err(DrillError::Usage(format!("topic {topic:?} does not exist")));
        }
        let listed: BTreeSet<i32> = if args.sessions.is_empty() {
            (0..i32::try_from(partitions).unwrap_or(i32::MAX)).collect()
        } else {
            args.sessions
                .iter()
                .map(|s| partition_for(s.to_string().as_bytes(), partitions))
                .collect()
        };
        let all: Vec<i32> = listed.iter().copied().collect();
        let from = resolve_bound(kafka, topic, &all, args.from.as_ref()).await?;
        let to = resolve_bound(kafka, topic, &all, args.to.as_ref()).await?;
        let mut ranges = Vec::new();
        let mut whole = args.sessions.is_empty();
        let marks = Watermarks::new(kafka)?;
        for partition in all {
            let (low, high) = marks.get(topic, partition).await?;
            let (low, high) = (
                u64::try_from(low).unwrap_or(0),
                u64::try_from(high).unwrap_or(0),
            );
            let start = from.get(&partition).copied().unwrap_or(low).max(low);
            let end = to.get(&partition).copied().unwrap_or(high).min(high);
            whole &= start == low;
            ranges.push(PartitionRange {
                partition,
                from: Offset(start),
                until: Offset(end.max(start)),
            });
        }
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            ranges,
            tenants: args.tenants.iter().cloned().collect(),
            sessions: args.sessions.iter().cloned().collect(),
            whole_partitions: whole,
        })
    }

    /// Records in all ranges.
    pub fn records(&self) -> u64 {
        self.ranges.iter().map(PartitionRange::len).sum()
    }

    /// Whether a session's records are in scope.
    pub fn includes(&self, session: &SessionKey) -> bool {
        (self.sessions.is_empty() || self.sessions.contains(session))
            && (self.tenants.is_empty() || self.tenants.contains(&session.tenant))
    }

    /// Whether records without a session key are in scope (only with no filter at all).
    pub fn includes_unkeyed(&self) -> bool {
        self.sessions.is_empty() && self.tenants.is_empty()
    }

    /// The range of a partition.
    pub fn range(&self, partition: i32) -> Option<PartitionRange> {
        self.ranges
            .iter()
            .find(|r| r.partition == partition)
            .copied()
    }

    /// A short description for reports.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "topic": self.topic,
            "partitions": self.ranges.iter().map(|r| serde_json::json!({
                "partition": r.partition, "from": r.from.0, "until": r.until.0,
            })).collect::<Vec<_>>(),
            "tenants": self.tenants.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "sessions": self.sessions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }
}

/// The offset a bound names in each partition (partitions it does not bound are absent).
pub async fn resolve_bound(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    bound: Option<&Bound>,
) -> Result<BTreeMap<i32, u64>, DrillError> {
    Ok(match bound {
        None => BTreeMap::new(),
        Some(Bound::Offset(o)) => partitions.iter().map(|p| (*p, *o)).collect(),
        Some(Bound::PerPartition(map)) => map.clone(),
        Some(Bound::Time(ms)) => offsets_for_time(kafka, topic, partitions, *ms)
            .await?
            .into_iter()
            .map(|(p, o)| (p, o.0))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_in_each_form() {
        assert_eq!("1200".parse::<Bound>(), Ok(Bound::Offset(1200)));
        assert_eq!(
            "0:12, 3:90".parse::<Bound>(),
            Ok(Bound::PerPartition(BTreeMap::from([(0, 12), (3, 90)])))
        );
        assert_eq!(
            "2026-11-01T00:00:00Z".parse::<Bound>(),
            Ok(Bound::Time(1_793_491_200_000))
        );
        for bad in ["", "x", "0:", "-1:4", "2026-13-01T00:00:00Z", "1:2,x"] {
            assert!(bad.parse::<Bound>().is_err(), "{bad:?}");
        }
    }
}
