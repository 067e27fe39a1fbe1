//! `POST /v1/events` (durable publish, one event or a batch) and
//! `GET /v1/sessions/{tenant}/{agent_type}/{session_id}/events` (history after a cursor, or
//! from the log's first retained event).

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use agentwire_protocol::{
    Ack, ErrorCode, Event, Offset, ProtocolError, SessionKey, Start, cloudevents, pb,
};

use crate::auth::Principal;
use crate::error::{ApiError, error_response};
use crate::history::ReadFrom;
use crate::publish::{self, Transport};
use crate::state::AppState;
use crate::tenant_limits;

/// Most events one history request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Events a history request returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// What the body of a publish is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyFormat {
    /// A CloudEvents JSON object, or a JSON array of them (the CloudEvents batch format).
    Json,
    /// A protobuf `agentwire.v1.EventBatch`.
    Protobuf,
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = agentwire_protocol::event::media_type_essence(content_type);
    match essence.as_str() {
        "application/json"
        | "application/cloudevents+json"
        | "application/cloudevents-batch+json" => Ok(BodyFormat::Json),
        "application/x-protobuf" | "application/protobuf" => Ok(BodyFormat::Protobuf),
        other => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "content type {other:?} is not accepted; use application/cloudevents+json, \
                 application/cloudevents-batch+json, application/json or application/x-protobuf"
            ),
        )),
    }
}

/// Decodes a publish body into events (validated) and whether it was a batch.
fn decode(format: BodyFormat, body: &[u8]) -> Result<(Vec<Event>, bool), ProtocolError> {
    match format {
        BodyFormat::Json => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ProtocolError::malformed("body is not UTF-8"))?;
            if text.trim_start().starts_with('[') {
                Ok((cloudevents::batch_from_json(text)?, true))
            } else {
                Ok((vec![cloudevents::from_json(text)?], false))
            }
        }
        BodyFormat::Protobuf => {
            let batch = pb::EventBatch::decode(body).map_err(|e| {
                ProtocolError::malformed(format!("body is not a protobuf EventBatch: {e}"))
            })?;
            let events = batch
                .events
                .into_iter()
                .map(Event::try_from)
                .collect::<Result<_, _>>()?;
            Ok((events, true))
        }
    }
}

/// `POST /v1/events`: appends every event to the log and answers once Kafka acknowledged all.
///
/// A single JSON event gets one ack object; a batch gets an array in request order. Every
/// event is validated before any is written, so bad input writes nothing. If Kafka fails part
/// way through a batch the answer is 503 with the acks of the events that were written.
pub async fn publish(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match principal {
        Ok(principal) => principal,
        Err(err) => return err.into_response(),
    };
    let format = match body_format(&headers) {
        Ok(format) => format,
        Err(err) => return err.into_response(),
    };
    let limit = state.config().max_body_bytes;
    let deadline = std::time::Duration::from_secs(state.config().http_body_timeout_secs);
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("body is larger than {limit} bytes"),
            )
            .into_response();
        }
        Err(_) => {
            return ApiError::new(
                ErrorCode::RequestTimeout,
                format!("the body did not arrive within {deadline:?}; nothing was written"),
            )
            .into_response();
        }
    };
    let (mut events, batch) = match decode(format, &bytes) {
        Ok(decoded) => decoded,
        Err(err) => return ApiError::from(err).into_response(),
    };
    if events.is_empty() {
        return ApiError::new(ErrorCode::InvalidField, "the batch holds no event").into_response();
    }
    // Every event must be allowed before any is written.
    if let Some(err) = events
        .iter()
        .find_map(|e| principal.check_publish_event(e).err())
    {
        return err.into_response();
    }
    let header_traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| agentwire_protocol::event::is_valid_traceparent(v));
    if let Some(tp) = header_traceparent {
        for event in events.iter_mut().filter(|e| e.traceparent.is_none()) {
            event.traceparent = Some(tp.to_owned());
        }
    }

    let quota_timeout = std::time::Duration::from_millis(state.config().tenant_quota_timeout_ms);
    if let Err(err) = tenant_limits::charge(state.tenants(), &events, quota_timeout).await {
        for event in &events {
            crate::publish_trace::refused(event, Transport::Http, &err);
        }
        return err.into_response();
    }

    // Claimed, appended and settled by a task of its own: a client that aborts the request
    // leaves no producer sequence reserved and unsettled.
    let (acks, first_error) = match tokio::spawn(append_in_order(state, events)).await {
        Ok(outcome) => outcome,
        Err(err) => {
            return ApiError::new(
                ErrorCode::Internal,
                format!("the publish task failed: {err}"),
            )
            .into_response();
        }
    };
    match (first_error, batch) {
        (None, false) => Json(acks.into_iter().next()).into_response(),
        (None, true) => Json(acks).into_response(),
        (Some(err), _) => {
            let written: Vec<serde_json::Value> = acks
                .iter()
                .filter_map(|a| serde_json::to_value(a).ok())
                .collect();
            error_response(&err, (!written.is_empty()).then_some(written.as_slice()))
        }
    }
}

/// Enqueues in order (one session keeps its order within a batch), then awaits every ack.
/// Returns the acks of the events written and the first error, if any.
async fn append_in_order(state: AppState, events: Vec<Event>) -> (Vec<Ack>, Option<ApiError>) {
    let mut pending = Vec::with_capacity(events.len());
    let mut first_error = None;
    for event in events {
        match publish::enqueue(&state, event, Transport::Http).await {
            Ok(ack) => pending.push(ack),
            Err(err) => {
                first_error = Some(err);
                break;
            }
        }
    }
    let mut acks = Vec::with_capacity(pending.len());
    for result in join_all(pending).await {
        match result {
            Ok(ack) => acks.push(ack),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    (acks, first_error)
}

/// Query of a history read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Exclusive cursor: events with offsets strictly greater. Absent: the window only.
    after: Option<u64>,
    /// `earliest`: from the first offset the log still holds (exclusive with `after`).
    from: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct HistoryEntry {
    offset: Offset,
    event: Box<RawValue>,
}

#[derive(Serialize)]
struct HistoryBody {
    session: SessionKey,
    /// The newest offset the session's window holds, if any.
    latest: Option<Offset>,
    /// The epoch of the session's offsets (see `docs/protocol.md`, "Cursor epochs").
    epoch: String,
    events: Vec<HistoryEntry>,
    /// The page stopped at `limit`, at the page byte bound or at the log-scan bound: more
    /// events may follow; ask again with `after` = `next_after`.
    more: bool,
    /// Where the next page starts (exclusive) when `more`; past the last event when a read
    /// from the log scanned further without finding the session's events.
    next_after: Option<Offset>,
}

/// `GET /v1/sessions/{tenant}/{agent_type}/{session_id}/events?after=N&limit=M` (or
/// `?from=earliest&limit=M`, then `after` = `next_after` to page on).
pub async fn history(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let Path((tenant, agent_type, session_id)) =
        path.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let session = SessionKey::parse_parts(&tenant, &agent_type, &session_id)?;
    principal.check_subscribe(&session)?;
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidField, e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::from(ProtocolError::invalid(
            "limit",
            format!("must be between 1 and {MAX_HISTORY_LIMIT}"),
        )));
    }
    let from = match Start::from_parts(query.after, query.from.as_deref())? {
        Start::New => ReadFrom::Window,
        Start::After(after) => ReadFrom::After(after),
        Start::Earliest => ReadFrom::Earliest,
    };
    let page = state.history().read(&session, from, limit).await?;
    let events = page
        .events
        .into_iter()
        .map(|(offset, json)| {
            RawValue::from_string(json)
                .map(|event| HistoryEntry { offset, event })
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::Internal,
                        format!("stored event at offset {offset} is not JSON: {e}"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let epoch = state
        .history()
        .epoch(&session)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(HistoryBody {
        session,
        latest: page.latest,
        epoch,
        events,
        more: page.more,
        next_after: page.next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("header"),
        );
        h
    }

    #[test]
    fn content_types_choose_the_codec() {
        assert_eq!(
            body_format(&headers("application/cloudevents+json; charset=utf-8")).expect("ok"),
            BodyFormat::Json
        );
        assert_eq!(
            body_format(&headers("application/x-protobuf")).expect("ok"),
            BodyFormat::Protobuf
        );
        assert_eq!(
            body_format(&HeaderMap::new()).expect("default"),
            BodyFormat::Json
        );
        let err = body_format(&headers("text/plain")).expect_err("refused");
        assert_eq!(err.code, ErrorCode::UnsupportedMediaType);
    }

    #[test]
    fn bodies_decode_as_one_event_or_a_batch() {
        let one = r#"{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s"}"#;
        let (events, batch) = decode(BodyFormat::Json, one.as_bytes()).expect("one");
        assert_eq!((events.len(), batch), (1, false));
        let (events, batch) =
            decode(BodyFormat::Json, format!(" [{one},{one}]").as_bytes()).expect("two");
        assert_eq!((events.len(), batch), (2, true));
        let garbage = decode(BodyFormat::Protobuf, &[0xff, 0xff]).expect_err("garbage");
        assert_eq!(garbage.code(), ErrorCode::Malformed);
        let bad_utf8 = decode(BodyFormat::Json, &[0xff]).expect_err("utf8");
        assert_eq!(bad_utf8.code(), ErrorCode::Malformed);
    }
}
