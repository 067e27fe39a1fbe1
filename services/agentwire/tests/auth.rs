//! Authentication and tenant isolation on the real stack: HTTP 401 before anything (and
//! before the WebSocket upgrade), 403 for another tenant's sessions whatever a frame says,
//! the Origin allow-list, the per-tenant connection limit, HS256, RS256 and JWKS tokens,
//! and expiry during a connection (close 4001) unless refreshed.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentwire_client::{ClientError, WsConnection};
use agentwire_gateway::GatewayConfig;
use agentwire_gateway::auth::{AuthArgs, AuthMode};
use agentwire_protocol::{ClientFrame, ErrorCode, Label, ServerFrame, SessionKey};
use agentwire_test_support::{TestEnv, unique, wait_until};
use common::{LIMIT, Stack, event};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &str = "test-only-secret";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

    // History takes the token as a query parameter too.
    let history = |session: &SessionKey, token: &str| {
        let url = format!(
            "{}/v1/sessions/{}/{}/{}/events?after=0&token={token}",
            stack.http_url, session.tenant, session.agent_type, session.session_id
        );
        async move { reqwest::get(url).await.expect("get").status().as_u16() }
    };
    assert_eq!(history(&mine, &token).await, 200);
    assert_eq!(history(&theirs, &token).await, 403);

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
