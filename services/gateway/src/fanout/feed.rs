//! The one feed task of a gateway process: applies subscription commands in order, checks and
//! dispatches publications in order, and reconnects (with backoff) whenever the connection is
//! lost, resubscribing every followed channel and resyncing the followers of every session.
//!
//! A live event is never trusted on its own word: anyone who can `PUBLISH` on a session
//! channel could announce `<huge offset>\n<json>` and push every follower's cursor past all
//! real events (cursor poisoning). Before delivery each announced event must name the
//! channel's session and be found, identical, at its offset in the session's window (one
//! script call per event per process, pipelined: checks run concurrently, deliveries keep the
//! order of arrival). One that contradicts the window is dropped, counted
//! (`agentwire_gateway_live_forged_total`) and logged as an error; one the window cannot
//! confirm (expired, trimmed, Valkey unreachable) is dropped too, and its followers re-read
//! history after their cursors, which only the relay writes.

use std::time::Duration;

use agentwire_protocol::{Offset, SessionKey};
use agentwire_valkey::{
    Announcement, LiveCheck, LiveStream, LiveSubscriptions, connect_live, keys,
    parse_label_message, parse_message,
};
use backon::{ExponentialBuilder, Retryable as _};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Channel, Command, Fanout, Publication};
use crate::metrics as m;

/// The first pause before the feed tries to reconnect (it doubles up to 2 s).
const RETRY_FIRST_DELAY: Duration = Duration::from_millis(50);
/// Publications being checked against their windows at once; when full, the feed stops
/// reading from Valkey until the oldest check is done (backpressure, never a drop).
const CHECKS_IN_FLIGHT: usize = 256;

/// A publication after its check.
enum Checked {
    Deliver(String, Publication),
    /// Nothing to do: nobody here follows it, or it is malformed (logged).
    Skip,
    /// The window contradicts it.
    Forged {
        session: SessionKey,
        offset: Offset,
        reason: &'static str,
    },
    /// The window could not confirm it.
    Unverified {
        session: SessionKey,
        offset: Offset,
        why: String,
    },
}

pub(super) async fn run(
    fanout: Fanout,
    url: String,
    first: (LiveSubscriptions, LiveStream),
    mut queue: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let mut connection = Some(first);
    loop {
        let (mut subs, mut stream) = match connection.take() {
            Some(c) => c,
            None => {
                fanout.registry().unconfirm_all();
                let attempt = || connect_live(&url);
                let retry = attempt
                    .retry(ExponentialBuilder::default().with_min_delay(RETRY_FIRST_DELAY).with_max_delay(Duration::from_secs(2)).without_max_times().with_jitter())
                    .notify(|err, after| tracing::warn!(error = %err, retry_in = ?after, "live feed reconnect failed"))
                    .when(|_| !shutdown.is_cancelled());
                let connected = tokio::select! {
                    c = retry => c,
                    () = shutdown.cancelled() => return,
                };
                match connected {
                    Ok(c) => {
                        metrics::counter!(m::FEED_RECONNECTS).increment(1);
                        tracing::info!("live feed reconnected; resubscribing followed channels");
                        c
                    }
                    Err(_) => return,
                }
            }
        };
        // Checks started on a lost connection deliver nothing: the resync covers them.
        let mut checks: FuturesOrdered<BoxFuture<'static, Checked>> = FuturesOrdered::new();
        if !resubscribe(&fanout, &mut subs).await {
            continue;
        }
        let asked = fanout.registry().resync_all();
        metrics::counter!(m::CATCH_UPS, "reason" => "resync").increment(asked);
        loop {
            tokio::select! {
                command = queue.recv() => {
                    let Some(command) = command else { return };
                    if !apply(&fanout, &mut subs, command).await {
                        break;
                    }
                }
                message = stream.next_raw(), if checks.len() < CHECKS_IN_FLIGHT => match message {
                    Some((channel, payload)) => checks.push_back(check(&fanout, channel, &payload)),
                    None => {
                        tracing::warn!("live feed connection lost");
                        break;
                    }
                },
                Some(checked) = checks.next() => settle(&fanout, checked),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Subscribes every followed channel on a fresh connection. `false` if the connection failed.
async fn resubscribe(fanout: &Fanout, subs: &mut LiveSubscriptions) -> bool {
    let channels = fanout.registry().channels();
    for (name, channel) in channels {
        if let Err(err) = subscribe(subs, &name, &channel).await {
            tracing::warn!(error = %err, "live feed resubscribe failed");
            return false;
        }
        fanout.registry().confirm(&name);
    }
    true
}

/// Session channels use the sharded form on a cluster; label feeds are classic channels.
async fn subscribe(
    subs: &mut LiveSubscriptions,
    name: &str,
    channel: &Channel,
) -> Result<(), agentwire_valkey::ValkeyError> {
    match channel {
        Channel::Session(session) => subs.subscribe(session).await,
        Channel::Label(..) => subs.subscribe_channel(name).await,
    }
}

/// Applies one command. `false` if the connection failed (the caller reconnects, and the
/// reconnect resubscribes whatever is followed then, so the command is not lost).
async fn apply(fanout: &Fanout, subs: &mut LiveSubscriptions, command: Command) -> bool {
    let result = match &command {
        Command::Subscribe(name, channel) => subscribe(subs, name, channel)
            .await
            .map(|()| fanout.registry().confirm(name)),
        // Followed again since the unfollow was queued: keep the subscription, or the new
        // follower would miss what is published between this UNSUBSCRIBE and its SUBSCRIBE.
        Command::Unsubscribe(name, _) if fanout.registry().is_followed(name) => Ok(()),
        Command::Unsubscribe(_, Channel::Session(session)) => subs.unsubscribe(session).await,
        Command::Unsubscribe(name, Channel::Label(..)) => subs.unsubscribe_channel(name).await,
    };
    match result {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "live feed command failed; reconnecting");
            false
        }
    }
}

/// Starts the check of one publication; what it resolves to is delivered in order by
/// [`settle`]. Publications of channels nobody here follows are not checked (nor sent).
fn check(fanout: &Fanout, channel: String, payload: &[u8]) -> BoxFuture<'static, Checked> {
    let ready = |checked| Box::pin(std::future::ready(checked)) as BoxFuture<'static, Checked>;
    if !fanout.registry().is_followed(&channel) {
        return ready(Checked::Skip);
    }
    if keys::session_of_channel(&channel).is_none() {
        return ready(match parse_label_message(payload) {
            Some(annotation) => Checked::Deliver(channel, Publication::labelled(annotation)),
            None => {
                tracing::warn!(%channel, "ignoring a malformed label message");
                Checked::Skip
            }
        });
    }
    let message = match parse_message(&channel, payload) {
        Some(Announcement::Event(message)) => message,
        Some(Announcement::Annotation(a)) => {
            return ready(Checked::Deliver(channel, Publication::annotation(a)));
        }
        Some(Announcement::Ephemeral(e)) => {
            return ready(Checked::Deliver(channel, Publication::ephemeral(e)));
        }
        None => {
            tracing::warn!(%channel, "ignoring a malformed live message");
            return ready(Checked::Skip);
        }
    };
    if !names_session(&message.event_json, &message.session) {
        return ready(Checked::Forged {
            session: message.session,
            offset: message.offset,
            reason: "wrong_session",
        });
    }
    let windows = fanout.shared.windows.clone();
    Box::pin(async move {
        let (session, offset) = (message.session.clone(), message.offset);
        match windows
            .check_live(&session, offset, &message.event_json)
            .await
        {
            Ok(LiveCheck::Genuine) => Checked::Deliver(channel, Publication::event(message)),
            Ok(LiveCheck::Forged(reason)) => Checked::Forged {
                session,
                offset,
                reason,
            },
            Ok(LiveCheck::Unverifiable) => Checked::Unverified {
                session,
                offset,
                why: "the window does not hold that offset (expired or trimmed)".into(),
            },
            Err(err) => Checked::Unverified {
                session,
                offset,
                why: format!("the window could not be read: {err}"),
            },
        }
    })
}

/// Delivers a checked publication, or drops a rejected one and resyncs its followers.
fn settle(fanout: &Fanout, checked: Checked) {
    match checked {
        Checked::Deliver(channel, publication) => fanout.publish(&channel, publication),
        Checked::Skip => {}
        Checked::Forged {
            session,
            offset,
            reason,
        } => {
            metrics::counter!(m::LIVE_FORGED, "reason" => reason).increment(1);
            tracing::error!(
                %session,
                %offset,
                reason,
                "DROPPED A FORGED LIVE PUBLICATION: it contradicts the session's window; someone other than the relay can PUBLISH on session channels (check Valkey's password and ACLs)"
            );
            let asked = fanout.registry().resync(&session);
            metrics::counter!(m::CATCH_UPS, "reason" => "resync").increment(asked);
        }
        Checked::Unverified {
            session,
            offset,
            why,
        } => {
            metrics::counter!(m::LIVE_FORGED, "reason" => "unverifiable").increment(1);
            tracing::warn!(%session, %offset, why = %why, "live event not confirmed by the window; its followers re-read history");
            let asked = fanout.registry().resync(&session);
            metrics::counter!(m::CATCH_UPS, "reason" => "resync").increment(asked);
        }
    }
}

/// Whether `event_json` is a JSON object naming `session` (`tenant`, `agenttype`,
/// `sessionid`), as every event the relay announces on that session's channel does.
fn names_session(event_json: &str, session: &SessionKey) -> bool {
    #[derive(serde::Deserialize)]
    struct Names<'a> {
        #[serde(borrow)]
        tenant: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        agenttype: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        sessionid: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Names<'_>>(event_json).is_ok_and(|n| {
        n.tenant == session.tenant.as_str()
            && n.agenttype == session.agent_type.as_str()
            && n.sessionid == session.session_id.as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_must_name_their_channels_session() {
        let session: SessionKey = "acme:planner:s1".parse().expect("key");
        let event = r#"{"type":"agent.message","tenant":"acme","agenttype":"planner","sessionid":"s1","text":"hi"}"#;
        assert!(names_session(event, &session));
        let other =
            r#"{"type":"agent.message","tenant":"acme","agenttype":"planner","sessionid":"s2"}"#;
        assert!(!names_session(other, &session));
        let escaped = r#"{"tenant":"acm\u0065","agenttype":"planner","sessionid":"s1"}"#;
        assert!(names_session(escaped, &session), "escapes are decoded");
        assert!(!names_session("{not json", &session));
        assert!(!names_session(r#"{"tenant":"acme"}"#, &session));
    }
}
