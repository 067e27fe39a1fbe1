//! The adversarial battery (issue 11, "Done when"): every attack a client (or whoever can reach
//! Valkey) can mount against the real stack, each ending with the gateway still serving a fresh
//! client (publish over HTTP, receive over a new WebSocket subscription) and, where the attack
//! would otherwise make the gateway buffer without bound, with the process's RSS still bounded.
//! The gateway runs in this process, so `VmRSS` is the gateway's plus the test's own.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentwire_client::WsConnection;
use agentwire_gateway::GatewayConfig;
use agentwire_protocol::{Offset, ServerFrame, cloudevents};
use agentwire_test_support::{TestEnv, unique};
use common::{LIMIT, Stack, event};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Growth of the process's RSS an attack may cause. The attacks below would make an unbounded
/// gateway buffer hundreds of MiB to gigabytes (a 64 MiB body, a 16 MiB frame, 16 MiB of events
/// queued for a reader that never reads); a bounded one stays far below this.
const RSS_BOUND: u64 = 256 * 1024 * 1024;

const HEADER_TIMEOUT_SECS: u64 = 2;

type RawWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A stack with a relay, the gateway configured by `tweak`.
async fn stack_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Stack {
    let mut stack = Stack::configured(TestEnv::from_env(), 1, tweak).await;
    stack.spawn_relay();
    stack
}

/// The process's resident set size, in bytes (`VmRSS` of `/proc/self/status`).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// Prints RSS before and after `attack` and asserts it grew less than [`RSS_BOUND`].
fn assert_rss_bounded(attack: &str, before: u64) {
    let after = rss();
    let growth = after.saturating_sub(before);
    println!(
        "{attack}: RSS before {} MiB, after {} MiB, growth {} MiB (bound {} MiB)",
        before >> 20,
        after >> 20,
        growth >> 20,
        RSS_BOUND >> 20
    );
    assert!(
        growth < RSS_BOUND,
        "{attack}: RSS grew by {} MiB: the gateway buffered what it should have refused",
        growth >> 20
    );
}

/// The gateway still works for a fresh client: a new WebSocket subscription receives an event
/// published over HTTP after it.
async fn assert_healthy(stack: &Stack) {
    let session = stack.session(&unique("health"));
    let mut ws = tokio::time::timeout(LIMIT, WsConnection::connect(&stack.ws_url))
        .await
        .expect("a fresh WebSocket connects in time")
        .expect("a fresh WebSocket connects");
    tokio::time::timeout(LIMIT, ws.subscribe(&session, None))
        .await
        .expect("subscribed in time")
        .expect("subscribe");
    let ack = tokio::time::timeout(
        LIMIT,
        stack.http().publish(&event(&session, "h", 1, "alive")),
    )
    .await
    .expect("published in time")
    .expect("publish over HTTP");
    loop {
        let frame = tokio::time::timeout(LIMIT, ws.next_frame())
            .await
            .expect("the health event in time")
            .expect("a frame");
        if let ServerFrame::Event {
            session: got,
            offset,
            event,
        } = frame
        {
            assert_eq!((got, offset), (session.clone(), ack.offset));
            assert!(event.get().contains("alive"), "{}", event.get());
            return;
        }
    }
}

async fn raw_ws(stack: &Stack) -> (SplitSink<RawWs, Message>, SplitStream<RawWs>) {
    let (ws, _) = tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("connect");
    ws.split()
}

/// What a connection answered, by kind (`pong`, `subscribed`, `error:<code>`, ...), and how it
/// ended if it did.
#[derive(Debug, Default)]
struct Tally {
    kinds: BTreeMap<String, usize>,
    close: Option<u16>,
    ended: bool,
}

impl Tally {
    fn total(&self) -> usize {
        self.kinds.values().sum()
    }

    fn get(&self, kind: &str) -> usize {
        self.kinds.get(kind).copied().unwrap_or(0)
    }
}

fn kind_of_json(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    match value["op"].as_str() {
        Some("error") => format!("error:{}", value["code"].as_str().unwrap_or("?")),
        Some(op) => op.to_owned(),
        None => format!("unparsable:{text}"),
    }
}

fn kind_of_protobuf(bytes: &[u8]) -> String {
    use agentwire_protocol::pb::server_frame::Op;
    match <agentwire_protocol::pb::ServerFrame as prost::Message>::decode(bytes) {
        Ok(frame) => match frame.op {
            Some(Op::Error(error)) => format!("error:{}", error.code),
            Some(other) => format!("{other:?}")
                .split('(')
                .next()
                .unwrap_or("?")
                .to_owned(),
            None => "empty".to_owned(),
        },
        Err(err) => format!("undecodable:{err}"),
    }
}

/// Reads answers until `expected` arrived, the connection closed, or nothing came for
/// [`LIMIT`].
fn spawn_tally(mut stream: SplitStream<RawWs>, expected: usize) -> JoinHandle<Tally> {
    tokio::spawn(async move {
        let mut tally = Tally::default();
        while tally.total() < expected {
            let kind = match tokio::time::timeout(LIMIT, stream.next()).await {
                Err(_) => panic!("no answer for {LIMIT:?}; so far {tally:?}"),
                Ok(None | Some(Err(_))) => {
                    tally.ended = true;
                    break;
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    tally.close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    break;
                }
                Ok(Some(Ok(Message::Text(text)))) => kind_of_json(&text),
                Ok(Some(Ok(Message::Binary(bytes)))) => kind_of_protobuf(&bytes),
                Ok(Some(Ok(_))) => continue,
            };
            *tally.kinds.entry(kind).or_default() += 1;
        }
        tally
    })
}

/// The next message that is not a control frame, or `None` once the connection ended.
async fn next_data(stream: &mut SplitStream<RawWs>) -> Option<Message> {
    loop {
        match tokio::time::timeout(LIMIT, stream.next())
            .await
            .expect("an answer in time")
        {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(message)) => return Some(message),
        }
    }
}

fn close_code(message: Option<&Message>) -> Option<u16> {
    match message {
        Some(Message::Close(frame)) => frame.as_ref().map(|f| u16::from(f.code)),
        _ => None,
    }
}

async fn post(stack: &Stack, body: impl Into<reqwest::Body>) -> Result<(u16, Value), String> {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/events", stack.http_url))
        .header("content-type", "application/cloudevents+json")
        .body(body)
        .timeout(LIMIT)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response.json().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, body))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn event_json_with_data(data: &str) -> String {
    format!(
        r#"{{"type":"agent.message","tenant":"t","agenttype":"a","sessionid":"s","data":{data}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_json_is_refused_without_buffering_it() {
    let stack = stack_with(|_| {}).await;
    let before = rss();

    // Over AGENTWIRE_MAX_BODY_BYTES with a Content-Length: 413.
    let body = event_json_with_data(&format!("\"{}\"", "x".repeat(2 * 1024 * 1024)));
    let (status, answer) = post(&stack, body).await.expect("an answer");
    assert_eq!(
        (status, code(&answer)),
        (413, "payload_too_large"),
        "{answer}"
    );

    // 64 MiB streamed without a length (chunked): refused once the limit is passed, not
    // buffered to the end.
    let address = stack.http_url.strip_prefix("http://").expect("an http URL");
    let (mut reader, mut writer) = TcpStream::connect(address)
        .await
        .expect("connect")
        .into_split();
    let upload = tokio::spawn(async move {
        let head = "POST /v1/events HTTP/1.1\r\nHost: x\r\n\
                    Content-Type: application/cloudevents+json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        writer.write_all(head.as_bytes()).await.expect("head");
        let mut chunk = format!("{:x}\r\n", 1024 * 1024).into_bytes();
        chunk.extend(std::iter::repeat_n(b' ', 1024 * 1024));
        chunk.extend_from_slice(b"\r\n");
        let mut sent = 0usize;
        for _ in 0..64 {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(LIMIT, reader.read(&mut buf))
            .await
            .expect("an answer to the streamed body in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&received).contains("payload_too_large") {
                    break;
                }
            }
        }
    }
    upload.abort();
    let sent = upload.await.unwrap_or(0);
    let answer = String::from_utf8_lossy(&received);
    println!(
        "streamed body: {sent} MiB written (0 if the upload was still blocked) before the \
         server answered {:?}",
        answer.lines().next().unwrap_or("")
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // Over max_frame_bytes on a WebSocket: close 1009, for one byte over and for 16 MiB.
    for size in [64 * 1024 + 1, 16 * 1024 * 1024] {
        let (mut sink, mut stream) = raw_ws(&stack).await;
        let sent = sink.send(Message::text("x".repeat(size))).await;
        let answer = next_data(&mut stream).await;
        println!("{size} byte frame: send {sent:?}, answer {answer:?}");
        assert_eq!(
            close_code(answer.as_ref()),
            Some(1009),
            "{size} bytes: {answer:?}"
        );
    }

    assert_rss_bounded("oversized JSON", before);
    assert_healthy(&stack).await;
}

/// Nesting where the gateway parses structure (the event, the frame) is refused with a coded
/// error. Nesting inside `data` is opaque payload: it is checked to be JSON without recursion
/// and stored as it came, so there it is accepted, and then an acknowledged event must be
/// delivered whole like any other (never acked and lost downstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_a_clear_error_or_opaque_data_not_a_stack_overflow() {
    let stack = stack_with(|config| config.max_frame_bytes = 1024 * 1024).await;
    let depth = 100_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let session = stack.session("nested");
    let with_data = |data: &str| {
        format!(
            r#"{{"type":"agent.message","tenant":"{}","agenttype":"planner","sessionid":"nested","data":{data}}}"#,
            stack.tenant
        )
    };
    let mut follower = WsConnection::connect(&stack.ws_url).await.expect("connect");
    follower.subscribe(&session, None).await.expect("subscribe");
    let before = rss();

    // Structure the gateway parses: refused.
    for (what, body) in [
        ("a nested array as the body", arrays.clone()),
        ("a nested object as the body", objects.clone()),
        (
            "a nested array as the tenant",
            format!(
                r#"{{"type":"agent.message","tenant":{arrays},"agenttype":"a","sessionid":"s"}}"#
            ),
        ),
    ] {
        let (status, answer) = post(&stack, body).await.expect("an answer, not a crash");
        println!("HTTP {what}: {status} {answer}");
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(
            !code(&answer).is_empty(),
            "{what}: an uncoded answer {answer}"
        );
    }
    // Opaque data: accepted over HTTP, then delivered whole.
    for (what, data) in [("arrays", &arrays), ("objects", &objects)] {
        let (status, answer) = post(&stack, with_data(data))
            .await
            .expect("an answer, not a crash");
        println!("HTTP {depth} nested {what} in data: {status} {answer}");
        assert_eq!(status, 200, "{what} in data: {answer}");
        let offset = answer["offset"].as_u64().expect("an acked offset");
        match tokio::time::timeout(LIMIT, follower.next_frame())
            .await
            .expect("the nested event delivered in time")
            .expect("a frame")
        {
            ServerFrame::Event {
                offset: got, event, ..
            } => {
                assert_eq!(got, Offset(offset));
                assert!(event.get().contains(data.as_str()), "{what}: data changed");
            }
            other => panic!("{what}: expected the event, got {other:?}"),
        }
    }

    let (mut sink, stream) = raw_ws(&stack).await;
    let refused = [
        format!(r#"{{"op":"subscribe","session":{arrays}}}"#),
        format!(r#"{{"op":"publish","event":{arrays}}}"#),
        format!(r#"{{"op":"publish","event":{objects}}}"#),
        arrays.clone(),
        objects.clone(),
    ];
    let accepted = format!(r#"{{"op":"publish","event":{}}}"#, with_data(&arrays));
    let tally = spawn_tally(stream, refused.len() + 2);
    for frame in &refused {
        sink.send(Message::text(frame.clone())).await.expect("send");
    }
    sink.send(Message::text(accepted)).await.expect("send");
    sink.send(Message::text(r#"{"op":"ping"}"#))
        .await
        .expect("ping after the nesting");
    let tally = tally.await.expect("tally");
    println!("WebSocket nested frames: {tally:?}");
    let errors: usize = tally
        .kinds
        .iter()
        .filter(|(kind, _)| kind.starts_with("error:"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        errors,
        refused.len(),
        "one error frame per nested frame: {tally:?}"
    );
    assert_eq!(
        tally.get("ack"),
        1,
        "nested data published over WebSocket: {tally:?}"
    );
    assert_eq!(
        tally.get("pong"),
        1,
        "the connection stays usable: {tally:?}"
    );
    match tokio::time::timeout(LIMIT, follower.next_frame())
        .await
        .expect("the nested event delivered in time")
        .expect("a frame")
    {
        ServerFrame::Event { event, .. } => {
            assert!(event.get().contains(arrays.as_str()), "data changed");
        }
        other => panic!("expected the event, got {other:?}"),
    }

    assert_rss_bounded("deeply nested JSON", before);
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_closes_with_1002_or_is_refused() {
    let stack = stack_with(|_| {}).await;
    let (mut sink, mut stream) = raw_ws(&stack).await;
    let invalid: &[u8] = b"{\"op\":\"ping\",\"x\":\"\xff\xfe\xc3\x28\"}";
    sink.send(Message::Frame(Frame::message(
        invalid.to_vec(),
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .expect("send the raw frame");
    let answer = next_data(&mut stream).await;
    println!("invalid UTF-8 text frame: {answer:?}");
    match &answer {
        Some(Message::Close(_)) => assert_eq!(close_code(answer.as_ref()), Some(1002)),
        Some(Message::Text(text)) => {
            assert!(kind_of_json(text).starts_with("error:"), "{text}");
        }
        other => panic!("expected close 1002 or an error frame, got {other:?}"),
    }
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_garbage_gets_error_frames_and_reserved_opcodes_close() {
    const FRAMES: usize = 1000;
    let stack = stack_with(|_| {}).await;
    let before = rss();
    let (mut sink, stream) = raw_ws(&stack).await;
    let tally = spawn_tally(stream, FRAMES);
    // Deterministic garbage; the leading 0xff is a protobuf key with the invalid wire type 7,
    // so no frame can decode by chance.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..FRAMES {
        let mut garbage = vec![0xff];
        for _ in 0..(n % 512) + 1 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            garbage.push(state.to_be_bytes()[0]);
        }
        if sink.send(Message::binary(garbage)).await.is_err() {
            break;
        }
    }
    let tally = tally.await.expect("tally");
    println!("binary garbage: {tally:?}");
    let answered = tally.get("error:malformed") + tally.get("error:rate_limited");
    assert!(
        answered == FRAMES || tally.close == Some(1008),
        "every garbage frame answered malformed/rate_limited, or the abuser closed: {tally:?}"
    );

    // A reserved data opcode is a protocol error: close 1002.
    let (mut sink, mut stream) = raw_ws(&stack).await;
    sink.send(Message::Frame(Frame::message(
        vec![1, 2, 3],
        OpCode::Data(Data::Reserved(3)),
        true,
    )))
    .await
    .expect("send a reserved opcode");
    let answer = next_data(&mut stream).await;
    println!("reserved opcode: {answer:?}");
    assert_eq!(close_code(answer.as_ref()), Some(1002), "{answer:?}");

    assert_rss_bounded("binary garbage", before);
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_subscriptions_on_one_connection_stop_at_the_limit() {
    const MAX: usize = 1000;
    const ASKED: usize = 5000;
    let stack = stack_with(|config| config.max_subscriptions = MAX).await;
    let before = rss();
    let (mut sink, stream) = raw_ws(&stack).await;
    let tally = spawn_tally(stream, ASKED);
    for n in 0..ASKED {
        let session = stack.session(&format!("many-{n}"));
        sink.send(Message::text(format!(
            r#"{{"op":"subscribe","session":"{session}"}}"#
        )))
        .await
        .expect("send");
    }
    let tally = tally.await.expect("tally");
    println!("{ASKED} subscriptions: {tally:?}");
    assert_eq!(tally.get("subscribed"), MAX, "{tally:?}");
    assert_eq!(
        tally.get("error:too_many_subscriptions"),
        ASKED - MAX,
        "{tally:?}"
    );
    assert_rss_bounded("5,000 subscriptions", before);
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_cursors_are_refused_or_answered_empty() {
    let stack = stack_with(|_| {}).await;
    let session = stack.session("cursors");
    let ack = stack
        .http()
        .publish(&event(&session, "p", 1, "before the cursors"))
        .await
        .expect("publish");
    let url = format!(
        "{}/v1/sessions/{}/planner/cursors/events",
        stack.http_url, stack.tenant
    );
    let client = reqwest::Client::new();
    for (after, want) in [
        (u64::MAX.to_string(), 400),
        ("18446744073709551616".to_owned(), 400),
        ((i64::MAX as u64 + 1).to_string(), 400),
        (i64::MAX.to_string(), 200),
        ("-1".to_owned(), 400),
        (i64::MIN.to_string(), 400),
        ("abc".to_owned(), 400),
        ("1e3".to_owned(), 400),
        ("0x10".to_owned(), 400),
        (String::new(), 400),
    ] {
        let response = client
            .get(format!("{url}?after={after}"))
            .timeout(LIMIT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("after={after}: no answer: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(status, want, "after={after:?}: {body}");
        if want == 400 {
            assert_eq!(code(&body), "invalid_field", "after={after:?}: {body}");
        } else {
            assert_eq!(
                body["events"],
                serde_json::json!([]),
                "after={after:?}: {body}"
            );
        }
    }

    let (mut sink, stream) = raw_ws(&stack).await;
    let cursors = [
        u64::MAX.to_string(),
        "18446744073709551616".to_owned(),
        "-1".to_owned(),
        i64::MIN.to_string(),
        "\"abc\"".to_owned(),
        "1e30".to_owned(),
        "1.5".to_owned(),
        "\"18446744073709551615\"".to_owned(),
    ];
    let tally = spawn_tally(stream, cursors.len() + 1);
    for after in &cursors {
        sink.send(Message::text(format!(
            r#"{{"op":"subscribe","session":"{session}","after":{after}}}"#
        )))
        .await
        .expect("send");
    }
    // The largest cursor Kafka can assign: subscribed, and nothing (least of all the event
    // before it) follows.
    sink.send(Message::text(format!(
        r#"{{"op":"subscribe","session":"{session}","after":{}}}"#,
        i64::MAX
    )))
    .await
    .expect("send");
    let tally = tally.await.expect("tally");
    println!("WebSocket cursors: {tally:?}");
    let refused = tally.get("error:invalid_field") + tally.get("error:malformed");
    assert_eq!(
        refused,
        cursors.len(),
        "every absurd cursor refused: {tally:?}"
    );
    assert_eq!(tally.get("subscribed"), 1, "{tally:?}");
    assert_eq!(
        tally.get("event"),
        0,
        "event {} replayed: {tally:?}",
        ack.offset.0
    );
    assert_healthy(&stack).await;
}

/// Writes `head` one byte at a time, then a header value that never ends, pausing between
/// writes; returns once the server closed the connection, with what it answered.
async fn slowloris(stack: &Stack, head: &'static [u8]) -> JoinHandle<(Duration, Vec<u8>)> {
    let address = stack
        .http_url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_owned();
    let stream = TcpStream::connect(address).await.expect("connect");
    tokio::spawn(async move {
        let started = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        let dribble = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            for byte in head.iter().copied().chain(std::iter::repeat(b'a')) {
                pace.tick().await;
                if writer.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
        });
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(LIMIT, reader.read(&mut buf)).await {
                Err(_) => panic!("the slow connection was still open after {LIMIT:?}"),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            }
        }
        dribble.abort();
        (started.elapsed(), received)
    })
}

async fn slowloris_attack(what: &str, head: &'static [u8]) {
    const CLIENTS: usize = 10;
    let stack = stack_with(|config| config.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let mut attackers = Vec::new();
    for _ in 0..CLIENTS {
        attackers.push(slowloris(&stack, head).await);
    }
    // Others are served while the attackers dribble.
    assert_healthy(&stack).await;
    for attacker in attackers {
        let (after, received) = attacker.await.expect("attacker");
        let answer = String::from_utf8_lossy(&received);
        println!(
            "{what}: closed after {after:?} (header timeout {HEADER_TIMEOUT_SECS} s), answered {:?}",
            answer.lines().next().unwrap_or("")
        );
        assert!(
            !answer.contains("200 OK") && !answer.contains("101 Switching"),
            "{what}: the slow request was served: {answer}"
        );
    }
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_http_is_cut_off_and_others_are_served() {
    slowloris_attack(
        "HTTP slowloris",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_websocket_upgrade_is_cut_off_and_others_are_served() {
    slowloris_attack(
        "upgrade slowloris",
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Slow: ",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_answered_or_limited_and_the_gateway_stays_healthy() {
    const PINGS: usize = 20_000;
    let stack = stack_with(|_| {}).await;
    let before = rss();
    let (mut sink, stream) = raw_ws(&stack).await;
    let tally = spawn_tally(stream, PINGS);
    let mut sent = 0;
    for _ in 0..PINGS {
        if sink.send(Message::text(r#"{"op":"ping"}"#)).await.is_err() {
            break;
        }
        sent += 1;
    }
    let tally = tally.await.expect("tally");
    println!("ping flood: {sent} sent, {tally:?}");
    let answered = tally.get("pong") + tally.get("error:rate_limited");
    assert!(
        answered == PINGS || tally.close == Some(1008),
        "every ping answered (pong or rate_limited), or the flooder closed: {tally:?}"
    );

    // Control-frame pings as fast as possible, too.
    let (mut sink, mut stream) = raw_ws(&stack).await;
    let control = tokio::spawn(async move {
        for _ in 0..PINGS {
            if sink.send(Message::Ping(Default::default())).await.is_err() {
                break;
            }
        }
        sink
    });
    // Drain the pongs so the flooder is not held up by its own unread answers.
    let drained = tokio::spawn(async move {
        let mut pongs = 0usize;
        while let Ok(Some(Ok(message))) = tokio::time::timeout(LIMIT, stream.next()).await {
            if matches!(message, Message::Pong(_)) {
                pongs += 1;
            }
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        pongs
    });
    let mut sink = control.await.expect("control flood");
    println!("control ping flood sent");
    assert_healthy(&stack).await;
    let _ = sink.send(Message::Close(None)).await;
    let pongs = drained.await.expect("drained");
    println!("control ping flood: {pongs} pongs");
    assert_rss_bounded("ping flood", before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_bounded_and_later_gets_everything_in_order() {
    const EVENTS: u64 = 2000;
    const BATCH: u64 = 50;
    let stack = stack_with(|config| config.session_buffer = 16).await;
    let session = stack.session("never-reads");
    let mut idle = WsConnection::connect(&stack.ws_url).await.expect("connect");
    idle.subscribe(&session, None).await.expect("subscribe");
    let before = rss();

    let text = "x".repeat(8 * 1024);
    let http = stack.http();
    let mut acked: Vec<Offset> = Vec::new();
    for batch in 0..EVENTS / BATCH {
        let events: Vec<_> = (1..=BATCH)
            .map(|i| event(&session, "p", batch * BATCH + i, &text))
            .collect();
        acked.extend(
            http.publish_batch(&events)
                .await
                .expect("publish")
                .into_iter()
                .map(|a| a.offset),
        );
    }
    // Others are served while the reader sits on its backlog.
    assert_healthy(&stack).await;
    assert_rss_bounded("a reader that never reads (16 MiB published)", before);

    let mut got: Vec<Offset> = Vec::new();
    while got.len() < acked.len() {
        match tokio::time::timeout(LIMIT, idle.next_frame())
            .await
            .expect("the backlog in time")
            .expect("frame")
        {
            ServerFrame::Event { offset, .. } => got.push(offset),
            other => panic!("unexpected frame after {} events: {other:?}", got.len()),
        }
    }
    assert_eq!(got, acked, "every event once, in order");
    let lagged = stack
        .metric(r#"agentwire_gateway_catch_ups_total{reason="lagged"}"#)
        .await
        .unwrap_or(0.0);
    assert!(
        lagged >= 1.0,
        "the idle reader never fell behind its mailbox, so this attack proved nothing"
    );
    assert_healthy(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_valkey_publications_are_never_delivered() {
    const FLOOD: usize = 2000;
    let stack = stack_with(|_| {}).await;
    let session = stack.session("victim");
    let http = stack.http();
    let first = http
        .publish(&event(&session, "p", 1, "real-1"))
        .await
        .expect("publish");
    let mut ws = WsConnection::connect(&stack.ws_url).await.expect("connect");
    ws.subscribe(&session, Some(first.offset))
        .await
        .expect("subscribe");
    let before = rss();

    let forged = |offset: String| {
        format!(
            "{offset}\n{}",
            cloudevents::to_json(&event(&session, "p", 666, "FORGERY"))
        )
    };
    let next = first.offset.0 + 1;
    let mut payloads: Vec<Vec<u8>> = vec![
        // The very offset the next real event will get.
        forged(next.to_string()).into_bytes(),
        forged(first.offset.0.to_string()).into_bytes(),
        forged(u64::MAX.to_string()).into_bytes(),
        forged("-1".to_owned()).into_bytes(),
        forged("abc".to_owned()).into_bytes(),
        forged(String::new()).into_bytes(),
        format!("{next}").into_bytes(),
        format!("{next}\n").into_bytes(),
        format!("{next}\n{{not json").into_bytes(),
        b"\xff\xfe\n\xff".to_vec(),
        Vec::new(),
        format!("{next}\n{}", "[".repeat(100_000)).into_bytes(),
        format!("{next}\n\"{}\"", "x".repeat(4 * 1024 * 1024)).into_bytes(),
    ];
    for n in 0..FLOOD {
        payloads.push(forged((next + 1_000 + n as u64).to_string()).into_bytes());
    }
    let channel = agentwire_valkey::keys::channel(&session);
    let mut conn = stack.valkey().await;
    for payload in payloads {
        let _: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("publish");
    }

    // Only real events arrive, in order, at their real offsets.
    for n in 2..=4 {
        let ack = http
            .publish(&event(&session, "p", n, &format!("real-{n}")))
            .await
            .expect("publish");
        loop {
            let frame = tokio::time::timeout(LIMIT, ws.next_frame())
                .await
                .expect("the real event in time")
                .expect("a frame");
            if let ServerFrame::Event {
                session: got,
                offset,
                event,
            } = frame
            {
                assert!(
                    !event.get().contains("FORGERY"),
                    "delivered a forgery: {}",
                    event.get()
                );
                assert_eq!((got, offset), (session.clone(), ack.offset));
                assert!(
                    event.get().contains(&format!("real-{n}")),
                    "{}",
                    event.get()
                );
                break;
            }
        }
    }
    assert_rss_bounded("forged Valkey publications", before);
    assert_healthy(&stack).await;
}
