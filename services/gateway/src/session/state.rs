//! The pure session machine of one WebSocket connection: inputs (a client frame, a live
//! publication, a history page, a timer, an acknowledgement, the outcome of an I/O step it
//! asked for) go in, [`Action`]s come out. No I/O here: `driver.rs` performs the actions and
//! feeds their outcomes back; `tests.rs` drives it without sockets.
//!
//! Rules (see `docs/protocol.md`):
//! - **Seam.** A subscribe follows the session's channel first, then reads history after its
//!   cursor; the cursor ([`Cursor`]) drops whatever history and live delivery both carry. A
//!   subscribe `from: earliest` has no cursor: its history starts at the log's first offset.
//! - **Lag → catch-up.** A session whose live events did not fit the connection's mailbox (or
//!   whose feed resynced) reads history after its cursor; until that read is done its live
//!   events are held back (history has them), so the cursor never skips a gap.
//! - **Epoch.** A resume names the epoch of its cursor; a different current epoch is refused
//!   with `epoch_changed` (the offsets mean something else now).
//! - **Token expiry and refresh.** An expired token closes with 4001 unless refreshed; a
//!   refresh must keep the tenant, and ends every follow the new token no longer allows.
//! - **Ephemeral shed.** An ephemeral event of a session that is catching up is shed
//!   (counted); so is one that did not fit the mailbox (counted by the fanout).
//! - A connection follows at most `max_subscriptions` sessions and label feeds together.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentwire_protocol::{
    Ack, ClientFrame, CloseCode, CloseReason, CoordOp, ErrorCode, ErrorFrame, Event, Label, Offset,
    ProtocolError, ServerFrame, SessionKey, Start, TaskOp, Tenant,
};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::fanout::{Kind, Publication};
use crate::metrics as m;
use crate::session::cursor::{Cursor, Verdict};
use crate::session::limits::{Admission, ConnectionLimits, RateSettings};
use crate::session::outbound::{Encoding, Outbound};

/// A tenant's label feed.
pub type Feed = (Tenant, Label);

/// What the connection's settings allow.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub max_subscriptions: usize,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub rates: RateSettings,
}

/// A JSON op outside the core frames: the work queue's or coordination's.
#[derive(Debug)]
pub enum SideOp {
    Task(TaskOp),
    Coord(CoordOp),
}

impl SideOp {
    /// The request id, echoed by the answer.
    pub fn id(&self) -> Option<&str> {
        match self {
            SideOp::Task(op) => op.id(),
            SideOp::Coord(op) => op.id(),
        }
    }
}

/// What the driver is asked to do.
#[derive(Debug)]
pub enum Action {
    Send(Outbound),
    /// Read the session's current epoch, then call [`SessionState::on_epoch`].
    ReadEpoch {
        session: SessionKey,
        start: Start,
        epoch: Option<String>,
    },
    /// Follow the session's channel, read its resume point, then call
    /// [`SessionState::on_followed`] (keep the follow only if that read succeeded).
    Follow {
        session: SessionKey,
        start: Start,
        epoch: String,
    },
    /// Drop the follow of the session's channel.
    Unfollow(SessionKey),
    /// Read a page of history after [`SessionState::catch_up_from`], then call
    /// [`SessionState::on_history`].
    CatchUp(SessionKey),
    /// Follow the label feed, then call [`SessionState::on_label_followed`].
    FollowLabel(Feed),
    UnfollowLabel(Feed),
    /// Charge the tenant's quota and hand the event to the publish task; its answer comes
    /// back through [`SessionState::on_ack`], in publish order.
    Publish {
        event: Box<Event>,
        id: Option<String>,
    },
    /// A work-queue op, performed by the driver's worker side (`worker.rs`), which answers
    /// it with a `task_ack` or `error` frame of its own.
    Task(Box<TaskOp>),
    /// A coordination op (registry), performed by the driver's coordinator side
    /// (`coordinator.rs`), which answers it with a frame of its own.
    Coord(Box<CoordOp>),
    /// Answer a refused publish in publish order (behind earlier publishes' answers).
    Refuse(ErrorFrame),
    /// Publish on the session's channel only; a failure comes back through
    /// [`SessionState::on_ephemeral_failed`].
    PublishEphemeral {
        event: Box<Event>,
        id: Option<String>,
    },
    /// Verify the token, then call [`SessionState::on_refresh`].
    Verify(String),
    /// The token now expires at this time (`None`: never).
    Expire(Option<SystemTime>),
    /// Close with a code and reason (after the pending acks).
    Close(CloseReason),
    /// Drop the connection without a close frame (the client is presumed dead).
    Drop,
}

/// One page of a catch-up read, as the driver got it.
#[derive(Debug)]
pub enum HistoryRead {
    Page {
        events: Vec<(Offset, String)>,
        /// More may follow after the last event (or after `next_after`).
        more: bool,
        /// Where a read that scanned past its last event of the session goes on from.
        next_after: Option<Offset>,
    },
    /// Retention deleted the range: `error` says so; the read goes on from `first_retained`.
    Retention {
        error: ErrorFrame,
        first_retained: Offset,
    },
    /// Valkey or Kafka could not answer: retried on the next retry tick.
    Unavailable,
}

/// Where a followed session's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Live,
    /// A catch-up read was asked for; live events are held back.
    CatchingUp,
    /// A catch-up must go on at the next retry tick; live events are held back.
    Waiting,
}

#[derive(Debug)]
struct Slot {
    cursor: Cursor,
    phase: Phase,
}

/// Metric handles looked up once per connection (no recorder in unit tests: no-ops).
struct Counters {
    deliveries: metrics::Counter,
    annotations: metrics::Counter,
    ephemeral_delivered: metrics::Counter,
    shed_catching_up: metrics::Counter,
    label_filtered: metrics::Counter,
    catch_up_subscribe: metrics::Counter,
    catch_up_retries: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        Self {
            deliveries: metrics::counter!(m::DELIVERIES),
            annotations: metrics::counter!(m::ANNOTATIONS),
            ephemeral_delivered: metrics::counter!(m::EPHEMERAL_DELIVERED),
            shed_catching_up: metrics::counter!(m::EPHEMERAL_SHED, "reason" => "catching_up"),
            label_filtered: metrics::counter!(m::LABEL_FEED_FILTERED),
            catch_up_subscribe: metrics::counter!(m::CATCH_UPS, "reason" => "subscribe"),
            catch_up_retries: metrics::counter!(m::CATCH_UP_RETRIES),
        }
    }
}

/// Everything one connection decides.
pub struct SessionState {
    settings: Settings,
    principal: Principal,
    encoding: Encoding,
    slots: HashMap<SessionKey, Slot>,
    /// Sessions between their subscribe and its outcome (they count against the limit).
    opening: HashSet<SessionKey>,
    labels: HashSet<Feed>,
    limits: ConnectionLimits,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("slots", &self.slots)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl SessionState {
    pub fn new(settings: Settings, principal: Principal) -> Self {
        let mut state = Self {
            limits: ConnectionLimits::new(settings.rates),
            settings,
            encoding: Encoding::Json,
            slots: HashMap::new(),
            opening: HashSet::new(),
            labels: HashSet::new(),
            actions: VecDeque::new(),
            counters: Counters::new(),
            principal,
        };
        state.push(Action::Expire(state.principal.expires_at()));
        state
    }

    /// The next thing to do, oldest first.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// How answers are encoded: as the client's latest message was.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    fn send(&mut self, frame: ServerFrame) {
        self.push(Action::Send(Outbound::Frame(frame)));
    }

    fn error(&mut self, frame: ErrorFrame) {
        metrics::counter!(m::ERRORS, "code" => frame.code.as_str()).increment(1);
        self.send(ServerFrame::Error(frame));
    }

    fn session_error(&mut self, err: &ApiError, session: &SessionKey) {
        self.error(err.frame_for(session));
    }

    /// Whether a message of `size` bytes is worth decoding (a larger one closes the
    /// connection whatever it holds).
    pub fn admits(&self, size: usize) -> bool {
        size <= self.settings.max_frame_bytes
    }

    /// A client message of `size` bytes in `encoding`, decoded (or not).
    pub fn on_message(
        &mut self,
        encoding: Encoding,
        size: usize,
        frame: Result<ClientFrame, ProtocolError>,
    ) {
        self.encoding = encoding;
        let limit = self.settings.max_frame_bytes;
        if size > limit {
            let reason = format!("message of {size} bytes is over the {limit}-byte limit");
            return self.push(Action::Close(CloseReason::new(CloseCode::TooBig, reason)));
        }
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
        match self.limits.record(refused.map(|(wait, _)| wait)) {
            Admission::Accept => {}
            Admission::Refuse(wait) => {
                let err = ApiError::rate_limited(
                    format!("over this connection's limit on {what}; nothing was done"),
                    wait,
                );
                let id = match &frame {
                    Ok(ClientFrame::Publish { event } | ClientFrame::Ephemeral { event }) => {
                        event.id.map(|id| id.to_string())
                    }
                    _ => None,
                };
                let refusal = ErrorFrame { id, ..err.frame() };
                if matches!(frame, Ok(ClientFrame::Publish { .. })) {
                    return self.push(Action::Refuse(refusal));
                }
                return self.error(refusal);
            }
            Admission::Close => {
                metrics::counter!(m::ERRORS, "code" => "policy_violation").increment(1);
                let reason = format!("rate limit on {what} exceeded repeatedly");
                return self.push(Action::Close(CloseReason::new(
                    CloseCode::PolicyViolation,
                    reason,
                )));
            }
        }
        match frame {
            Ok(frame) => self.on_frame(frame),
            Err(err) => self.error(ErrorFrame::from(&err)),
        }
    }

    /// A work-queue or coordination op (JSON only): the same size and byte-rate limits as
    /// any message, then handed to the driver's worker side ([`Action::Task`]) or its
    /// coordinator side ([`Action::Coord`]).
    pub fn on_side_op(&mut self, size: usize, op: Result<SideOp, (Option<String>, ProtocolError)>) {
        self.encoding = Encoding::Json;
        let limit = self.settings.max_frame_bytes;
        if size > limit {
            let reason = format!("message of {size} bytes is over the {limit}-byte limit");
            return self.push(Action::Close(CloseReason::new(CloseCode::TooBig, reason)));
        }
        let refused = self.limits.take_bytes(size);
        match self.limits.record(refused) {
            Admission::Accept => {}
            Admission::Refuse(wait) => {
                let err = ApiError::rate_limited(
                    "over this connection's limit on inbound bytes; nothing was done",
                    wait,
                );
                let id = op.as_ref().ok().and_then(|op| op.id().map(str::to_owned));
                return self.error(ErrorFrame { id, ..err.frame() });
            }
            Admission::Close => {
                metrics::counter!(m::ERRORS, "code" => "policy_violation").increment(1);
                return self.push(Action::Close(CloseReason::new(
                    CloseCode::PolicyViolation,
                    "rate limit on inbound bytes exceeded repeatedly",
                )));
            }
        }
        match op {
            Ok(SideOp::Task(op)) => self.push(Action::Task(Box::new(op))),
            Ok(SideOp::Coord(op)) => self.push(Action::Coord(Box::new(op))),
            Err((id, err)) => self.error(ErrorFrame {
                id,
                ..ErrorFrame::from(&err)
            }),
        }
    }

    /// Who the connection's token says the client is.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    fn on_frame(&mut self, frame: ClientFrame) {
        match frame {
            ClientFrame::Subscribe {
                session,
                start,
                epoch,
            } => self.subscribe(session, start, epoch),
            ClientFrame::Unsubscribe { session } => {
                if self.slots.remove(&session).is_none() {
                    let err = ProtocolError::new(
                        ErrorCode::NotSubscribed,
                        format!("this connection does not follow {session}"),
                    );
                    return self.error(ErrorFrame {
                        session: Some(session),
                        ..ErrorFrame::from(&err)
                    });
                }
                self.push(Action::Unfollow(session.clone()));
                self.send(ServerFrame::Unsubscribed { session });
            }
            ClientFrame::Publish { event } => {
                let id = event.id.map(|id| id.to_string());
                match self.principal.check_publish_event(&event) {
                    Ok(()) => self.push(Action::Publish { event, id }),
                    Err(err) => self.push(Action::Refuse(ErrorFrame { id, ..err.frame() })),
                }
            }
            ClientFrame::Ephemeral { event } => {
                let id = event.id.map(|id| id.to_string());
                match self.principal.check_publish_event(&event) {
                    Ok(()) => self.push(Action::PublishEphemeral { event, id }),
                    Err(err) => self.error(ErrorFrame { id, ..err.frame() }),
                }
            }
            ClientFrame::Ping => self.send(ServerFrame::Pong),
            ClientFrame::Refresh { token } => self.push(Action::Verify(token)),
            ClientFrame::FollowLabel { tenant, label } => self.follow_label(tenant, label),
            ClientFrame::UnfollowLabel { tenant, label } => {
                let feed = (tenant, label);
                if self.labels.remove(&feed) {
                    self.push(Action::UnfollowLabel(feed.clone()));
                }
                let (tenant, label) = feed;
                self.send(ServerFrame::LabelUnsubscribed { tenant, label });
            }
        }
    }

    /// Sessions and feeds followed or being followed.
    fn follows(&self) -> usize {
        self.slots.len() + self.opening.len() + self.labels.len()
    }

    fn check_room(&self) -> Result<(), ProtocolError> {
        if self.follows() >= self.settings.max_subscriptions {
            return Err(ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "a connection may follow at most {} sessions and label feeds together",
                    self.settings.max_subscriptions
                ),
            ));
        }
        Ok(())
    }

    fn subscribe(&mut self, session: SessionKey, start: Start, epoch: Option<String>) {
        if let Err(err) = self.principal.check_subscribe(&session) {
            return self.session_error(&err, &session);
        }
        let check = if self.slots.contains_key(&session) || self.opening.contains(&session) {
            Err(ProtocolError::new(
                ErrorCode::AlreadySubscribed,
                format!("this connection already follows {session}"),
            ))
        } else {
            self.check_room()
        };
        if let Err(err) = check {
            return self.session_error(&ApiError::from(err), &session);
        }
        self.opening.insert(session.clone());
        self.push(Action::ReadEpoch {
            session,
            start,
            epoch,
        });
    }

    /// The session's current epoch (or why it could not be read).
    pub fn on_epoch(
        &mut self,
        session: SessionKey,
        start: Start,
        wanted: Option<String>,
        current: Result<String, ApiError>,
    ) {
        let current = match current {
            Ok(current) => current,
            Err(err) => {
                self.opening.remove(&session);
                return self.session_error(&err, &session);
            }
        };
        if let Some(wanted) = wanted.filter(|e| *e != current) {
            self.opening.remove(&session);
            let err = ApiError::new(
                ErrorCode::EpochChanged,
                format!(
                    "the cursor's epoch {wanted} is not the log's current epoch {current}: its offsets mean something else now; subscribe again without after (or from earliest)"
                ),
            );
            return self.session_error(&err, &session);
        }
        self.push(Action::Follow {
            session,
            start,
            epoch: current,
        });
    }

    /// The session's channel is followed and `latest` is its resume point (or the follow or
    /// the read failed: the driver dropped the follow).
    pub fn on_followed(
        &mut self,
        session: SessionKey,
        start: Start,
        epoch: String,
        latest: Result<Option<Offset>, ApiError>,
    ) {
        self.opening.remove(&session);
        let latest = match latest {
            Ok(latest) => latest,
            Err(err) => return self.session_error(&err, &session),
        };
        // "Only new events" starts after the latest event, a resume after its cursor, a
        // replay before the log's first offset (no cursor: the catch-up reads from there).
        let cursor = match start {
            Start::New => latest,
            Start::After(after) => Some(after),
            Start::Earliest => None,
        };
        self.slots.insert(
            session.clone(),
            Slot {
                cursor: Cursor::new(cursor),
                phase: Phase::Live,
            },
        );
        self.send(ServerFrame::Subscribed {
            session: session.clone(),
            offset: latest,
            epoch: Some(epoch),
        });
        if start != Start::New {
            self.counters.catch_up_subscribe.increment(1);
            self.catch_up(&session);
        }
    }

    /// Asks for a catch-up read of `session` unless one is already asked for.
    fn catch_up(&mut self, session: &SessionKey) {
        if let Some(slot) = self.slots.get_mut(session)
            && slot.phase != Phase::CatchingUp
        {
            slot.phase = Phase::CatchingUp;
            self.push(Action::CatchUp(session.clone()));
        }
    }

    /// The fanout signalled that `session`'s live events did not fit or may have been missed.
    pub fn on_catch_up_signal(&mut self, session: &SessionKey) {
        self.catch_up(session);
    }

    /// Where the next catch-up read of `session` starts (exclusive); `None` when it is no
    /// longer followed (nothing to read).
    pub fn catch_up_from(&self, session: &SessionKey) -> Option<Option<Offset>> {
        self.slots.get(session).map(|slot| slot.cursor.last())
    }

    /// One page of a catch-up read of `session`.
    pub fn on_history(&mut self, session: &SessionKey, read: HistoryRead) {
        let Some(slot) = self.slots.get_mut(session) else {
            return;
        };
        match read {
            HistoryRead::Retention {
                error,
                first_retained,
            } => {
                // Say so, then go on from what is retained.
                let _ = slot
                    .cursor
                    .admit(Offset(first_retained.0.saturating_sub(1)));
                slot.phase = Phase::Live;
                self.error(error);
                self.catch_up(session);
            }
            HistoryRead::Unavailable => {
                // Live events stay held back until the retry reads on: no gap is skipped.
                slot.phase = Phase::Waiting;
                self.counters.catch_up_retries.increment(1);
            }
            HistoryRead::Page {
                events,
                more,
                next_after,
            } => {
                let scanned_only = more && events.is_empty();
                for (offset, json) in events {
                    if slot.cursor.admit(offset) == Verdict::Deliver {
                        self.counters.deliveries.increment(1);
                        self.actions.push_back(Action::Send(Outbound::Stored {
                            session: session.clone(),
                            offset,
                            json,
                        }));
                    }
                }
                if !more {
                    slot.phase = Phase::Live;
                    return;
                }
                // A read from the log may scan past its last event of the session.
                if let Some(next_after) = next_after {
                    let _ = slot.cursor.admit(next_after);
                }
                if scanned_only {
                    // A long scan with nothing to deliver yet: answer pings and frames between
                    // its pieces; the retry tick reads on.
                    slot.phase = Phase::Waiting;
                } else {
                    slot.phase = Phase::Live;
                    self.catch_up(session);
                }
            }
        }
    }

    /// The retry tick: catch-ups that wait go on.
    pub fn on_retry_tick(&mut self) {
        let mut waiting: Vec<SessionKey> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.phase == Phase::Waiting)
            .map(|(session, _)| session.clone())
            .collect();
        waiting.sort();
        for session in waiting {
            self.catch_up(&session);
        }
    }

    /// Whether any catch-up waits for the retry tick.
    pub fn has_waiting(&self) -> bool {
        self.slots.values().any(|slot| slot.phase == Phase::Waiting)
    }

    /// A live publication from the fanout.
    pub fn on_live(&mut self, publication: &Arc<Publication>) {
        let session = &publication.session;
        let deliver = match publication.kind {
            Kind::Labelled(_) => {
                // A feed carries the whole tenant; deliver only sessions the token may follow.
                let allowed = self.principal.check_subscribe(session).is_ok();
                if !allowed {
                    self.counters.label_filtered.increment(1);
                }
                allowed.then_some(&self.counters.annotations)
            }
            kind => {
                let Some(slot) = self.slots.get_mut(session) else {
                    return; // an unsubscribe raced it
                };
                let live = slot.phase == Phase::Live;
                match kind {
                    // Held back while catching up: that catch-up reads it from history.
                    Kind::Event(offset) => (live && slot.cursor.admit(offset) == Verdict::Deliver)
                        .then_some(&self.counters.deliveries),
                    // Realtime extras follow their event: none for an event not delivered here.
                    Kind::Annotation(offset) => (live
                        && slot.cursor.last().is_some_and(|last| last >= offset))
                    .then_some(&self.counters.annotations),
                    Kind::Ephemeral if live => Some(&self.counters.ephemeral_delivered),
                    Kind::Ephemeral => {
                        self.counters.shed_catching_up.increment(1);
                        None
                    }
                    Kind::Labelled(_) => None,
                }
            }
        };
        if let Some(counter) = deliver {
            counter.increment(1);
            self.push(Action::Send(Outbound::Shared(publication.clone())));
        }
    }

    /// The answer to a publish, in publish order.
    pub fn on_ack(&mut self, answer: Result<Ack, ErrorFrame>) {
        match answer {
            Ok(ack) => self.send(ServerFrame::Ack(ack)),
            Err(frame) => self.error(frame),
        }
    }

    /// An ephemeral publish could not reach Valkey.
    pub fn on_ephemeral_failed(&mut self, id: Option<String>, err: &ApiError) {
        self.error(ErrorFrame { id, ..err.frame() });
    }

    /// The verified token of a refresh (or why it is not valid).
    pub fn on_refresh(&mut self, verified: Result<Principal, ApiError>) {
        let principal = match verified {
            Ok(principal) => principal,
            Err(err) => return self.error(err.frame()),
        };
        if principal.tenant() != self.principal.tenant() {
            let err = ApiError::new(
                ErrorCode::Forbidden,
                "a refreshed token must name the connection's tenant",
            );
            return self.error(err.frame());
        }
        let expires = principal.expires_at();
        let exp = expires
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.principal = principal;
        self.push(Action::Expire(expires));
        self.send(ServerFrame::Refreshed { exp });
        // Every follow the new token no longer allows ends, with a `forbidden` frame. Label
        // feeds need no check: the tenant is the same, and they are filtered per session.
        let mut refused: Vec<(SessionKey, ApiError)> = self
            .slots
            .keys()
            .filter_map(|session| {
                Some((
                    session.clone(),
                    self.principal.check_subscribe(session).err()?,
                ))
            })
            .collect();
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        for (session, err) in refused {
            self.slots.remove(&session);
            self.push(Action::Unfollow(session.clone()));
            metrics::counter!(m::FOLLOWS_REVOKED).increment(1);
            let err = ApiError::new(
                err.code,
                format!(
                    "{}; the refreshed token ended this subscription",
                    err.message
                ),
            );
            self.session_error(&err, &session);
        }
    }

    /// The token's expiry time passed without a refresh.
    pub fn on_expired(&mut self) {
        metrics::counter!(m::TOKEN_EXPIRED).increment(1);
        self.push(Action::Close(CloseReason::token_expired()));
    }

    /// The heartbeat tick: ping, or drop a client silent past the idle timeout.
    pub fn on_heartbeat(&mut self, silent_for: Duration) {
        if silent_for > self.settings.idle_timeout {
            metrics::counter!(m::REAPED, "reason" => "idle").increment(1);
            tracing::debug!(
                ?silent_for,
                "client silent past the idle timeout; reaping it"
            );
            return self.push(Action::Drop);
        }
        self.push(Action::Send(Outbound::Ping));
    }

    fn follow_label(&mut self, tenant: Tenant, label: Label) {
        if let Err(err) = self.principal.check_tenant(&tenant) {
            return self.error(err.frame());
        }
        let feed = (tenant, label);
        if !self.labels.contains(&feed) {
            if let Err(err) = self.check_room() {
                return self.error(ErrorFrame::from(&err));
            }
            // Counted at once: a second follow of the same feed does not ask twice.
            self.labels.insert(feed.clone());
            return self.push(Action::FollowLabel(feed));
        }
        let (tenant, label) = feed;
        self.send(ServerFrame::LabelSubscribed { tenant, label });
    }

    /// The label feed is followed (or could not be).
    pub fn on_label_followed(&mut self, feed: Feed, followed: Result<(), ApiError>) {
        if let Err(err) = followed {
            self.labels.remove(&feed);
            return self.error(err.frame());
        }
        let (tenant, label) = feed;
        self.send(ServerFrame::LabelSubscribed { tenant, label });
    }
}
