//! Hyper-parameters of the sentence encoder (all-MiniLM-L6-v2 is a 6-layer BERT).

use burn::prelude::*;

use super::network::{
    Attention, AttentionOutput, Embeddings, Encoder, Intermediate, Layer, MiniLm, Output,
    SelfAttention,
};
use burn::nn::{EmbeddingConfig, LayerNormConfig, LinearConfig};

/// BERT encoder shape. Defaults are all-MiniLM-L6-v2's `config.json`.
#[derive(Config, Debug)]
pub struct MiniLmConfig {
    #[config(default = 30522)]
    pub vocab_size: usize,
    #[config(default = 384)]
    pub hidden_size: usize,
    #[config(default = 6)]
    pub num_hidden_layers: usize,
    #[config(default = 12)]
    pub num_attention_heads: usize,
    #[config(default = 1536)]
    pub intermediate_size: usize,
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    #[config(default = 2)]
    pub type_vocab_size: usize,
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
}

impl MiniLmConfig {
    /// Builds the network with uninitialised (lazy) parameters, ready for [`super::load`].
    pub fn init(&self, device: &Device) -> MiniLm {
        let h = self.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let layer = || Layer {
            attention: Attention {
                self_attn: SelfAttention {
                    query: LinearConfig::new(h, h).init(device),
                    key: LinearConfig::new(h, h).init(device),
                    value: LinearConfig::new(h, h).init(device),
                    heads: self.num_attention_heads,
                },
                output: AttentionOutput {
                    dense: LinearConfig::new(h, h).init(device),
                    layer_norm: norm(),
                },
            },
            intermediate: Intermediate {
                dense: LinearConfig::new(h, self.intermediate_size).init(device),
            },
            output: Output {
                dense: LinearConfig::new(self.intermediate_size, h).init(device),
                layer_norm: norm(),
            },
        };
        MiniLm {
            embeddings: Embeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
                token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, h).init(device),
                layer_norm: norm(),
            },
            encoder: Encoder {
                layer: (0..self.num_hidden_layers).map(|_| layer()).collect(),
            },
        }
    }
}
