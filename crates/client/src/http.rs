//! The HTTP side of the API: durable publish (`POST /v1/events`, one event or a CloudEvents
//! batch) and session history (`GET /v1/sessions/{tenant}/{agent_type}/{session_id}/events`).
//!
//! Events travel as CloudEvents JSON written and read by `agentwire_protocol::cloudevents`;
//! a non-2xx answer becomes [`ClientError::Http`] with the server's error body parsed.

use std::time::Duration;

use agentwire_protocol::{
    ErrorCode, Event, Offset, ProducerId, SessionKey, Start, Tenant, cloudevents,
};
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::Result;
use crate::error::ClientError;

/// How long one HTTP request may take, connection included, unless configured otherwise.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest slice of an unparseable error body kept in [`ClientError::Http`]'s message.
const MAX_ERROR_BODY: usize = 512;

/// Where the log stored a published event.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PublishAck {
    /// The event id (stamped by the gateway when the producer left it out).
    pub id: String,
    pub partition: i32,
    /// The event's Kafka offset within `partition`: the cursor a subscriber resumes from.
    pub offset: Offset,
    /// A retry of an already accepted `(producer_id, producer_seq)`: the original partition
    /// and offset, nothing appended.
    #[serde(default)]
    pub duplicate: bool,
    /// The trace the append was recorded in, when there is one.
    #[serde(default)]
    pub trace_id: Option<String>,
}

#[derive(Deserialize)]
struct EpochBody {
    epoch: u64,
}

/// A client for the gateway's HTTP endpoints. Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct HttpClient {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer …` with every request.
    token: Option<String>,
}

#[derive(Deserialize)]
struct HistoryBody {
    session: SessionKey,
    events: Vec<HistoryEntry>,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    next_after: Option<Offset>,
}

/// One page of a session's history.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    /// The events, in offset order.
    pub events: Vec<(Offset, Event)>,
    /// More events may follow: read the next page after [`HistoryPage::next_after`]. A page
    /// with more to come may hold no event (the server scanned the log without finding one).
    pub more: bool,
    /// Where the next page starts (exclusive) when `more`.
    pub next_after: Option<Offset>,
}

#[derive(Deserialize)]
struct HistoryEntry {
    offset: Offset,
    event: Box<RawValue>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    /// Kept loose so a code newer than this client still yields the message.
    code: serde_json::Value,
    message: String,
    field: Option<String>,
}

impl HttpClient {
    /// A client for the gateway at `base_url` (e.g. `http://127.0.0.1:8080`), with
    /// [`DEFAULT_HTTP_TIMEOUT`] per request.
    pub fn new(base_url: impl Into<String>) -> Result<Self> {
        Self::with_timeout(base_url, DEFAULT_HTTP_TIMEOUT)
    }

    /// Like [`HttpClient::new`] with a per-request timeout.
    pub fn with_timeout(base_url: impl Into<String>, timeout: Duration) -> Result<Self> {
        let url = base_url.into();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ClientError::InvalidUrl {
                url,
                reason: "must start with http:// or https://",
            });
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
            token: None,
        })
    }

    /// The same client, authenticating every request with the JWT `token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The base URL requests go to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Publishes one event and returns once it is durable in the log.
    pub async fn publish(&self, event: &Event) -> Result<PublishAck> {
        let request = self
            .http
            .post(format!("{}/v1/events", self.base))
            .header(CONTENT_TYPE, "application/cloudevents+json")
            .body(cloudevents::to_json(event));
        self.send(request).await
    }

    /// Starts a new epoch for `producer` in `tenant`, fencing off its older epochs: publish
    /// with `producer_epoch` set to it and `producer_seq` from 1.
    pub async fn new_epoch(&self, tenant: &Tenant, producer: &ProducerId) -> Result<u64> {
        let request = self.http.post(format!(
            "{}/v1/producers/{tenant}/{producer}/epoch",
            self.base
        ));
        let body: EpochBody = self.send(request).await?;
        Ok(body.epoch)
    }

    /// Publishes a CloudEvents batch; the acks come back in the order of `events`.
    pub async fn publish_batch(&self, events: &[Event]) -> Result<Vec<PublishAck>> {
        let body = format!(
            "[{}]",
            events
                .iter()
                .map(cloudevents::to_json)
                .collect::<Vec<_>>()
                .join(",")
        );
        let request = self
            .http
            .post(format!("{}/v1/events", self.base))
            .header(CONTENT_TYPE, "application/cloudevents-batch+json")
            .body(body);
        let acks: Vec<PublishAck> = self.send(request).await?;
        if acks.len() != events.len() {
            return Err(ClientError::Protocol(format!(
                "batch of {} events answered with {} acks",
                events.len(),
                acks.len()
            )));
        }
        Ok(acks)
    }

    /// Reads a session's history: events with offsets strictly after `after` (the session's
    /// Valkey window when `None`), at most `limit` of them (the server's default when
    /// `None`), in offset order. One page only: see [`HttpClient::history_page`] to page on,
    /// and [`HttpClient::history_page_from`] to read from the log's first retained event.
    pub async fn history(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: Option<u32>,
    ) -> Result<Vec<(Offset, Event)>> {
        Ok(self.history_page(session, after, limit).await?.events)
    }

    /// One page of a session's history after `after`, with where the next one starts.
    pub async fn history_page(
        &self,
        session: &SessionKey,
        after: Option<Offset>,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        self.history_page_from(session, after.into(), limit).await
    }

    /// One page of a session's history from `start`: after a cursor, from the first event
    /// the log still holds ([`Start::Earliest`], `?from=earliest`), or the window only
    /// ([`Start::New`]). Page on with [`HttpClient::history_page`] after
    /// [`HistoryPage::next_after`] while [`HistoryPage::more`].
    pub async fn history_page_from(
        &self,
        session: &SessionKey,
        start: Start,
        limit: Option<u32>,
    ) -> Result<HistoryPage> {
        let after = start.after();
        // The three parts are validated to [A-Za-z0-9._-], so they need no escaping.
        let mut url = format!(
            "{}/v1/sessions/{}/{}/{}/events",
            self.base, session.tenant, session.agent_type, session.session_id
        );
        let query: Vec<String> = [
            after.map(|a| format!("after={a}")),
            start.as_from().map(|f| format!("from={f}")),
            limit.map(|l| format!("limit={l}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let body: HistoryBody = self.send(self.http.get(url)).await?;
        if &body.session != session {
            return Err(ClientError::Protocol(format!(
                "history for {session} answered for {}",
                body.session
            )));
        }
        let mut previous = after;
        let mut events = Vec::with_capacity(body.events.len());
        for entry in body.events {
            if let Some(p) = previous
                && entry.offset <= p
            {
                return Err(ClientError::Protocol(format!(
                    "history offset {} is not after {p}",
                    entry.offset
                )));
            }
            previous = Some(entry.offset);
            events.push((entry.offset, cloudevents::from_json(entry.event.get())?));
        }
        if body.more
            && body
                .next_after
                .is_none_or(|next| after.is_some_and(|a| next <= a))
        {
            return Err(ClientError::Protocol(format!(
                "a history page with more to come gives no cursor after {after:?}"
            )));
        }
        Ok(HistoryPage {
            events,
            more: body.more,
            next_after: body.next_after,
        })
    }

    /// A request to `path` (starting with `/`) under the base URL; send it with
    /// [`HttpClient::send`] so it carries the token and its errors are parsed.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends `request` (with the token) and parses a success answer as `T`.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            Ok(serde_json::from_slice(&body)?)
        } else {
            Err(http_error(status.as_u16(), &body))
        }
    }
}

impl HttpClient {
    /// Sends `request` (with the token) whose success answer has no body (204).
    pub(crate) async fn send_empty(&self, request: reqwest::RequestBuilder) -> Result<()> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await?;
        Err(http_error(status.as_u16(), &body))
    }
}

/// Builds [`ClientError::Http`] from an error answer, parsing the documented
/// `{"error":{"code","message","field"}}` body when it has that shape.
fn http_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Http {
            status,
            code: serde_json::from_value::<ErrorCode>(error.code).ok(),
            message: error.message,
            field: error.field,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let mut end = text.len().min(MAX_ERROR_BODY);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            ClientError::Http {
                status,
                code: None,
                message: text[..end].trim().to_owned(),
                field: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_error_bodies_are_parsed() {
        let body = br#"{"error":{"code":"invalid_field","message":"tenant is required","field":"tenant"}}"#;
        let err = http_error(400, body);
        assert_eq!(err.code(), Some(ErrorCode::InvalidField));
        assert_eq!(err.field(), Some("tenant"));
        assert_eq!(
            err.to_string(),
            "server answered http 400: tenant is required"
        );
    }

    #[test]
    fn unknown_codes_and_foreign_bodies_keep_the_message() {
        let newer = http_error(
            429,
            br#"{"error":{"code":"slow_down","message":"too many"}}"#,
        );
        assert_eq!(
            (newer.code(), newer.to_string()),
            (None, "server answered http 429: too many".into())
        );
        let proxy = http_error(502, "<html>bad gateway ✓</html>".repeat(100).as_bytes());
        let ClientError::Http {
            message,
            code: None,
            ..
        } = proxy
        else {
            panic!("expected an http error");
        };
        assert!(message.len() <= MAX_ERROR_BODY && message.starts_with("<html>"));
    }

    #[test]
    fn base_urls_are_checked_and_normalised() {
        let client = HttpClient::new("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(client.base_url(), "http://127.0.0.1:8080");
        assert!(matches!(
            HttpClient::new("127.0.0.1:8080"),
            Err(ClientError::InvalidUrl { .. })
        ));
    }
}
