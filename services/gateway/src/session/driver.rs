//! The I/O of one WebSocket connection. Every input (a client message, the mailbox of live
//! publications, a catch-up signal, a publish's answer, a timer, shutdown) goes to the
//! session machine (`state.rs`), which decides; this loop performs what it asks for (the
//! socket, the fanout, history, publishes) and feeds the outcomes back.
//!
//! The write path batches: every ready input is handled and its frames written to the buffer,
//! then flushed once (at most [`FLUSH_EVERY`] frames between flushes). A client that cannot
//! take a batch within the idle timeout is reaped (a deadline per batch, not per frame).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use tokio::time::{Instant, MissedTickBehavior, Sleep};

use agentwire_protocol::CloseReason;

use crate::auth::{ConnectionPermit, Principal};
use crate::fanout::{Follow, Inbox, Outbox};
use crate::metrics as m;
use crate::session::coordinator::Coordinator;
use crate::session::ephemeral::Ephemerals;
use crate::session::inbound;
use crate::session::outbound::{Outbound, encode};
use crate::session::publisher::Publisher;
use crate::session::state::{Action, Feed, SessionState};
use crate::session::steps::{self, AckFuture};
use crate::session::worker::Worker;
use crate::state::AppState;

/// How long the server waits for the client's answer to its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often failed catch-ups are retried.
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);
/// Most messages written to a connection's buffer before it is flushed, however busy.
const FLUSH_EVERY: usize = 64;
/// A deadline that never comes (a token without expiry).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why the loop ended.
enum End {
    /// The client closed (or the socket broke, or was reaped): nothing more can be sent.
    Gone,
    Close(CloseReason),
}

struct Driver {
    app: AppState,
    machine: SessionState,
    sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    follows: HashMap<agentwire_protocol::SessionKey, Follow>,
    labels: HashMap<Feed, Follow>,
    acks: FuturesOrdered<AckFuture>,
    publisher: Publisher,
    ephemerals: Ephemerals,
    /// Work-queue ops and push delivery.
    worker: Worker,
    /// Registry ops, and the heartbeats of the agents registered over this connection.
    coordinator: Coordinator,
    expiry: Pin<Box<Sleep>>,
    expires: bool,
    /// Started at a batch's first unflushed frame: the batch must be written by then.
    write_deadline: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    unflushed: usize,
    /// Held for the connection's life: its place in the tenant's connection count.
    _permit: ConnectionPermit,
}

/// Serves one upgraded WebSocket until the client leaves or the gateway shuts down.
pub async fn run(socket: WebSocket, app: AppState, principal: Principal, permit: ConnectionPermit) {
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
    let config = app.config();
    let settings = config.session_settings();
    let heartbeat = Duration::from_secs(config.heartbeat_secs);
    let (outbox, mut inbox) = app
        .fanout()
        .mailbox(config.session_buffer, config.ephemeral_buffer);
    let (sink, mut stream) = socket.split();
    let worker = Worker::new(app.clone());
    let coordinator = Coordinator::new(app.clone(), worker.load());
    let mut conn = Driver {
        publisher: Publisher::new(app.clone()),
        ephemerals: Ephemerals::new(app.clone()),
        worker,
        coordinator,
        machine: SessionState::new(settings, principal),
        sink,
        outbox,
        follows: HashMap::new(),
        labels: HashMap::new(),
        acks: FuturesOrdered::new(),
        expiry: Box::pin(tokio::time::sleep(NEVER)),
        expires: false,
        write_deadline: Box::pin(tokio::time::sleep(NEVER)),
        idle_timeout: settings.idle_timeout,
        unflushed: 0,
        _permit: permit,
        app,
    };
    let end = match conn.perform().await {
        Ok(()) => conn.serve(&mut stream, &mut inbox, heartbeat).await,
        Err(end) => end,
    };
    if let End::Close(reason) = end {
        conn.close(reason, &mut stream).await;
    }
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
}

impl Driver {
    async fn serve(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
        inbox: &mut Inbox,
        heartbeat: Duration,
    ) -> End {
        let mut retries = tokio::time::interval(CATCH_UP_RETRY);
        retries.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pings = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut shutdown = std::pin::pin!(self.app.shutdown().clone().cancelled_owned());
        let (mut batch, mut extras) = (Vec::new(), Vec::new());
        loop {
            let machine = &mut self.machine;
            let step = tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        last_heard = Instant::now();
                        inbound::receive(machine, message).then_some(()).ok_or(End::Gone)
                    }
                    Some(Err(err)) => Err(End::Close(inbound::transport_error(&err))),
                    None => Err(End::Gone),
                },
                _ = inbox.durable.recv_many(&mut batch, FLUSH_EVERY) => {
                    batch.drain(..).for_each(|publication| machine.on_live(&publication));
                    Ok(())
                }
                _ = inbox.ephemeral.recv_many(&mut extras, FLUSH_EVERY) => {
                    extras.drain(..).for_each(|publication| machine.on_live(&publication));
                    Ok(())
                }
                Some(session) = inbox.catch_up.recv() => { machine.on_catch_up_signal(&session); Ok(()) }
                Some(answer) = self.acks.next() => { machine.on_ack(answer); Ok(()) }
                Some((id, err)) = self.ephemerals.failed() => { machine.on_ephemeral_failed(id, &err); Ok(()) }
                text = self.worker.next() => self.send(Outbound::Text(text)).await,
                text = self.coordinator.next() => self.send(Outbound::Text(text)).await,
                () = &mut self.expiry, if self.expires => {
                    self.expires = false;
                    machine.on_expired();
                    Ok(())
                }
                _ = pings.tick() => { machine.on_heartbeat(last_heard.elapsed()); Ok(()) }
                _ = retries.tick(), if machine.has_waiting() => { machine.on_retry_tick(); Ok(()) }
                () = &mut shutdown => Err(End::Close(CloseReason::going_away())),
                // Not ready on its first poll: chosen only when nothing else was ready, so what
                // is ready is written first and flushed once (fair: no branch starves another).
                () = tokio::task::yield_now(), if self.unflushed > 0 => self.flush().await,
            };
            if let Err(end) = step.and(self.perform().await) {
                return end;
            }
        }
    }

    /// Performs what the machine asks for, feeding outcomes back, until it asks for nothing.
    /// I/O steps are boxed: rare and large, they would sit in every connection's future.
    async fn perform(&mut self) -> Result<(), End> {
        while let Some(action) = self.machine.next_action() {
            match action {
                Action::Send(outbound) => self.send(outbound).await?,
                Action::ReadEpoch {
                    session,
                    start,
                    epoch,
                } => {
                    let current = Box::pin(steps::epoch(&self.app, &session)).await;
                    self.machine.on_epoch(session, start, epoch, current);
                }
                Action::Follow {
                    session,
                    start,
                    epoch,
                } => {
                    let opened = Box::pin(steps::open(&self.app, &session, &self.outbox)).await;
                    let latest = opened.map(|(follow, latest)| {
                        self.follows.insert(session.clone(), follow);
                        latest
                    });
                    self.machine.on_followed(session, start, epoch, latest);
                }
                Action::Unfollow(session) => drop(self.follows.remove(&session)),
                Action::CatchUp(session) => {
                    let Some(after) = self.machine.catch_up_from(&session) else {
                        continue;
                    };
                    if let Some(follow) = self.follows.get(&session) {
                        follow.lag_seen();
                    }
                    let read = Box::pin(steps::read_history(&self.app, &session, after)).await;
                    self.machine.on_history(&session, read);
                }
                Action::FollowLabel(feed) => {
                    let got = Box::pin(steps::follow_label(&self.app, &feed, &self.outbox)).await;
                    let got = got.map(|follow| drop(self.labels.insert(feed.clone(), follow)));
                    self.machine.on_label_followed(feed, got);
                }
                Action::UnfollowLabel(feed) => drop(self.labels.remove(&feed)),
                Action::Publish { event, id } => {
                    let answer =
                        Box::pin(steps::publish(&self.app, &mut self.publisher, *event, id)).await;
                    self.acks.push_back(answer);
                }
                Action::Refuse(frame) => self.acks.push_back(steps::refused(frame)),
                Action::Task(op) => self.worker.handle(*op, self.machine.principal()),
                Action::Coord(op) => self.coordinator.handle(*op, self.machine.principal()),
                Action::PublishEphemeral { event, id } => {
                    if let Err(err) = Box::pin(self.ephemerals.submit(*event, id.clone())).await {
                        self.machine.on_ephemeral_failed(id, &err);
                    }
                }
                Action::Verify(token) => {
                    let verified = self.app.auth().verify(&token);
                    self.machine.on_refresh(verified);
                }
                Action::Expire(at) => {
                    self.expires = at.is_some();
                    let left = at.map_or(NEVER, |at| {
                        at.duration_since(SystemTime::now()).unwrap_or_default()
                    });
                    self.expiry.as_mut().reset(Instant::now() + left);
                }
                Action::Close(reason) => return Err(End::Close(reason)),
                Action::Drop => return Err(End::Gone),
            }
        }
        Ok(())
    }

    /// Writes one message to the socket's buffer; flushed once nothing else is ready, or
    /// after [`FLUSH_EVERY`] messages.
    async fn send(&mut self, outbound: Outbound) -> Result<(), End> {
        let message = encode(outbound, self.machine.encoding()).map_err(End::Close)?;
        if self.unflushed == 0 {
            let at = Instant::now() + self.idle_timeout;
            self.write_deadline.as_mut().reset(at);
        }
        self.unflushed += 1;
        let fed = tokio::select! {
            biased;
            fed = self.sink.feed(message) => fed,
            () = &mut self.write_deadline => return Err(reaped()),
        };
        fed.map_err(|_| End::Gone)?;
        if self.unflushed >= FLUSH_EVERY {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out what [`Self::send`] buffered, within the batch's write deadline.
    async fn flush(&mut self) -> Result<(), End> {
        let flushed = tokio::select! {
            biased;
            flushed = self.sink.flush() => flushed,
            () = &mut self.write_deadline => return Err(reaped()),
        };
        self.unflushed = 0;
        flushed.map_err(|_| End::Gone)
    }

    /// Answers the publishes already handed to Kafka, sends the close frame and waits a
    /// little for the client's, so its unread frames do not reset the connection and lose
    /// our close frame on the client's side.
    async fn close(&mut self, reason: CloseReason, stream: &mut SplitStream<WebSocket>) {
        while let Some(answer) = self.acks.next().await {
            self.machine.on_ack(answer);
            while let Some(Action::Send(outbound)) = self.machine.next_action() {
                if self.send(outbound).await.is_err() {
                    return;
                }
            }
        }
        let frame = CloseFrame {
            code: reason.code.code(),
            reason: reason.reason.into(),
        };
        self.write_deadline
            .as_mut()
            .reset(Instant::now() + CLOSE_GRACE);
        if self.sink.feed(Message::Close(Some(frame))).await.is_err() || self.flush().await.is_err()
        {
            return;
        }
        // Read (and discard) until the client's close frame or a read error.
        let closed =
            |m: Result<Message, _>| std::future::ready(matches!(m, Ok(Message::Close(_)) | Err(_)));
        let _ = tokio::time::timeout(CLOSE_GRACE, stream.any(closed)).await;
    }
}

fn reaped() -> End {
    metrics::counter!(m::REAPED, "reason" => "send_timeout").increment(1);
    tracing::debug!("a batch was not written within the idle timeout; reaping the connection");
    End::Gone
}
