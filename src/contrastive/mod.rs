//! Contrastive learning (Khosla et al. 2020, "Supervised Contrastive Learning"; SimCLR's NT-Xent
//! as the label-free case): the loss, the projection head, the kNN monitor, pre-training
//! (`convkit supcon`), the linear probe (`convkit probe`) and a look at the representation space
//! (`convkit embed`).

pub mod embed;
pub mod head;
pub mod knn;
pub mod loss;
pub mod objective;
pub mod pretrain;

pub use crate::models::features::normalize;
pub use head::ProjectionHead;
pub use knn::{knn_accuracy, knn_predict};
pub use loss::{ContrastMode, ContrastiveError, supcon_loss};
