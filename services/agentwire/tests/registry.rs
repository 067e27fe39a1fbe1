//! The agent registry on the real stack (two gateways, relay, broker, Valkey): an agent
//! SIGKILLed disappears from `discover` on the other gateway within its TTL + 5 s and its
//! expiry is an event on the log; a WebSocket agent lives exactly as long as its connection;
//! after Valkey lost everything the connected agents are back within a heartbeat; the Rust
//! worker registers itself and reports its load; tenant and ownership scopes hold.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use agentwire_client::{HttpClient, Worker};
use agentwire_gateway::auth::{AuthArgs, AuthMode};
use agentwire_protocol::registry::registry_session;
use agentwire_protocol::{AgentId, AgentView, Capability, RegisterSpec, Tenant};
use agentwire_test_support::wait_until;
use common::{LIMIT, Stack};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Set in a child copy of this test binary: it registers an agent over HTTP, heartbeats for
/// it and never stops (an agent to kill).
const CHILD_ENV: &str = "AGENTWIRE_TEST_CHILD_AGENT";

fn spec(tenant: &str, agent: &str, caps: &[&str], ttl_ms: u64) -> RegisterSpec {
    serde_json::from_value(json!({
        "tenant": tenant, "agent_id": agent, "capabilities": caps, "ttl_ms": ttl_ms,
    }))
    .expect("spec")
}

fn ids(agents: &[AgentView]) -> Vec<String> {
    agents
        .iter()
        .map(|a| a.registration.agent_id.to_string())
        .collect()
}

fn cap(name: &str) -> Capability {
    Capability::new(name).expect("capability")
}

/// The registry events of the tenant on the log, as (type, agent id), in order.
async fn registry_log(http: &HttpClient, tenant: &Tenant) -> Vec<(String, String)> {
    let events = http
        .history(&registry_session(tenant), None, Some(1000))
        .await
        .unwrap_or_default();
    events
        .into_iter()
        .map(|(_, e)| {
            (
                e.event_type.as_str().to_owned(),
                e.subject.unwrap_or_default(),
            )
        })
        .collect()
}

/// Not a test of its own: a child copy of this binary runs it (with [`CHILD_ENV`] set) as an
/// agent registered over HTTP that heartbeats every 300 ms until it is killed.
#[tokio::test]
async fn child_agent() {
    let Ok(spec_text) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Value = serde_json::from_str(&spec_text).expect("child spec");
    let http = HttpClient::new(args["http"].as_str().expect("http")).expect("client");
    let tenant = args["tenant"].as_str().expect("tenant");
    let registered = http
        .register(&spec(tenant, "http-agent", &["search"], 2_000))
        .await
        .expect("register");
    println!("registered {}", registered.agent_id);
    let tenant = Tenant::new(tenant).expect("tenant");
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let beat = http
            .heartbeat_agent(&tenant, &registered.agent_id, Some(0))
            .await
            .expect("heartbeat");
        assert!(
            beat.is_some(),
            "the registration stays alive while heartbeating"
        );
    }
}

async fn ws_register(
    url: &str,
    frame: Value,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    socket
        .send(Message::text(frame.to_string()))
        .await
        .expect("send");
    let answer = next_frame(&mut socket).await;
    assert_eq!(answer["op"], "registered", "{answer}");
    socket
}

async fn next_frame<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(LIMIT, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                return serde_json::from_str::<Value>(&text).expect("json frame");
            }
        }
        Value::Null
    })
    .await
    .expect("a frame in time")
}

#[tokio::test]
async fn a_killed_agent_leaves_discover_on_another_gateway_within_its_ttl_and_the_log_records_it() {
    let mut stack = Stack::start(1).await;
    let gateway_b = stack.spawn_extra_gateway(|_| {}).await;
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let t = stack.tenant.clone();
    let on_b = HttpClient::new(&gateway_b).expect("client");

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "child_agent", "--nocapture"])
        .env(
            CHILD_ENV,
            json!({"http": stack.http_url, "tenant": t}).to_string(),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child agent");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("registered ") {
                return;
            }
        }
        panic!("the child ended before registering");
    })
    .await
    .expect("the child registered in time");

    // A WebSocket agent on gateway A: the connection heartbeats for it.
    let socket = ws_register(
        &stack.ws_url,
        json!({"op": "register", "id": "r1", "tenant": t, "agent_id": "ws-agent", "capabilities": ["search", "code"], "ttl_ms": 2000}),
    )
    .await;
    let search = on_b
        .discover(&tenant, Some(&cap("search")))
        .await
        .expect("discover");
    assert_eq!(ids(&search), ["http-agent", "ws-agent"]);
    assert_eq!(
        ids(&on_b
            .discover(&tenant, Some(&cap("code")))
            .await
            .expect("code")),
        ["ws-agent"]
    );
    // Past one TTL the WebSocket agent is still there: its connection heartbeats.
    let later = Instant::now() + Duration::from_millis(2_500);
    wait_until(LIMIT, "one TTL to pass", || async {
        (Instant::now() >= later).then_some(())
    })
    .await;
    assert_eq!(
        ids(&on_b
            .discover(&tenant, Some(&cap("search")))
            .await
            .expect("discover")),
        ["http-agent", "ws-agent"],
        "both alive past their TTL while heartbeating"
    );

    // The WebSocket agent's connection ends: it leaves at once.
    drop(socket);
    wait_until(LIMIT, "the ws agent to leave", || async {
        let live = on_b.discover(&tenant, None).await.expect("discover");
        (!ids(&live).contains(&"ws-agent".to_owned())).then_some(())
    })
    .await;

    // The HTTP agent is killed: gone from discover on gateway B within TTL + 5 s.
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(7),
        "the killed agent to expire",
        || async {
            let live = on_b.discover(&tenant, None).await.expect("discover");
            live.is_empty().then_some(())
        },
    )
    .await;
    let gone_after = killed.elapsed();
    println!("a killed agent left discover after {gone_after:?} (TTL 2 s)");
    assert!(gone_after <= Duration::from_secs(7));

    // The log has each join, the leave and the expiry, exactly once.
    let http = stack.http();
    let log = wait_until(LIMIT, "the expiry on the log", || async {
        let log = registry_log(&http, &tenant).await;
        log.iter()
            .any(|(kind, _)| kind == "agent.registry.expired")
            .then_some(log)
    })
    .await;
    let count =
        |kind: &str, agent: &str| log.iter().filter(|(k, a)| k == kind && a == agent).count();
    assert_eq!(count("agent.registry.joined", "http-agent"), 1, "{log:?}");
    assert_eq!(count("agent.registry.joined", "ws-agent"), 1, "{log:?}");
    assert_eq!(count("agent.registry.left", "ws-agent"), 1, "{log:?}");
    assert_eq!(count("agent.registry.expired", "http-agent"), 1, "{log:?}");
    assert_eq!(log.len(), 4, "nothing else: {log:?}");
}

#[tokio::test]
async fn connected_agents_are_back_within_a_heartbeat_after_valkey_lost_everything() {
    let (stack, _valkey) = Stack::with_own_valkey(1).await;
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let mut socket = ws_register(
        &stack.ws_url,
        json!({"op": "register", "id": "r1", "tenant": stack.tenant, "agent_id": "survivor", "capabilities": ["search"], "ttl_ms": 1500}),
    )
    .await;
    let http = stack.http();
    assert_eq!(
        ids(&http.discover(&tenant, None).await.expect("discover")),
        ["survivor"]
    );
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut stack.valkey().await)
        .await
        .expect("flushall");
    assert!(
        http.discover(&tenant, None)
            .await
            .expect("discover")
            .is_empty()
    );
    let back = Instant::now();
    wait_until(LIMIT, "the agent to be registered again", || async {
        let live = http.discover(&tenant, None).await.expect("discover");
        (ids(&live) == ["survivor"]).then_some(())
    })
    .await;
    println!("re-registered {:?} after the wipe", back.elapsed());
    // The connection still answers discover over WebSocket, with the agent's document.
    socket
        .send(Message::text(
            json!({"op": "discover", "id": "d1", "tenant": stack.tenant, "capability": "search"})
                .to_string(),
        ))
        .await
        .expect("send");
    let agents = next_frame(&mut socket).await;
    assert_eq!(
        (agents["op"].as_str(), agents["id"].as_str()),
        (Some("agents"), Some("d1"))
    );
    assert_eq!(agents["agents"][0]["agent_id"], "survivor");
    assert_eq!(agents["agents"][0]["ttl_ms"], 1500);
}

#[tokio::test]
async fn a_registered_worker_is_discovered_with_its_load_and_leaves_when_it_stops() {
    let stack = Stack::start(1).await;
    let tenant = Tenant::new(stack.tenant.clone()).expect("tenant");
    let http = stack.http();
    let worker = Worker::builder(stack.ws_url.clone(), tenant.clone())
        .capabilities([cap("slow")])
        .prefetch(4)
        .register_as(AgentId::new("worker-1").expect("agent id"))
        .build()
        .expect("worker");
    let (release, released) = tokio::sync::watch::channel(false);
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        worker.run(
            move |_task| {
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok::<_, agentwire_client::TaskFailure>(Value::Null)
                }
            },
            stop.cancelled_owned(),
        )
    });
    let view = wait_until(LIMIT, "the worker to register", || async {
        http.discover(&tenant, Some(&cap("slow")))
            .await
            .expect("discover")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(view.registration.agent_id.as_str(), "worker-1");
    assert_eq!(view.registration.max_concurrency, Some(4));
    for _ in 0..2 {
        let task = agentwire_client::NewTask::new(tenant.clone(), cap("slow"));
        http.enqueue(&task).await.expect("enqueue");
    }
    // Its connection reports the tasks it holds as the agent's load.
    wait_until(LIMIT, "the load to reach 2", || async {
        let live = http
            .discover(&tenant, Some(&cap("slow")))
            .await
            .expect("discover");
        (live.first().map(|a| a.in_flight) == Some(2)).then_some(())
    })
    .await;
    release.send(true).expect("release");
    wait_until(LIMIT, "the load to fall to 0", || async {
        let live = http
            .discover(&tenant, Some(&cap("slow")))
            .await
            .expect("discover");
        (live.first().map(|a| a.in_flight) == Some(0)).then_some(())
    })
    .await;
    stop.cancel();
    run.await.expect("joined").expect("worker ran");
    wait_until(LIMIT, "the worker to leave", || async {
        http.discover(&tenant, None)
            .await
            .expect("discover")
            .is_empty()
            .then_some(())
    })
    .await;
}

const SECRET: &str = "registry-test-secret";

fn token(tenant: &str, subject: &str, extra: Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    let mut claims = json!({"tenant": tenant, "sub": subject, "exp": exp});
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
async fn tenants_capabilities_and_owners_scope_the_registry() {
    let stack = Stack::configured(agentwire_test_support::TestEnv::from_env(), 1, |config| {
        config.auth = AuthArgs {
            mode: AuthMode::Jwt,
            hs256_secret: Some(SECRET.into()),
            ..AuthArgs::off()
        };
    })
    .await;
    let t = stack.tenant.clone();
    let tenant = Tenant::new(t.clone()).expect("tenant");
    let alice = HttpClient::new(&stack.http_url)
        .expect("client")
        .with_token(token(&t, "alice", json!({"consume": ["search"]})));
    let bob = HttpClient::new(&stack.http_url)
        .expect("client")
        .with_token(token(&t, "bob", json!({"consume": ["search"]})));
    let stranger = HttpClient::new(&stack.http_url)
        .expect("client")
        .with_token(token("someone-else", "eve", json!({})));

    let ack = alice
        .register(&spec(&t, "a1", &["search"], 30_000))
        .await
        .expect("register");
    assert_eq!(ack.kind, "joined");
    assert_eq!(
        alice
            .register(&spec(&t, "a1", &["search"], 30_000))
            .await
            .expect("again")
            .kind,
        "renewed"
    );
    // A capability the token may not consume is refused.
    let err = alice
        .register(&spec(&t, "a2", &["billing"], 30_000))
        .await
        .expect_err("billing");
    assert_eq!(err.code(), Some(agentwire_protocol::ErrorCode::Forbidden));
    // Another principal of the tenant sees it but may not heartbeat, take over or remove it.
    let agent = AgentId::new("a1").expect("agent");
    assert_eq!(
        ids(&bob.discover(&tenant, None).await.expect("discover")),
        ["a1"]
    );
    assert_eq!(
        bob.heartbeat_agent(&tenant, &agent, None)
            .await
            .expect_err("not bob's")
            .code(),
        Some(agentwire_protocol::ErrorCode::Forbidden)
    );
    assert_eq!(
        bob.register(&spec(&t, "a1", &["search"], 30_000))
            .await
            .expect_err("taken")
            .code(),
        Some(agentwire_protocol::ErrorCode::Forbidden)
    );
    assert_eq!(
        bob.deregister(&tenant, &agent)
            .await
            .expect_err("not bob's")
            .code(),
        Some(agentwire_protocol::ErrorCode::Forbidden)
    );
    // Another tenant sees nothing of it.
    assert_eq!(
        stranger
            .discover(&tenant, None)
            .await
            .expect_err("other tenant")
            .code(),
        Some(agentwire_protocol::ErrorCode::Forbidden)
    );
    // Bad input: a clear error, nothing registered.
    let (status, body) = {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/agents", stack.http_url))
            .bearer_auth(token(&t, "alice", json!({})))
            .json(&json!({"agent_id": "a3", "capabilities": ["search"], "ttl_ms": 5}))
            .send()
            .await
            .expect("request");
        (
            response.status().as_u16(),
            response.json::<Value>().await.expect("json"),
        )
    };
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("ttl_ms")),
        "{body}"
    );

    assert!(alice.deregister(&tenant, &agent).await.expect("deregister"));
    assert!(!alice.deregister(&tenant, &agent).await.expect("again"));
    assert_eq!(
        alice
            .heartbeat_agent(&tenant, &agent, None)
            .await
            .expect("hb"),
        None
    );
}
