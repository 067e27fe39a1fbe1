//! `redrive`: (a) moves a consumer group's committed offsets back to `--from` so that its
//! consumers process the range again (a new model re-enriches history), only while the group
//! has no live member; (b) copies a range into another topic for testing a consumer against
//! real traffic.

use std::collections::BTreeMap;

use agentwire_kafka::{
    LogScan, RecordWriter, commit_group_offsets, committed_offsets, describe_group,
    ensure_topic_like,
};
use agentwire_protocol::{Offset, SessionKey};

use crate::args::Common;
use crate::error::DrillError;
use crate::progress::Progress;
use crate::report::Report;
use crate::scope::Scope;

pub async fn reset_group(
    common: &Common,
    group: &str,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), DrillError> {
    if !common.scope.sessions.is_empty() || !common.scope.tenants.is_empty() {
        return Err(DrillError::Usage(
            "redrive --group moves whole partitions: --session and --tenant do not apply".into(),
        ));
    }
    if common.scope.from.is_none() {
        return Err(DrillError::Usage(
            "redrive --group needs --from (where the group starts again)".into(),
        ));
    }
    let kafka = common.kafka.settings();
    let scope = Scope::resolve(&kafka, &common.kafka.topic, &common.scope).await?;
    report.scope = scope.describe();
    let info = describe_group(&kafka, group).await?;
    if info.members > 0 {
        return Err(DrillError::Refused(format!(
            "group {group} has {} live member(s) (state {}): stop its consumers first; nothing was changed",
            info.members, info.state
        )));
    }
    let partitions: Vec<i32> = scope.ranges.iter().map(|r| r.partition).collect();
    let before = committed_offsets(&kafka, group, &scope.topic, &partitions).await?;
    let target: BTreeMap<i32, Offset> =
        scope.ranges.iter().map(|r| (r.partition, r.from)).collect();
    for (partition, offset) in &target {
        let was = before
            .get(partition)
            .copied()
            .flatten()
            .map_or("nothing committed".to_owned(), |o| o.to_string());
        report.notes.push(format!(
            "{group} on {} partition {partition}: {was} -> {offset}",
            scope.topic
        ));
    }
    report.change("partitions moved", target.len() as u64);
    if !dry_run {
        commit_group_offsets(&kafka, group, &scope.topic, &target).await?;
    }
    Ok(())
}

pub async fn copy(
    common: &Common,
    to_topic: &str,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), DrillError> {
    let kafka = common.kafka.settings();
    let scope = Scope::resolve(&kafka, &common.kafka.topic, &common.scope).await?;
    report.scope = scope.describe();
    if to_topic == scope.topic {
        return Err(DrillError::Usage(
            "--to-topic must differ from --topic".into(),
        ));
    }
    if dry_run {
        report.change("records to copy (at most)", scope.records());
        return Ok(());
    }
    ensure_topic_like(&kafka, &scope.topic, to_topic).await?;
    let mut writer = RecordWriter::new(&kafka, to_topic)?;
    let mut progress = Progress::new(
        &format!("copy {} to {to_topic}", scope.topic),
        scope.records(),
    );
    let mut scan = LogScan::start(&kafka, &scope.topic, &scope.ranges)?;
    while let Some(batch) = scan.next().await? {
        progress.advance(batch.len() as u64);
        for record in &batch {
            let session = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse::<SessionKey>().ok());
            let wanted = session.map_or(scope.includes_unkeyed(), |s| scope.includes(&s));
            if wanted {
                writer.write(record).await?;
                report.records_read += 1;
            }
        }
    }
    let written = writer.finish().await?;
    progress.finish();
    report.change("records copied", written);
    Ok(())
}
