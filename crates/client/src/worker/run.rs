//! The worker's connection loop: connects (retrying with jittered backoff), consumes, runs
//! handlers as tokio tasks, and moves frames between the socket and the [`Ledger`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use agentwire_protocol::ClientFrame;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use tokio::task::{AbortHandle, JoinError};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::frames::{Backoff, Incoming, Settle, is_transient, parse};
use super::ledger::{Answer, Ledger};
use super::{Settings, TaskFailure, WorkerStats};
use crate::Result;
use crate::error::{Chain, ClientError};
use crate::task_types::Task;
use crate::token::{TokenProvider, expiry, refresh_after};
use crate::ws::WsConnection;

type Outcome = Result<Value, TaskFailure>;
type Joined = Pin<Box<dyn Future<Output = (String, Result<Outcome, JoinError>)> + Send>>;

/// An open connection and its liveness.
struct Live {
    ws: WsConnection,
    last_heard: Instant,
    ping_outstanding: bool,
    refresh_at: Option<Instant>,
}

/// Shutting down: when running handlers are aborted, and when the worker stops waiting.
struct Drain {
    abort_at: Instant,
    give_up_at: Instant,
    aborted: bool,
}

enum Woke {
    Shutdown,
    Text(Result<String>),
    Done(String, Result<Outcome, JoinError>),
    Timer,
}

struct Runner<H> {
    settings: Arc<Settings>,
    stats: Arc<WorkerStats>,
    handler: H,
    ledger: Ledger,
    handles: HashMap<String, AbortHandle>,
    joins: FuturesUnordered<Joined>,
    conn: Option<Live>,
    drain: Option<Drain>,
    fatal: Option<ClientError>,
}

/// See [`super::Worker::run`].
pub(crate) async fn run<H, F>(
    settings: Arc<Settings>,
    stats: Arc<WorkerStats>,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()>
where
    H: Fn(Task) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let mut shutdown = pin!(shutdown);
    let mut runner = Runner {
        ledger: Ledger::new(settings.clone(), stats.clone()),
        settings,
        stats,
        handler,
        handles: HashMap::new(),
        joins: FuturesUnordered::new(),
        conn: None,
        drain: None,
        fatal: None,
    };
    let mut backoff = Backoff::new(runner.settings.min_delay, runner.settings.max_delay);
    let (mut failures, mut connections) = (0_u32, 0_u64);
    loop {
        if runner.conn.is_none() {
            if runner.drain.is_some() {
                // Nothing can be settled without a connection; the gateway released the
                // tasks of the lost one.
                break;
            }
            let delay = if failures == 0 {
                Duration::ZERO
            } else {
                backoff.next_delay()
            };
            let attempt = async {
                tokio::time::sleep(delay).await;
                open(&runner.settings).await
            };
            let opened = tokio::select! {
                () = &mut shutdown => None,
                opened = attempt => Some(opened),
            };
            match opened {
                None => break,
                Some(Ok(live)) => {
                    connections += 1;
                    if connections > 1 {
                        runner.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    runner.conn = Some(live);
                    runner.ledger.connected();
                    runner.flush().await;
                }
                Some(Err(err @ ClientError::InvalidUrl { .. })) => return Err(err),
                Some(Err(err)) => {
                    failures += 1;
                    warn!(url = %loggable(&runner.settings.url), error = %Chain(&err), failures, "worker could not connect; retrying");
                }
            }
            continue;
        }
        if let Some(drain) = &runner.drain
            && (runner.ledger.is_empty() || Instant::now() >= drain.give_up_at)
        {
            break;
        }
        let woke = runner.wait(&mut shutdown).await;
        let now = Instant::now();
        match woke {
            Woke::Shutdown => runner.start_drain(now),
            Woke::Text(Ok(text)) => {
                if let Some(live) = runner.conn.as_mut() {
                    (live.last_heard, live.ping_outstanding) = (now, false);
                }
                match runner.on_text(&text, now) {
                    Answer::ConsumeAccepted => {
                        failures = 0;
                        backoff.reset();
                    }
                    Answer::ConsumeRefused(frame) if is_transient(frame.code) => {
                        failures += 1;
                        warn!(code = %frame.code, message = %frame.message, "consume refused for now; reconnecting");
                        runner.lose_connection();
                    }
                    Answer::ConsumeRefused(frame) => {
                        warn!(code = %frame.code, message = %frame.message, "consume refused; the worker stops");
                        runner.fatal = Some(frame.into());
                        runner.start_drain(now);
                    }
                    Answer::Nothing => {}
                }
            }
            Woke::Text(Err(err)) => {
                warn!(url = %loggable(&runner.settings.url), error = %Chain(&err), "worker lost its connection");
                runner.lose_connection();
            }
            Woke::Done(lease, outcome) => runner.on_done(lease, outcome),
            Woke::Timer => runner.on_timer(now),
        }
        runner.flush().await;
    }
    runner.finish().await;
    runner.fatal.map_or(Ok(()), Err)
}

impl<H, F> Runner<H>
where
    H: Fn(Task) -> F + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    /// Waits for the next thing to do on a live connection.
    async fn wait(&mut self, shutdown: &mut Pin<&mut (impl Future<Output = ()> + Send)>) -> Woke {
        let deadline = self.next_deadline();
        let draining = self.drain.is_some();
        let Some(live) = self.conn.as_mut() else {
            return Woke::Timer;
        };
        tokio::select! {
            () = shutdown.as_mut(), if !draining => Woke::Shutdown,
            text = live.ws.next_text() => Woke::Text(text),
            Some((lease, outcome)) = self.joins.next() => Woke::Done(lease, outcome),
            () = until(deadline) => Woke::Timer,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let live = self.conn.as_ref();
        [
            self.ledger.next_deadline(),
            live.map(|l| l.last_heard + self.settings.keepalive),
            live.and_then(|l| l.refresh_at),
            self.drain
                .as_ref()
                .map(|d| if d.aborted { d.give_up_at } else { d.abort_at }),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_text(&mut self, text: &str, now: Instant) -> Answer {
        match parse(text) {
            Ok(Incoming::Task(task)) => {
                if let Some(task) = self.ledger.accept(*task, now) {
                    self.spawn(task);
                }
            }
            Ok(Incoming::BadTask {
                task_id,
                lease_id,
                reason,
            }) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(task = ?task_id, %reason, "a pushed task is unreadable; releasing it");
                if let (Some(task_id), Some(lease_id)) = (task_id, lease_id) {
                    self.ledger.release_stray(&task_id, &lease_id);
                }
            }
            Ok(Incoming::Ack { id, fields }) => return self.ledger.on_ack(id.as_deref(), &fields),
            Ok(Incoming::Error(frame)) => return self.ledger.on_error(frame, now),
            Ok(Incoming::Pong | Incoming::Refreshed) => {}
            Ok(Incoming::Other(op)) => debug!(%op, "worker ignored a frame"),
            Err(err) => warn!(error = %Chain(&err), "worker read an unreadable frame"),
        }
        Answer::Nothing
    }

    fn spawn(&mut self, task: Task) {
        let lease = task.lease_id.clone().unwrap_or_default();
        let join = tokio::spawn((self.handler)(task));
        self.handles.insert(lease.clone(), join.abort_handle());
        self.joins
            .push(Box::pin(async move { (lease, join.await) }));
    }

    fn on_done(&mut self, lease: String, outcome: Result<Outcome, JoinError>) {
        self.handles.remove(&lease);
        let how = match outcome {
            Ok(Ok(result)) => Settle::Complete(Some(result)),
            Ok(Err(failure)) => Settle::Fail {
                error: failure.error,
                retryable: failure.retryable,
            },
            Err(err) if err.is_cancelled() => Settle::Release,
            Err(_) => Settle::Fail {
                error: "the handler panicked".to_owned(),
                retryable: true,
            },
        };
        if let Some(next) = self.ledger.finished(&lease, how) {
            self.spawn(next);
        }
    }

    fn on_timer(&mut self, now: Instant) {
        self.ledger.due(now);
        if let Some(drain) = self.drain.as_mut()
            && !drain.aborted
            && now >= drain.abort_at
        {
            drain.aborted = true;
            if !self.handles.is_empty() {
                info!(
                    running = self.handles.len(),
                    "shutdown grace over; aborting handlers and releasing their tasks"
                );
            }
            self.handles.values().for_each(AbortHandle::abort);
        }
        let (keepalive, token) = (self.settings.keepalive, self.settings.token.clone());
        let margin = self.settings.refresh_margin;
        let Some(live) = self.conn.as_mut() else {
            return;
        };
        if now >= live.last_heard + keepalive {
            if live.ping_outstanding {
                warn!(
                    ?keepalive,
                    "worker heard nothing after a ping; reconnecting"
                );
                self.lose_connection();
                return;
            }
            (live.ping_outstanding, live.last_heard) = (true, now);
            self.ledger.outbox.push(ClientFrame::Ping.to_json());
        }
        if let (Some(at), Some(provider)) = (live.refresh_at, token)
            && now >= at
        {
            let token = provider.token();
            live.refresh_at = refresh_deadline(Some(&provider), expiry(&token), margin);
            self.ledger
                .outbox
                .push(ClientFrame::Refresh { token }.to_json());
        }
    }

    fn start_drain(&mut self, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        let abort_at = now + self.settings.shutdown_grace;
        self.drain = Some(Drain {
            abort_at,
            give_up_at: abort_at + self.settings.request_timeout,
            aborted: false,
        });
        self.ledger.drain();
    }

    fn lose_connection(&mut self) {
        self.conn = None;
        self.ledger.connection_lost();
    }

    /// Sends the ledger's outbox; a failed send loses the connection.
    async fn flush(&mut self) {
        let outbox = std::mem::take(&mut self.ledger.outbox);
        let Some(live) = self.conn.as_mut() else {
            return;
        };
        for frame in outbox {
            if let Err(err) = live.ws.send_text(frame).await {
                warn!(error = %Chain(&err), "worker lost its connection while sending");
                self.lose_connection();
                return;
            }
        }
    }

    /// Aborts the handlers still running and closes the connection.
    async fn finish(&mut self) {
        self.handles.values().for_each(AbortHandle::abort);
        if let Some(live) = self.conn.take()
            && let Err(err) = live.ws.close().await
        {
            debug!(error = %Chain(&err), "the worker's connection did not close cleanly");
        }
        info!(
            completed = self.stats.completed(),
            failed = self.stats.failed(),
            stale = self.stats.stale(),
            "worker stopped"
        );
    }
}

/// Connects with the provider's current token.
async fn open(settings: &Settings) -> Result<Live> {
    let token = settings.token.as_ref().map(TokenProvider::token);
    let ws =
        WsConnection::connect_authorized(&settings.url, token.as_deref(), settings.request_timeout)
            .await?;
    info!(url = %loggable(&settings.url), tenant = %settings.tenant, "worker connected");
    Ok(Live {
        ws,
        last_heard: Instant::now(),
        ping_outstanding: false,
        refresh_at: refresh_deadline(
            settings.token.as_ref(),
            token.as_deref().and_then(expiry),
            settings.refresh_margin,
        ),
    })
}

fn refresh_deadline(
    provider: Option<&TokenProvider>,
    exp: Option<SystemTime>,
    margin: Duration,
) -> Option<Instant> {
    provider?;
    Some(Instant::now() + refresh_after(exp, SystemTime::now(), margin)?)
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
