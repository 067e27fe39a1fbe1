//! Keeps sessions' shared state in Valkey in step with the log: an `agent.session.state`
//! event holds a session's whole state, and the relay puts it back into Valkey when Valkey's
//! is older or gone (after Valkey lost its data, the next state event of each session, or a
//! window rebuild's replay, restores it). Only the gateway writes these events: a client's
//! publish of that type is refused.

use agentwire_protocol::SessionKey;
use agentwire_protocol::session_state::state_in_event;
use agentwire_valkey::SessionStateStore;

/// Restores every state event of a written batch whose state is newer than Valkey's.
pub async fn restore<'a>(
    store: &SessionStateStore,
    events: impl Iterator<Item = (&'a SessionKey, &'a str)>,
) {
    for (session, json) in events {
        let Some(state) = state_in_event(session, json) else {
            continue;
        };
        match store.restore(&state).await {
            Ok(true) => {
                metrics::counter!(crate::metrics::STATES_RESTORED).increment(1);
                tracing::info!(%session, version = state.version, "a session state was put back into Valkey from the log");
            }
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, %session, "a session state was not restored"),
        }
    }
}
