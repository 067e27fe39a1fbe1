//! A resuming subscriber: follows a set of sessions over one WebSocket and survives
//! disconnects without loss or duplicates.
//!
//! On a lost connection it reconnects with jittered exponential backoff (`backon`) and
//! re-subscribes every session with `after` = the last offset it delivered (see
//! [`Cursors`]); since `after` is exclusive the server replays exactly the missed events.
//! Any event at or below a session's cursor is dropped and counted, as a defence.
//!
//! Errors from [`Subscriber::next`] never break the subscriber: call `next` again to go on.
//! They are server `error` frames ([`ClientError::Server`], e.g. a re-subscription refused
//! with `history_unavailable`, which is a gap the caller must know about), an event the
//! server sent that does not parse ([`ClientError::Protocol`], its offset counts as
//! delivered), or the last failure of a reconnection round that used up
//! [`SubscriberConfig::max_retries`] (the next call starts a new round).
//!
//! Authentication: with [`SubscriberConfig::token`] every connection sends the provider's
//! current token as `Authorization: Bearer` on the upgrade, and before that token expires
//! (`refresh_margin` before its `exp`, at least halfway through) the subscriber sends
//! `{"op":"refresh"}` with the provider's next token on the open connection. A refresh the
//! server refuses is reported by `next` as [`ClientError::Server`]; if the token then expires
//! the server closes the connection and the reconnection asks the provider again. Tokens are
//! never logged, and neither is the URL's query.
//!
//! A session subscribed for new events only gets its cursor from the server's `subscribed`
//! answer (the session's latest offset, or the end of its partition when it has none yet), so
//! a connection lost before the first delivery still resumes without missing anything. When
//! the answer has no cursor (the session's partition was still empty), every event of the
//! session is new to the subscription: until the first delivery it resumes `from: earliest`,
//! the first event the log still holds. [`Subscriber::follow_from`] with [`Start::Earliest`]
//! replays a session from there on purpose, and resumes the same way.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use agentwire_protocol::{
    ClientFrame, ErrorCode, ErrorFrame, Event, Offset, ServerFrame, SessionKey, Start, cloudevents,
};
use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Result;
use crate::cursors::{Admit, Cursors};
use crate::error::{Chain, ClientError};
use crate::token::{TokenProvider, expiry, refresh_after};
use crate::ws::{DEFAULT_REQUEST_TIMEOUT, WsConnection};

/// Reconnection and liveness settings.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The first reconnection delay, before jitter.
    pub min_delay: Duration,
    /// The longest delay between reconnection attempts.
    pub max_delay: Duration,
    /// Attempts per outage before `next` reports the failure; `None` retries forever.
    pub max_retries: Option<usize>,
    /// Bounds the handshake and the wait for each `subscribed`.
    pub request_timeout: Duration,
    /// Silence after which the subscriber sends a `ping`; a second silence as long means
    /// the connection is dead and it reconnects.
    pub keepalive: Duration,
    /// Where the JWT comes from; asked on every connection and every refresh. `None`: no
    /// token is sent (a gateway with authentication off).
    pub token: Option<TokenProvider>,
    /// How long before the connection's token expires it is refreshed (at the latest: never
    /// before half its remaining validity).
    pub refresh_margin: Duration,
    /// Other gateways of the same deployment (WebSocket URLs). A reconnection tries the
    /// gateway it last used first, then these and the first URL in turn, one per attempt:
    /// when a gateway dies its clients resume on the others. Cursors are Kafka offsets, valid
    /// on every gateway of the same log.
    pub fallback_urls: Vec<String>,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive: Duration::from_secs(15),
            token: None,
            refresh_margin: Duration::from_secs(30),
            fallback_urls: Vec::new(),
        }
    }
}

/// One event handed to the caller.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub session: SessionKey,
    /// The event's Kafka offset: strictly greater than the previous delivery's for `session`.
    pub offset: Offset,
    pub event: Event,
}

/// A freshly opened connection with every subscription answered.
struct Opened {
    conn: WsConnection,
    /// When the token the connection was opened with expires.
    token_expires: Option<SystemTime>,
    /// Sessions subscribed for new events only, with the latest offset the server reported
    /// (none: the session's partition was empty).
    live_from: Vec<(SessionKey, Option<Offset>)>,
    /// The epoch of each subscribed session's offsets.
    epochs: Vec<(SessionKey, Option<String>)>,
    refused: Vec<ErrorFrame>,
}

/// Follows sessions over a WebSocket, reconnecting and resuming as needed.
#[derive(Debug)]
pub struct Subscriber {
    /// The first URL, then [`SubscriberConfig::fallback_urls`].
    urls: Vec<String>,
    /// The index in `urls` of the gateway of the current (or last) connection.
    current: usize,
    /// That URL without its query (which may hold a token): what the logs show.
    log_url: String,
    config: SubscriberConfig,
    cursors: Cursors,
    conn: Option<WsConnection>,
    /// Refused re-subscriptions, reported by `next` before anything else.
    refusals: VecDeque<ErrorFrame>,
    reconnects: u64,
    ping_outstanding: bool,
    /// When to send the next `refresh` on the current connection.
    refresh_at: Option<Instant>,
}

/// What ended one wait of [`Subscriber::next`].
enum Woke {
    Frame(Result<ServerFrame>),
    RefreshDue,
}

impl Subscriber {
    /// Connects to `ws_url` and subscribes each session (`after` exclusive; `None` = only new
    /// events) with the default [`SubscriberConfig`]. Returns once every subscription is
    /// confirmed. The first connection is tried once, so a wrong URL fails fast.
    pub async fn connect(
        ws_url: impl Into<String>,
        sessions: Vec<(SessionKey, Option<Offset>)>,
    ) -> Result<Self> {
        Self::connect_with(ws_url, sessions, SubscriberConfig::default()).await
    }

    /// Like [`Subscriber::connect`] with explicit settings. Any refused subscription fails it.
    pub async fn connect_with(
        ws_url: impl Into<String>,
        sessions: Vec<(SessionKey, Option<Offset>)>,
        config: SubscriberConfig,
    ) -> Result<Self> {
        let mut cursors = Cursors::new();
        for (session, after) in sessions {
            cursors.follow(session, after);
        }
        let url = ws_url.into();
        let opened = open(
            &url,
            config.token.as_ref(),
            config.request_timeout,
            &cursors.resume_points(),
        )
        .await?;
        if let Some(refusal) = opened.refused.first() {
            return Err(refusal.clone().into());
        }
        let urls = std::iter::once(url)
            .chain(config.fallback_urls.iter().cloned())
            .collect::<Vec<_>>();
        let mut subscriber = Self {
            log_url: loggable(&urls[0]),
            urls,
            current: 0,
            config,
            cursors,
            conn: None,
            refusals: VecDeque::new(),
            reconnects: 0,
            ping_outstanding: false,
            refresh_at: None,
        };
        subscriber.install(opened);
        Ok(subscriber)
    }

    /// The next event of any followed session, reconnecting first when the connection is
    /// gone. Every `Err` leaves the subscriber usable (see the module docs). Cancel-safe:
    /// dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(refusal) = self.refusals.pop_front() {
                return Err(refusal.into());
            }
            let Some(conn) = self.conn.as_mut() else {
                self.reconnect().await?;
                continue;
            };
            let refresh_at = self.refresh_at;
            let woke = tokio::select! {
                frame = read_live(conn, self.config.keepalive, &mut self.ping_outstanding) => Woke::Frame(frame),
                () = until(refresh_at) => Woke::RefreshDue,
            };
            match woke {
                Woke::Frame(Ok(frame)) => {
                    if let Some(delivery) = self.accept(frame)? {
                        return Ok(delivery);
                    }
                }
                Woke::Frame(Err(err)) if err.is_connection_lost() => {
                    warn!(url = %self.log_url, error = %Chain(&err), "subscriber lost its connection");
                    self.conn = None;
                }
                Woke::Frame(Err(err)) => return Err(err),
                Woke::RefreshDue => self.refresh().await?,
            }
        }
    }

    /// Starts following `session` from `after` (exclusive). Following a session already
    /// followed only moves its cursor forward (see [`Cursors::follow`]). A refusal is
    /// returned and the session is not followed.
    pub async fn follow(&mut self, session: SessionKey, after: Option<Offset>) -> Result<()> {
        self.follow_from(session, after.into()).await
    }

    /// Like [`Subscriber::follow`] from `start`: [`Start::Earliest`] delivers every event of
    /// the session the log still holds, then the live ones.
    pub async fn follow_from(&mut self, session: SessionKey, start: Start) -> Result<()> {
        let already = self.cursors.is_following(&session);
        self.cursors.follow_from(session.clone(), start);
        let (Some(conn), false) = (self.conn.as_mut(), already) else {
            return Ok(());
        };
        match conn.subscribe_detailed(&session, start).await {
            Ok(subscription) => {
                if start == Start::New {
                    self.cursors.subscribed_new(&session, subscription.latest);
                }
                self.cursors.set_epoch(&session, subscription.epoch);
                Ok(())
            }
            Err(ClientError::Server(refusal)) => {
                self.cursors.unfollow(&session);
                Err(ClientError::Server(refusal))
            }
            Err(err) if err.is_connection_lost() => {
                self.conn = None;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Stops following `session`; events for it still in flight are dropped and counted.
    pub async fn unfollow(&mut self, session: &SessionKey) -> Result<()> {
        self.cursors.unfollow(session);
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match conn.unsubscribe(session).await {
            Err(err) if err.is_connection_lost() => {
                self.conn = None;
                Ok(())
            }
            other => other,
        }
    }

    /// Drops the connection without a close handshake, as a network failure would; the next
    /// [`Subscriber::next`] reconnects and resumes. For tests and chaos drills.
    pub fn drop_connection(&mut self) {
        self.conn = None;
    }

    /// Successful reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Events dropped as duplicates or for sessions no longer followed.
    pub fn dropped(&self) -> u64 {
        self.cursors.dropped()
    }

    /// The last delivered offset of each session that had a delivery.
    pub fn last_offsets(&self) -> BTreeMap<SessionKey, Offset> {
        self.cursors.last_offsets()
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Closes the connection cleanly.
    pub async fn close(self) -> Result<()> {
        match self.conn {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }

    /// Sends the provider's current token on the open connection and schedules the next
    /// refresh from its expiry. The server's answer (`refreshed`, or an error) arrives later
    /// among the frames.
    async fn refresh(&mut self) -> Result<()> {
        self.refresh_at = None;
        let (Some(provider), Some(conn)) = (self.config.token.as_ref(), self.conn.as_mut()) else {
            return Ok(());
        };
        let token = provider.token();
        match conn
            .send(&ClientFrame::Refresh {
                token: token.clone(),
            })
            .await
        {
            Ok(()) => {
                debug!(url = %self.log_url, "subscriber refreshed its token");
                self.refresh_at = self.refresh_deadline(expiry(&token));
                Ok(())
            }
            Err(err) if err.is_connection_lost() => {
                self.conn = None;
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// When to refresh a token expiring at `exp`, if ever.
    fn refresh_deadline(&self, exp: Option<SystemTime>) -> Option<Instant> {
        self.config.token.as_ref()?;
        let wait = refresh_after(exp, SystemTime::now(), self.config.refresh_margin)?;
        Some(Instant::now() + wait)
    }

    async fn reconnect(&mut self) -> Result<()> {
        let points = self.cursors.resume_points();
        let timeout = self.config.request_timeout;
        let token = self.config.token.as_ref();
        let urls = &self.urls;
        // Attempt k goes to the gateway `current + k` (wrapping): the last one first.
        let attempt = AtomicUsize::new(self.current);
        let (index, opened) = (|| {
            let index = attempt.fetch_add(1, Ordering::Relaxed) % urls.len();
            let points = &points;
            async move {
                open(&urls[index], token, timeout, points)
                    .await
                    .map(|opened| (index, opened))
            }
        })
        .retry(self.backoff())
        .sleep(tokio::time::sleep)
        .when(|err| !matches!(err, ClientError::InvalidUrl { .. }))
        .notify(|err, delay| {
            let tried = (attempt.load(Ordering::Relaxed) + urls.len() - 1) % urls.len();
            warn!(url = %loggable(&urls[tried]), error = %Chain(err), ?delay, "subscriber reconnect failed; retrying")
        })
        .await?;
        self.current = index;
        self.log_url = loggable(&self.urls[index]);
        self.reconnects += 1;
        info!(
            url = %self.log_url,
            reconnects = self.reconnects,
            sessions = points.len(),
            "subscriber reconnected"
        );
        self.refusals.extend(opened.refused.iter().cloned());
        self.install(opened);
        Ok(())
    }

    fn install(&mut self, opened: Opened) {
        for (session, latest) in opened.live_from {
            self.cursors.subscribed_new(&session, latest);
        }
        for (session, epoch) in opened.epochs {
            self.cursors.set_epoch(&session, epoch);
        }
        self.conn = Some(opened.conn);
        self.ping_outstanding = false;
        self.refresh_at = self.refresh_deadline(opened.token_expires);
    }

    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.config.min_delay)
            .with_max_delay(self.config.max_delay);
        match self.config.max_retries {
            Some(times) => builder.with_max_times(times),
            None => builder.without_max_times(),
        }
    }

    /// Turns a frame into a delivery, or `None` for frames the caller need not see.
    fn accept(&mut self, frame: ServerFrame) -> Result<Option<Delivery>> {
        match frame {
            ServerFrame::Event {
                session,
                offset,
                event,
            } => match self.cursors.admit(&session, offset) {
                Admit::Deliver => {
                    let event = cloudevents::from_json(event.get()).map_err(|err| {
                        ClientError::Protocol(format!(
                            "event at offset {offset} of {session} is invalid: {err}"
                        ))
                    })?;
                    Ok(Some(Delivery {
                        session,
                        offset,
                        event,
                    }))
                }
                verdict => {
                    debug!(%session, %offset, ?verdict, "subscriber dropped an event");
                    Ok(None)
                }
            },
            ServerFrame::Error(refusal) => Err(refusal.into()),
            ServerFrame::Refreshed { exp } => {
                debug!(exp, "the server took the refreshed token");
                Ok(None)
            }
            other => {
                debug!(frame = ?other, "subscriber ignored a frame");
                Ok(None)
            }
        }
    }
}

/// Connects (with the provider's current token) and subscribes every session, pipelining
/// the subscribes before awaiting them.
async fn open(
    url: &str,
    token: Option<&TokenProvider>,
    timeout: Duration,
    points: &[(SessionKey, Start, Option<String>)],
) -> Result<Opened> {
    let token = token.map(TokenProvider::token);
    let mut conn = WsConnection::connect_authorized(url, token.as_deref(), timeout).await?;
    for (session, start, epoch) in points {
        conn.send(&ClientFrame::Subscribe {
            session: session.clone(),
            start: *start,
            // The epoch guards a cursor; "only new events" and "from the start" have none.
            epoch: start.after().and(epoch.clone()),
        })
        .await?;
    }
    let mut opened = Opened {
        conn,
        token_expires: token.as_deref().and_then(expiry),
        live_from: Vec::new(),
        epochs: Vec::new(),
        refused: Vec::new(),
    };
    for (session, start, _) in points {
        match opened.conn.await_subscribed(session).await {
            Ok(subscription) => {
                if *start == Start::New {
                    opened
                        .live_from
                        .push((session.clone(), subscription.latest));
                }
                opened.epochs.push((session.clone(), subscription.epoch));
            }
            // A transient refusal (Valkey or Kafka unreachable for a moment) must not leave
            // the session unfollowed: fail this attempt so the reconnect backs off and retries.
            Err(ClientError::Server(refusal)) if refusal.code == ErrorCode::Unavailable => {
                return Err(ClientError::Server(refusal));
            }
            Err(ClientError::Server(refusal)) => opened.refused.push(*refusal),
            Err(err) => return Err(err),
        }
    }
    Ok(opened)
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `url` without its query, which may carry a token: what the logs show.
fn loggable(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

/// Reads the next frame, pinging after `keepalive` of silence and giving up after a second.
async fn read_live(
    conn: &mut WsConnection,
    keepalive: Duration,
    ping_outstanding: &mut bool,
) -> Result<ServerFrame> {
    loop {
        match tokio::time::timeout(keepalive, conn.next_frame()).await {
            Ok(frame) => {
                *ping_outstanding = false;
                return frame;
            }
            Err(_) if *ping_outstanding => return Err(ClientError::Timeout(keepalive)),
            Err(_) => {
                conn.send(&ClientFrame::Ping).await?;
                *ping_outstanding = true;
            }
        }
    }
}
