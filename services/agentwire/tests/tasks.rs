//! The work queue on the real stack (gateway, relay, broker, Valkey): every transition on the
//! log before it is acknowledged, priorities, retries and dead letters with every attempt
//! recorded, a worker killed mid-task (its task redelivered after the lease and completed
//! once), push delivery within the prefetch and leases given back when a connection drops,
//! Valkey restarted empty and rebuilt from the log (nothing unfinished lost, nothing
//! completed run again), idempotency keys, `reply_to`, and tenant and capability scopes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use agentwire_gateway::auth::{AuthArgs, AuthMode};
use agentwire_protocol::{Offset, TaskEventKind, TaskRecord};
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Set in a child copy of this test binary: it claims one task and hangs (a worker to kill).
const CHILD_ENV: &str = "AGENTWIRE_TEST_CHILD_WORKER";

async fn post(url: String, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn enqueue(stack: &Stack, body: Value) -> String {
    let (status, ack) = post(format!("{}/v1/tasks", stack.http_url), body).await;
    assert_eq!(status, 201, "{ack}");
    ack["id"].as_str().expect("id").to_owned()
}

async fn claim(stack: &Stack, capability: &str, max: usize, lease_ms: u64) -> Vec<Value> {
    let (status, answer) = post(
        format!("{}/v1/tasks/{}/claim", stack.http_url, stack.tenant),
        json!({"capabilities": [capability], "max": max, "lease_ms": lease_ms, "worker": "test"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["tasks"].as_array().cloned().unwrap_or_default()
}

async fn act(stack: &Stack, task: &Value, action: &str, mut body: Value) -> (u16, Value) {
    body["lease_id"] = task["lease_id"].clone();
    post(
        format!(
            "{}/v1/tasks/{}/{}/{action}",
            stack.http_url,
            stack.tenant,
            task["id"].as_str().expect("id")
        ),
        body,
    )
    .await
}

/// Every record of the stack's task topic, by task id, in log order.
async fn task_log(stack: &Stack) -> BTreeMap<String, Vec<TaskRecord>> {
    let settings = stack.kafka_settings();
    let partitions = agentwire_kafka::partition_count(&settings, &stack.tasks_topic)
        .await
        .expect("partitions");
    let mut by_task: BTreeMap<String, Vec<TaskRecord>> = BTreeMap::new();
    for partition in 0..i32::try_from(partitions).expect("partitions") {
        let (low, high) = agentwire_kafka::watermarks(&settings, &stack.tasks_topic, partition)
            .await
            .expect("watermarks");
        let records = agentwire_kafka::read_range(
            &settings,
            &stack.tasks_topic,
            partition,
            Offset(u64::try_from(low).unwrap_or(0)),
            Offset(u64::try_from(high).unwrap_or(0)),
            LIMIT,
        )
        .await
        .expect("read");
        for record in records {
            let transitions = TaskRecord::parse_all(record.value.as_deref().expect("value"))
                .expect("a task record");
            for parsed in transitions {
                by_task
                    .entry(parsed.id.to_string())
                    .or_default()
                    .push(parsed);
            }
        }
    }
    by_task
}

fn kinds(records: &[TaskRecord]) -> Vec<TaskEventKind> {
    records.iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn priorities_are_honoured_and_every_transition_is_on_the_log_before_its_answer() {
    let stack = Stack::start(2).await;
    let t = &stack.tenant;
    let session = stack.session("requester");
    let low = enqueue(
        &stack,
        json!({"tenant": t, "capability": "search", "priority": 1, "payload": {"q": "low"}}),
    )
    .await;
    let high = enqueue(&stack, json!({"tenant": t, "capability": "search", "priority": 8, "payload": {"q": "high"}, "reply_to": session.to_string(), "correlation_id": "req-1"})).await;
    let tasks = claim(&stack, "search", 2, 30_000).await;
    let order: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(order, vec![high.as_str(), low.as_str()]);
    assert_eq!(tasks[0]["payload"]["q"], "high");
    assert_eq!(tasks[0]["attempt"], 1);
    let (status, answer) = act(
        &stack,
        &tasks[0],
        "complete",
        json!({"result": {"answer": 42}}),
    )
    .await;
    assert_eq!(
        (status, answer["state"].as_str()),
        (200, Some("completed")),
        "{answer}"
    );
    // A retry of the completion is answered from Valkey, changes nothing.
    let (status, _) = act(
        &stack,
        &tasks[0],
        "complete",
        json!({"result": {"answer": 42}}),
    )
    .await;
    assert_eq!(status, 200);
    // A stale lease is refused with its code.
    let mut stale = tasks[1].clone();
    stale["lease_id"] = json!("not-a-lease");
    let (status, answer) = act(&stack, &stale, "complete", json!({})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("stale_lease"))
    );

    // Acknowledged transitions are in the log already (no waiting).
    let log = task_log(&stack).await;
    assert_eq!(
        kinds(&log[&high])[..3],
        [
            TaskEventKind::Enqueued,
            TaskEventKind::Claimed,
            TaskEventKind::Completed
        ]
    );
    assert_eq!(
        kinds(&log[&low]),
        vec![TaskEventKind::Enqueued, TaskEventKind::Claimed]
    );
    let claimed = &log[&high][1].status;
    assert_eq!((claimed.attempt, claimed.lease_id.is_some()), (1, true));

    // The requester's session gets the result.
    let url = format!(
        "{}/v1/sessions/{}/{}/{}/events?from=earliest",
        stack.http_url, session.tenant, session.agent_type, session.session_id
    );
    let reply = wait_until(
        LIMIT,
        "the task's result in the reply_to session",
        || async {
            let page: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            page["events"]
                .as_array()?
                .iter()
                .find(|e| e["event"]["type"] == "agent.task.result")
                .cloned()
        },
    )
    .await;
    assert_eq!(reply["event"]["data"]["result"]["answer"], 42);
    assert_eq!(reply["event"]["correlationid"], "req-1");
    assert_eq!(reply["event"]["data"]["task_id"], high.as_str());
}

#[tokio::test]
async fn a_poison_task_dead_letters_after_max_attempts_with_every_attempt_on_the_log() {
    let stack = Stack::start(1).await;
    let t = &stack.tenant;
    let id = enqueue(
        &stack,
        json!({"tenant": t, "capability": "poison", "max_attempts": 3,
               "retry": {"initial_ms": 200, "max_ms": 400, "jitter": 0}}),
    )
    .await;
    for attempt in 1..=3 {
        let task = wait_until(LIMIT, "the retry to be handed out", || async {
            claim(&stack, "poison", 1, 30_000).await.into_iter().next()
        })
        .await;
        assert_eq!(task["attempt"], attempt);
        let (status, answer) = act(
            &stack,
            &task,
            "fail",
            json!({"error": format!("boom {attempt}")}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let expected = if attempt < 3 { "delayed" } else { "dead" };
        assert_eq!(answer["state"], expected);
    }
    let log = task_log(&stack).await;
    let records = &log[&id];
    assert_eq!(
        kinds(records),
        vec![
            TaskEventKind::Enqueued,
            TaskEventKind::Claimed,
            TaskEventKind::RetryScheduled,
            TaskEventKind::Claimed,
            TaskEventKind::RetryScheduled,
            TaskEventKind::Claimed,
            TaskEventKind::DeadLettered,
        ]
    );
    // No retry was handed out before its backoff.
    for pair in records.windows(2) {
        if pair[0].kind == TaskEventKind::RetryScheduled {
            let not_before = pair[0].status.not_before_ms.expect("not before");
            assert!(
                pair[1].status.updated_at_ms >= not_before,
                "claimed before its backoff"
            );
        }
    }
    assert_eq!(
        records[2]
            .status
            .not_before_ms
            .map(|n| n - records[2].status.updated_at_ms),
        Some(200)
    );
    assert_eq!(
        records[4]
            .status
            .not_before_ms
            .map(|n| n - records[4].status.updated_at_ms),
        Some(400)
    );
    // The dead letter can be listed, inspected and re-queued.
    let dead: Value = reqwest::get(format!("{}/v1/dead-letters/{t}/poison", stack.http_url))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(dead["tasks"][0]["id"], id.as_str());
    assert_eq!(dead["tasks"][0]["last_error"], "boom 3");
    assert_eq!(dead["tasks"][0]["dead_reason"], "attempts");
    let (status, answer) = post(
        format!("{}/v1/dead-letters/{t}/poison/requeue", stack.http_url),
        json!({"ids": [id]}),
    )
    .await;
    assert_eq!(
        (status, answer["done"][0].as_str()),
        (200, Some(id.as_str()))
    );
    let again = claim(&stack, "poison", 1, 30_000).await;
    assert_eq!(
        (again[0]["id"].as_str(), again[0]["attempt"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    let stats: Value = reqwest::get(format!("{}/v1/queues/{t}/poison", stack.http_url))
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (stats["in_flight"].as_u64(), stats["dead"].as_u64()),
        (Some(1), Some(0))
    );
}

/// Not a test of its own: a child copy of this binary runs it (with [`CHILD_ENV`] set) as a
/// worker that claims one task over HTTP, prints its id and hangs until it is killed.
#[tokio::test]
async fn child_worker() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("child spec");
    let (status, answer) = post(
        format!("{}/v1/tasks/{}/claim", spec["http"].as_str().expect("http"), spec["tenant"].as_str().expect("tenant")),
        json!({"capabilities": [spec["capability"]], "max": 1, "lease_ms": spec["lease_ms"], "worker": "child"}),
    )
    .await;
    assert_eq!(status, 200);
    println!(
        "claimed {}",
        answer["tasks"][0]["id"].as_str().unwrap_or("nothing")
    );
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn a_worker_killed_mid_task_gets_its_task_redelivered_after_the_lease_and_completed_once() {
    let stack = Stack::start(1).await;
    let t = &stack.tenant;
    let id = enqueue(
        &stack,
        json!({"tenant": t, "capability": "crashy", "payload": {"n": 1}}),
    )
    .await;
    let lease_ms = 2_000;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_worker", "--nocapture"])
        .env(
            CHILD_ENV,
            json!({"http": stack.http_url, "tenant": t, "capability": "crashy", "lease_ms": lease_ms}).to_string(),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child worker");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let claimed = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if let Some(rest) = line.strip_prefix("claimed ") {
                return rest.to_owned();
            }
        }
        String::new()
    })
    .await
    .expect("the child claimed in time");
    assert_eq!(claimed, id);
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");

    // Until the lease runs out nobody gets the task; then it comes back as attempt 2.
    let redelivered = wait_until(LIMIT, "the redelivery after the lease", || async {
        claim(&stack, "crashy", 1, 30_000).await.into_iter().next()
    })
    .await;
    assert_eq!(
        (redelivered["id"].as_str(), redelivered["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    let (status, _) = act(&stack, &redelivered, "complete", json!({"result": "done"})).await;
    assert_eq!(status, 200);
    assert!(
        claim(&stack, "crashy", 1, 30_000).await.is_empty(),
        "completed once, never again"
    );

    let records = &task_log(&stack).await[&id];
    let first = records
        .iter()
        .find(|r| r.kind == TaskEventKind::Claimed)
        .expect("claimed");
    let expired = records
        .iter()
        .find(|r| r.kind == TaskEventKind::LeaseExpired)
        .expect("lease expired on the log");
    assert!(
        expired.status.updated_at_ms >= first.status.lease_expires_at_ms.expect("expiry"),
        "expired early"
    );
    let completed = records
        .iter()
        .filter(|r| r.kind == TaskEventKind::Completed)
        .count();
    assert_eq!(completed, 1);
}

async fn ws(
    stack: &Stack,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("ws")
        .0
}

/// The next JSON text frame with `op` (others skipped), within `timeout`.
async fn next_op<S>(socket: &mut S, op: &str, timeout: Duration) -> Option<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(timeout, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).expect("json frame");
                if frame["op"] == op {
                    return Some(frame);
                }
                assert_ne!(frame["op"], "error", "{frame}");
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

async fn stats(stack: &Stack, capability: &str) -> (u64, u64) {
    let stats: Value = reqwest::get(format!(
        "{}/v1/queues/{}/{capability}",
        stack.http_url, stack.tenant
    ))
    .await
    .expect("stats")
    .json()
    .await
    .expect("json");
    (
        stats["ready"].as_u64().unwrap_or(0),
        stats["in_flight"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn push_delivery_never_exceeds_the_prefetch_and_a_dropped_connection_gives_its_tasks_back() {
    let stack = Stack::start(1).await;
    let t = stack.tenant.clone();
    for n in 0..10 {
        enqueue(
            &stack,
            json!({"tenant": t, "capability": "push", "payload": {"n": n}}),
        )
        .await;
    }
    let mut socket = ws(&stack).await;
    socket
        .send(Message::text(json!({"op": "consume", "id": "c1", "tenant": t, "capabilities": ["push"], "prefetch": 3}).to_string()))
        .await
        .expect("consume");
    let ack = next_op(&mut socket, "task_ack", LIMIT)
        .await
        .expect("consume ack");
    assert_eq!(
        (ack["id"].as_str(), ack["prefetch"].as_u64()),
        (Some("c1"), Some(3))
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            next_op(&mut socket, "task", LIMIT)
                .await
                .expect("a pushed task")["task"]
                .clone(),
        );
    }
    wait_until(LIMIT, "3 in flight, 7 ready", || async {
        (stats(&stack, "push").await == (7, 3)).then_some(())
    })
    .await;
    assert!(
        next_op(&mut socket, "task", Duration::from_millis(500))
            .await
            .is_none(),
        "a 4th task beyond the prefetch"
    );
    // Settling one frees one credit: exactly one more arrives.
    let first = held.remove(0);
    socket
        .send(Message::text(json!({"op": "complete", "id": "r1", "task_id": first["id"], "lease_id": first["lease_id"], "result": 1}).to_string()))
        .await
        .expect("complete");
    let ack = next_op(&mut socket, "task_ack", LIMIT)
        .await
        .expect("complete ack");
    assert_eq!(
        (ack["id"].as_str(), ack["state"].as_str()),
        (Some("r1"), Some("completed"))
    );
    held.push(
        next_op(&mut socket, "task", LIMIT)
            .await
            .expect("the 4th task")["task"]
            .clone(),
    );
    wait_until(LIMIT, "3 in flight, 6 ready", || async {
        (stats(&stack, "push").await == (6, 3)).then_some(())
    })
    .await;
    assert!(
        next_op(&mut socket, "task", Duration::from_millis(500))
            .await
            .is_none(),
        "beyond the prefetch after a settle"
    );

    // The connection drops: its three tasks are ready again at once (not after their lease).
    drop(socket);
    wait_until(
        LIMIT,
        "the dropped connection's tasks back in the queue",
        || async { (stats(&stack, "push").await == (9, 0)).then_some(()) },
    )
    .await;
    let log = task_log(&stack).await;
    for task in &held {
        let records = &log[task["id"].as_str().expect("id")];
        assert_eq!(
            records.last().map(|r| r.kind),
            Some(TaskEventKind::Released)
        );
        assert_eq!(
            records.last().map(|r| r.status.attempt),
            Some(0),
            "a release charges no attempt"
        );
    }
}

#[tokio::test]
async fn valkey_restarted_empty_and_rebuilt_loses_no_unfinished_task_and_reruns_no_completed_one() {
    let (stack, mut valkey) = Stack::with_own_valkey(2).await;
    let t = stack.tenant.clone();
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            enqueue(
                &stack,
                json!({"tenant": t, "capability": "durable", "payload": {"n": n}}),
            )
            .await,
        );
    }
    let mut completed = BTreeSet::new();
    for task in claim(&stack, "durable", 8, 30_000).await {
        let (status, _) = act(&stack, &task, "complete", json!({})).await;
        assert_eq!(status, 200);
        completed.insert(task["id"].as_str().expect("id").to_owned());
    }
    let in_flight = claim(&stack, "durable", 4, 1_000).await;
    assert_eq!(in_flight.len(), 4);

    valkey.restart().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["tasks", "rebuild"])
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .env("AGENTWIRE_TASKS_TOPIC", &stack.tasks_topic)
        .env("AGENTWIRE_VALKEY_URL", valkey.url())
        .output()
        .await
        .expect("agentwire tasks rebuild");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("20 tasks"), "{said}");

    // Every unfinished task comes back (the 4 in flight after their 1 s lease), no completed one.
    let handed = std::sync::Mutex::new(BTreeSet::new());
    wait_until(
        LIMIT,
        "all 12 unfinished tasks handed out again",
        || async {
            let got = claim(&stack, "durable", 20, 30_000).await;
            let mut handed = handed.lock().expect("lock");
            handed.extend(got.iter().map(|t| t["id"].as_str().expect("id").to_owned()));
            (handed.len() >= 12).then_some(())
        },
    )
    .await;
    let handed = handed.into_inner().expect("lock");
    let unfinished: BTreeSet<String> = ids
        .iter()
        .filter(|id| !completed.contains(*id))
        .cloned()
        .collect();
    assert_eq!(handed, unfinished);
    for id in &completed {
        let view: Value = reqwest::get(format!("{}/v1/tasks/{t}/{id}", stack.http_url))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(view["state"], "completed", "{view}");
    }
    // A second rebuild changes nothing.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentwire"))
        .args(["tasks", "rebuild"])
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TASKS_TOPIC", &stack.tasks_topic)
        .env("AGENTWIRE_VALKEY_URL", valkey.url())
        .output()
        .await
        .expect("second rebuild");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(" 0 applied"), "{said}");
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_task() {
    let stack = Stack::start(1).await;
    let body = json!({"tenant": stack.tenant, "capability": "once", "idempotency_key": "order-7"});
    let (status, first) = post(format!("{}/v1/tasks", stack.http_url), body.clone()).await;
    assert_eq!(status, 201);
    let (status, second) = post(format!("{}/v1/tasks", stack.http_url), body).await;
    assert_eq!(status, 201);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["duplicate"], true);
    assert_eq!(task_log(&stack).await.len(), 1, "one task on the log");
}

const SECRET: &str = "tasks-test-secret";

fn token(tenant: &str, extra: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let mut claims = json!({"tenant": tenant, "exp": exp});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn tenants_never_see_each_others_tasks_and_capability_scopes_hold() {
    let stack = Stack::configured(agentwire_test_support::TestEnv::from_env(), 1, |config| {
        config.auth = AuthArgs {
            mode: AuthMode::Jwt,
            hs256_secret: Some(SECRET.into()),
            ..AuthArgs::off()
        };
    })
    .await;
    let t = &stack.tenant;
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, token: String, body: Value| {
        let client = client.clone();
        let url = format!("{}{path}", stack.http_url);
        async move {
            let response = client
                .request(method, url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let owner = token(t, json!({"enqueue": ["search"], "consume": ["search"]}));
    let (status, ack) = call(
        reqwest::Method::POST,
        "/v1/tasks".into(),
        owner.clone(),
        json!({"tenant": t, "capability": "search"}),
    )
    .await;
    assert_eq!(status, 201, "{ack}");
    let id = ack["id"].as_str().expect("id").to_owned();
    // Enqueue outside the token's capabilities.
    let (status, answer) = call(
        reqwest::Method::POST,
        "/v1/tasks".into(),
        owner.clone(),
        json!({"tenant": t, "capability": "billing"}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    // Another tenant: cannot enqueue into t, claim from t, read t's task, or complete it.
    let stranger = token("someone-else", json!({}));
    let (status, _) = call(
        reqwest::Method::POST,
        "/v1/tasks".into(),
        stranger.clone(),
        json!({"tenant": t, "capability": "search"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        reqwest::Method::POST,
        format!("/v1/tasks/{t}/claim"),
        stranger.clone(),
        json!({"capabilities": ["search"]}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        reqwest::Method::GET,
        format!("/v1/tasks/{t}/{id}"),
        stranger.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(status, 403);
    // Its own tenant has no such task.
    let (status, _) = call(
        reqwest::Method::GET,
        format!("/v1/tasks/someone-else/{id}"),
        stranger.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    // A worker token scoped to another capability may not claim search.
    let narrow = token(t, json!({"consume": ["translate"]}));
    let (status, _) = call(
        reqwest::Method::POST,
        format!("/v1/tasks/{t}/claim"),
        narrow,
        json!({"capabilities": ["search"]}),
    )
    .await;
    assert_eq!(status, 403);
    // The owner claims it.
    let (status, answer) = call(
        reqwest::Method::POST,
        format!("/v1/tasks/{t}/claim"),
        owner,
        json!({"capabilities": ["search"]}),
    )
    .await;
    assert_eq!(
        (status, answer["tasks"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
}

#[tokio::test]
async fn the_rust_worker_keeps_long_tasks_leased_and_settles_each_with_its_outcome() {
    use agentwire_client::{TaskFailure, Worker};
    use agentwire_protocol::{Capability, Tenant};

    let stack = Stack::start(1).await;
    let t = stack.tenant.clone();
    let mut ids = BTreeMap::new();
    for n in 0..4 {
        let payload = json!({"n": n, "poison": n == 3});
        ids.insert(
            enqueue(
                &stack,
                json!({"tenant": t, "capability": "slow", "payload": payload}),
            )
            .await,
            n,
        );
    }
    let worker = Worker::builder(
        stack.ws_url.clone(),
        Tenant::new(t.clone()).expect("tenant"),
    )
    .capabilities([Capability::new("slow").expect("capability")])
    .prefetch(2)
    .lease(Duration::from_millis(1_000))
    .build()
    .expect("worker");
    let stats = worker.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(
        |task| async move {
            let payload = task.payload.unwrap_or_default();
            if payload["poison"] == true {
                return Err(TaskFailure::permanent("poison payload"));
            }
            // Longer than the lease: only the worker's heartbeats keep the task.
            tokio::time::sleep(Duration::from_millis(1_600)).await;
            Ok(json!({"doubled": payload["n"].as_u64().unwrap_or(0) * 2}))
        },
        stop.clone().cancelled_owned(),
    ));
    wait_until(
        LIMIT,
        "three completed and one failed by the worker",
        || async { (stats.completed() == 3 && stats.failed() == 1).then_some(()) },
    )
    .await;
    stop.cancel();
    running.await.expect("worker task").expect("worker ran");
    for (id, n) in &ids {
        let view: Value = reqwest::get(format!("{}/v1/tasks/{t}/{id}", stack.http_url))
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if *n == 3 {
            assert_eq!(
                (view["state"].as_str(), view["dead_reason"].as_str()),
                (Some("dead"), Some("not_retryable")),
                "{view}"
            );
        } else {
            assert_eq!(view["state"], "completed", "{view}");
            assert_eq!(view["attempt"], 1, "the lease was kept: no redelivery");
            assert_eq!(view["result"]["doubled"], n * 2);
        }
    }
    assert_eq!(stats.stale(), 0);
}
