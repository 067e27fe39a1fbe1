//! One WebSocket connection to `/v1/ws`, speaking JSON text frames encoded and decoded by
//! `agentwire_protocol::frames`. No reconnection here: that is [`crate::Subscriber`]'s job.
//!
//! Request helpers ([`WsConnection::subscribe`], [`WsConnection::publish`]) wait for their
//! answer; frames that arrive meanwhile (events, other answers) are kept in order and handed
//! out by later [`WsConnection::next_frame`] calls, so nothing is lost. That buffer only grows
//! while a helper waits, which is bounded by the request timeout.

use std::collections::VecDeque;
use std::time::Duration;

use agentwire_protocol::{
    Ack, ClientFrame, ErrorFrame, Event, Offset, ServerFrame, SessionKey, Start,
};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

use crate::Result;
use crate::error::ClientError;

/// How long the handshake and each request helper may wait, unless configured otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `subscribed` frame said.
#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    /// The session's latest offset (the cursor for "only new events").
    pub latest: Option<Offset>,
    /// The epoch of the session's offsets.
    pub epoch: Option<String>,
}

/// A JSON WebSocket connection to the gateway.
#[derive(Debug)]
pub struct WsConnection {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while a request helper waited for its answer, oldest first.
    pending: VecDeque<ServerFrame>,
    request_timeout: Duration,
}

impl WsConnection {
    /// Connects to `ws_url` (e.g. `ws://127.0.0.1:8080/v1/ws`) with [`DEFAULT_REQUEST_TIMEOUT`].
    pub async fn connect(ws_url: &str) -> Result<Self> {
        Self::connect_with_timeout(ws_url, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// Connects with `request_timeout` bounding the handshake and every request helper.
    pub async fn connect_with_timeout(ws_url: &str, request_timeout: Duration) -> Result<Self> {
        Self::connect_authorized(ws_url, None, request_timeout).await
    }

    /// Connects sending `token` as `Authorization: Bearer` on the upgrade request (never in
    /// the URL, where proxies and servers log it).
    pub async fn connect_authorized(
        ws_url: &str,
        token: Option<&str>,
        request_timeout: Duration,
    ) -> Result<Self> {
        if !(ws_url.starts_with("ws://") || ws_url.starts_with("wss://")) {
            return Err(ClientError::InvalidUrl {
                url: ws_url.to_owned(),
                reason: "must start with ws:// or wss://",
            });
        }
        let mut request = ws_url.into_client_request()?;
        if let Some(token) = token {
            let mut value = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
                ClientError::Protocol("the token is not a valid header value".to_owned())
            })?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let (stream, _response) = tokio::time::timeout(
            request_timeout,
            connect_async_with_config(request, None, true),
        )
        .await
        .map_err(|_| ClientError::Timeout(request_timeout))??;
        Ok(Self {
            stream,
            pending: VecDeque::new(),
            request_timeout,
        })
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.send_text(frame.to_json()).await
    }

    /// Sends an arbitrary text message. Meant for tests of the server's input validation;
    /// everything else should go through [`WsConnection::send`].
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.stream.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// The next frame from the server, buffered ones first. WebSocket pings are answered by
    /// tungstenite while reading; ping and pong control frames are skipped. Waits without a
    /// time limit (wrap it in a timeout where that matters). Cancel-safe.
    pub async fn next_frame(&mut self) -> Result<ServerFrame> {
        match self.pending.pop_front() {
            Some(frame) => Ok(frame),
            None => self.read_frame().await,
        }
    }

    /// Subscribes to `session` (events strictly after `after`, or only new ones when `None`)
    /// and returns once the server confirmed, with the session's latest offset if it has one.
    /// A refusal comes back as [`ClientError::Server`].
    pub async fn subscribe(
        &mut self,
        session: &SessionKey,
        after: Option<Offset>,
    ) -> Result<Option<Offset>> {
        self.subscribe_from(session, after.into()).await
    }

    /// Subscribes to `session` from `start` ([`Start::Earliest`]: every event the log still
    /// holds, then live) and returns once the server confirmed, with the session's latest
    /// offset if it has one.
    pub async fn subscribe_from(
        &mut self,
        session: &SessionKey,
        start: Start,
    ) -> Result<Option<Offset>> {
        Ok(self.subscribe_detailed(session, start).await?.latest)
    }

    /// Like [`WsConnection::subscribe_from`], keeping the whole `subscribed` answer.
    pub(crate) async fn subscribe_detailed(
        &mut self,
        session: &SessionKey,
        start: Start,
    ) -> Result<Subscription> {
        self.send(&ClientFrame::Subscribe {
            session: session.clone(),
            start,
            epoch: None,
        })
        .await?;
        self.await_subscribed(session).await
    }

    /// Stops following `session` and returns once the server confirmed.
    pub async fn unsubscribe(&mut self, session: &SessionKey) -> Result<()> {
        self.send(&ClientFrame::Unsubscribe {
            session: session.clone(),
        })
        .await?;
        self.await_answer(|frame| match frame {
            ServerFrame::Unsubscribed { session: s } if s == session => Some(Ok(())),
            ServerFrame::Error(e) if is_about(e, session) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Publishes one event and waits for its ack. For one-at-a-time use: with several
    /// publishes in flight, an unmatched answer could be taken for this one's when the
    /// event has no id (use [`WsConnection::send`] and read acks yourself instead).
    pub async fn publish(&mut self, event: &Event) -> Result<Ack> {
        self.send(&ClientFrame::Publish {
            event: Box::new(event.clone()),
        })
        .await?;
        let expected = event.id.map(|id| id.to_string());
        let is_ours = |id: &Option<String>| expected.is_none() || id.is_none() || id == &expected;
        self.await_answer(|frame| match frame {
            ServerFrame::Ack(ack) if expected.is_none() || Some(&ack.id) == expected.as_ref() => {
                Some(Ok(ack.clone()))
            }
            ServerFrame::Error(e) if e.session.is_none() && is_ours(&e.id) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Sends a WebSocket close and waits (up to the request timeout) for the server's.
    pub async fn close(mut self) -> Result<()> {
        self.stream.close(None).await?;
        let drain = async {
            while let Some(message) = self.stream.next().await {
                if message.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(self.request_timeout, drain)
            .await
            .map_err(|_| ClientError::Timeout(self.request_timeout))
    }

    /// Waits for the `subscribed` (or an `error` naming the session) answering a subscribe.
    pub(crate) async fn await_subscribed(&mut self, session: &SessionKey) -> Result<Subscription> {
        self.await_answer(|frame| match frame {
            ServerFrame::Subscribed {
                session: s,
                offset,
                epoch,
            } if s == session => Some(Ok(Subscription {
                latest: *offset,
                epoch: epoch.clone(),
            })),
            ServerFrame::Error(e) if is_about(e, session) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Takes the first frame (buffered or new) that `answer` recognises, keeping the others
    /// buffered in order; gives up after the request timeout.
    async fn await_answer<T>(
        &mut self,
        answer: impl Fn(&ServerFrame) -> Option<std::result::Result<T, ErrorFrame>>,
    ) -> Result<T> {
        let found = |result: std::result::Result<T, ErrorFrame>| result.map_err(ClientError::from);
        if let Some(index) = self.pending.iter().position(|f| answer(f).is_some())
            && let Some(result) = self.pending.remove(index).as_ref().and_then(&answer)
        {
            return found(result);
        }
        let limit = self.request_timeout;
        let wait = async {
            loop {
                let frame = self.read_frame().await?;
                match answer(&frame) {
                    Some(result) => return found(result),
                    None => self.pending.push_back(frame),
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    async fn read_frame(&mut self) -> Result<ServerFrame> {
        Ok(ServerFrame::from_json(&self.next_text().await?)?)
    }

    /// The next text message, unparsed: for frames [`ServerFrame`] does not model (the work
    /// queue's `task` and `task_ack`). It skips the buffer the request helpers fill, so a
    /// caller reading this way must not use them. Pings are answered, control frames
    /// skipped. Cancel-safe.
    pub(crate) async fn next_text(&mut self) -> Result<String> {
        loop {
            let message = match self.stream.next().await {
                Some(message) => message?,
                None => {
                    return Err(ClientError::Closed {
                        code: None,
                        reason: String::new(),
                    });
                }
            };
            match message {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Binary(_) => {
                    return Err(ClientError::Protocol(
                        "binary frame on a JSON connection".to_owned(),
                    ));
                }
                Message::Close(frame) => {
                    return Err(ClientError::Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }
}

/// Whether an `error` frame answers a request about `session`: it names the session, or names
/// neither a session nor an event (a refusal of the frame itself).
fn is_about(error: &ErrorFrame, session: &SessionKey) -> bool {
    match &error.session {
        Some(s) => s == session,
        None => error.id.is_none(),
    }
}
