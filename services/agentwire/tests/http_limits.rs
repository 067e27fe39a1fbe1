//! The plain HTTP server's limits: a client that sends its request head slowly (slowloris)
//! or its body slowly is cut off, and the gateway serves everyone else meanwhile; a wrong
//! method gets the coded JSON error body every other error has.

mod common;

use std::time::{Duration, Instant};

use agentwire_test_support::TestEnv;
use common::{LIMIT, Stack};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const HEADER_TIMEOUT_SECS: u64 = 2;
const BODY_TIMEOUT_SECS: u64 = 2;

async fn limited_stack() -> Stack {
    Stack::configured(TestEnv::from_env(), 1, |config| {
        config.http_header_timeout_secs = HEADER_TIMEOUT_SECS;
        config.http_body_timeout_secs = BODY_TIMEOUT_SECS;
    })
    .await
}

fn address(stack: &Stack) -> String {
    stack
        .http_url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned()
}

async fn healthy(stack: &Stack) {
    let response = reqwest::Client::new()
        .get(format!("{}/healthz", stack.http_url))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("healthz answers");
    assert!(response.status().is_success());
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
async fn read_to_close(reader: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_and_others_are_served() {
    let stack = limited_stack().await;
    let started = Instant::now();
    let stream = TcpStream::connect(address(&stack)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write the start of a head");
    // The client paces its own writes: one byte of a never-ending header per second.
    let dribble = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        loop {
            pace.tick().await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    let closed = tokio::spawn(async move { read_to_close(&mut reader).await });

    // Meanwhile others are served.
    healthy(&stack).await;

    let received = tokio::time::timeout(LIMIT, closed)
        .await
        .expect("the server closed the slow connection")
        .expect("reader task");
    let after = started.elapsed();
    println!(
        "slowloris connection closed after {after:?} (header timeout {HEADER_TIMEOUT_SECS} s), \
         {} bytes answered",
        received.len()
    );
    dribble.abort();
    assert!(
        after < Duration::from_secs(HEADER_TIMEOUT_SECS * 5),
        "closed only after {after:?}"
    );
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "the slow request was not served"
    );
    healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let stack = limited_stack().await;
    let stream = TcpStream::connect(address(&stack)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"type\":",
        )
        .await
        .expect("write a head and part of the body");
    let started = Instant::now();
    let received = tokio::time::timeout(LIMIT, read_to_close(&mut reader))
        .await
        .expect("an answer in time");
    println!("answered after {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_gets_a_coded_405() {
    let stack = Stack::without_relay(1).await;
    let client = reqwest::Client::new();
    for request in [
        client.get(format!("{}/v1/events", stack.http_url)),
        client.post(format!("{}/healthz", stack.http_url)),
        client.delete(format!("{}/v1/sessions/t/a/s/events", stack.http_url)),
    ] {
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status().as_u16(), 405);
        assert!(response.headers().contains_key("allow"), "{response:?}");
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }
}

/// Sends a keep-alive `GET /healthz` on `stream` and reads the answer's status line.
async fn ask_health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write a request");
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.expect("an answer");
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_wait_until_one_closes() {
    const CAP: usize = 3;
    let stack = Stack::configured(TestEnv::from_env(), 1, |config| {
        config.max_http_connections = CAP;
    })
    .await;
    // Two keep-alive HTTP connections and a WebSocket (an upgraded connection keeps its place).
    let mut held = Vec::new();
    for _ in 0..CAP - 1 {
        let mut stream = TcpStream::connect(address(&stack)).await.expect("connect");
        assert_eq!(ask_health(&mut stream).await, "HTTP/1.1 200 OK");
        held.push(stream);
    }
    let socket = agentwire_client::WsConnection::connect(&stack.ws_url)
        .await
        .expect("a WebSocket within the cap");

    // The next connection is not accepted: its request waits in the kernel's backlog.
    let mut waiting = TcpStream::connect(address(&stack)).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write a request");
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_secs(1), waiting.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a connection over the cap was served: {early:?}"
    );

    // Closing the WebSocket frees its place: the waiting request is served.
    drop(socket);
    let n = tokio::time::timeout(LIMIT, waiting.read(&mut buf))
        .await
        .expect("served once a place is free")
        .expect("an answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // The held connections were served all along.
    for stream in &mut held {
        assert_eq!(ask_health(stream).await, "HTTP/1.1 200 OK");
    }
}
