//! A raw WebSocket client for tests that read frames as JSON (annotations included).

use agentwire_protocol::SessionKey;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::{LIMIT, Stack};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection following `session` from now on.
pub async fn subscribe(stack: &Stack, session: &SessionKey) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(&stack.ws_url)
        .await
        .expect("connect");
    let frame = serde_json::json!({"op": "subscribe", "session": session.to_string()});
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send");
    let subscribed = next_frame(&mut ws).await;
    assert_eq!(subscribed["op"], "subscribed", "{subscribed}");
    ws
}

/// The next JSON frame, skipping pings.
pub async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the connection stays open")
            .expect("a message");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}
