//! Valkey Cluster faults under load: a primary SIGKILLed (its replica is promoted) and a slot
//! with live sessions migrated to another primary. The relay and the gateway follow the new
//! topology on their own, and one subscriber of every session (those in the affected slots
//! included) receives each acknowledged event exactly once, in order. Each test prints how
//! long the affected sessions went without deliveries.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentwire_client::WsConnection;
use agentwire_protocol::{Offset, ServerFrame, SessionKey};
use agentwire_test_support::{TestEnv, ValkeyCluster, wait_until};
use common::{LIMIT, Stack, event};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Events published before the fault, and in all.
const BEFORE: usize = 150;
const TOTAL: usize = 450;

/// Primary 0 of [`ValkeyCluster`] serves slots 0..=5460.
fn on_primary_0(session: &SessionKey) -> bool {
    slot_of(session) <= 5_460
}

fn slot_of(session: &SessionKey) -> u16 {
    agentwire_valkey::slot(&agentwire_valkey::keys::history(session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_loses_and_duplicates_nothing() {
    let mut cluster = ValkeyCluster::start().await;
    let stack = stack_on(&cluster).await;
    // Three sessions on the primary that dies, three on the others.
    let mut sessions = pick(&stack, 3, on_primary_0);
    sessions.extend(pick(&stack, 3, |s| !on_primary_0(s)));
    let mut load = Load::start(&stack, sessions.clone()).await;

    load.wait_sent(BEFORE).await;
    cluster.kill(0);
    let fault = Instant::now();

    // The replica of primary 0 (node 3) takes over.
    let promoted = cluster.ports()[3];
    wait_until(LIMIT, "the replica to be promoted", || async move {
        let client = redis::Client::open(format!("redis://127.0.0.1:{promoted}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.contains("role:master").then_some(())
    })
    .await;
    println!(
        "the replica was promoted {:.2} s after the kill",
        fault.elapsed().as_secs_f64()
    );
    let delivered = load.finish().await;
    delivered.report("primary 0 SIGKILLed", fault, on_primary_0);
    print_feed_reconnects(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_under_load_loses_and_duplicates_nothing() {
    let cluster = ValkeyCluster::start().await;
    let stack = stack_on(&cluster).await;
    let mut sessions = pick(&stack, 1, on_primary_0);
    let moved = slot_of(&sessions[0]);
    sessions.extend(pick(&stack, 4, |s| slot_of(s) != moved));
    let in_moved_slot = |s: &SessionKey| slot_of(s) == moved;
    let mut load = Load::start(&stack, sessions).await;

    load.wait_sent(BEFORE).await;
    let fault = Instant::now();
    cluster.migrate_slot(moved, 1).await;
    println!(
        "slot {moved} moved from primary 0 to primary 1 in {:.2} s",
        fault.elapsed().as_secs_f64()
    );
    let delivered = load.finish().await;
    delivered.report(&format!("slot {moved} migrated"), fault, in_moved_slot);
    print_feed_reconnects(&stack).await;
}

/// How often the gateway's live feed reconnected (it does when Valkey drops a node connection
/// or ends a subscription it still wants).
async fn print_feed_reconnects(stack: &Stack) {
    let reconnects = stack
        .metric("agentwire_gateway_feed_reconnects_total")
        .await
        .unwrap_or(0.0);
    println!("live feed reconnects: {reconnects}");
}

async fn stack_on(cluster: &ValkeyCluster) -> Stack {
    let env = TestEnv {
        valkey_url: cluster.url(),
        ..TestEnv::from_env()
    };
    Stack::start_on(env, 2).await
}

/// `count` sessions of the stack for which `wanted` holds.
fn pick(stack: &Stack, count: usize, wanted: impl Fn(&SessionKey) -> bool) -> Vec<SessionKey> {
    (0..)
        .map(|i| stack.session(&format!("s{i}")))
        .filter(|s| wanted(s))
        .take(count)
        .collect()
}

/// One event every 5 ms, round robin over the sessions, and one connection following them
/// all, read throughout by its own task.
struct Load {
    sent: watch::Receiver<usize>,
    want: watch::Sender<Option<usize>>,
    publisher: JoinHandle<Vec<(SessionKey, Offset, Instant)>>,
    reader: JoinHandle<Vec<(SessionKey, Offset, Instant)>>,
    sessions: Vec<SessionKey>,
}

impl Load {
    async fn start(stack: &Stack, sessions: Vec<SessionKey>) -> Load {
        let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
        for session in &sessions {
            ws.subscribe(session, None).await.expect("subscribe");
        }
        let (want, want_rx) = watch::channel(None);
        let reader = tokio::spawn(read_events(ws, want_rx));
        let (sent_tx, sent) = watch::channel(0);
        let http = stack.http();
        let targets = sessions.clone();
        let publisher = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut acks = Vec::with_capacity(TOTAL);
            for i in 0..TOTAL {
                pace.tick().await;
                let session = &targets[i % targets.len()];
                let ack = http
                    .publish(&event(session, "p", i as u64 + 1, "load"))
                    .await
                    .expect("publish (Kafka is not affected by a Valkey fault)");
                acks.push((session.clone(), ack.offset, Instant::now()));
                sent_tx.send_replace(acks.len());
            }
            acks
        });
        Load {
            sent,
            want,
            publisher,
            reader,
            sessions,
        }
    }

    async fn wait_sent(&mut self, count: usize) {
        tokio::time::timeout(LIMIT, self.sent.wait_for(|n| *n >= count))
            .await
            .expect("events acknowledged in time")
            .expect("the publisher is alive");
    }

    /// Waits for the publisher, then for every acknowledged event to be delivered.
    async fn finish(self) -> Delivered {
        let acks = self.publisher.await.expect("publisher");
        self.want.send_replace(Some(acks.len()));
        let events = self.reader.await.expect("reader");
        Delivered {
            acks,
            events,
            sessions: self.sessions,
        }
    }
}

struct Delivered {
    acks: Vec<(SessionKey, Offset, Instant)>,
    events: Vec<(SessionKey, Offset, Instant)>,
    sessions: Vec<SessionKey>,
}

impl Delivered {
    /// Asserts exactly-once, in-order delivery per session, and prints how long after the
    /// fault the first event of an affected session acknowledged after it was delivered.
    fn report(&self, fault: &str, at: Instant, affected: impl Fn(&SessionKey) -> bool) {
        let expected = common::offsets_by_session(self.acks.iter().map(|(s, o, _)| (s, *o)));
        let mut by_session: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
        for (session, offset, _) in &self.events {
            by_session.entry(session.clone()).or_default().push(*offset);
        }
        for session in &self.sessions {
            assert_eq!(
                by_session.get(session),
                expected.get(session),
                "deliveries of {session} (affected: {})",
                affected(session)
            );
        }
        let healed = self
            .events
            .iter()
            .filter(|(session, offset, _)| {
                affected(session)
                    && self
                        .acks
                        .iter()
                        .any(|(s, o, acked)| s == session && o == offset && *acked > at)
            })
            .map(|(_, _, delivered)| *delivered)
            .min()
            .expect("deliveries of the affected sessions after the fault");
        println!(
            "{fault}: the first event of an affected session acknowledged after it was delivered {:.2} s after it; {} events over {} sessions, 0 lost, 0 duplicated",
            healed.duration_since(at).as_secs_f64(),
            self.acks.len(),
            self.sessions.len()
        );
    }
}

/// Reads event frames until `want` (set once the publisher is done) have arrived.
async fn read_events(
    mut ws: WsConnection,
    mut want: watch::Receiver<Option<usize>>,
) -> Vec<(SessionKey, Offset, Instant)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + 2 * LIMIT;
    loop {
        if want.borrow().is_some_and(|w| got.len() >= w) {
            return got;
        }
        tokio::select! {
            frame = tokio::time::timeout_at(deadline, ws.next_frame()) => match frame {
                Ok(Ok(ServerFrame::Event { session, offset, .. })) => {
                    got.push((session, offset, Instant::now()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(err)) => panic!("connection failed after {} events: {err}", got.len()),
                Err(_) => panic!(
                    "timed out with {} events delivered (want {:?})",
                    got.len(),
                    *want.borrow()
                ),
            },
            _ = want.changed() => {}
        }
    }
}
