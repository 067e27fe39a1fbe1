//! Why a drill could not run (as opposed to what it found, which goes in its report).

use agentwire_kafka::KafkaError;
use agentwire_valkey::ValkeyError;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The command line or the scope it names is not usable.
    #[error("{0}")]
    Usage(String),
    /// The drill would be unsafe now (e.g. a consumer group with live members).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Valkey(#[from] ValkeyError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl DrillError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
