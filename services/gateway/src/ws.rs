//! `GET /v1/ws`: the WebSocket upgrade. The connection itself is `session::driver`.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;

use crate::session::driver;
use crate::state::AppState;

/// Upgrades to a WebSocket and runs the connection under the gateway's task tracker.
pub async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    // Messages up to twice the limit reach the driver, which closes with 1009 and a reason
    // above the limit itself; larger ones are cut off by the WebSocket layer.
    let transport_limit = state.config().max_frame_bytes.saturating_mul(2);
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| {
            let tracker = state.connections().clone();
            tracker.track_future(driver::run(socket, state))
        })
}
