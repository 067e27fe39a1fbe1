//! The durable publish path shared by HTTP and WebSocket: stamp the event, encode it once
//! as CloudEvents JSON, append it to Kafka keyed by session, acknowledge after Kafka did.

use std::future::Future;
use std::time::{Instant, SystemTime};

use agentwire_kafka::{EventLog, LogRecord};
use agentwire_protocol::{Ack, Event, cloudevents};

use crate::error::ApiError;
use crate::metrics as m;

/// Which API a publish came through (a metric label).
#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Http,
    Ws,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
        }
    }
}

/// Hands `event` to Kafka now (so successive calls keep their order) and returns the
/// acknowledgement to await.
pub async fn enqueue(
    log: &EventLog,
    mut event: Event,
    transport: Transport,
) -> Result<impl Future<Output = Result<Ack, ApiError>> + Send + use<>, ApiError> {
    let started = Instant::now();
    event.stamp(SystemTime::now());
    let id = event.id.map(|id| id.to_string()).unwrap_or_default();
    let producer_seq = event.producer_seq;
    let record = LogRecord {
        content_type: agentwire_kafka::CLOUDEVENTS_JSON,
        key: event.session.to_string(),
        value: cloudevents::to_json(&event),
        traceparent: event.traceparent.clone(),
    };
    let span = tracing::debug_span!("publish", session = %event.session, event_id = %id);
    let pending = log.enqueue(&record).await.map_err(|e| {
        metrics::counter!(m::PUBLISHES, "transport" => transport.label(), "outcome" => "error")
            .increment(1);
        ApiError::unavailable("kafka", e)
    })?;
    Ok(async move {
        let result = pending.await;
        let _entered = span.enter();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::PUBLISHES, "transport" => transport.label(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!(m::PUBLISH_SECONDS).record(started.elapsed().as_secs_f64());
        let appended = result.map_err(|e| ApiError::unavailable("kafka", e))?;
        tracing::debug!(partition = appended.partition, offset = %appended.offset, "appended");
        Ok(Ack {
            id,
            producer_seq,
            partition: appended.partition,
            offset: appended.offset,
        })
    })
}
