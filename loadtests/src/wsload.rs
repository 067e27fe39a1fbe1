//! Lean WebSocket load clients: many subscribers and paced publishers in one process, each
//! doing the least work per frame (borrowed JSON parsing, preformatted publish frames), so the
//! load tool costs the stack as little CPU as possible on a shared machine.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwire_protocol::SessionKey;
use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::floor::now_micros;
use crate::stats;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How `events` publishes at `rate` per second are split over `publishers`: each publisher's
/// event count and its sessions (every publishers-th, so each session has one writer and
/// keeps one order), and the interval between one publisher's sends.
pub fn shares<T: Clone>(
    sessions: &[T],
    events: usize,
    publishers: usize,
    rate: u32,
) -> (Vec<(usize, Vec<T>)>, Duration) {
    let publishers = publishers.clamp(1, events.max(1));
    let interval = Duration::from_secs_f64(publishers as f64 / f64::from(rate.max(1)));
    let shares = (0..publishers)
        .map(|p| {
            let count = events / publishers + usize::from(p < events % publishers);
            let mine = sessions
                .iter()
                .skip(p % sessions.len().max(1))
                .step_by(publishers.min(sessions.len()).max(1))
                .cloned()
                .collect();
            (count, mine)
        })
        .collect();
    (shares, interval)
}

/// Opens `count` connections with `connect(i)`, 100 at a time, so the server's accept queue is
/// never flooded.
pub async fn in_waves<T, F, Fut>(count: usize, connect: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut opened = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(100) {
        opened.extend(futures::future::try_join_all(chunk.iter().map(|i| connect(*i))).await?);
    }
    Ok(opened)
}

/// Waits until `count` reaches `expected` or `drain` after now has passed, checking every
/// 20 ms (the counters are bumped by many reader tasks; a notification per delivery would
/// cost more than the check). Returns whether every delivery arrived.
pub async fn drained(count: &AtomicU64, expected: u64, drain: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + drain;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    loop {
        if count.load(Ordering::Relaxed) >= expected {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        ticks.tick().await;
    }
}

/// Durable or ephemeral publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Class {
    Durable,
    Ephemeral,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    op: &'a str,
    offset: Option<u64>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// What a reader needs of a delivered frame, found without parsing it: its op, its offset
/// (event frames) and the send stamp at the start of the event's `text`.
#[derive(Debug, PartialEq, Eq)]
pub struct Scanned<'a> {
    pub op: &'a str,
    pub offset: Option<u64>,
    pub stamp: u128,
}

/// The digits right after `key` in `text`, parsed.
fn number_after<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Scans a server frame as the gateway writes them (`{"op":"…",…}`, the event's `text`
/// starting with the stamp); `None` if it is not one.
pub fn scan(frame: &str) -> Option<Scanned<'_>> {
    let rest = frame.strip_prefix(r#"{"op":""#)?;
    let op = &rest[..rest.find('"')?];
    let offset = if op == "event" {
        number_after(rest, r#""offset":"#)
    } else {
        None
    };
    let stamp = number_after(rest, r#""text":""#).unwrap_or(0);
    Some(Scanned { op, offset, stamp })
}

/// Connects and subscribes to `session` for new events; returns once `subscribed` arrived.
pub async fn subscribe(ws_url: &str, session: &SessionKey) -> anyhow::Result<Ws> {
    let (mut ws, _) = connect_async_with_config(ws_url, None, true)
        .await
        .with_context(|| format!("connect {ws_url}"))?;
    ws.send(Message::text(format!(
        r#"{{"op":"subscribe","session":"{session}"}}"#
    )))
    .await?;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no subscribed answer within 30 s")?
            .context("closed before subscribed")??;
        if let Message::Text(text) = message {
            let frame: Frame<'_> = serde_json::from_str(&text)?;
            match frame.op {
                "subscribed" => return Ok(ws),
                "error" => anyhow::bail!("subscribe refused: {text}"),
                _ => {}
            }
        }
    }
}

/// What one subscriber saw (its latencies went to the shared per-thread histograms).
#[derive(Debug)]
pub struct Seen {
    pub session: SessionKey,
    /// Offsets of durable events, in arrival order.
    pub offsets: Vec<u64>,
    pub ephemeral: u64,
}

/// Reads `ws` until `stop`, recording each delivery's latency in `latencies`; counts
/// deliveries in `total`.
pub async fn read(
    mut ws: Ws,
    session: SessionKey,
    total: Arc<AtomicU64>,
    latencies: stats::Latencies,
    stop: CancellationToken,
) -> anyhow::Result<Seen> {
    let mut seen = Seen {
        session,
        offsets: Vec::new(),
        ephemeral: 0,
    };
    loop {
        let message = tokio::select! {
            m = ws.next() => m,
            () = stop.cancelled() => break,
        };
        let Some(message) = message else { break };
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let now = now_micros();
        let Some(frame) = scan(&text) else { continue };
        match frame.op {
            "event" => seen.offsets.push(frame.offset.unwrap_or(u64::MAX)),
            "ephemeral" => seen.ephemeral += 1,
            _ => continue,
        }
        latencies.record(Duration::from_micros(
            u64::try_from(now.saturating_sub(frame.stamp)).unwrap_or(u64::MAX),
        ));
        total.fetch_add(1, Ordering::Relaxed);
    }
    Ok(seen)
}

/// What one publisher did.
#[derive(Debug, Default)]
pub struct Published {
    /// Acknowledged durable publishes: (session, offset).
    pub acked: Vec<(SessionKey, u64)>,
    /// Ephemeral messages sent (no ack exists).
    pub sent_ephemeral: u64,
    /// Publishes refused with an error frame, by code.
    pub refused: Vec<String>,
    /// Publish→ack latency of durable publishes.
    pub ack_latency: Option<Histogram<u64>>,
}

/// One WebSocket publisher: sends `count` events round-robin over `sessions`, one every
/// `interval`, pipelined (acks are read concurrently, in publish order).
pub async fn publish(
    ws_url: &str,
    sessions: Vec<SessionKey>,
    class: Class,
    count: usize,
    interval: Duration,
    padding: Arc<str>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<Published> {
    let (ws, _) = connect_async_with_config(ws_url, None, true).await?;
    let (mut sink, mut stream) = ws.split();
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(SessionKey, u128)>();
    let expected = if class == Class::Durable { count } else { 0 };
    let reader = tokio::spawn(async move {
        let mut published = Published {
            ack_latency: Some(stats::histogram()?),
            ..Published::default()
        };
        let mut in_flight: VecDeque<(SessionKey, u128)> = VecDeque::new();
        let mut answers = 0;
        while answers < expected {
            let Some(message) = stream.next().await else {
                break;
            };
            let Message::Text(text) = message? else {
                continue;
            };
            let frame: Frame<'_> = serde_json::from_str(&text)?;
            match frame.op {
                "ack" | "error" => {}
                _ => continue,
            }
            while let Ok(sent) = sent_rx.try_recv() {
                in_flight.push_back(sent);
            }
            if in_flight.is_empty()
                && let Some(sent) = sent_rx.recv().await
            {
                in_flight.push_back(sent);
            }
            let Some((session, sent)) = in_flight.pop_front() else {
                break;
            };
            answers += 1;
            if frame.op == "ack" {
                if let Some(h) = published.ack_latency.as_mut() {
                    stats::record(
                        h,
                        Duration::from_micros(
                            u64::try_from(now_micros().saturating_sub(sent)).unwrap_or(u64::MAX),
                        ),
                    );
                }
                published
                    .acked
                    .push((session, frame.offset.unwrap_or(u64::MAX)));
            } else {
                published
                    .refused
                    .push(frame.code.unwrap_or("unknown").to_owned());
            }
        }
        anyhow::Ok(published)
    });
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let op = match class {
        Class::Durable => "publish",
        Class::Ephemeral => "ephemeral",
    };
    for i in 0..count {
        tick.tick().await;
        let session = &sessions[i % sessions.len()];
        let now = now_micros();
        let frame = format!(
            r#"{{"op":"{op}","event":{{"type":"agent.load","tenant":"{}","agenttype":"{}","sessionid":"{}","text":"{now} {padding}"}}}}"#,
            session.tenant, session.agent_type, session.session_id
        );
        if class == Class::Durable {
            sent_tx.send((session.clone(), now))?;
        }
        sink.send(Message::text(frame)).await?;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    if class == Class::Ephemeral {
        sink.close().await?;
        drop(sent_tx);
        reader.abort();
        return Ok(Published {
            sent_ephemeral: count as u64,
            ..Published::default()
        });
    }
    drop(sent_tx);
    // Every publish is answered (ack or error), in publish order; then close.
    let published = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .context("acks did not arrive within 60 s")???;
    let _ = sink.close().await;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_scanned_as_serde_would_read_them() {
        let event = r#"{"op":"event","session":"t:a:s","offset":42,"event":{"specversion":"1.0","id":"x","text":"1700000000123456 xxxx"}}"#;
        assert_eq!(
            scan(event),
            Some(Scanned {
                op: "event",
                offset: Some(42),
                stamp: 1_700_000_000_123_456
            })
        );
        let ephemeral = r#"{"op":"ephemeral","session":"t:a:s","event":{"text":"17 y"}}"#;
        assert_eq!(
            scan(ephemeral),
            Some(Scanned {
                op: "ephemeral",
                offset: None,
                stamp: 17
            })
        );
        assert_eq!(scan("not a frame"), None);
        assert_eq!(scan(r#"{"op":"pong"}"#).map(|s| s.stamp), Some(0));
    }
}
