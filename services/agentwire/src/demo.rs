//! The demo: a few simulated agents work through sessions (requested → plan → tool calls →
//! results → completed), publishing over HTTP, while a resuming WebSocket client prints what
//! it receives, live, with each event's offset, and a second connection prints the enricher's
//! `enriched` frames (labels) when an enricher is running.

use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use agentwire_client::{HttpClient, Subscriber, WsConnection};
use agentwire_protocol::{
    ClientFrame, Event, EventType, ProducerId, ServerFrame, SessionKey, Start,
};

#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "AGENTWIRE_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// Concurrent simulated agents, each in its own session.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Tasks each agent works through before the demo ends (0 = until Ctrl-C).
    #[arg(long, default_value_t = 2)]
    tasks: usize,
    /// Pause between two steps of an agent, in milliseconds.
    #[arg(long, default_value_t = 300)]
    step_ms: u64,
}

const AGENT_TYPES: [&str; 3] = ["planner", "researcher", "coder"];
const TOOLS: [&str; 4] = ["web.search", "code.run", "files.read", "calendar.lookup"];

fn event(
    session: &SessionKey,
    kind: &str,
    text: String,
    producer: &ProducerId,
    epoch: u64,
    seq: u64,
) -> anyhow::Result<Event> {
    let mut event = Event::new(session.clone(), EventType::new(kind)?);
    event.text = Some(text);
    event.producer_id = Some(producer.clone());
    event.producer_epoch = Some(epoch);
    event.producer_seq = Some(seq);
    Ok(event)
}

/// One agent's script for one task.
fn script(task: usize, tool_calls: usize) -> Vec<(&'static str, String)> {
    let mut steps = vec![
        (
            "agent.requested",
            format!("task {task}: summarise this week's incidents"),
        ),
        (
            "agent.message",
            format!("plan for task {task}: gather, analyse, report"),
        ),
    ];
    for call in 0..tool_calls {
        let tool = TOOLS[(task + call) % TOOLS.len()];
        steps.push(("agent.tool_called", format!("{tool}(query #{call})")));
        steps.push((
            "agent.tool_result",
            format!("{tool} returned {} rows", 3 + call * 7),
        ));
    }
    steps.push(("agent.completed", format!("task {task} done")));
    steps
}

async fn agent(
    http: HttpClient,
    session: SessionKey,
    args: &DemoArgs,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let producer = ProducerId::new(format!("demo-{}", session.session_id))?;
    // A new epoch per run: the sequence restarts at 1 without colliding with an earlier run's.
    let epoch = http.new_epoch(&session.tenant, &producer).await?;
    let mut seq = 0;
    let mut task = 1;
    while (args.tasks == 0 || task <= args.tasks) && !stop.is_cancelled() {
        let tool_calls = rand::rng().random_range(1..=3);
        for (kind, text) in script(task, tool_calls) {
            seq += 1;
            http.publish(&event(&session, kind, text, &producer, epoch, seq)?)
                .await
                .with_context(|| format!("publish into {session}"))?;
            let pause = Duration::from_millis(
                args.step_ms + rand::rng().random_range(0..=args.step_ms / 2),
            );
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
        task += 1;
    }
    Ok(())
}

/// Runs the demo until every agent finished its tasks (and the client printed all of it) or
/// `shutdown` is cancelled.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http = HttpClient::new(&args.gateway)?;
    let ws_url = format!("{}/v1/ws", args.gateway.replacen("http", "ws", 1));
    let run_id: u32 = rand::rng().random_range(1000..10_000);
    let sessions: Vec<SessionKey> = (0..args.agents)
        .map(|i| {
            SessionKey::parse_parts(
                "acme",
                AGENT_TYPES[i % AGENT_TYPES.len()],
                &format!("demo-{run_id}-{i}"),
            )
        })
        .collect::<Result<_, _>>()?;

    let mut subscriber = Subscriber::connect(
        &ws_url,
        sessions.iter().map(|s| (s.clone(), None)).collect(),
    )
    .await
    .with_context(|| format!("connect to {ws_url}"))?;
    println!(
        "demo: client follows {} sessions on {ws_url}",
        sessions.len()
    );

    let annotations = tokio::spawn(print_enrichments(
        ws_url.clone(),
        sessions.clone(),
        shutdown.child_token(),
    ));

    let agents_done = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    for session in sessions.iter().cloned() {
        let (http, stop) = (http.clone(), shutdown.clone());
        let args = args.clone();
        agents.spawn(async move { agent(http, session, &args, stop).await });
    }
    let done = agents_done.clone();
    let supervisor = tokio::spawn(async move {
        let mut result = Ok(());
        while let Some(joined) = agents.join_next().await {
            if let Ok(Err(err)) = joined {
                result = Err(err);
            }
        }
        done.cancel();
        result
    });

    let completed_target = if args.tasks == 0 {
        usize::MAX
    } else {
        args.tasks * sessions.len()
    };
    let mut completed = 0;
    while completed < completed_target {
        let delivery = tokio::select! {
            d = subscriber.next() => d,
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(10)), if agents_done.is_cancelled() => {
                anyhow::bail!("the agents finished but {} completions never arrived", completed_target - completed);
            }
        };
        match delivery {
            Ok(d) => {
                if d.event.event_type.as_str() == "agent.completed" {
                    completed += 1;
                }
                println!(
                    "{:<28} offset {:>6}  {:<18} {}",
                    d.session.to_string(),
                    d.offset.to_string(),
                    d.event.event_type.as_str(),
                    d.event.text.as_deref().unwrap_or("")
                );
            }
            Err(err) => eprintln!("demo: {err}"),
        }
    }
    supervisor.await.context("agent supervisor")??;
    subscriber.close().await.ok();
    annotations.abort();
    println!("demo: {completed} tasks completed");
    Ok(())
}

/// Prints the `enriched` frames of `sessions` (the enricher's labels for each text event) until
/// `stop`; quietly does nothing more if the connection fails (the demo goes on without them).
async fn print_enrichments(ws_url: String, sessions: Vec<SessionKey>, stop: CancellationToken) {
    let Ok(mut conn) = WsConnection::connect(&ws_url).await else {
        return;
    };
    for session in sessions {
        let subscribe = ClientFrame::Subscribe {
            session,
            start: Start::New,
            epoch: None,
        };
        if conn.send(&subscribe).await.is_err() {
            return;
        }
    }
    loop {
        let frame = tokio::select! {
            frame = conn.next_frame() => frame,
            () = stop.cancelled() => return,
        };
        match frame {
            Ok(ServerFrame::Enriched {
                session,
                offset,
                annotation,
            }) => println!(
                "{:<28} offset {:>6}  {:<18} {}",
                session.to_string(),
                offset.to_string(),
                "enriched",
                labels(annotation.get())
            ),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The labels of an `enriched` frame, as `label (score), …`.
fn labels(annotation: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(annotation) else {
        return String::new();
    };
    let labels: Vec<String> = value["labels"]
        .as_array()
        .map(|labels| {
            labels
                .iter()
                .map(|l| {
                    format!(
                        "{} ({:.2})",
                        l["label"].as_str().unwrap_or("?"),
                        l["score"].as_f64().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() {
        "no label above its threshold".to_owned()
    } else {
        labels.join(", ")
    }
}
