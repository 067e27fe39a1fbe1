//! The enricher in-process on a test's stack (CPU inference, the repository's labels).

use std::path::PathBuf;

use agentwire_enricher::{DeviceChoice, EnricherConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{LIMIT, Stack};

/// The enricher's configuration for `stack`, in consumer group `group`.
pub fn config(stack: &Stack, group: &str) -> EnricherConfig {
    EnricherConfig {
        kafka: stack.kafka_args(),
        enriched_topic: stack.enriched_topic.clone(),
        group: group.to_owned(),
        device: DeviceChoice::Cpu,
        model_dir: None,
        batch_max: 16,
        batch_wait_ms: 10,
        labels: std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
            .join("../../infra/labels.toml"),
        min_score: 0.25,
        top_k: 3,
        duplicate_threshold: 0.95,
        duplicate_window: 64,
        sessions: 1000,
        fetch_wait_ms: 4,
    }
}

/// A running enricher task.
pub struct Enricher {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Enricher {
    pub fn start(config: EnricherConfig) -> Enricher {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            agentwire_enricher::run(config, token)
                .await
                .expect("enricher run");
        });
        Enricher { stop, task }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("the enricher stops")
            .expect("enricher task");
    }
}
