//! The I/O of one WebSocket connection: a `select!` over client messages, the live feeds of
//! the sessions it follows, the acknowledgements of its publishes and the shutdown token.
//!
//! Delivery per session: the connection follows the session in the hub *first*, then reads
//! history after its cursor, then takes live messages; `state::Subscriptions` drops anything
//! at or below the cursor, so the seam has no gap and no duplicate. A live feed that lags
//! (the client reads slower than events arrive) or resyncs (Valkey reconnected) turns into a
//! catch-up read from history: nothing is buffered without bound and nothing is dropped.
//!
//! Publishes are handed to the connection's publish task (`publisher`) in arrival order and
//! answered in that order, refusals included; the loop never waits on a claim or an append.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{FuturesOrdered, SplitSink};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::value::RawValue;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use agentwire_protocol::frames::event_frame_json;
use agentwire_protocol::{
    Ack, ClientFrame, ErrorCode, ErrorFrame, Label, Offset, ProtocolError, ServerFrame, SessionKey,
    Tenant,
};

use crate::error::ApiError;
use crate::history::HistoryError;
use crate::hub::{Follow, Framed, Live};
use crate::label_feeds::LabelFollow;
use crate::live_feed::LiveFeed;
use crate::metrics as m;
use crate::session::limits::{Admission, ConnectionLimits};
use crate::session::publisher::{self, Publisher};
use crate::session::state::{Subscriptions, Verdict};
use crate::state::AppState;
use crate::tenant_limits;
use agentwire_valkey::{LiveAnnotation, LiveEphemeral};

use crate::auth::{ConnectionPermit, Principal};

/// WebSocket close codes the driver uses (RFC 6455 §7.4.1).
mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// The connection's token expired and was not refreshed.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// How long the server waits for the client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How often failed catch-ups are retried.
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);
/// Most messages written to a connection's buffer before it is flushed, however busy.
const FLUSH_EVERY: usize = 64;

type AckFuture = Pin<Box<dyn Future<Output = Result<Ack, ErrorFrame>> + Send>>;

/// How the client speaks; answers use the encoding of the client's latest message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Json,
    Protobuf,
}

/// Why the loop ended.
#[derive(Debug)]
enum End {
    /// The client closed (or the socket broke): nothing more can be sent.
    Gone,
    /// The server closes with a code and reason.
    Close(u16, String),
}

struct Connection {
    state: AppState,
    sink: SplitSink<WebSocket, Message>,
    encoding: Encoding,
    subs: Subscriptions,
    follows: HashMap<SessionKey, Follow>,
    live: StreamMap<SessionKey, LiveFeed<Live>>,
    label_follows: HashMap<(Tenant, Label), LabelFollow>,
    labels: StreamMap<(Tenant, Label), BroadcastStream<Arc<LiveAnnotation>>>,
    ephemeral: StreamMap<SessionKey, LiveFeed<Arc<Framed<LiveEphemeral>>>>,
    acks: FuturesOrdered<AckFuture>,
    publisher: Publisher,
    limits: ConnectionLimits,
    principal: Principal,
    /// When the token expires (the connection closes with 4001 unless refreshed).
    expires: Option<Instant>,
    /// Held for the connection's life: its place in the tenant's connection count.
    _permit: ConnectionPermit,
    /// Sessions whose catch-up failed and is retried on the next retry tick.
    pending: BTreeSet<SessionKey>,
    /// Messages written to the socket's buffer since the last flush: everything ready is
    /// written, then flushed once (one syscall for many frames under load).
    unflushed: usize,
}

/// Serves one upgraded WebSocket until the client leaves or the gateway shuts down.
pub async fn run(
    socket: WebSocket,
    state: AppState,
    principal: Principal,
    permit: ConnectionPermit,
) {
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    let (sink, mut stream) = socket.split();
    let shutdown = state.shutdown().clone();
    let max_subscriptions = state.config().max_subscriptions;
    let rate_settings = state.config().rate_settings();
    let publisher = Publisher::spawn(state.clone());
    let mut conn = Connection {
        state,
        sink,
        encoding: Encoding::Json,
        subs: Subscriptions::new(max_subscriptions),
        follows: HashMap::new(),
        live: StreamMap::new(),
        label_follows: HashMap::new(),
        labels: StreamMap::new(),
        ephemeral: StreamMap::new(),
        acks: FuturesOrdered::new(),
        publisher,
        limits: ConnectionLimits::new(rate_settings),
        expires: deadline(&principal),
        principal,
        _permit: permit,
        pending: BTreeSet::new(),
        unflushed: 0,
    };
    let mut retries = tokio::time::interval(CATCH_UP_RETRY);
    retries.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let heartbeat = Duration::from_secs(conn.state.config().heartbeat_secs);
    let mut pings = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let end = loop {
        let step = tokio::select! {
            message = stream.next() => match message {
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    conn.on_message(message).await
                }
                Some(Err(err)) => Err(transport_error(&err)),
                None => Err(End::Gone),
            },
            Some((session, item)) = conn.live.next() => conn.on_live(session, item).await,
            Some((_, item)) = conn.labels.next() => conn.on_label(item).await,
            Some((session, item)) = conn.ephemeral.next() => conn.on_ephemeral(session, item).await,
            () = until(conn.expires) => {
                metrics::counter!(m::TOKEN_EXPIRED).increment(1);
                Err(End::Close(close::TOKEN_EXPIRED, "token expired".into()))
            }
            Some(answer) = conn.acks.next() => conn.on_ack(answer).await,
            _ = pings.tick() => conn.heartbeat(last_heard.elapsed()).await,
            _ = retries.tick(), if !conn.pending.is_empty() => conn.retry_catch_ups().await,
            () = shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "the gateway is shutting down".into())),
            // Not ready on its first poll: chosen only when nothing else was ready, so what is
            // ready is written first and flushed once (fair: no branch can starve another).
            () = tokio::task::yield_now(), if conn.unflushed > 0 => conn.flush().await,
        };
        if let Err(end) = step {
            break end;
        }
    };
    if let End::Close(code, reason) = end {
        // Publishes already handed to Kafka are answered before closing.
        while let Some(answer) = conn.acks.next().await {
            if conn.on_ack(answer).await.is_err() {
                break;
            }
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let closed = conn.send_message(Message::Close(Some(frame))).await;
        if closed.is_ok() && conn.flush().await.is_ok() {
            // The closing handshake: read (and discard) until the client's close, so closing
            // the socket with its unread frames pending does not reset the connection and lose
            // our close frame on the client's side.
            let drain = async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        }
    }
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
}

/// When `principal`'s token expires, on the runtime's clock.
fn deadline(principal: &Principal) -> Option<Instant> {
    let at = principal.expires_at()?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(Instant::now() + left)
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Maps a read failure to how the connection ends.
fn transport_error(err: &axum::Error) -> End {
    let text = err.to_string();
    if text.contains("too long") || text.contains("Space limit") {
        End::Close(close::TOO_BIG, "message too big".into())
    } else {
        tracing::debug!(error = %text, "websocket read failed");
        End::Close(close::PROTOCOL_ERROR, "invalid websocket data".into())
    }
}

impl Connection {
    async fn on_message(&mut self, message: Message) -> Result<(), End> {
        let limit = self.state.config().max_frame_bytes;
        let size;
        let frame = match message {
            Message::Text(text) => {
                size = text.len();
                self.encoding = Encoding::Json;
                check_size(text.len(), limit)?;
                ClientFrame::from_json(&text)
            }
            Message::Binary(bytes) => {
                size = bytes.len();
                self.encoding = Encoding::Protobuf;
                check_size(bytes.len(), limit)?;
                ClientFrame::from_protobuf(&bytes)
            }
            Message::Close(_) => return Err(End::Gone),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        // One verdict per message: its bytes, and for a publish one publish token.
        let is_publish = matches!(
            frame,
            Ok(ClientFrame::Publish { .. } | ClientFrame::Ephemeral { .. })
        );
        let refused = self
            .limits
            .take_bytes(size)
            .map(|wait| (wait, "inbound bytes"))
            .or_else(|| {
                is_publish
                    .then(|| self.limits.take_publish())
                    .flatten()
                    .map(|wait| (wait, "publishes"))
            });
        let what = refused.map_or("", |(_, what)| what);
        if let Some(refused) = admission(self.limits.record(refused.map(|(wait, _)| wait)), what)? {
            let id = match &frame {
                Ok(ClientFrame::Publish { event } | ClientFrame::Ephemeral { event }) => {
                    event.id.map(|id| id.to_string())
                }
                _ => None,
            };
            let refusal = ErrorFrame { id, ..refused };
            if matches!(frame, Ok(ClientFrame::Publish { .. })) {
                // Behind the answers of earlier publishes, like every publish's answer.
                self.acks
                    .push_back(Box::pin(std::future::ready(Err(refusal))));
                return Ok(());
            }
            return self.send_error(refusal).await;
        }
        match frame {
            Ok(frame) => self.on_frame(frame).await,
            Err(err) => self.send_error(ErrorFrame::from(&err)).await,
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), End> {
        match frame {
            ClientFrame::Subscribe {
                session,
                after,
                epoch,
            } => {
                if let Err(err) = self.principal.check_subscribe(&session) {
                    return self.send_error(err.frame_for(&session)).await;
                }
                self.subscribe(session, after, epoch).await
            }
            ClientFrame::Unsubscribe { session } => {
                if let Err(err) = self.subs.check_followed(&session) {
                    return self.send_error(session_error(&err, &session)).await;
                }
                self.end_follow(&session);
                self.send(&ServerFrame::Unsubscribed { session }).await
            }
            ClientFrame::Publish { event } => {
                let id = event.id.map(|id| id.to_string());
                let quota_timeout =
                    Duration::from_millis(self.state.config().tenant_quota_timeout_ms);
                let answer = match self.principal.check_publish_event(&event) {
                    Err(err) => Box::pin(std::future::ready(Err(err))) as publisher::Acked,
                    Ok(()) => match tenant_limits::charge(
                        self.state.tenants(),
                        std::slice::from_ref(&*event),
                        quota_timeout,
                    )
                    .await
                    {
                        Err(err) => Box::pin(std::future::ready(Err(err))),
                        Ok(()) => self.publisher.submit(*event),
                    },
                };
                // Refusals queue behind earlier publishes: answers come in publish order.
                self.acks.push_back(Box::pin(async move {
                    answer.await.map_err(|err| ErrorFrame { id, ..err.frame() })
                }));
                Ok(())
            }
            ClientFrame::Ping => self.send(&ServerFrame::Pong).await,
            ClientFrame::Ephemeral { event } => self.publish_ephemeral(*event).await,
            ClientFrame::Refresh { token } => self.refresh(&token).await,
            ClientFrame::FollowLabel { tenant, label } => {
                if let Err(err) = self.principal.check_tenant(&tenant) {
                    return self.send_error(err.frame()).await;
                }
                self.follow_label(tenant, label).await
            }
            ClientFrame::UnfollowLabel { tenant, label } => {
                let feed = (tenant, label);
                self.subs.remove_feed(&feed);
                self.labels.remove(&feed);
                self.label_follows.remove(&feed);
                let (tenant, label) = feed;
                self.send(&ServerFrame::LabelUnsubscribed { tenant, label })
                    .await
            }
        }
    }

    /// Fans an ephemeral event out through the session's Valkey channel: no log, no offset,
    /// no ack; a failure is reported with an error frame.
    async fn publish_ephemeral(&mut self, mut event: agentwire_protocol::Event) -> Result<(), End> {
        let id = event.id.map(|id| id.to_string());
        if let Err(err) = self.principal.check_publish_event(&event) {
            return self.send_error(ErrorFrame { id, ..err.frame() }).await;
        }
        event.stamp(std::time::SystemTime::now());
        let json = agentwire_protocol::cloudevents::to_json(&event);
        match self
            .state
            .history()
            .store()
            .publish_ephemeral(&event.session, &json)
            .await
        {
            Ok(_) => {
                metrics::counter!(m::EPHEMERAL_PUBLISHED).increment(1);
                Ok(())
            }
            Err(err) => {
                let err = ApiError::unavailable("valkey", err);
                self.send_error(ErrorFrame { id, ..err.frame() }).await
            }
        }
    }

    /// Replaces the connection's token with `token`, which must name the same tenant.
    async fn refresh(&mut self, token: &str) -> Result<(), End> {
        let principal = match self.state.auth().verify(token) {
            Ok(principal) => principal,
            Err(err) => return self.send_error(err.frame()).await,
        };
        if principal.tenant() != self.principal.tenant() {
            let err = ApiError::new(
                ErrorCode::Forbidden,
                "a refreshed token must name the connection's tenant",
            );
            return self.send_error(err.frame()).await;
        }
        let exp = principal
            .expires_at()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.expires = deadline(&principal);
        self.principal = principal;
        self.send(&ServerFrame::Refreshed { exp }).await?;
        self.drop_disallowed_follows().await
    }

    /// Ends every follow the connection's (refreshed) token no longer allows, each with a
    /// `forbidden` error frame naming the session. Label feeds need no check: a refresh keeps
    /// the tenant, and their annotations are filtered per session as they are delivered.
    async fn drop_disallowed_follows(&mut self) -> Result<(), End> {
        let mut refused: Vec<(SessionKey, ApiError)> = self
            .follows
            .keys()
            .filter_map(|session| {
                let err = self.principal.check_subscribe(session).err()?;
                Some((session.clone(), err))
            })
            .collect();
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        for (session, err) in refused {
            self.end_follow(&session);
            metrics::counter!(m::FOLLOWS_REVOKED).increment(1);
            let err = ApiError::new(
                err.code,
                format!(
                    "{}; the refreshed token ended this subscription",
                    err.message
                ),
            );
            self.send_error(err.frame_for(&session)).await?;
        }
        Ok(())
    }

    /// Forgets everything the connection holds for `session`: its cursor, its feeds (dropping
    /// the hub follow) and any pending catch-up.
    fn end_follow(&mut self, session: &SessionKey) {
        let _ = self.subs.remove(session);
        self.pending.remove(session);
        self.live.remove(session);
        self.ephemeral.remove(session);
        self.follows.remove(session);
    }

    /// Sends an ephemeral message of a followed session, or sheds it.
    async fn on_ephemeral(
        &mut self,
        session: SessionKey,
        item: Result<Arc<Framed<LiveEphemeral>>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        let message = match item {
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                metrics::counter!(m::EPHEMERAL_SHED, "reason" => "lagged").increment(missed);
                return Ok(());
            }
            // A reader catching up on durable events is under pressure: shed the extras.
            Ok(_) if self.pending.contains(&session) => {
                metrics::counter!(m::EPHEMERAL_SHED, "reason" => "catching_up").increment(1);
                return Ok(());
            }
            Ok(message) => message,
        };
        let message = match self.encoding {
            Encoding::Json => Message::Text(message.frame.clone()),
            Encoding::Protobuf => {
                let frame = ServerFrame::Ephemeral {
                    session,
                    event: RawValue::from_string(message.message.event_json.clone()).map_err(
                        |_| End::Close(close::INTERNAL, "ephemeral event is not JSON".into()),
                    )?,
                };
                Message::binary(frame.to_protobuf().map_err(|_| {
                    End::Close(close::INTERNAL, "ephemeral event does not encode".into())
                })?)
            }
        };
        metrics::counter!(m::EPHEMERAL_DELIVERED).increment(1);
        self.send_message(message).await
    }

    /// Follows a tenant's label feed. Counts against the connection's subscription limit.
    async fn follow_label(&mut self, tenant: Tenant, label: Label) -> Result<(), End> {
        let feed = (tenant, label);
        if self.subs.follows_feed(&feed) {
            let (tenant, label) = feed;
            return self
                .send(&ServerFrame::LabelSubscribed { tenant, label })
                .await;
        }
        if let Err(err) = self.subs.check_follow_feed() {
            return self.send_error(ErrorFrame::from(&err)).await;
        }
        match self.state.labels().follow(&feed).await {
            Ok((follow, receiver)) => {
                self.subs.insert_feed(feed.clone());
                self.label_follows.insert(feed.clone(), follow);
                self.labels
                    .insert(feed.clone(), BroadcastStream::new(receiver));
                let (tenant, label) = feed;
                self.send(&ServerFrame::LabelSubscribed { tenant, label })
                    .await
            }
            Err(err) => {
                let err = ApiError::unavailable("the label feed", err);
                self.send_error(err.frame()).await
            }
        }
    }

    /// Forwards one label-feed annotation; a lagging reader skips what it missed (the feed
    /// is realtime only; the durable copy is in `agent.enriched`).
    async fn on_label(
        &mut self,
        item: Result<Arc<LiveAnnotation>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        match item {
            // A feed carries the whole tenant; deliver only sessions the token may follow.
            Ok(annotation) if self.principal.check_subscribe(&annotation.session).is_err() => {
                metrics::counter!(m::LABEL_FEED_FILTERED).increment(1);
                Ok(())
            }
            Ok(annotation) => self.send_annotation(&annotation).await,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                metrics::counter!(m::LABEL_FEED_SKIPPED).increment(missed);
                Ok(())
            }
        }
    }

    async fn subscribe(
        &mut self,
        session: SessionKey,
        after: Option<Offset>,
        epoch: Option<String>,
    ) -> Result<(), End> {
        if let Err(err) = self.subs.check_subscribe(&session) {
            return self.send_error(session_error(&err, &session)).await;
        }
        let current = match self.state.history().epoch(&session).await {
            Ok(current) => current,
            Err(err) => {
                return self
                    .send_error(ApiError::from(err).frame_for(&session))
                    .await;
            }
        };
        if let Some(epoch) = epoch.filter(|e| *e != current) {
            let err = ApiError::new(
                ErrorCode::EpochChanged,
                format!(
                    "the cursor's epoch {epoch} is not the log's current epoch {current}: its offsets mean something else now; subscribe again without after"
                ),
            );
            return self.send_error(err.frame_for(&session)).await;
        }
        // Follow first: whatever is published from now on reaches the receiver, so the
        // history read below and the live feed together miss nothing.
        let mut follow = match self.state.hub().follow(&session).await {
            Ok(follow) => follow,
            Err(err) => {
                let err = ApiError::unavailable("the live feed", err);
                return self.send_error(err.frame_for(&session)).await;
            }
        };
        let (Some(receiver), Some(ephemeral)) = (follow.take_receiver(), follow.take_ephemeral())
        else {
            return Err(End::Close(
                close::INTERNAL,
                "live feed receiver missing".into(),
            ));
        };
        let latest = match self.state.history().resume_point(&session).await {
            Ok(latest) => latest,
            Err(err) => {
                return self
                    .send_error(ApiError::from(err).frame_for(&session))
                    .await;
            }
        };
        // "Only new events" starts after the latest event; a resume starts after `after`.
        self.subs.insert(session.clone(), after.or(latest));
        self.follows.insert(session.clone(), follow);
        self.live.insert(session.clone(), receiver);
        self.ephemeral.insert(session.clone(), ephemeral);
        self.send(&ServerFrame::Subscribed {
            session: session.clone(),
            offset: latest,
            epoch: Some(current),
        })
        .await?;
        if after.is_some() {
            metrics::counter!(m::CATCH_UPS, "reason" => "subscribe").increment(1);
            self.catch_up(&session).await?;
        }
        Ok(())
    }

    /// Delivers what history holds after the session's cursor, page by page.
    async fn catch_up(&mut self, session: &SessionKey) -> Result<(), End> {
        let page = self.state.config().catch_up_page;
        loop {
            let Some(cursor) = self.subs.cursor(session) else {
                return Ok(());
            };
            let read = match self
                .state
                .history()
                .read(session, cursor.last(), page)
                .await
            {
                Ok(read) => read,
                Err(HistoryError::Retention {
                    after,
                    first_retained,
                }) => {
                    // Retention deleted the range: say so, then go on from what is retained.
                    let err = ApiError::from(HistoryError::Retention {
                        after,
                        first_retained,
                    });
                    self.send_error(err.frame_for(session)).await?;
                    self.subs
                        .skip_to(session, Offset(first_retained.0.saturating_sub(1)));
                    continue;
                }
                Err(err) => {
                    // Transient (Valkey or Kafka unreachable): retry shortly. Until then live
                    // events of this session are held back, so the cursor never skips the gap.
                    tracing::warn!(%session, error = %err, "catch-up read failed; retrying");
                    metrics::counter!(m::CATCH_UP_RETRIES).increment(1);
                    self.pending.insert(session.clone());
                    return Ok(());
                }
            };
            let scanned_only = read.more && read.events.is_empty();
            for (offset, json) in read.events {
                self.deliver(session, offset, &json).await?;
            }
            if !read.more {
                self.pending.remove(session);
                return Ok(());
            }
            // A read from the log may scan past its last event of the session: go on from there.
            if let Some(next_after) = read.next_after {
                self.subs.skip_to(session, next_after);
            }
            if scanned_only {
                // A long scan with nothing to deliver yet: let the connection answer pings and
                // frames between its pieces; the retry tick reads on (live events stay held back).
                self.pending.insert(session.clone());
                return Ok(());
            }
        }
    }

    /// Retries the catch-ups that failed.
    async fn retry_catch_ups(&mut self) -> Result<(), End> {
        let sessions: Vec<SessionKey> = self.pending.iter().cloned().collect();
        for session in sessions {
            self.catch_up(&session).await?;
        }
        Ok(())
    }

    async fn on_live(
        &mut self,
        session: SessionKey,
        item: Result<Live, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        match item {
            // Held back while a catch-up is pending: that catch-up reads it from history.
            Ok(Live::Event(_)) if self.pending.contains(&session) => Ok(()),
            Ok(Live::Event(live)) => {
                let message = &live.message;
                self.deliver_framed(
                    &session,
                    message.offset,
                    &message.event_json,
                    Some(&live.frame),
                )
                .await
            }
            Ok(Live::Annotation(annotation)) => self.annotate(&annotation).await,
            Ok(Live::Resync) => {
                metrics::counter!(m::CATCH_UPS, "reason" => "resync").increment(1);
                self.catch_up(&session).await
            }
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::debug!(%session, missed, "connection lagged; catching up from history");
                metrics::counter!(m::CATCH_UPS, "reason" => "lagged").increment(1);
                self.catch_up(&session).await
            }
        }
    }

    async fn deliver(
        &mut self,
        session: &SessionKey,
        offset: Offset,
        event_json: &str,
    ) -> Result<(), End> {
        self.deliver_framed(session, offset, event_json, None).await
    }

    /// Delivers an event, sending `frame` (the hub's shared JSON frame) when there is one.
    async fn deliver_framed(
        &mut self,
        session: &SessionKey,
        offset: Offset,
        event_json: &str,
        frame: Option<&Utf8Bytes>,
    ) -> Result<(), End> {
        if self.subs.admit(session, offset) != Verdict::Deliver {
            return Ok(());
        }
        let message = match self.encoding {
            Encoding::Json => Message::Text(
                frame
                    .cloned()
                    .unwrap_or_else(|| event_frame_json(session, offset, event_json).into()),
            ),
            Encoding::Protobuf => {
                let event = RawValue::from_string(event_json.to_owned())
                    .map_err(|_| End::Close(close::INTERNAL, "stored event is not JSON".into()))?;
                let frame = ServerFrame::Event {
                    session: session.clone(),
                    offset,
                    event,
                };
                let bytes = frame.to_protobuf().map_err(|_| {
                    End::Close(close::INTERNAL, "stored event does not encode".into())
                })?;
                Message::binary(bytes)
            }
        };
        metrics::counter!(m::DELIVERIES).increment(1);
        self.send_message(message).await
    }

    /// Forwards an enrichment once its event was delivered on this connection: annotations
    /// are realtime extras, so one for an event the connection has not seen (still catching
    /// up, or before its cursor) is skipped rather than sent ahead of the event.
    async fn annotate(&mut self, annotation: &LiveAnnotation) -> Result<(), End> {
        if self.pending.contains(&annotation.session)
            || !self.subs.delivered(&annotation.session, annotation.offset)
        {
            return Ok(());
        }
        self.send_annotation(annotation).await
    }

    async fn send_annotation(&mut self, annotation: &LiveAnnotation) -> Result<(), End> {
        let message = match self.encoding {
            Encoding::Json => Message::text(annotation.json.clone()),
            Encoding::Protobuf => {
                let frame = ServerFrame::Enriched {
                    session: annotation.session.clone(),
                    offset: annotation.offset,
                    annotation: RawValue::from_string(annotation.json.clone()).map_err(|_| {
                        End::Close(close::INTERNAL, "annotation is not JSON".into())
                    })?,
                };
                Message::binary(frame.to_protobuf().map_err(|_| {
                    End::Close(close::INTERNAL, "annotation does not encode".into())
                })?)
            }
        };
        metrics::counter!(m::ANNOTATIONS).increment(1);
        self.send_message(message).await
    }

    async fn on_ack(&mut self, answer: Result<Ack, ErrorFrame>) -> Result<(), End> {
        match answer {
            Ok(ack) => self.send(&ServerFrame::Ack(ack)).await,
            Err(frame) => self.send_error(frame).await,
        }
    }

    async fn send_error(&mut self, frame: ErrorFrame) -> Result<(), End> {
        metrics::counter!(m::ERRORS, "code" => frame.code.as_str()).increment(1);
        self.send(&ServerFrame::Error(frame)).await
    }

    async fn send(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let message = match self.encoding {
            Encoding::Json => Message::text(frame.to_json()),
            Encoding::Protobuf => Message::binary(
                frame
                    .to_protobuf()
                    .map_err(|_| End::Close(close::INTERNAL, "frame does not encode".into()))?,
            ),
        };
        self.send_message(message).await
    }

    /// Writes one message to the socket's buffer (flushed once nothing else is ready, or
    /// after [`FLUSH_EVERY`] messages); a client that cannot take it within the idle timeout is
    /// reaped.
    async fn send_message(&mut self, message: Message) -> Result<(), End> {
        let limit = Duration::from_secs(self.state.config().idle_timeout_secs);
        let written = tokio::time::timeout(limit, self.sink.feed(message)).await;
        self.unflushed += 1;
        Self::reap_unless_written(written)?;
        if self.unflushed >= FLUSH_EVERY {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out what [`Self::send_message`] buffered.
    async fn flush(&mut self) -> Result<(), End> {
        let limit = Duration::from_secs(self.state.config().idle_timeout_secs);
        let flushed = tokio::time::timeout(limit, self.sink.flush()).await;
        self.unflushed = 0;
        Self::reap_unless_written(flushed)
    }

    fn reap_unless_written<E>(
        written: Result<Result<(), E>, tokio::time::error::Elapsed>,
    ) -> Result<(), End> {
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                metrics::counter!(m::REAPED, "reason" => "send_timeout").increment(1);
                tracing::debug!(
                    "a send did not complete within the idle timeout; reaping the connection"
                );
                Err(End::Gone)
            }
        }
    }

    /// Pings the client, or reaps it when it has been silent for longer than the idle timeout.
    async fn heartbeat(&mut self, silent_for: Duration) -> Result<(), End> {
        if silent_for > Duration::from_secs(self.state.config().idle_timeout_secs) {
            metrics::counter!(m::REAPED, "reason" => "idle").increment(1);
            tracing::debug!(
                ?silent_for,
                "client silent past the idle timeout; reaping the connection"
            );
            return Err(End::Gone);
        }
        self.send_message(Message::Ping(Default::default())).await
    }
}

/// Turns a bucket's verdict into nothing (accepted), a `rate_limited` frame to send, or
/// the end of the connection.
fn admission(admission: Admission, what: &str) -> Result<Option<ErrorFrame>, End> {
    match admission {
        Admission::Accept => Ok(None),
        Admission::Refuse(wait) => {
            let err = ApiError::rate_limited(
                format!("over this connection's limit on {what}; nothing was done"),
                wait,
            );
            Ok(Some(err.frame()))
        }
        Admission::Close => {
            metrics::counter!(m::ERRORS, "code" => "policy_violation").increment(1);
            Err(End::Close(
                close::POLICY_VIOLATION,
                format!("rate limit on {what} exceeded repeatedly"),
            ))
        }
    }
}

fn check_size(len: usize, limit: usize) -> Result<(), End> {
    if len > limit {
        return Err(End::Close(
            close::TOO_BIG,
            format!("message of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    Ok(())
}

fn session_error(err: &ProtocolError, session: &SessionKey) -> ErrorFrame {
    ErrorFrame {
        session: Some(session.clone()),
        ..ErrorFrame::from(err)
    }
}
