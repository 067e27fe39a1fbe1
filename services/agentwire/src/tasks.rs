//! `agentwire tasks …`: work-queue tools. `rebuild` refills Valkey's queues from the
//! `agent.tasks` log (after Valkey was lost, or to repair it); idempotent, safe while the
//! stack serves.

use std::time::Duration;

use agentwire_kafka::KafkaArgs;
use agentwire_valkey::ValkeyArgs;
use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TasksCommand {
    /// Reads agent.tasks whole and puts every task back in Valkey as its newest record
    /// says (tasks without a terminal record are queued again; nothing newer is touched).
    Rebuild {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        valkey: ValkeyArgs,
        /// Finished tasks older than this are not brought back.
        #[arg(
            long = "task-retention-secs",
            env = "AGENTWIRE_TASK_RETENTION_SECS",
            default_value_t = 24 * 3600
        )]
        retention_secs: u64,
    },
}

pub async fn run(args: TasksArgs) -> anyhow::Result<()> {
    match args.command {
        TasksCommand::Rebuild {
            kafka,
            valkey,
            retention_secs,
        } => {
            kafka.validate().map_err(anyhow::Error::msg)?;
            valkey.validate().map_err(anyhow::Error::msg)?;
            let retention = Duration::from_secs(retention_secs);
            let conn = agentwire_valkey::Connection::connect(&valkey.url)
                .await
                .context("connect to Valkey")?;
            let store = agentwire_valkey::TaskStore::new(conn, retention, &kafka.tasks_topic);
            let started = std::time::Instant::now();
            let summary = agentwire_drill::rebuild_tasks(
                &kafka.settings(),
                &kafka.tasks_topic,
                &store,
                retention,
                agentwire_protocol::task::now_ms(),
            )
            .await?;
            println!(
                "tasks rebuilt from {} in {:.1} s: {} records, {} tasks, {} applied, {} already current, {} finished beyond retention, {} without their enqueued record, {} duplicates of an idempotency key, {} unreadable records",
                kafka.tasks_topic,
                started.elapsed().as_secs_f64(),
                summary.records,
                summary.tasks,
                summary.applied,
                summary.current,
                summary.expired,
                summary.without_document,
                summary.duplicates,
                summary.unreadable,
            );
        }
    }
    Ok(())
}
