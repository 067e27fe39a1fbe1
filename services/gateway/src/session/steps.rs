//! The I/O steps the session machine asks the driver for, each turning its outcome into the
//! machine's terms (an `ApiError` to report, a history page to deliver).

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::{Ack, ErrorFrame, Event, Offset, SessionKey};

use crate::error::ApiError;
use crate::fanout::{Channel, Follow, Outbox};
use crate::history::{HistoryError, ReadFrom};
use crate::metrics as m;
use crate::session::publisher::{self, Publisher};
use crate::session::state::{Feed, HistoryRead};
use crate::state::AppState;
use crate::tenant_limits;

/// A publish's answer, pending.
pub type AckFuture = std::pin::Pin<Box<dyn Future<Output = Result<Ack, ErrorFrame>> + Send>>;

pub async fn epoch(app: &AppState, session: &SessionKey) -> Result<String, ApiError> {
    Ok(app.history().epoch(session).await?)
}

/// Follows `session`'s channel, then reads its resume point (the latest offset): the follow
/// comes first, so the history read after it and the live feed together miss nothing.
pub async fn open(
    app: &AppState,
    session: &SessionKey,
    outbox: &Arc<Outbox>,
) -> Result<(Follow, Option<Offset>), ApiError> {
    let follow = follow(app, Channel::Session(session.clone()), outbox).await?;
    let latest = app.history().resume_point(session).await?;
    Ok((follow, latest))
}

/// Follows `channel`; returns once Valkey confirmed the subscription.
pub async fn follow(
    app: &AppState,
    channel: Channel,
    outbox: &Arc<Outbox>,
) -> Result<Follow, ApiError> {
    let what = match channel {
        Channel::Session(_) => "the live feed",
        Channel::Label(..) => "the label feed",
    };
    app.fanout()
        .follow(channel, outbox)
        .await
        .map_err(|err| ApiError::unavailable(what, err))
}

/// Follows a tenant's label feed.
pub async fn follow_label(
    app: &AppState,
    (tenant, label): &Feed,
    outbox: &Arc<Outbox>,
) -> Result<Follow, ApiError> {
    follow(app, Channel::Label(tenant.clone(), label.clone()), outbox).await
}

/// One page of `session`'s history after `after`; with no cursor yet, from the log's first
/// retained offset (a subscription from the start, or one that began on an empty partition:
/// every event of the session is new to it).
pub async fn read_history(
    app: &AppState,
    session: &SessionKey,
    after: Option<Offset>,
) -> HistoryRead {
    let page = app.config().catch_up_page;
    let from = after.map_or(ReadFrom::Earliest, ReadFrom::After);
    match app.history().read(session, from, page).await {
        Ok(page) => HistoryRead::Page {
            events: page.events,
            more: page.more,
            next_after: page.next_after,
        },
        Err(HistoryError::Retention {
            after,
            first_retained,
        }) => HistoryRead::Retention {
            error: ApiError::from(HistoryError::Retention {
                after,
                first_retained,
            })
            .frame_for(session),
            first_retained,
        },
        Err(err) => {
            tracing::warn!(%session, error = %err, "catch-up read failed; retrying");
            HistoryRead::Unavailable
        }
    }
}

/// Charges the tenant's quota and hands `event` to the connection's publish task; the
/// future answers once Kafka did (or the publish was refused).
pub async fn publish(
    app: &AppState,
    publisher: &mut Publisher,
    event: Event,
    id: Option<String>,
) -> AckFuture {
    let timeout = Duration::from_millis(app.config().tenant_quota_timeout_ms);
    let charged = tenant_limits::charge(app.tenants(), std::slice::from_ref(&event), timeout).await;
    let answer = match charged {
        Err(err) => {
            crate::publish_trace::refused(&event, crate::publish::Transport::Ws, &err);
            Box::pin(std::future::ready(Err(err))) as publisher::Acked
        }
        Ok(()) => publisher.submit(event),
    };
    Box::pin(async move { answer.await.map_err(|err| ErrorFrame { id, ..err.frame() }) })
}

/// The answer of a publish refused before it was handed over, queued like the others.
pub fn refused(frame: ErrorFrame) -> AckFuture {
    Box::pin(std::future::ready(Err(frame)))
}

/// Fans an ephemeral event out through the session's Valkey channel: no log, no offset, no
/// ack (the connection's `ephemeral` task calls it, pipelined).
pub async fn publish_ephemeral(app: &AppState, mut event: Event) -> Result<(), ApiError> {
    event.stamp(std::time::SystemTime::now());
    let json = agentwire_protocol::cloudevents::to_json(&event);
    app.history()
        .store()
        .publish_ephemeral(&event.session, &json)
        .await
        .map_err(|err| ApiError::unavailable("valkey", err))?;
    metrics::counter!(m::EPHEMERAL_PUBLISHED).increment(1);
    Ok(())
}
