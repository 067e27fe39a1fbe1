//! `export` and `import`: the scope as JSON Lines and back into a topic (a drill restore).
//! One line per record: `partition`, `offset`, `timestamp` (ms), `key`, `headers` (in order,
//! `value` when UTF-8, `value_base64` otherwise) and `event` (the CloudEvent as stored), or
//! `value_base64` for a value that is not JSON. Partitions are written one after another in
//! offset order, so exporting the same records twice gives the same file.

use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::Path;

use agentwire_kafka::{LogScan, RecordWriter, ScannedRecord, ensure_topic_like};
use agentwire_protocol::SessionKey;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::args::Common;
use crate::error::DrillError;
use crate::progress::Progress;
use crate::report::Report;
use crate::scope::Scope;

#[derive(Serialize, Deserialize)]
struct Header {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Line {
    partition: i32,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default)]
    headers: Vec<Header>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

fn line(record: &ScannedRecord) -> Line {
    let headers = record
        .headers
        .iter()
        .map(|(key, value)| {
            let (value, value_base64) = value.as_deref().map_or((None, None), text_or_base64);
            Header {
                key: key.clone(),
                value,
                value_base64,
            }
        })
        .collect();
    let event = record
        .value
        .as_deref()
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|json| RawValue::from_string(json.to_owned()).ok());
    let value_base64 = match (&event, &record.value) {
        (None, Some(bytes)) => Some(B64.encode(bytes)),
        _ => None,
    };
    Line {
        partition: record.partition,
        offset: record.offset.0,
        timestamp: record.timestamp_ms,
        key: record
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        event,
        value_base64,
    }
}

fn in_scope(scope: &Scope, record: &ScannedRecord) -> bool {
    match record
        .key
        .as_deref()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.parse::<SessionKey>().ok())
    {
        Some(session) => scope.includes(&session),
        None => scope.includes_unkeyed(),
    }
}

pub async fn export(common: &Common, out: &Path, report: &mut Report) -> Result<(), DrillError> {
    let kafka = common.kafka.settings();
    let scope = Scope::resolve(&kafka, &common.kafka.topic, &common.scope).await?;
    report.scope = scope.describe();
    let sink: Box<dyn std::io::Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(out)
                .map_err(DrillError::io(format!("create {}", out.display())))?,
        )
    };
    let mut sink = BufWriter::new(sink);
    let mut progress = Progress::new(&format!("export {}", scope.topic), scope.records());
    for range in &scope.ranges {
        let mut scan = LogScan::start(&kafka, &scope.topic, std::slice::from_ref(range))?;
        while let Some(batch) = scan.next().await? {
            progress.advance(batch.len() as u64);
            for record in batch.iter().filter(|r| in_scope(&scope, r)) {
                serde_json::to_writer(&mut sink, &line(record))
                    .map_err(|e| DrillError::io("write the export")(e.into()))?;
                sink.write_all(b"\n")
                    .map_err(DrillError::io("write the export"))?;
                report.records_read += 1;
            }
        }
    }
    sink.flush().map_err(DrillError::io("write the export"))?;
    progress.finish();
    report.change("records exported", report.records_read);
    Ok(())
}

fn decode(line: &str, number: usize) -> Result<ScannedRecord, DrillError> {
    let bad = |why: String| DrillError::Usage(format!("line {number} of the export: {why}"));
    let parsed: Line = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    let bytes = |b64: &str| B64.decode(b64).map_err(|e| bad(format!("bad base64: {e}")));
    let value = match (parsed.event, parsed.value_base64) {
        (Some(event), _) => Some(event.get().as_bytes().to_vec()),
        (None, Some(b64)) => Some(bytes(&b64)?),
        (None, None) => None,
    };
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers {
        let value = match (h.value, h.value_base64) {
            (Some(text), _) => Some(text.into_bytes()),
            (None, Some(b64)) => Some(bytes(&b64)?),
            (None, None) => None,
        };
        headers.push((h.key, value));
    }
    Ok(ScannedRecord {
        partition: parsed.partition,
        offset: agentwire_protocol::Offset(parsed.offset),
        key: parsed.key.map(String::into_bytes),
        value,
        headers,
        timestamp_ms: parsed.timestamp,
    })
}

pub async fn import(
    common: &Common,
    input: &Path,
    to_topic: &str,
    report: &mut Report,
) -> Result<(), DrillError> {
    let kafka = common.kafka.settings();
    let file =
        std::fs::File::open(input).map_err(DrillError::io(format!("open {}", input.display())))?;
    ensure_topic_like(&kafka, &common.kafka.topic, to_topic).await?;
    let mut writer = RecordWriter::new(&kafka, to_topic)?;
    let mut progress = Progress::new(&format!("import into {to_topic}"), 0);
    for (i, text) in std::io::BufReader::new(file).lines().enumerate() {
        let text = text.map_err(DrillError::io(format!("read {}", input.display())))?;
        if text.trim().is_empty() {
            continue;
        }
        writer.write(&decode(&text, i + 1)?).await?;
        report.records_read += 1;
        progress.advance(1);
    }
    let written = writer.finish().await?;
    progress.finish();
    report.change("records written", written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_whatever_its_bytes() {
        let record = ScannedRecord {
            partition: 3,
            offset: agentwire_protocol::Offset(41),
            key: Some(b"acme:planner:s1".to_vec()),
            value: Some(vec![0xff, 0x00, 0x7b]),
            headers: vec![
                ("traceparent".into(), Some(b"00-abc-def-01".to_vec())),
                ("bin".into(), Some(vec![0xfe])),
                ("none".into(), None),
            ],
            timestamp_ms: Some(1_700_000_000_123),
        };
        let text = serde_json::to_string(&line(&record)).expect("json");
        let back = decode(&text, 1).expect("decode");
        assert_eq!(back.key, record.key);
        assert_eq!(back.value, record.value);
        assert_eq!(back.headers, record.headers);
        assert_eq!(back.timestamp_ms, record.timestamp_ms);
        let event = ScannedRecord {
            value: Some(br#"{"type":"agent.x","n":1}"#.to_vec()),
            ..record
        };
        let text = serde_json::to_string(&line(&event)).expect("json");
        assert!(
            text.contains(r#""event":{"type":"agent.x","n":1}"#),
            "{text}"
        );
        assert_eq!(decode(&text, 1).expect("decode").value, event.value);
        assert!(
            decode("{not json", 7)
                .expect_err("bad")
                .to_string()
                .contains("line 7")
        );
    }
}
