//! `GET /v1/ws`: the WebSocket upgrade. The connection itself is `session::driver`.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{Extensions, HeaderMap};
use axum::response::{IntoResponse as _, Response};

use crate::auth::WsPrincipal;
use crate::error::ApiError;
use crate::serve::ConnectionSlot;

use crate::session::driver;
use crate::state::AppState;

/// Initial read buffer of each connection.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes of frames gathered before tungstenite writes them to the socket. The buffer starts
/// empty and grows only for a connection that sends that much at once, so an idle connection
/// costs nothing for it; a busy one writes a whole batch in one `send(2)` (the driver flushes
/// every ready batch) instead of one every 4 KiB, which profiled as most of the gateway's CPU
/// at saturation.
const WRITE_THRESHOLD: usize = 64 * 1024;

/// Upgrades to a WebSocket and runs the connection under the gateway's task tracker.
///
/// The token comes as a bearer header or, since browsers cannot set headers here, as a
/// `token` query parameter (the only route that accepts one). Authentication, the Origin allow-list and the tenant's connection limit are checked
/// before the upgrade: a refused client gets a plain HTTP error (401, 403, 429).
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    principal: Result<WsPrincipal, ApiError>,
) -> Response {
    // The socket keeps its place under the HTTP connection cap for as long as it is open.
    let slot = extensions.get::<ConnectionSlot>().cloned();
    let admitted = state.auth().check_origin(&headers).and_then(|()| {
        let WsPrincipal(principal) = principal?;
        let permit = state.tenant_connections().acquire(principal.tenant())?;
        Ok((principal, permit))
    });
    let (principal, permit) = match admitted {
        Ok(admitted) => admitted,
        Err(err) => return err.into_response(),
    };
    // Messages up to twice the limit reach the driver, which closes with 1009 and a reason
    // above the limit itself; larger ones are cut off by the WebSocket layer.
    let transport_limit = state.config().max_frame_bytes.saturating_mul(2);
    // A small read buffer: tungstenite's default (128 KiB) would cost that much for every idle
    // connection; 4 KiB grows on demand for larger messages.
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_THRESHOLD)
        .max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| {
            let tracker = state.connections().clone();
            tracker.track_future(async move {
                driver::run(socket, state, principal, permit).await;
                drop(slot);
            })
        })
}
