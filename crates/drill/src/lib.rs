//! Replay drills from the Kafka log (`agentwire drill …`): the log is the truth, so it can be
//! read back whole, checked (`verify`), held against what Valkey derived from it (`compare`),
//! used to rebuild that (`rebuild`), replayed through a consumer group or into another topic
//! (`redrive`), and exported and imported (`export`, `import`). Every read streams the log
//! with bounded memory and shows its progress. The runbook: `docs/operations/drills.md`.

mod annotation_check;
mod args;
mod check;
mod dupes;
mod error;
mod export;
mod producer_check;
mod progress;
mod rebuild;
mod redrive;
mod report;
mod scope;
mod task_rebuild;
mod walk;
mod window_check;

pub use args::{Common, DrillArgs, DrillCommand, ValkeyContext};
pub use error::DrillError;
pub use report::{Finding, FindingSet, Kind, Report};
pub use scope::{Bound, Scope, ScopeArgs};
pub use task_rebuild::{TaskRebuild, rebuild_tasks};

/// Milliseconds since the Unix epoch now (record timestamps are in the same unit).
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// How a drill ended: the exit status of `agentwire drill`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing found (0).
    Clean,
    /// Problems found, a dry run with changes pending, or a refusal (1).
    Problems,
    /// Bad usage, or a service that could not be reached (2).
    Failed,
}

impl Verdict {
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Clean => 0,
            Verdict::Problems => 1,
            Verdict::Failed => 2,
        }
    }
}

fn validate(common: &Common, valkey: Option<&ValkeyContext>) -> Result<(), DrillError> {
    common.kafka.validate().map_err(DrillError::Usage)?;
    if let Some(ctx) = valkey {
        ctx.valkey.validate().map_err(DrillError::Usage)?;
    }
    Ok(())
}

/// Runs one drill, prints its summary, writes its report; returns its verdict.
pub async fn run(args: DrillArgs) -> Verdict {
    let (name, common) = match &args.command {
        DrillCommand::Verify { common, .. } => ("verify", common),
        DrillCommand::Compare { common, .. } => ("compare", common),
        DrillCommand::Rebuild { common, .. } => ("rebuild", common),
        DrillCommand::Redrive { common, .. } => ("redrive", common),
        DrillCommand::Export { common, .. } => ("export", common),
        DrillCommand::Import { common, .. } => ("import", common),
    };
    let mut report = Report::new(name, common.max_findings);
    let outcome = execute(&args.command, &mut report).await;
    report.finish();
    let verdict = match outcome {
        Err(DrillError::Refused(why)) => {
            eprintln!("agentwire drill {name}: refused: {why}");
            report.notes.push(format!("refused: {why}"));
            Verdict::Problems
        }
        Err(err) => {
            eprintln!("agentwire drill {name}: {err}");
            return Verdict::Failed;
        }
        Ok(pending_changes) => {
            if report.problems() > 0
                && !matches!(args.command, DrillCommand::Rebuild { dry_run: false, .. })
                || pending_changes
            {
                Verdict::Problems
            } else {
                Verdict::Clean
            }
        }
    };
    let summary = report.markdown();
    // An export to standard output keeps standard output for the records.
    if matches!(&args.command, DrillCommand::Export { out, .. } if out.as_os_str() == "-") {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if let Some(dir) = &common.report
        && let Err(err) = report.write(dir)
    {
        eprintln!("agentwire drill {name}: {err}");
        return Verdict::Failed;
    }
    verdict
}

/// Runs the command; `Ok(true)` for a dry run that would change something.
async fn execute(command: &DrillCommand, report: &mut Report) -> Result<bool, DrillError> {
    match command {
        DrillCommand::Verify {
            common,
            with_valkey,
            valkey,
        } => {
            let valkey = with_valkey.then_some(valkey);
            validate(common, valkey)?;
            let scope =
                Scope::resolve(&common.kafka.settings(), &common.kafka.topic, &common.scope)
                    .await?;
            check::check(common, &scope, valkey, true, report).await?;
            Ok(false)
        }
        DrillCommand::Compare { common, valkey } => {
            validate(common, Some(valkey))?;
            let scope =
                Scope::resolve(&common.kafka.settings(), &common.kafka.topic, &common.scope)
                    .await?;
            check::check(common, &scope, Some(valkey), false, report).await?;
            Ok(false)
        }
        DrillCommand::Rebuild {
            common,
            valkey,
            dry_run,
        } => {
            validate(common, Some(valkey))?;
            rebuild::rebuild(common, valkey, *dry_run, report).await?;
            Ok(*dry_run && report.changes.values().any(|n| *n > 0))
        }
        DrillCommand::Redrive {
            common,
            group,
            to_topic,
            dry_run,
        } => {
            validate(common, None)?;
            match (group, to_topic) {
                (Some(group), _) => redrive::reset_group(common, group, *dry_run, report).await?,
                (None, Some(topic)) => redrive::copy(common, topic, *dry_run, report).await?,
                (None, None) => {
                    return Err(DrillError::Usage(
                        "redrive needs --group or --to-topic".into(),
                    ));
                }
            }
            Ok(false)
        }
        DrillCommand::Export { common, out } => {
            validate(common, None)?;
            export::export(common, out, report).await?;
            Ok(false)
        }
        DrillCommand::Import {
            common,
            input,
            to_topic,
        } => {
            validate(common, None)?;
            export::import(common, input, to_topic, report).await?;
            Ok(false)
        }
    }
}
