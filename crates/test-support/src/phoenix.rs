//! A dedicated Arize Phoenix for one test: the trace store that receives OTLP over gRPC and
//! HTTP/protobuf, and answers by trace id through its REST API (`/v1/projects/{p}/spans`).
//!
//! What Phoenix keeps of a span decides what a trace test can check: the name, the ids and the
//! parent, start and end (to the microsecond), the status, the attributes and the events. It
//! drops the OpenTelemetry span kind, the links, the resource (`service.name` included) and
//! `tracestate` (`docs/operations/traces.md`). A trace lives in one Phoenix project, the one
//! its first stored span named with the resource attribute `openinference.project.name`
//! (`default` without it); later spans of the trace join it whatever they name.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{Map, Value};
use tempfile::TempDir;

use crate::binaries::Binary;
use crate::launch::launch_within;
use crate::probe::free_port;
use crate::process::ChildProcess;
use crate::wait::wait_until;

/// Ports tried before giving up when other processes keep taking the free ones first.
const PORT_ATTEMPTS: usize = 3;
/// Phoenix migrates its database and starts two servers: 10-25 s on 2 idle cores.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one API call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans per page: the most Phoenix returns at once.
const PAGE_LIMIT: &str = "1000";

/// Phoenix's settings as agentwire runs it (no telemetry, nothing fetched from the internet,
/// no assistant or MCP server), shared with the other place that starts it:
/// `infra/phoenix/quiet.env`.
fn quiet_and_local() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("../../../infra/phoenix/quiet.env")
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
}

/// Why a query to Phoenix failed.
#[derive(Debug, thiserror::Error)]
pub enum PhoenixError {
    #[error("request to phoenix failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("phoenix answered {what} with {status}: {body}")]
    Status {
        what: String,
        status: StatusCode,
        body: String,
    },
    #[error("phoenix answered {what} with an unexpected body: {reason}")]
    Unexpected { what: String, reason: String },
}

/// One span as Phoenix stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_id: Option<String>,
    /// OpenInference's kind (`UNKNOWN` unless the attribute `openinference.span.kind` names
    /// one), not the OpenTelemetry span kind, which Phoenix does not keep.
    pub openinference_kind: String,
    pub start_time: SystemTime,
    pub end_time: SystemTime,
    /// `UNSET`, `OK` or `ERROR`.
    pub status_code: String,
    /// Empty unless the status is `ERROR` with a description.
    pub status_message: String,
    /// Keys as the span set them (`messaging.kafka.offset`); integers, floats, booleans,
    /// strings and arrays keep their JSON type.
    pub attributes: Map<String, Value>,
    pub events: Vec<SpanEvent>,
}

impl SpanRecord {
    /// The attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

/// An event recorded on a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    pub name: String,
    pub time: SystemTime,
    pub attributes: Map<String, Value>,
}

/// A `phoenix serve` on free loopback ports with a working directory (its SQLite database)
/// of its own, killed when dropped.
#[derive(Debug)]
pub struct Phoenix {
    /// Declared first so that it is dropped (killed) before its directory is removed.
    process: ChildProcess,
    http_port: u16,
    grpc_port: u16,
    base: Url,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Phoenix {
    /// Starts Phoenix and returns once its HTTP server answers `/healthz` and its gRPC port
    /// accepts connections.
    ///
    /// # Panics
    /// When `phoenix` cannot be found (`cargo xtask test` installs it and sets
    /// `AGENTWIRE_PHOENIX`) or does not come up; the message quotes its output.
    pub async fn start() -> Phoenix {
        let binary = Binary::Phoenix.locate();
        let dir = tempfile::Builder::new()
            .prefix("agentwire-phoenix-")
            .tempdir()
            .unwrap_or_else(|e| panic!("create a directory for phoenix: {e}"));
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_else(|e| panic!("build an HTTP client: {e}"));
        let mut attempt = 1;
        loop {
            let (http_port, grpc_port) = (free_port(), free_port());
            let mut command = Command::new(&binary);
            command.arg("serve").current_dir(dir.path());
            // Nothing from the caller's PHOENIX_* settings (a Postgres URL, auth) leaks in.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("PHOENIX_") {
                    command.env_remove(name);
                }
            }
            command
                .env("PHOENIX_WORKING_DIR", dir.path().join("data"))
                .env("PHOENIX_HOST", "127.0.0.1")
                .env("PHOENIX_PORT", http_port.to_string())
                .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
                .envs(quiet_and_local());
            let name = format!("phoenix on 127.0.0.1:{http_port} (gRPC :{grpc_port})");
            let log = dir.path().join("phoenix.log");
            let probe = || ready(&client, http_port, grpc_port);
            match launch_within(&name, command, &log, START_TIMEOUT, probe).await {
                Ok(process) => {
                    let base = Url::parse(&format!("http://127.0.0.1:{http_port}"))
                        .unwrap_or_else(|e| panic!("phoenix's URL: {e}"));
                    return Phoenix {
                        process,
                        http_port,
                        grpc_port,
                        base,
                        client,
                        _dir: dir,
                    };
                }
                Err(failure) if failure.port_taken() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    /// `http://127.0.0.1:PORT`: OTLP over gRPC (`OTEL_EXPORTER_OTLP_ENDPOINT` with the `grpc`
    /// protocol).
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:PORT`: OTLP over HTTP as `OTEL_EXPORTER_OTLP_ENDPOINT` with the
    /// `http/protobuf` protocol takes it (exporters append `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:PORT/v1/traces`: the full URL, as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// and an HTTP exporter's `with_endpoint` take it.
    pub fn otlp_http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.otlp_http_endpoint())
    }

    /// The UI (also the REST API under `/v1` and GraphQL at `/graphql`).
    pub fn ui_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The UI's page of one trace, in whichever project holds it.
    pub fn trace_url(&self, trace_id: &str) -> String {
        format!("{}/redirects/traces/{trace_id}", self.ui_url())
    }

    /// The process, e.g. to pause it (a hung backend) or kill it (a dead one).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Every stored span of the trace `trace_id` (32 lowercase hex digits), by start time;
    /// empty when none has been stored yet. Phoenix stores spans about 0.1 s after receiving
    /// them: poll with [`Phoenix::wait_for_trace`].
    pub async fn spans_of_trace(&self, trace_id: &str) -> Result<Vec<SpanRecord>, PhoenixError> {
        for project in self.projects().await? {
            let spans = self.spans_in(&project, trace_id).await?;
            if !spans.is_empty() {
                return Ok(spans);
            }
        }
        Ok(Vec::new())
    }

    /// Polls [`Phoenix::spans_of_trace`] until `holds` accepts the spans, and returns them.
    ///
    /// # Panics
    /// When `timeout` passes first; the message lists the spans stored by then.
    pub async fn wait_for_trace<P>(
        &self,
        trace_id: &str,
        holds: P,
        timeout: Duration,
    ) -> Vec<SpanRecord>
    where
        P: Fn(&[SpanRecord]) -> bool,
    {
        let holds = &holds;
        let what = format!("trace {trace_id} in phoenix to hold the expected spans");
        wait_until(timeout, &what, move || async move {
            let spans = self
                .spans_of_trace(trace_id)
                .await
                .map_err(|e| e.to_string())?;
            if holds(&spans) {
                Ok(spans)
            } else {
                let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                Err(format!("{} span(s) stored: {names:?}", spans.len()))
            }
        })
        .await
    }

    /// The names of every project, oldest first.
    async fn projects(&self) -> Result<Vec<String>, PhoenixError> {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(&["v1", "projects"]);
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let page: Page<Project> = self.get("the project list", url).await?;
            names.extend(page.data.into_iter().map(|p| p.name));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(names),
            }
        }
    }

    /// The spans of `trace_id` stored in `project`, by start time.
    async fn spans_in(
        &self,
        project: &str,
        trace_id: &str,
    ) -> Result<Vec<SpanRecord>, PhoenixError> {
        let what = format!("the spans of trace {trace_id} in project {project}");
        let mut spans = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(&["v1", "projects", project, "spans"]);
            url.query_pairs_mut()
                .append_pair("trace_id", trace_id)
                .append_pair("sort", "start_time")
                .append_pair("order", "asc")
                .append_pair("limit", PAGE_LIMIT);
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let page: Page<WireSpan> = self.get(&what, url).await?;
            for span in page.data {
                spans.push(
                    span.into_record()
                        .map_err(|reason| PhoenixError::Unexpected {
                            what: what.clone(),
                            reason,
                        })?,
                );
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(spans),
            }
        }
    }

    /// `base` with `segments` as its path, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(segments);
        }
        url
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        url: Url,
    ) -> Result<T, PhoenixError> {
        let response = self.client.get(url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(PhoenixError::Status {
                what: what.to_owned(),
                status,
                body,
            });
        }
        serde_json::from_str(&body).map_err(|e| PhoenixError::Unexpected {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// Ready when `/healthz` answers 200 and the gRPC port accepts connections (Phoenix opens
/// the HTTP port last, once start-up is complete).
async fn ready(client: &reqwest::Client, http_port: u16, grpc_port: u16) -> io::Result<()> {
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    let response = client.get(&url).send().await.map_err(io::Error::other)?;
    if !response.status().is_success() {
        return Err(io::Error::other(format!(
            "/healthz answered {}",
            response.status()
        )));
    }
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, grpc_port));
    tokio::net::TcpStream::connect(grpc).await.map(drop)
}

/// A page of a Phoenix list: `{"data": [...], "next_cursor": ...}`.
#[derive(Debug, Deserialize)]
struct Page<T> {
    data: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Project {
    name: String,
}

/// A span as `/v1/projects/{p}/spans` writes it.
#[derive(Debug, Deserialize)]
struct WireSpan {
    name: String,
    context: WireContext,
    span_kind: String,
    parent_id: Option<String>,
    start_time: String,
    end_time: String,
    status_code: String,
    status_message: Option<String>,
    attributes: Option<Map<String, Value>>,
    events: Option<Vec<WireEvent>>,
}

#[derive(Debug, Deserialize)]
struct WireContext {
    trace_id: String,
    span_id: String,
}

#[derive(Debug, Deserialize)]
struct WireEvent {
    name: String,
    timestamp: String,
    attributes: Option<Map<String, Value>>,
}

impl WireSpan {
    fn into_record(self) -> Result<SpanRecord, String> {
        let events = self
            .events
            .unwrap_or_default()
            .into_iter()
            .map(|event| {
                Ok(SpanEvent {
                    name: event.name,
                    time: parse_time(&event.timestamp)?,
                    attributes: event.attributes.unwrap_or_default(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(SpanRecord {
            name: self.name,
            trace_id: self.context.trace_id,
            span_id: self.context.span_id,
            parent_id: self.parent_id,
            openinference_kind: self.span_kind,
            start_time: parse_time(&self.start_time)?,
            end_time: parse_time(&self.end_time)?,
            status_code: self.status_code,
            status_message: self.status_message.unwrap_or_default(),
            attributes: self.attributes.unwrap_or_default(),
            events,
        })
    }
}

/// Phoenix writes times as RFC 3339 with a UTC offset: `2026-11-30T23:18:47.284975+00:00`,
/// without the fraction when it is zero.
fn parse_time(text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("the time {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_and_without_a_fraction() {
        let with = parse_time("2026-11-30T23:18:47.284975+00:00").expect("fraction");
        let without = parse_time("2026-11-30T23:18:47+00:00").expect("no fraction");
        assert_eq!(
            with.duration_since(without).expect("later"),
            Duration::from_micros(284_975)
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn a_span_of_the_rest_api_becomes_a_record() {
        let json = r#"{"id":"U3Bhbjoy","name":"process",
            "context":{"trace_id":"d8477c6972cb72a96fd1a8826cea4335","span_id":"4f9480cf9f34f2ab"},
            "span_kind":"UNKNOWN","parent_id":"33babb49f60529b6",
            "start_time":"2026-11-30T23:18:47.285094+00:00","end_time":"2026-11-30T23:18:47.285128+00:00",
            "status_code":"ERROR","status_message":"boom",
            "attributes":{"messaging.kafka.offset":42,"arr":["x","y"]},
            "events":[{"name":"ev1","timestamp":"2026-11-30T23:18:47.285009+00:00","attributes":{"k":"v"}}]}"#;
        let span: WireSpan = serde_json::from_str(json).expect("decode");
        let record = span.into_record().expect("convert");
        assert_eq!(record.parent_id.as_deref(), Some("33babb49f60529b6"));
        assert_eq!(record.status_code, "ERROR");
        assert_eq!(record.status_message, "boom");
        assert_eq!(
            record.attribute("messaging.kafka.offset"),
            Some(&Value::from(42))
        );
        assert_eq!(record.events.len(), 1);
        assert!(record.end_time > record.start_time);
    }
}
