//! Contrastive learning (Khosla et al. 2020, "Supervised Contrastive Learning"; SimCLR's NT-Xent
//! as the label-free case). So far: the loss; pre-training, kNN monitoring and linear
//! evaluation follow (issue 4).

pub mod loss;

pub use loss::{ContrastMode, ContrastiveError, supcon_loss};
