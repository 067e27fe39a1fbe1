//! The inference thread: owns the model, the label set and the session memory, and turns
//! batches of texts into embeddings, labels and near-duplicate verdicts. The async side sends
//! it jobs and awaits the replies, so inference never blocks the runtime.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use agentwire_protocol::{LabelScore, Offset, SessionKey};
use tokio::sync::oneshot;

use crate::dedupe::{Duplicate, SessionMemory};
use crate::device::{Adapter, DeviceChoice};
use crate::embedder::{Embedder, MODEL_ID, ModelFiles};
use crate::error::{LabelError, ModelError};
use crate::labels::LabelSet;
use crate::metrics as m;

/// One event's text to enrich.
#[derive(Debug, Clone)]
pub struct Item {
    pub session: SessionKey,
    pub offset: Offset,
    pub text: String,
}

/// What the model made of one item.
#[derive(Debug, Clone)]
pub struct Enriched {
    pub embedding: Vec<f32>,
    pub labels: Vec<LabelScore>,
    pub duplicate: Option<Duplicate>,
}

/// What the worker thread is built from.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub files: ModelFiles,
    pub device: DeviceChoice,
    pub labels: PathBuf,
    pub min_score: f32,
    pub top_k: usize,
    pub duplicate_threshold: f32,
    pub duplicate_window: usize,
    pub sessions: NonZeroUsize,
}

type Reply = oneshot::Sender<Result<Vec<Enriched>, ModelError>>;

#[derive(Debug)]
pub struct Worker {
    jobs: Option<mpsc::Sender<(Vec<Item>, Reply)>>,
    thread: Option<JoinHandle<()>>,
    adapter: Adapter,
    version: String,
}

impl Worker {
    /// Starts the thread, loads the model and embeds the labels there; returns once it is
    /// ready (or failed to load).
    pub async fn start(settings: WorkerSettings) -> Result<Self, LabelError> {
        let (jobs, inbox) = mpsc::channel::<(Vec<Item>, Reply)>();
        let (ready_tx, ready) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("enricher-inference".into())
            .spawn(move || {
                let loaded = load(&settings);
                let state = match loaded {
                    Ok(state) => {
                        let version = version(&settings, &state.labels);
                        let _ = ready_tx.send(Ok((state.embedder.adapter().clone(), version)));
                        state
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                serve(state, &inbox);
            })
            .map_err(|e| ModelError::Device(format!("cannot start the inference thread: {e}")))?;
        let (adapter, version) = ready
            .await
            .map_err(|_| ModelError::Device("the inference thread died while loading".into()))??;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
            adapter,
            version,
        })
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The version of every enrichment this worker makes (`<model>@<digest>`): the model, the
    /// label set and the thresholds that change its output.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Enriches `items` in one batch; results are in the same order.
    pub async fn enrich(&self, items: Vec<Item>) -> Result<Vec<Enriched>, ModelError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or_else(|| ModelError::Inference("worker stopped".into()))?
            .send((items, reply))
            .map_err(|_| ModelError::Inference("the inference thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| ModelError::Inference("the inference thread dropped a job".into()))?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread after its current batch.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    embedder: Embedder,
    labels: LabelSet,
    memory: SessionMemory,
}

fn load(settings: &WorkerSettings) -> Result<State, LabelError> {
    let embedder = Embedder::load(&settings.files, settings.device)?;
    tracing::info!(adapter = %embedder.adapter(), "model loaded");
    let labels = LabelSet::load(
        &settings.labels,
        &embedder,
        settings.min_score,
        settings.top_k,
    )?;
    tracing::info!(labels = ?labels.names().collect::<Vec<_>>(), "label set embedded");
    let memory = SessionMemory::new(
        settings.sessions,
        settings.duplicate_window,
        settings.duplicate_threshold,
    );
    Ok(State {
        embedder,
        labels,
        memory,
    })
}

/// The enrichment version of a loaded worker. `sessions` is left out: it bounds memory, and
/// changes which duplicates are found only for sessions evicted in between.
fn version(settings: &WorkerSettings, labels: &LabelSet) -> String {
    labels
        .digest()
        .part("duplicate_threshold", settings.duplicate_threshold)
        .part("duplicate_window", settings.duplicate_window)
        .finish(MODEL_ID)
}

fn serve(mut state: State, inbox: &mpsc::Receiver<(Vec<Item>, Reply)>) {
    metrics::gauge!(m::GPU_ACTIVE).set(if state.embedder.adapter().is_hardware_gpu() {
        1.0
    } else {
        0.0
    });
    while let Ok((items, reply)) = inbox.recv() {
        let _ = reply.send(enrich(&mut state, &items));
    }
    metrics::gauge!(m::GPU_ACTIVE).set(0.0);
}

fn enrich(state: &mut State, items: &[Item]) -> Result<Vec<Enriched>, ModelError> {
    let started = Instant::now();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    let embeddings = state.embedder.embed(&texts)?;
    let out = items
        .iter()
        .zip(embeddings)
        .map(|(item, embedding)| Enriched {
            labels: state.labels.score(&embedding),
            duplicate: state.memory.observe(&item.session, item.offset, &embedding),
            embedding,
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!(m::BATCH_SECONDS).record(seconds);
    metrics::histogram!(m::BATCH_SIZE).record(items.len() as f64);
    metrics::counter!(m::EMBEDDINGS).increment(items.len() as u64);
    if seconds > 0.0 {
        metrics::gauge!(m::EMBEDDINGS_PER_SECOND).set(items.len() as f64 / seconds);
    }
    Ok(out)
}
