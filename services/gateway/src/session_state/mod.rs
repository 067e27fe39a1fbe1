//! A session's shared state (`docs/coordination.md`): status, budgets and fields, changed
//! atomically in Valkey (`agentwire_valkey::SessionStateStore`) and recorded in the log.
//!
//! Every change is appended to the session itself as an `agent.session.state` event holding
//! the whole new state, so subscribers see it in order with the session's other events, any
//! offset's state is that of the last such event before it, and an update is answered only
//! once its event is in the log (with its offset). If that append fails the client is told
//! `unavailable` while Valkey already holds the change; since each event is the whole state,
//! the next change's event carries it into the log too. The relay puts a logged state back
//! into Valkey when Valkey's is older or gone (after Valkey lost its data).

mod http;

use agentwire_kafka::{Appended, EventLog};
use agentwire_protocol::session_state::{STATE_EVENT_TYPE, SessionState, StateUpdate};
use agentwire_protocol::{ErrorCode, Event, EventType, Offset, ProtocolError, SessionKey};
use agentwire_valkey::{SessionStateStore, Updated, ValkeyError};
use serde_json::value::RawValue;

pub use http::routes;

use crate::error::ApiError;

fn valkey(err: ValkeyError) -> ApiError {
    ApiError::unavailable("valkey", err)
}

/// What an update answers: the new state and where its event is in the log.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StateAck {
    pub state: SessionState,
    pub partition: i32,
    pub offset: Offset,
}

/// Session states: Valkey for the current one, the log for every change.
#[derive(Clone, Debug)]
pub struct SessionStates {
    store: SessionStateStore,
    events: EventLog,
}

impl SessionStates {
    pub fn new(store: SessionStateStore, events: EventLog) -> Self {
        Self { store, events }
    }

    pub async fn get(&self, session: &SessionKey) -> Result<SessionState, ApiError> {
        self.store.get(session).await.map_err(valkey)
    }

    /// Applies `update` whole or not at all, and records the new state in the log.
    pub async fn update(
        &self,
        session: &SessionKey,
        update: &StateUpdate,
    ) -> Result<StateAck, ApiError> {
        update.validate()?;
        let state = match self.store.update(session, update).await.map_err(valkey)? {
            Updated::Applied(state) => state,
            Updated::Conflict(version) => {
                return Err(ApiError::new(
                    ErrorCode::VersionConflict,
                    format!(
                        "the state is at version {version}, not {}; nothing changed",
                        update.expect_version.unwrap_or_default()
                    ),
                ));
            }
            Updated::OverBudget {
                counter,
                used,
                limit,
            } => {
                let wanted = update.consume.get(&counter).copied().unwrap_or_default();
                return Err(ApiError {
                    field: Some("consume".into()),
                    ..ApiError::new(
                        ErrorCode::BudgetExceeded,
                        format!(
                            "consuming {wanted} of {counter} would pass its limit ({used} of {limit} used); nothing changed"
                        ),
                    )
                });
            }
            Updated::TooMany(what) => {
                return Err(ProtocolError::invalid(
                    if what == "fields" { "fields" } else { "limits" },
                    format!("the state would hold too many {what}; nothing changed"),
                )
                .into());
            }
        };
        let appended = self
            .append(&state)
            .await
            .map_err(ApiError::kafka_unavailable)?;
        metrics::counter!(crate::metrics::STATE_CHANGES).increment(1);
        Ok(StateAck {
            state,
            partition: appended.partition,
            offset: appended.offset,
        })
    }

    async fn append(&self, state: &SessionState) -> Result<Appended, agentwire_kafka::KafkaError> {
        let mut event = Event::new(
            state.session.clone(),
            EventType::new(STATE_EVENT_TYPE).unwrap_or_else(|_| unreachable!()),
        );
        event.content_type = Some("application/json".into());
        event.data = serde_json::to_string(state)
            .ok()
            .and_then(|json| RawValue::from_string(json).ok())
            .map(agentwire_protocol::Data::Json);
        let record = crate::publish::server_record(event);
        self.events.append(&record).await
    }
}
