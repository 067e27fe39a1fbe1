//! Authentication and tenant isolation on the real stack: HTTP 401 before anything (and
//! before the WebSocket upgrade), 403 for another tenant's sessions whatever a frame says,
//! the Origin allow-list, the per-tenant connection limit, HS256, RS256 and JWKS tokens,
//! and expiry during a connection (close 4001) unless refreshed.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_client::{ClientError, Subscriber, SubscriberConfig, TokenProvider, WsConnection};
use agentwire_gateway::GatewayConfig;
use agentwire_gateway::auth::{AuthArgs, AuthMode};
use agentwire_protocol::{ClientFrame, ErrorCode, Label, Offset, ServerFrame, SessionKey};
use agentwire_test_support::{ChildProcess, TestEnv, unique, wait_until};
use common::{LIMIT, Stack, event};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &str = "test-only-secret";

fn fixture(name: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/fixtures/jwt")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token for `tenant` valid for `secs` (negative: already expired).
fn hs256(tenant: &str, secs: i64, extra: serde_json::Value) -> String {
    let mut claims =
        json!({"tenant": tenant, "exp": now().saturating_add_signed(secs), "sub": "tester"});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn rs256(tenant: &str, kid: Option<&str>) -> String {
    let pem = std::fs::read(fixture("rs256_private.pem")).expect("private key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    encode(
        &header,
        &json!({"tenant": tenant, "exp": now() + 300}),
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
    )
    .expect("sign")
}

fn secured(config: &mut GatewayConfig) {
    config.auth = AuthArgs {
        mode: AuthMode::Jwt,
        hs256_secret: Some(SECRET.into()),
        rs256_public_key: Some(fixture("rs256_public.pem")),
        jwks_file: Some(fixture("jwks.json")),
        leeway_secs: 0,
        allowed_origins: vec!["https://app.example".into()],
        ..AuthArgs::off()
    };
    config.max_connections_per_tenant = 2;
}

async fn post(stack: &Stack, token: Option<&str>, session: &SessionKey) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", "application/cloudevents+json")
        .body(agentwire_protocol::cloudevents::to_json(&event(
            session, "p", 1, "hi",
        )));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("post")
}

async fn code_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("json");
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    )
}

/// The HTTP status a WebSocket upgrade was refused with.
async fn refused_upgrade(url: &str, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("origin"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

async fn expect_error(ws: &mut WsConnection, code: ErrorCode) {
    match ws.next_frame().await.expect("a frame") {
        ServerFrame::Error(e) => assert_eq!(e.code, code, "{}", e.message),
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_need_a_valid_token_and_stay_inside_their_tenant() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let mine = stack.session("mine");
    let theirs = SessionKey::parse_parts(&unique("t"), "planner", "theirs").expect("key");
    let token = hs256(&stack.tenant, 300, json!({}));

    // HTTP: no token, an expired one, a forged one → 401; another tenant → 403.
    let response = post(&stack, None, &mine).await;
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(code_of(response).await, (401, "unauthorized".into()));
    let expired = hs256(&stack.tenant, -60, json!({}));
    assert_eq!(
        code_of(post(&stack, Some(&expired), &mine).await).await.0,
        401
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(
        code_of(post(&stack, Some(&forged), &mine).await).await.0,
        401
    );
    assert_eq!(
        code_of(post(&stack, Some(&token), &theirs).await).await,
        (403, "forbidden".into())
    );
    let ack = stack
        .http()
        .with_token(token.clone())
        .publish(&event(&mine, "p", 1, "allowed"))
        .await
        .expect("a publish into the token's tenant");
    assert_eq!(ack.offset.0, 0, "only the allowed publish was written");

    // History takes a bearer token; a query token is for the WebSocket upgrade only.
    let history = |session: &SessionKey, token: &str, in_query: bool| {
        let url = format!(
            "{}/v1/sessions/{}/{}/{}/events?after=0",
            stack.http_url, session.tenant, session.agent_type, session.session_id
        );
        let token = token.to_owned();
        async move {
            let client = reqwest::Client::new();
            let request = if in_query {
                client.get(format!("{url}&token={token}"))
            } else {
                client.get(url).bearer_auth(token)
            };
            request.send().await.expect("get").status().as_u16()
        }
    };
    assert_eq!(history(&mine, &token, false).await, 200);
    assert_eq!(history(&theirs, &token, false).await, 403);
    assert_eq!(
        history(&mine, &token, true).await,
        401,
        "?token= is refused outside the WebSocket upgrade"
    );
    let published_with_query_token = reqwest::Client::new()
        .post(format!("{}/v1/events?token={token}", stack.http_url))
        .header("content-type", "application/cloudevents+json")
        .body(agentwire_protocol::cloudevents::to_json(&event(
            &mine, "p", 9, "query",
        )))
        .send()
        .await
        .expect("post");
    assert_eq!(code_of(published_with_query_token).await.0, 401);

    // The WebSocket upgrade: 401 without a token, 403 from a foreign origin.
    assert_eq!(refused_upgrade(&stack.ws_url, None).await, 401);
    let with_token = format!("{}?token={token}", stack.ws_url);
    assert_eq!(
        refused_upgrade(&with_token, Some("https://evil.example")).await,
        403
    );

    // Inside a connection nothing reaches another tenant, whatever the frame says.
    let mut ws = WsConnection::connect(&with_token).await.expect("connect");
    let err = ws
        .subscribe(&theirs, None)
        .await
        .expect_err("another tenant");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = ws
        .publish(&event(&theirs, "p", 2, "sneaky"))
        .await
        .expect_err("publish into another tenant");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    ws.send(&ClientFrame::FollowLabel {
        tenant: theirs.tenant.clone(),
        label: Label::new("billing").expect("label"),
    })
    .await
    .expect("send");
    expect_error(&mut ws, ErrorCode::Forbidden).await;
    ws.subscribe(&mine, None).await.expect("its own session");

    // Session patterns narrow the tenant further.
    let narrow = hs256(
        &stack.tenant,
        300,
        json!({"subscribe": ["planner:mine"], "publish": []}),
    );
    let mut narrow_ws = WsConnection::connect(&format!("{}?token={narrow}", stack.ws_url))
        .await
        .expect("connect");
    let other = stack.session("other");
    let err = narrow_ws
        .subscribe(&other, None)
        .await
        .expect_err("pattern");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = narrow_ws
        .publish(&event(&mine, "p", 3, "read only"))
        .await
        .expect_err("no publish pattern");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));

    // Two connections per tenant: the third is refused before the upgrade, until one leaves.
    assert_eq!(refused_upgrade(&with_token, None).await, 429);
    narrow_ws.close().await.expect("close");
    let third = wait_until(LIMIT, "a place for a third connection", || {
        let url = with_token.clone();
        async move { WsConnection::connect(&url).await.ok() }
    })
    .await;
    drop(third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_jwks_tokens_are_verified_with_their_keys() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let session = stack.session("rsa");
    let pem_signed = rs256(&stack.tenant, None);
    let jwks_signed = rs256(&stack.tenant, Some("test-key-1"));
    let unknown_kid = rs256(&stack.tenant, Some("rotated-away"));
    for token in [&pem_signed, &jwks_signed] {
        assert_eq!(
            post(&stack, Some(token), &session).await.status().as_u16(),
            200
        );
    }
    assert_eq!(
        code_of(post(&stack, Some(&unknown_kid), &session).await)
            .await
            .0,
        401
    );
    // HS256 with the RSA public key as the secret (algorithm confusion) is not accepted.
    let public = std::fs::read(fixture("rs256_public.pem")).expect("public key");
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"tenant": stack.tenant, "exp": now() + 300}),
        &EncodingKey::from_secret(&public),
    )
    .expect("sign");
    assert_eq!(
        code_of(post(&stack, Some(&confused), &session).await)
            .await
            .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_closes_the_connection_with_4001_unless_refreshed() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let short = hs256(&stack.tenant, 2, json!({}));
    let mut refreshed = WsConnection::connect(&format!("{}?token={short}", stack.ws_url))
        .await
        .expect("connect");
    let mut expiring = WsConnection::connect(&format!("{}?token={short}", stack.ws_url))
        .await
        .expect("connect");

    // A token of another tenant cannot take over the connection.
    let foreign = hs256(&unique("t"), 300, json!({}));
    refreshed
        .send(&ClientFrame::Refresh { token: foreign })
        .await
        .expect("send");
    expect_error(&mut refreshed, ErrorCode::Forbidden).await;
    let longer = hs256(&stack.tenant, 300, json!({}));
    refreshed
        .send(&ClientFrame::Refresh { token: longer })
        .await
        .expect("send");
    match refreshed.next_frame().await.expect("frame") {
        ServerFrame::Refreshed { exp } => assert!(exp > now() + 200, "new expiry {exp}"),
        other => panic!("expected refreshed, got {other:?}"),
    }

    // The other connection is closed with 4001 when its token runs out.
    let closed = tokio::time::timeout(LIMIT, async {
        loop {
            match expiring.next_frame().await {
                Err(ClientError::Closed { code, reason }) => break (code, reason),
                Err(other) => panic!("expected a close, got {other}"),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed.0, Some(4001), "{}", closed.1);

    // By then the refreshed connection is past its first token's expiry and still serves.
    refreshed.send(&ClientFrame::Ping).await.expect("ping");
    let pong = tokio::time::timeout(Duration::from_secs(10), refreshed.next_frame())
        .await
        .expect("in time")
        .expect("pong");
    assert!(matches!(pong, ServerFrame::Pong), "{pong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_valid_yet_is_refused() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let session = stack.session("nbf");
    let early = hs256(&stack.tenant, 900, json!({"nbf": now() + 600}));
    assert_eq!(
        code_of(post(&stack, Some(&early), &session).await).await,
        (401, "unauthorized".into())
    );
    let upgrade = format!("{}?token={early}", stack.ws_url);
    assert_eq!(refused_upgrade(&upgrade, None).await, 401);
    let valid_now = hs256(&stack.tenant, 900, json!({"nbf": now() - 5}));
    assert_eq!(
        post(&stack, Some(&valid_now), &session)
            .await
            .status()
            .as_u16(),
        200
    );
}

/// `POST /v1/producers/{tenant}/{producer}/epoch` with `token`: the HTTP status, and the
/// error code or the new epoch.
async fn new_epoch(stack: &Stack, token: &str, producer: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/producers/{}/{producer}/epoch",
            stack.http_url, stack.tenant
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("json");
    match body["error"]["code"].as_str() {
        Some(code) => (status, code.to_owned()),
        None => (status, body["epoch"].to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_belong_to_the_tokens_that_name_them() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let session = stack.session("owned");
    let victim = hs256(&stack.tenant, 300, json!({"producers": ["victim-*"]}));
    let attacker = hs256(&stack.tenant, 300, json!({"producers": ["attacker"]}));
    let read_only = hs256(&stack.tenant, 300, json!({"publish": []}));
    let narrow_without_claim = hs256(&stack.tenant, 300, json!({"publish": ["planner:*"]}));
    let tenant_wide = hs256(&stack.tenant, 300, json!({}));

    // The epoch endpoint: publish rights and ownership of the id.
    assert_eq!(
        new_epoch(&stack, &read_only, "victim-1").await,
        (403, "forbidden".into())
    );
    assert_eq!(
        new_epoch(&stack, &attacker, "victim-1").await,
        (403, "forbidden".into())
    );
    assert_eq!(
        new_epoch(&stack, &narrow_without_claim, "victim-1").await,
        (403, "forbidden".into())
    );
    let (status, epoch) = new_epoch(&stack, &victim, "victim-1").await;
    assert_eq!(status, 200, "{epoch}");
    let epoch: u64 = epoch.parse().expect("the new epoch");
    assert_eq!(
        new_epoch(&stack, &tenant_wide, "anyone").await.0,
        200,
        "a tenant-wide publisher without the claim works as before"
    );

    // HTTP: a sequenced publish under someone else's id is refused and burns nothing.
    let stolen = common::sequenced(&session, "victim-1", epoch, 1, "stolen");
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", "application/cloudevents+json")
        .bearer_auth(&attacker)
        .body(agentwire_protocol::cloudevents::to_json(&stolen))
        .send()
        .await
        .expect("post");
    assert_eq!(code_of(response).await, (403, "forbidden".into()));

    // WebSocket: the same.
    let mut ws = WsConnection::connect(&format!("{}?token={attacker}", stack.ws_url))
        .await
        .expect("connect");
    let err = ws
        .publish(&common::sequenced(&session, "victim-1", epoch, 1, "stolen"))
        .await
        .expect_err("another producer's id");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    let err = ws
        .publish(&event(
            &session,
            "victim-2",
            1,
            "unsequenced, still not its name",
        ))
        .await
        .expect_err("another producer's id");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    ws.publish(&common::sequenced(&session, "attacker", 0, 1, "its own"))
        .await
        .expect("its own producer id");

    // The victim's first sequence was not burnt: it is written, not answered `duplicate`.
    let ack = stack
        .http()
        .with_token(victim.clone())
        .publish(&common::sequenced(&session, "victim-1", epoch, 1, "real"))
        .await
        .expect("the victim publishes");
    assert!(!ack.duplicate, "{ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_feeds_deliver_only_sessions_the_token_may_follow() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let allowed = stack.session("visible");
    let hidden = SessionKey::parse_parts(&stack.tenant, "coder", "hidden").expect("key");
    let narrow = hs256(&stack.tenant, 300, json!({"subscribe": ["planner:*"]}));
    let mut ws = WsConnection::connect(&format!("{}?token={narrow}", stack.ws_url))
        .await
        .expect("connect");
    let label = Label::new("billing").expect("label");
    ws.send(&ClientFrame::FollowLabel {
        tenant: allowed.tenant.clone(),
        label: label.clone(),
    })
    .await
    .expect("send");
    match ws.next_frame().await.expect("frame") {
        ServerFrame::LabelSubscribed { .. } => {}
        other => panic!("expected subscribed, got {other:?}"),
    }

    // The relay's own announcement path, for a session outside the patterns, then one inside.
    let store = agentwire_valkey::HistoryStore::connect(
        &stack.env.valkey_url,
        agentwire_valkey::HistorySettings::default(),
    )
    .await
    .expect("valkey");
    let channel = agentwire_valkey::keys::label_channel(&allowed.tenant, label.as_str());
    for (session, offset) in [(&hidden, 1), (&allowed, 2)] {
        let json = json!({
            "op": "enriched",
            "session": session.to_string(),
            "offset": offset,
            "labels": [{"label": "billing", "score": 0.9}],
        })
        .to_string();
        store
            .annotate(&agentwire_valkey::Annotation {
                session,
                offset: Offset(offset),
                version: "m@00000000",
                unversioned_as: "m",
                json: &json,
                label_channels: std::slice::from_ref(&channel),
                force: true,
                meta: "",
            })
            .await
            .expect("annotate");
    }
    let frame = tokio::time::timeout(LIMIT, ws.next_frame())
        .await
        .expect("in time")
        .expect("frame");
    match frame {
        ServerFrame::Enriched { session, .. } => assert_eq!(
            session, allowed,
            "the hidden session's annotation was delivered"
        ),
        other => panic!("expected an annotation, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrower_refreshed_token_ends_the_follows_it_does_not_allow() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let kept = stack.session("kept");
    let revoked = SessionKey::parse_parts(&stack.tenant, "coder", "revoked").expect("key");
    let wide = hs256(&stack.tenant, 300, json!({}));
    let mut ws = WsConnection::connect(&format!("{}?token={wide}", stack.ws_url))
        .await
        .expect("connect");
    ws.subscribe(&kept, None).await.expect("kept");
    ws.subscribe(&revoked, None)
        .await
        .expect("revoked, for now");

    let narrow = hs256(&stack.tenant, 300, json!({"subscribe": ["planner:*"]}));
    ws.send(&ClientFrame::Refresh { token: narrow })
        .await
        .expect("send");
    match ws.next_frame().await.expect("frame") {
        ServerFrame::Refreshed { .. } => {}
        other => panic!("expected refreshed, got {other:?}"),
    }
    let frame = tokio::time::timeout(LIMIT, ws.next_frame())
        .await
        .expect("the revoked follow's error in time")
        .expect("frame");
    match frame {
        ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden, "{}", e.message);
            assert_eq!(e.session.as_ref(), Some(&revoked), "{}", e.message);
        }
        other => panic!("expected the revoked follow's error, got {other:?}"),
    }
    // The revoked follow is gone from the connection; the kept one is still there.
    let err = ws
        .unsubscribe(&revoked)
        .await
        .expect_err("no longer followed");
    assert_eq!(err.code(), Some(ErrorCode::NotSubscribed));
    ws.unsubscribe(&kept).await.expect("still followed");
    let err = ws.subscribe(&revoked, None).await.expect_err("not allowed");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_gateway_log_even_at_debug() {
    let stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentwire"));
    command
        .args(["gateway", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "debug")
        .env("AGENTWIRE_KAFKA_BROKERS", &stack.env.kafka_brokers)
        .env("AGENTWIRE_TOPIC", &stack.topic)
        .env("AGENTWIRE_VALKEY_URL", &stack.env.valkey_url)
        .env("AGENTWIRE_AUTH", "jwt")
        .env("AGENTWIRE_JWT_HS256_SECRET", SECRET);
    let gateway = ChildProcess::spawn("gateway", command);
    let http_url = format!("http://127.0.0.1:{port}");
    wait_until(LIMIT, "the gateway to serve", || {
        let url = format!("{http_url}/healthz");
        async move {
            reqwest::get(url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;

    let token = hs256(&stack.tenant, 300, json!({}));
    let session = stack.session("logged");
    let client = reqwest::Client::new();
    let history = format!(
        "{http_url}/v1/sessions/{}/{}/{}/events",
        session.tenant, session.agent_type, session.session_id
    );
    // A query token where it is refused, a bearer token where it is expected.
    let refused = client
        .get(format!("{history}?after=0&token={token}"))
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status().as_u16(), 401);
    let served = client
        .get(format!("{history}?after=0"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_eq!(served.status().as_u16(), 200);
    // The WebSocket upgrade, where a query token is accepted, and a refresh inside it.
    let mut ws = WsConnection::connect(&format!("ws://127.0.0.1:{port}/v1/ws?token={token}"))
        .await
        .expect("connect");
    ws.subscribe(&session, None).await.expect("subscribe");
    ws.send(&ClientFrame::Refresh {
        token: token.clone(),
    })
    .await
    .expect("send");
    match ws.next_frame().await.expect("frame") {
        ServerFrame::Refreshed { .. } => {}
        other => panic!("expected refreshed, got {other:?}"),
    }
    ws.close().await.expect("close");

    // The requests were logged (with the token redacted), and the token is nowhere.
    let log = wait_until(LIMIT, "the upgrade's request to be logged", || {
        let log = gateway.log();
        async move { log.contains("/v1/ws?token=REDACTED").then_some(log) }
    })
    .await;
    let signature = token.rsplit('.').next().expect("signature");
    assert!(
        !log.contains(&token) && !log.contains(signature),
        "the token reached the gateway's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_with_short_lived_tokens_keeps_receiving_past_their_expiry() {
    let mut stack = Stack::configured(TestEnv::from_env(), 1, secured).await;
    stack.spawn_relay();
    let session = stack.session("long-lived");
    let minted = Arc::new(AtomicUsize::new(0));
    let provider = {
        let (tenant, minted) = (stack.tenant.clone(), minted.clone());
        TokenProvider::new(move || {
            minted.fetch_add(1, Ordering::SeqCst);
            hs256(&tenant, 4, json!({}))
        })
    };
    let config = SubscriberConfig {
        token: Some(provider),
        ..SubscriberConfig::default()
    };
    let first_expiry = now() + 4;
    let mut subscriber =
        Subscriber::connect_with(stack.ws_url.clone(), vec![(session.clone(), None)], config)
            .await
            .expect("connect with the provider's token");
    let publisher = stack
        .http()
        .with_token(hs256(&stack.tenant, 300, json!({})));

    // Publish and receive one event at a time until well past the first token's expiry.
    let mut n = 0;
    while now() <= first_expiry + 2 {
        n += 1;
        publish_and_receive(&publisher, &mut subscriber, &session, n).await;
    }
    assert_eq!(
        subscriber.reconnects(),
        0,
        "the connection outlived its first token through in-connection refreshes"
    );
    assert!(
        minted.load(Ordering::SeqCst) >= 3,
        "tokens minted: {}",
        minted.load(Ordering::SeqCst)
    );

    // A reconnection after the first token expired authenticates with a fresh one.
    subscriber.drop_connection();
    publish_and_receive(&publisher, &mut subscriber, &session, n + 1).await;
    assert_eq!(subscriber.reconnects(), 1);
}

/// Publishes event `n` and reads it back from `subscriber`.
async fn publish_and_receive(
    publisher: &agentwire_client::HttpClient,
    subscriber: &mut Subscriber,
    session: &SessionKey,
    n: u64,
) {
    publisher
        .publish(&event(session, "p", n, "tick"))
        .await
        .expect("publish");
    let delivery = tokio::time::timeout(LIMIT, subscriber.next())
        .await
        .expect("delivered in time")
        .expect("delivered");
    assert_eq!(
        delivery.event.correlation_id.as_deref(),
        Some(format!("p-{n}").as_str())
    );
}
