//! Client messages as the session machine takes them: decoded from JSON text or protobuf
//! binary frames (one over the size limit is not decoded: it closes the connection), and how
//! a failed read ends the connection.

use agentwire_protocol::{ClientFrame, CloseCode, CloseReason, CoordOp, ProtocolError, TaskOp};
use axum::extract::ws::Message;

use crate::session::outbound::Encoding;
use crate::session::state::{SessionState, SideOp};

/// Hands one client message to `machine`; `false` once the client closed.
pub fn receive(machine: &mut SessionState, message: Message) -> bool {
    let too_big = |size| ProtocolError::malformed(format!("{size} bytes"));
    let (encoding, size, frame) = match message {
        Message::Text(text) if machine.admits(text.len()) => {
            let frame = ClientFrame::from_json(&text);
            if frame.is_err()
                && let Some(op) = side_op(&text)
            {
                machine.on_side_op(text.len(), op);
                return true;
            }
            (Encoding::Json, text.len(), frame)
        }
        Message::Binary(bytes) if machine.admits(bytes.len()) => (
            Encoding::Protobuf,
            bytes.len(),
            ClientFrame::from_protobuf(&bytes),
        ),
        Message::Text(text) => (Encoding::Json, text.len(), Err(too_big(text.len()))),
        Message::Binary(bytes) => (Encoding::Protobuf, bytes.len(), Err(too_big(bytes.len()))),
        Message::Close(_) => return false,
        // A sign of life, nothing more (the driver noted when it arrived).
        Message::Ping(_) | Message::Pong(_) => return true,
    };
    machine.on_message(encoding, size, frame);
    true
}

/// A JSON frame that is not a [`ClientFrame`] decoded as the work-queue or coordination op
/// it names, if it names one (looked at only after the frame failed to decode as a
/// [`ClientFrame`], so other frames pay nothing for it).
fn side_op(text: &str) -> Option<Result<SideOp, (Option<String>, ProtocolError)>> {
    #[derive(serde::Deserialize)]
    struct Op<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    let op = serde_json::from_str::<Op<'_>>(text).ok()?.op;
    if TaskOp::is_task_op(&op) {
        Some(TaskOp::from_json(text).map(SideOp::Task))
    } else if CoordOp::is_coord_op(&op) {
        Some(CoordOp::from_json(text).map(SideOp::Coord))
    } else {
        None
    }
}

/// How a failed read ends the connection.
pub fn transport_error(err: &axum::Error) -> CloseReason {
    let text = err.to_string();
    if text.contains("too long") || text.contains("Space limit") {
        CloseReason::new(CloseCode::TooBig, "message too big")
    } else {
        tracing::debug!(error = %text, "websocket read failed");
        CloseReason::new(CloseCode::ProtocolError, "invalid websocket data")
    }
}
