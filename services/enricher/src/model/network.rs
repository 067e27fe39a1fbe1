//! The BERT encoder and sentence pooling. Field names follow the Hugging Face checkpoint
//! (`encoder.layer.N.attention.self.query`, …) so loading needs only two key remaps.
//!
//! Shapes: `b` batch, `s` sequence (longest in the batch), `h` hidden (384), `n` heads,
//! `d` head size (`h / n`), `i` intermediate (1536).

use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

/// Additive attention bias for padded keys: large enough that `exp` underflows to exactly 0.
const MASKED: f32 = -1.0e9;

#[derive(Module, Debug)]
pub struct MiniLm {
    pub embeddings: Embeddings,
    pub encoder: Encoder,
}

#[derive(Module, Debug)]
pub struct Embeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub layer: Vec<Layer>,
}

#[derive(Module, Debug)]
pub struct Layer {
    pub attention: Attention,
    pub intermediate: Intermediate,
    pub output: Output,
}

#[derive(Module, Debug)]
pub struct Attention {
    /// `attention.self` in the checkpoint (`self` is a Rust keyword).
    pub self_attn: SelfAttention,
    pub output: AttentionOutput,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub heads: usize,
}

#[derive(Module, Debug)]
pub struct AttentionOutput {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Intermediate {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct Output {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl MiniLm {
    /// Sentence embeddings, L2-normalised.
    ///
    /// - `ids`: `[b, s]` token ids, padded with 0 after each sentence's `[SEP]`.
    /// - `mask`: `[b, s]`, 1.0 for real tokens and 0.0 for padding.
    /// - returns `[b, h]`.
    pub fn embed(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<2> {
        let hidden = self.forward(ids, mask.clone());
        mean_pool_normalised(hidden, mask)
    }

    /// Last hidden state `[b, s, h]`.
    pub fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        let [b, s] = ids.dims();
        // [b, s] -> [b, 1, 1, s]: one bias row per sentence, broadcast over heads and queries.
        let bias = mask
            .neg()
            .add_scalar(1.0)
            .mul_scalar(MASKED)
            .reshape([b, 1, 1, s]);
        let mut x = self.embeddings.forward(ids);
        for layer in &self.encoder.layer {
            x = layer.forward(x, bias.clone());
        }
        x
    }
}

impl Embeddings {
    /// `[b, s]` ids -> `[b, s, h]`. Token types are all 0 (single sentences).
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..s as i64, &device)
            .reshape([1, s])
            .expand([b, s]);
        let types = Tensor::<2, Int>::zeros([b, s], &device);
        let x = self.word_embeddings.forward(ids)
            + self.position_embeddings.forward(positions)
            + self.token_type_embeddings.forward(types);
        self.layer_norm.forward(x)
    }
}

impl Layer {
    /// `[b, s, h]` -> `[b, s, h]` (post-norm BERT block, exact GELU). The dense layers run on
    /// `[b·s, h]`: one plain matrix product each instead of a batched, broadcast one.
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let attended = self
            .attention
            .self_attn
            .forward(x.clone(), bias)
            .reshape([b * s, h]);
        let x = x.reshape([b * s, h]);
        let x = self
            .attention
            .output
            .layer_norm
            .forward(self.attention.output.dense.forward(attended) + x);
        let inner = gelu(self.intermediate.dense.forward(x.clone()));
        self.output
            .layer_norm
            .forward(self.output.dense.forward(inner) + x)
            .reshape([b, s, h])
    }
}

impl SelfAttention {
    /// `[b, s, h]` -> `[b, s, h]`; `bias` is `[b, 1, 1, s]`.
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let d = h / self.heads;
        let x = x.reshape([b * s, h]);
        let split = |t: Tensor<2>| t.reshape([b, s, self.heads, d]).swap_dims(1, 2); // [b, n, s, d]
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f32).sqrt()) + bias; // [b, n, s, s]
        let context = softmax(scores, 3).matmul(v); // [b, n, s, d]
        context.swap_dims(1, 2).reshape([b, s, h])
    }
}

/// Mean over real tokens, then L2 normalisation: `[b, s, h]`, `[b, s]` -> `[b, h]`.
fn mean_pool_normalised(hidden: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let [b, s, _] = hidden.dims();
    let weights = mask.reshape([b, s, 1]);
    let summed = (hidden * weights.clone()).sum_dim(1).squeeze_dim::<2>(1); // [b, h]
    let counts = weights.sum_dim(1).squeeze_dim::<2>(1).clamp_min(1e-9); // [b, 1]
    let mean = summed / counts;
    let norm = mean
        .clone()
        .powf_scalar(2.0)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12); // [b, 1]
    mean / norm
}
