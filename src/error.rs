//! The error of everything from the training engine up (training, pre-training, probes,
//! fine-tuning, experiments): each lower layer's own error (data, models, optimiser, config,
//! weights, checkpoints, transfer settings) converts into it, with its message unchanged.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Checkpoint(#[from] crate::weights::checkpoint::CheckpointError),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    // Transparent: a `{0}` message with the error also as its source prints the text twice
    // under `{:#}`.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tensor(#[from] tch::TchError),
    #[error(
        "training diverged: the loss became {loss} at step {step} (epoch {epoch}, learning rate {lr:.4}). \
Try a lower learning rate (for example --lr {suggest}). The last good checkpoint{checkpoint} is intact."
    )]
    Diverged {
        loss: f64,
        step: usize,
        epoch: usize,
        lr: f64,
        suggest: f64,
        checkpoint: String,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;
