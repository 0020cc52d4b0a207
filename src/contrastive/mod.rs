//! Contrastive learning (Khosla et al. 2020, "Supervised Contrastive Learning"; SimCLR's NT-Xent
//! as the label-free case). So far: the loss, the projection head and the kNN monitor;
//! pre-training, linear evaluation and the representation tools follow (issue 4).

pub mod head;
pub mod knn;
pub mod loss;

pub use head::{ProjectionHead, normalize};
pub use knn::{knn_accuracy, knn_predict};
pub use loss::{ContrastMode, ContrastiveError, supcon_loss};
