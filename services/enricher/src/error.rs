//! Errors of the enricher library.

/// Loading or running the sentence model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model files: {0}")]
    Files(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("inference: {0}")]
    Inference(String),
}

/// Loading the label set.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("label file {path}: {message}")]
    File { path: String, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}
