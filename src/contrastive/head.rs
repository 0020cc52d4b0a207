//! The projection head used during contrastive pre-training (a 2-layer MLP to a 128-d,
//! L2-normalised embedding), dropped afterwards.

use super::ContrastiveError;
use tch::Tensor;
use tch::nn::{self, Module};

/// `Linear(dim_in, hidden) -> ReLU -> Linear(hidden, out)`, output L2-normalised. Parameter names
/// `head.0.*` and `head.2.*` follow the reference code's `nn.Sequential`.
#[derive(Debug)]
pub struct ProjectionHead {
    fc1: nn::Linear,
    fc2: nn::Linear,
    pub dim_in: i64,
}

impl ProjectionHead {
    /// `encoder_dim` is the encoder's feature size; `dim_in` must equal it.
    pub fn new(
        p: &nn::Path,
        encoder_dim: i64,
        dim_in: i64,
        hidden: i64,
        out: i64,
    ) -> Result<Self, ContrastiveError> {
        if encoder_dim != dim_in {
            return Err(ContrastiveError::HeadMismatch {
                encoder: encoder_dim,
                head: dim_in,
            });
        }
        let h = p / "head";
        Ok(ProjectionHead {
            fc1: nn::linear(&h / "0", dim_in, hidden, Default::default()),
            fc2: nn::linear(&h / "2", hidden, out, Default::default()),
            dim_in,
        })
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        crate::models::features::normalize(&self.fc2.forward(&self.fc1.forward(features).relu()))
    }
}
