//! Request–reply on the real stack (two gateways, relay, broker, Valkey): the requester on
//! one gateway, responders on the other; a responder SIGKILLed mid-request gives the request
//! to another and the requester gets exactly one reply; a request nobody answers times out
//! with `request_timeout` and is cancelled.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwire_client::{Requester, SubscriberConfig, TaskFailure, Worker};
use agentwire_protocol::{AgentId, Capability, ErrorCode, SessionKey, Tenant};
use common::{LIMIT, Stack};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

/// Set in a child copy of this test binary: a responder that takes a request and hangs.
const CHILD_ENV: &str = "AGENTWIRE_TEST_CHILD_RESPONDER";

fn cap(name: &str) -> Capability {
    Capability::new(name).expect("capability")
}

fn ws_url(http_url: &str) -> String {
    format!("{}/v1/ws", http_url.replacen("http://", "ws://", 1))
}

/// Not a test of its own: a child copy of this binary runs it (with [`CHILD_ENV`] set) as a
/// responder that prints each request it takes and never answers.
#[tokio::test]
async fn child_responder() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Value = serde_json::from_str(&spec).expect("child spec");
    let tenant = Tenant::new(args["tenant"].as_str().expect("tenant")).expect("tenant");
    let worker = Worker::builder(args["ws"].as_str().expect("ws"), tenant)
        .capabilities([cap("echo")])
        .register_as(AgentId::new("doomed").expect("agent"))
        .build()
        .expect("worker");
    worker
        .run(
            |task| async move {
                println!("got {}", task.payload.unwrap_or_default());
                std::future::pending::<Result<Value, TaskFailure>>().await
            },
            std::future::pending::<()>(),
        )
        .await
        .expect("run");
}

fn responder(ws: String, tenant: Tenant, name: &'static str) -> Worker {
    Worker::builder(ws, tenant)
        .capabilities([cap("echo")])
        .prefetch(8)
        .register_as(AgentId::new(name).expect("agent"))
        .build()
        .expect("worker")
}

#[tokio::test]
async fn a_request_across_gateways_survives_its_responder_dying_and_gets_exactly_one_reply() {
    let mut stack = Stack::start(1).await;
    let gateway_b = stack.spawn_extra_gateway(|_| {}).await;
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let inbox: SessionKey = format!("{}:requester:inbox-1", stack.tenant)
        .parse()
        .expect("inbox");
    let requester = Arc::new(
        Requester::connect(
            stack.ws_url.clone(),
            stack.http(),
            inbox,
            SubscriberConfig::default(),
        )
        .await
        .expect("requester"),
    );

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_responder", "--nocapture"])
        .env(
            CHILD_ENV,
            json!({"ws": ws_url(&gateway_b), "tenant": stack.tenant}).to_string(),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child responder");
    let asked = tokio::spawn({
        let requester = requester.clone();
        async move {
            requester
                .request(cap("echo"), json!({"n": 1}), Duration::from_secs(60))
                .await
        }
    });
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("got ") {
                return;
            }
        }
        panic!("the child ended before taking the request");
    })
    .await
    .expect("the doomed responder took the request");
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");

    // Another responder, on the same far gateway, takes the request over.
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(
        responder(ws_url(&gateway_b), tenant.clone(), "survivor").run(
            |task| async move {
                Ok::<_, TaskFailure>(
                    json!({"echo": task.payload.unwrap_or_default(), "by": "survivor"}),
                )
            },
            stop.clone().cancelled_owned(),
        ),
    );
    let reply = tokio::time::timeout(LIMIT, asked)
        .await
        .expect("a reply in time")
        .expect("joined")
        .expect("replied");
    assert_eq!(reply.state, "completed", "{reply:?}");
    let result = reply.clone().into_result().expect("completed");
    assert_eq!(result, json!({"echo": {"n": 1}, "by": "survivor"}));
    let task = stack
        .http()
        .task(&tenant, &reply.task_id.to_string())
        .await
        .expect("task");
    assert_eq!(task.state, agentwire_protocol::TaskState::Completed);

    // More requests, one at a time: each gets its own reply, once.
    let mut took = Vec::new();
    for n in 0..20 {
        let started = Instant::now();
        let reply = requester
            .request(cap("echo"), json!({"n": n}), LIMIT)
            .await
            .expect("reply");
        took.push(started.elapsed());
        assert_eq!(
            reply.into_result().expect("completed")["echo"]["n"],
            json!(n)
        );
    }
    took.sort();
    println!(
        "20 sequential round trips across two gateways: p50 {:?}, max {:?} (debug build, shared test machine)",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert_eq!(requester.duplicates(), 0, "no request answered twice");

    // Nobody serves this capability: a coded timeout, and the task is cancelled.
    let err = requester
        .request(cap("nobody"), json!({}), Duration::from_millis(500))
        .await
        .expect_err("no responder");
    assert_eq!(err.code(), Some(ErrorCode::RequestTimeout), "{err}");
    let stats = stack
        .http()
        .queue_stats(&tenant, &cap("nobody"))
        .await
        .expect("stats");
    assert_eq!(
        stats.ready, 0,
        "the timed-out request was cancelled, not left to run late"
    );

    stop.cancel();
    running.await.expect("joined").expect("responder ran");
}
