//! Every kind of bad input a client can send gets a clear answer, and leaves the connection
//! (where the protocol allows) and the server healthy.

mod common;

use agentwire_client::WsConnection;
use agentwire_protocol::{ErrorCode, ServerFrame};
use common::{LIMIT, Stack};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

async fn post(stack: &Stack, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_a_status_and_a_coded_body() {
    let stack = Stack::without_relay(1).await;
    let json = "application/cloudevents+json";
    let cases: Vec<(&str, String, u16, &str, Option<&str>)> = vec![
        (json, "{not json".into(), 400, "malformed", None),
        (
            json,
            r#"{"type":"agent.message","agenttype":"a","sessionid":"s"}"#.into(),
            400,
            "invalid_field",
            Some("tenant"),
        ),
        (
            json,
            r#"{"type":"Agent.Oops","tenant":"t","agenttype":"a","sessionid":"s"}"#.into(),
            400,
            "invalid_field",
            Some("type"),
        ),
        (
            json,
            r#"{"type":"agent.message","tenant":"t:x","agenttype":"a","sessionid":"s"}"#.into(),
            400,
            "invalid_field",
            Some("tenant"),
        ),
        (json, "[]".into(), 400, "invalid_field", None),
        (
            "text/plain",
            "hello".into(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "application/x-protobuf",
            "\u{7f}garbage".into(),
            400,
            "malformed",
            None,
        ),
    ];
    for (content_type, body, status, want_code, field) in cases {
        let (got_status, got) = post(&stack, content_type, body.clone()).await;
        assert_eq!(
            (got_status, code(&got)),
            (status, want_code),
            "{body}: {got}"
        );
        if let Some(field) = field {
            assert_eq!(got["error"]["field"], field, "{body}: {got}");
        }
        assert!(
            !got["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }

    let huge = format!(
        r#"{{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s","data":"{}"}}"#,
        "x".repeat(1100 * 1024)
    );
    let (status, body) = post(&stack, json, huge).await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"));

    let client = reqwest::Client::new();
    let history = |query: &str| format!("{}/v1/sessions/t/a/s/events{query}", stack.http_url);
    for (url, status, want) in [
        (history("?limit=0"), 400, "invalid_field"),
        (history("?after=-3"), 400, "invalid_field"),
        (history("?bogus=1"), 400, "invalid_field"),
        (
            format!("{}/v1/sessions/t:x/a/s/events", stack.http_url),
            400,
            "invalid_field",
        ),
        (
            format!("{}/v1/nothing-here", stack.http_url),
            404,
            "not_found",
        ),
    ] {
        let response = client.get(&url).send().await.expect("get");
        let got_status = response.status().as_u16();
        let body: Value = response.json().await.expect("json");
        assert_eq!((got_status, code(&body)), (status, want), "{url}: {body}");
    }
    let health = client
        .get(format!("{}/healthz", stack.http_url))
        .send()
        .await
        .expect("healthz");
    assert!(health.status().is_success());
}

async fn expect_error(conn: &mut WsConnection, want: ErrorCode) {
    let frame = tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("an answer")
        .expect("a frame");
    match frame {
        ServerFrame::Error(e) => assert_eq!(e.code, want, "{e:?}"),
        other => panic!("expected an error frame {want}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_frames_get_error_frames_and_the_connection_stays_usable() {
    let stack = Stack::without_relay(1).await;
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    for (text, want) in [
        ("{not json", ErrorCode::Malformed),
        (r#"{"op":"dance"}"#, ErrorCode::UnknownOp),
        (
            r#"{"op":"subscribe","session":"only:two"}"#,
            ErrorCode::InvalidField,
        ),
        (
            r#"{"op":"unsubscribe","session":"a:b:c"}"#,
            ErrorCode::NotSubscribed,
        ),
        (
            r#"{"op":"publish","event":{"type":"agent.x","tenant":"t"}}"#,
            ErrorCode::InvalidField,
        ),
        (
            r#"{"op":"publish","event":{"type":"nope","tenant":"t","agenttype":"a","sessionid":"s"}}"#,
            ErrorCode::InvalidField,
        ),
    ] {
        conn.send_text(text).await.expect("send");
        expect_error(&mut conn, want).await;
    }
    conn.send(&agentwire_protocol::ClientFrame::Ping)
        .await
        .expect("ping");
    let pong = tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("pong in time")
        .expect("frame");
    assert!(matches!(pong, ServerFrame::Pong), "{pong:?}");

    // Binary garbage is not a protobuf frame: an error frame (in protobuf), then a ping works.
    let (mut raw, _) = tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("connect raw");
    raw.send(Message::binary(vec![0xff, 0x00, 0x13, 0x37]))
        .await
        .expect("send garbage");
    let answer = tokio::time::timeout(LIMIT, raw.next())
        .await
        .expect("answer")
        .expect("open")
        .expect("read");
    let Message::Binary(bytes) = answer else {
        panic!("expected a binary answer, got {answer:?}")
    };
    let frame = <agentwire_protocol::pb::ServerFrame as prost::Message>::decode(bytes.as_ref())
        .expect("protobuf frame");
    let Some(agentwire_protocol::pb::server_frame::Op::Error(error)) = frame.op else {
        panic!("not an error: {frame:?}")
    };
    assert_eq!(error.code, "malformed");

    // A message over the limit closes with 1009; the server stays up for others.
    raw.send(Message::text("x".repeat(100 * 1024)))
        .await
        .expect("send oversize");
    let closed = loop {
        match tokio::time::timeout(LIMIT, raw.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1009));
    let mut again = WsConnection::connect(&stack.ws_url)
        .await
        .expect("reconnect");
    again
        .send(&agentwire_protocol::ClientFrame::Ping)
        .await
        .expect("ping");
    let pong = tokio::time::timeout(LIMIT, again.next_frame())
        .await
        .expect("pong")
        .expect("frame");
    assert!(matches!(pong, ServerFrame::Pong));
}

/// A cursor Kafka can never assign (above `i64::MAX`) is refused with `invalid_field` naming
/// `after`; the largest one it can is answered with nothing. Neither may panic the handler
/// (debug) or wrap around to the start of the log (release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_cursors_are_refused_or_answered_empty() {
    let stack = Stack::without_relay(1).await;
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/sessions/{}/planner/absurd/events",
        stack.http_url, stack.tenant
    );
    let largest = i64::MAX.to_string();
    for (after, status, field) in [
        (u64::MAX.to_string(), 400, Some("after")),
        ((i64::MAX as u64 + 1).to_string(), 400, Some("after")),
        ("18446744073709551616".to_owned(), 400, None),
        (largest.clone(), 200, None),
    ] {
        let response = client
            .get(format!("{url}?after={after}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("after={after}: no answer: {e}"));
        let got_status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(got_status, status, "after={after}: {body}");
        if status == 400 {
            assert_eq!(code(&body), "invalid_field", "after={after}: {body}");
            if let Some(field) = field {
                assert_eq!(body["error"]["field"], field, "after={after}: {body}");
            }
        } else {
            assert_eq!(
                body["events"],
                serde_json::json!([]),
                "after={after}: {body}"
            );
        }
    }

    let session = stack.session("absurd");
    let mut conn = WsConnection::connect(&stack.ws_url).await.expect("connect");
    conn.send_text(&format!(
        r#"{{"op":"subscribe","session":"{session}","after":{}}}"#,
        u64::MAX
    ))
    .await
    .expect("send");
    expect_error(&mut conn, ErrorCode::InvalidField).await;
    conn.send_text(&format!(
        r#"{{"op":"subscribe","session":"{session}","after":{largest}}}"#
    ))
    .await
    .expect("send");
    let subscribed = tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("an answer")
        .expect("a frame");
    assert!(
        matches!(subscribed, ServerFrame::Subscribed { .. }),
        "{subscribed:?}"
    );
    // The catch-up after the largest cursor ends (nothing follows it) and the connection lives.
    conn.send(&agentwire_protocol::ClientFrame::Ping)
        .await
        .expect("ping");
    let pong = tokio::time::timeout(LIMIT, conn.next_frame())
        .await
        .expect("pong in time")
        .expect("frame");
    assert!(matches!(pong, ServerFrame::Pong), "{pong:?}");
}
