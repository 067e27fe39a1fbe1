//! Command-line / environment configuration of the Valkey connection and history window,
//! shared by every service (`#[command(flatten)]`).

use std::time::Duration;

use crate::history::HistorySettings;

/// Where the realtime view lives and how much history it keeps.
#[derive(Clone, Debug, clap::Args)]
pub struct ValkeyArgs {
    /// Valkey URL: one server, `redis://host:port[/db]`; or a cluster, its seed nodes separated
    /// by commas (`redis://h1:7000,redis://h2:7001`) or `redis+cluster://host:port`.
    #[arg(
        long = "valkey-url",
        env = "AGENTWIRE_VALKEY_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,
    /// Approximate number of events kept per session in the history window.
    #[arg(
        long = "history-maxlen",
        env = "AGENTWIRE_HISTORY_MAXLEN",
        default_value_t = 10_000
    )]
    pub history_maxlen: u64,
    /// Seconds after its last event before a session's window is dropped.
    #[arg(
        long = "history-idle-ttl-secs",
        env = "AGENTWIRE_HISTORY_IDLE_TTL_SECS",
        default_value_t = 604_800
    )]
    pub history_idle_ttl_secs: u64,
}

impl ValkeyArgs {
    pub fn validate(&self) -> Result<(), String> {
        crate::ValkeyUrl::parse(&self.url)
            .map_err(|e| format!("--valkey-url (AGENTWIRE_VALKEY_URL): {e}"))?;
        if self.history_maxlen == 0 {
            return Err("--history-maxlen (AGENTWIRE_HISTORY_MAXLEN) must be at least 1".into());
        }
        if self.history_idle_ttl_secs == 0 {
            return Err(
                "--history-idle-ttl-secs (AGENTWIRE_HISTORY_IDLE_TTL_SECS) must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn history(&self) -> HistorySettings {
        HistorySettings {
            maxlen: self.history_maxlen,
            idle_ttl: Duration::from_secs(self.history_idle_ttl_secs),
        }
    }
}
