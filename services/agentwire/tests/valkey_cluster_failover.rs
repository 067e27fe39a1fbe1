//! A Valkey Cluster primary dies under load (SIGKILL): its replica is promoted, the relay and
//! the gateway follow the new topology on their own, and every subscriber of every session
//! (those on the lost shard included) receives each acknowledged event exactly once, in order.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentwire_client::WsConnection;
use agentwire_protocol::{Offset, ServerFrame, SessionKey};
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack, Valkey, event};
use tokio::sync::watch;

/// Sessions on the shard that dies, and on the others.
const PER_SIDE: usize = 3;
/// Events published before and after the kill.
const BEFORE: usize = 150;
const AFTER: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_loses_and_duplicates_nothing() {
    let Valkey::Cluster(mut cluster) = Valkey::cluster().await else {
        unreachable!("a cluster was asked for")
    };
    let ports = cluster.ports();
    let stack = Stack::start_on(
        agentwire_test_support::TestEnv {
            valkey_url: cluster.url(),
            ..agentwire_test_support::TestEnv::from_env()
        },
        2,
    )
    .await;

    // Primary 0 serves slots 0..=5460 (see ValkeyCluster): pick sessions on both sides.
    let on_doomed =
        |s: &SessionKey| agentwire_valkey::slot(&agentwire_valkey::keys::history(s)) <= 5_460;
    let (mut doomed, mut spared) = (Vec::new(), Vec::new());
    for i in 0.. {
        if doomed.len() == PER_SIDE && spared.len() == PER_SIDE {
            break;
        }
        let session = stack.session(&format!("s{i}"));
        let side = if on_doomed(&session) {
            &mut doomed
        } else {
            &mut spared
        };
        if side.len() < PER_SIDE {
            side.push(session);
        }
    }
    let sessions: Vec<SessionKey> = doomed.iter().chain(&spared).cloned().collect();

    // One connection follows every session; it is read throughout, by its own task.
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for session in &sessions {
        ws.subscribe(session, None).await.expect("subscribe");
    }
    let (want_tx, want_rx) = watch::channel(None::<usize>);
    let reader = tokio::spawn(read_events(ws, want_rx));

    // The load: one event every 5 ms, round robin over the sessions.
    let (sent_tx, mut sent_rx) = watch::channel(0_usize);
    let publisher = {
        let http = stack.http();
        let sessions = sessions.clone();
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            let mut acks = Vec::with_capacity(BEFORE + AFTER);
            for i in 0..BEFORE + AFTER {
                pace.tick().await;
                let session = &sessions[i % sessions.len()];
                let ack = http
                    .publish(&event(session, "p", i as u64 + 1, "load"))
                    .await
                    .expect("publish (Kafka is not affected by the Valkey fault)");
                acks.push((session.clone(), ack.offset, Instant::now()));
                sent_tx.send_replace(acks.len());
            }
            acks
        })
    };

    tokio::time::timeout(LIMIT, sent_rx.wait_for(|n| *n >= BEFORE))
        .await
        .expect("the first events in time")
        .expect("publisher alive");
    cluster.kill(0);
    let killed_at = Instant::now();

    let acks = publisher.await.expect("publisher");
    let expected = common::offsets_by_session(acks.iter().map(|(s, o, _)| (s, *o)));
    want_tx.send_replace(Some(acks.len()));
    let delivered = reader.await.expect("reader");

    let mut by_session: BTreeMap<SessionKey, Vec<Offset>> = BTreeMap::new();
    for (session, offset, _) in &delivered {
        by_session.entry(session.clone()).or_default().push(*offset);
    }
    for session in &sessions {
        assert_eq!(
            by_session.get(session),
            expected.get(session),
            "deliveries of {session} (doomed shard: {})",
            on_doomed(session)
        );
    }

    // The replica of primary 0 (node 3) took over.
    let promoted = ports[3];
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

    // How long the doomed shard's sessions went without deliveries: from the kill to the
    // first delivery of an event of theirs acknowledged after it.
    let first_after = delivered
        .iter()
        .filter(|(session, offset, _)| {
            on_doomed(session)
                && acks
                    .iter()
                    .any(|(s, o, at)| s == session && o == offset && *at > killed_at)
        })
        .map(|(_, _, at)| *at)
        .min()
        .expect("deliveries of the doomed shard after the kill");
    println!(
        "healed: the first event of the failed shard acknowledged after the kill was delivered {:.2} s after the kill; {} events, {} sessions",
        first_after.duration_since(killed_at).as_secs_f64(),
        acks.len(),
        sessions.len()
    );
}

/// Reads event frames until `want` (set once the publisher is done) have arrived.
async fn read_events(
    mut ws: WsConnection,
    mut want: watch::Receiver<Option<usize>>,
) -> Vec<(SessionKey, Offset, Instant)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if want.borrow().is_some_and(|w| got.len() >= w) {
            return got;
        }
        tokio::select! {
            frame = tokio::time::timeout_at(deadline, ws.next_frame()) => {
                match frame {
                    Ok(Ok(ServerFrame::Event { session, offset, .. })) => {
                        got.push((session, offset, Instant::now()));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => panic!("connection failed after {} events: {err}", got.len()),
                    Err(_) => panic!("timed out with {} events delivered (want {:?})", got.len(), *want.borrow()),
                }
            }
            _ = want.changed() => {}
        }
    }
}
