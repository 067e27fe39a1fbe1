//! The durable publish path shared by HTTP and WebSocket: claim the producer sequence (see
//! `idempotency`), stamp the event, encode it once as CloudEvents JSON, append it to Kafka
//! keyed by session, acknowledge after Kafka did.

use std::future::Future;
use std::time::{Instant, SystemTime};

use agentwire_kafka::LogRecord;
use agentwire_protocol::{Ack, ErrorCode, Event, cloudevents};
use agentwire_valkey::{Outcome, Unsettled};
use futures::future::{Either, ready};

use agentwire_runtime::trace::{self, semconv};
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::idempotency::Claim;
use crate::metrics as m;
use crate::publish_trace;
use crate::state::AppState;

/// Which API a publish came through (a metric label).
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Http,
    Ws,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
        }
    }
}

fn count(transport: Transport, outcome: &'static str) {
    metrics::counter!(m::PUBLISHES, "transport" => transport.label(), "outcome" => outcome)
        .increment(1);
}

/// Hands `event` to Kafka now (so successive calls keep their order) and returns the
/// acknowledgement to await. A retry of an accepted sequence is answered from the producer
/// state without touching Kafka.
pub async fn enqueue(
    state: &AppState,
    mut event: Event,
    transport: Transport,
) -> Result<impl Future<Output = Result<Ack, ApiError>> + Send + use<>, ApiError> {
    let started = Instant::now();
    let incoming = publish_trace::incoming(&event);
    let span = publish_trace::publish_span(&event, transport, incoming.as_ref());
    if let Err(err) = event.check_publishable() {
        count(transport, "refused");
        let err = ApiError::from(err);
        publish_trace::record_outcome(&span, Err(&err));
        return Err(err);
    }
    let ticket = match state
        .idempotency()
        .claim(&event)
        .instrument(span.clone())
        .await
    {
        Ok(Claim::Duplicate(mut ack)) => {
            count(transport, "duplicate");
            publish_trace::record_outcome(&span, Ok("duplicate"));
            ack.trace_id = publish_trace::trace_id(&span, incoming.as_ref());
            return Ok(Either::Left(ready(Ok(ack))));
        }
        Ok(Claim::Append(ticket)) => Some(ticket),
        Ok(Claim::Unsequenced) => None,
        Err(err) => {
            count(transport, "refused");
            publish_trace::record_outcome(&span, Err(&err));
            return Err(err);
        }
    };
    event.stamp(SystemTime::now());
    let id = event.id.map(|id| id.to_string()).unwrap_or_default();
    span.record("cloudevents.event_id", id.as_str());
    let producer_seq = event.producer_seq;
    let trace_id = publish_trace::trace_id(&span, incoming.as_ref());
    let send = publish_trace::send_span(&span, state.log().topic(), &event);
    send.record(semconv::MESSAGING_MESSAGE_ID, id.as_str());
    // The record's headers carry the append span's context (or, untraced, the event's own).
    let headers = trace::outgoing(&send, incoming.as_ref());
    let record = LogRecord {
        content_type: agentwire_kafka::CLOUDEVENTS_JSON,
        key: event.session.to_string(),
        value: cloudevents::to_json(&event),
        traceparent: headers.as_ref().map(|h| h.traceparent.clone()),
        tracestate: headers.and_then(|h| h.tracestate),
    };
    let state = state.clone();
    let pending = match state.log().enqueue(&record).await {
        Ok(pending) => pending,
        Err(e) => {
            count(transport, "error");
            let err = ApiError::kafka_unavailable(e);
            publish_trace::record_outcome(&send, Err(&err));
            publish_trace::record_outcome(&span, Err(&err));
            if let Some(ticket) = &ticket {
                // An enqueue error never reached a broker.
                state
                    .idempotency()
                    .settle(ticket, Err(Unsettled::NotWritten))
                    .await;
            }
            return Err(err);
        }
    };
    // The outcome is awaited and recorded by a task of its own, so a caller that goes away
    // (an aborted HTTP request, a closed WebSocket) never leaves its sequence pending.
    let settled = tokio::spawn(async move {
        let result = pending.await;
        if let Some(ticket) = &ticket {
            let outcome = match &result {
                Ok(a) => Ok(Outcome {
                    partition: a.partition,
                    offset: a.offset,
                }),
                Err(e) if e.may_have_been_written() => Err(Unsettled::Unknown),
                Err(_) => Err(Unsettled::NotWritten),
            };
            state.idempotency().settle(ticket, outcome).await;
        }
        if let Ok(a) = &result {
            send.record(
                semconv::MESSAGING_DESTINATION_PARTITION_ID,
                a.partition.to_string(),
            );
            send.record(semconv::MESSAGING_KAFKA_OFFSET, trace::int(a.offset.0));
        }
        count(transport, if result.is_ok() { "ok" } else { "error" });
        metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        let appended = result.map_err(|e| {
            if e.may_have_been_written() {
                ApiError::new(
                    ErrorCode::OutcomeUnknown,
                    format!(
                        "kafka did not confirm the append ({e}): it may or may not be in the log; \
                         retry with the same producerseq to learn which"
                    ),
                )
                .retry_after(crate::error::KAFKA_RETRY_AFTER)
            } else {
                ApiError::kafka_unavailable(e)
            }
        });
        if let Err(err) = &appended {
            publish_trace::record_outcome(&send, Err(err));
            publish_trace::record_outcome(&span, Err(err));
        } else {
            publish_trace::record_outcome(&span, Ok("ok"));
        }
        drop(send);
        let appended = appended?;
        tracing::debug!(parent: &span, partition = appended.partition, offset = %appended.offset, "appended");
        Ok(Ack {
            id,
            producer_seq,
            partition: appended.partition,
            offset: appended.offset,
            duplicate: false,
            trace_id,
        })
    });
    Ok(Either::Right(async move {
        settled.await.unwrap_or_else(|err| {
            Err(ApiError::new(
                ErrorCode::Internal,
                format!("the publish task failed: {err}"),
            ))
        })
    }))
}

/// The log record of an event the gateway itself writes (registry changes, session state,
/// task outcomes): stamped now, CloudEvents JSON, keyed by its session.
pub(crate) fn server_record(mut event: agentwire_protocol::Event) -> agentwire_kafka::LogRecord {
    event.stamp(std::time::SystemTime::now());
    agentwire_kafka::LogRecord {
        key: event.session.to_string(),
        value: agentwire_protocol::cloudevents::to_json(&event),
        content_type: agentwire_kafka::CLOUDEVENTS_JSON,
        traceparent: None,
        tracestate: None,
    }
}
