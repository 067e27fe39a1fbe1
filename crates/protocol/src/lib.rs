//! The agentwire wire contract, with no I/O: identifiers, the event envelope (CloudEvents
//! 1.0, JSON structured mode and protobuf), WebSocket frames and error codes.
//!
//! Every other crate encodes and decodes through this one, so a byte on any wire (HTTP,
//! WebSocket, Kafka record, Valkey entry) has exactly one definition. It depends on no
//! runtime, broker or database client.

pub mod close;
pub mod cloudevents;
pub mod coord_frames;
pub mod enrichment;
pub mod error;
pub mod event;
pub mod frames;
pub mod ids;
pub mod model_version;
pub mod pb;
pub mod registry;
pub mod session_state;
pub mod task;
pub mod task_frames;

pub use close::{CloseCode, CloseReason, Reconnect};
pub use coord_frames::CoordOp;
pub use enrichment::{Enrichment, LabelScore, SourceRef};
pub use error::{ErrorCode, ProtocolError};
pub use event::{Data, Event};
pub use frames::{Ack, ClientFrame, ErrorFrame, ServerFrame, Start};
pub use ids::{
    AgentId, AgentType, Capability, EventType, Label, Offset, ProducerId, SessionId, SessionKey,
    Tenant,
};
pub use model_version::ModelVersion;
pub use registry::{AgentView, RegisterSpec, Registration, RegistryEventKind};
pub use task::{
    RetryPolicy, TaskDoc, TaskEventKind, TaskRecord, TaskSpec, TaskState, TaskStatus, TaskView,
};
pub use task_frames::{ClaimRequest, TaskOp};
