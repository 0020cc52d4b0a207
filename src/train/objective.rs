//! What differs between the ways one network is trained: the loss of a batch, what is measured
//! after an epoch, and any variables the objective adds to the model (a projection head). The
//! [`Trainer`](super::Trainer) owns everything else (batching, schedule, optimiser step,
//! checkpoints, resume, metrics, progress), as a `LightningModule` leaves the loop to its
//! `Trainer`.

use super::EvalResult;
use crate::augment::Augmenter;
use crate::config::Config;
use crate::data::loader::DeviceSplit;
use crate::dist::ProcessGroup;
use crate::error::Result;
use crate::models::{Ctx, Model};
use rand::rngs::StdRng;
use tch::{Device, Tensor};

/// What one training step of an objective sees.
pub struct StepInput<'a> {
    pub model: &'a Model,
    pub augmenter: &'a Augmenter,
    pub train: &'a DeviceSplit,
    /// The batch's data-set indices, on the device: `[B]` int64.
    pub index: &'a Tensor,
    /// Where the batch starts in the epoch's order (to slice what `begin_epoch` drew).
    pub from: i64,
    pub rng: &'a mut StdRng,
    /// Training context (BatchNorm layers held in eval mode by the transfer set-up).
    pub ctx: &'a Ctx,
    /// bf16 autocast of the forward pass (CUDA with `train.bf16`).
    pub autocast: bool,
    /// The process group of a data-parallel run (for objectives that compare across ranks).
    pub dist: Option<&'a ProcessGroup>,
}

/// A batch's loss and its statistics, both on the device (nothing is read on the host).
pub struct StepOutput {
    /// The scalar to differentiate.
    pub loss: Tensor,
    /// `[3]` float64: the loss weighted for the epoch's mean, the correct predictions (0 when
    /// the objective measures none), and the weight. The epoch's loss is the sum of the first
    /// entries over the sum of the third.
    pub stats: Tensor,
}

/// What an evaluation needs.
pub struct EvalInput<'a> {
    pub model: &'a Model,
    pub augmenter: &'a Augmenter,
    pub train: &'a DeviceSplit,
    pub test: &'a DeviceSplit,
    pub cfg: &'a Config,
    pub classes: i64,
    pub autocast: bool,
}

/// The numbers of one evaluation; `None` is "not measured" (null in metrics.jsonl).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub loss: Option<f64>,
    /// Top-1 test accuracy of the classifier, in [0, 1].
    pub accuracy: Option<f64>,
    pub top5: Option<f64>,
    /// Weighted kNN test accuracy of the L2-normalised features (Wu et al. 2018).
    pub knn_accuracy: Option<f64>,
    /// The classifier's full result (confusion matrix, per-class accuracy).
    pub detail: Option<EvalResult>,
}

/// A training objective: cross-entropy classification ([`super::classify::CrossEntropy`]) or
/// contrastive pre-training (`contrastive::objective::Contrastive`).
pub trait Objective {
    /// For logs and summaries ("cross-entropy", "supcon", "simclr").
    fn name(&self) -> &str;

    /// Refuses settings the objective cannot honour, naming them, so that no setting is
    /// silently ignored.
    ///
    /// # Errors
    /// A setting that has no meaning for this objective.
    fn check_config(&self, _cfg: &Config) -> Result<()> {
        Ok(())
    }

    /// Adds the objective's own variables to the freshly built model, before anything else
    /// draws random numbers and before the optimiser collects the trainable variables.
    ///
    /// # Errors
    /// The model cannot take the objective (for example no classifier to read a width from).
    fn extend_model(&mut self, _model: &mut Model, _cfg: &Config) -> Result<()> {
        Ok(())
    }

    /// Brings the history of a run that an older convkit wrote up to date when it is resumed
    /// (nothing by default).
    fn upgrade_history(&self, _history: &mut [crate::metrics::EpochMetrics]) {}

    /// Whether an epoch's last incomplete batch is left out.
    fn drop_last(&self, cfg: &Config) -> bool {
        cfg.train.drop_last
    }

    /// Draws what the whole epoch needs ahead of its steps (per-image translations and flips),
    /// given the epoch's order of data-set indices.
    fn begin_epoch(&mut self, _aug: &Augmenter, _order: &[i64], _rng: &mut StdRng, _on: Device) {}

    /// The loss of one batch.
    ///
    /// # Errors
    /// The batch cannot be scored (for example a contrastive batch without two views).
    fn step(&mut self, input: StepInput<'_>) -> Result<StepOutput>;

    /// Whether `step` counts correct predictions (training accuracy).
    fn measures_train_accuracy(&self) -> bool;

    /// Images the network sees per data-set image in a step (2 for two views), for the rate.
    fn views(&self) -> usize {
        1
    }

    /// Whether to evaluate after 1-based `epoch` (the last epoch always is).
    fn eval_due(&self, epoch: usize, cfg: &Config) -> bool;

    /// Measures the model on the test split.
    fn evaluate(&self, input: EvalInput<'_>) -> Evaluation;

    /// Whether a data-parallel run may give each rank a part of the test split and add up the
    /// results (counts, confusion matrix): true for classification, whose numbers are sums.
    fn evaluation_adds_up(&self) -> bool {
        false
    }
}

/// Zero-grad, backward, the gradients averaged over the ranks of a data-parallel run (as DDP
/// does after backward), then the optimiser's update at rate `lr`: the one place a gradient is
/// applied.
///
/// # Errors
/// A collective failed (another rank stopped).
pub fn optimise(
    optim: &mut crate::optim::Optimizer,
    loss: &Tensor,
    lr: f64,
    dist: Option<&ProcessGroup>,
) -> Result<()> {
    optim.zero_grad();
    // A collective inside backward (synchronised BatchNorm) reports a dead rank as an error.
    loss.f_backward()
        .map_err(|e| crate::error::Error::Invalid(format!("backward pass: {e}")))?;
    if let Some(g) = dist {
        let params: Vec<Tensor> = optim
            .params
            .iter()
            .map(|p| p.tensor.shallow_clone())
            .collect();
        g.average_gradients(&params)?;
    }
    optim.step(lr);
    Ok(())
}
