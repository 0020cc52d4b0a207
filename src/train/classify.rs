//! Supervised classification: cross-entropy with label smoothing on augmented batches, scored
//! by top-1 / top-5 accuracy with the recipe's test-time augmentation.

use super::evaluate::{self, Tta};
use super::objective::{EvalInput, Evaluation, Objective, StepInput, StepOutput};
use crate::error::{Error, Result};

use crate::augment::{Augmenter, Shifts};
use crate::config::Config;
use rand::rngs::StdRng;
use tch::{Device, Kind, Reduction, Tensor};

/// Cross-entropy (`label_smoothing` as PyTorch's `CrossEntropyLoss`).
pub struct CrossEntropy {
    label_smoothing: f64,
    /// The epoch's per-image translations and flips, in epoch order.
    shifts: Option<Shifts>,
}

impl CrossEntropy {
    /// With the label smoothing of `cfg.train`.
    pub fn new(cfg: &Config) -> Self {
        CrossEntropy {
            label_smoothing: cfg.train.label_smoothing,
            shifts: None,
        }
    }
}

impl Objective for CrossEntropy {
    fn name(&self) -> &str {
        "cross-entropy"
    }

    /// The `[contrastive]` section belongs to `convkit supcon`.
    fn check_config(&self, cfg: &Config) -> Result<()> {
        if cfg.provenance.contrastive_given || cfg.contrastive != Default::default() {
            return Err(Error::Invalid(
                "the [contrastive] section applies to contrastive pre-training (`convkit \
                 supcon`); this command trains a classifier with cross-entropy: remove the \
                 section, or run `convkit supcon`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Every image's crop offset and flip for the epoch, drawn once and uploaded once.
    fn begin_epoch(&mut self, aug: &Augmenter, order: &[i64], rng: &mut StdRng, on: Device) {
        self.shifts = aug.draw_shifts(order.len(), Some(order), rng, on);
    }

    fn step(&mut self, s: StepInput<'_>) -> Result<StepOutput> {
        let len = s.index.size()[0];
        let (images, labels) = s.train.batch_at(s.index);
        let shifts = self.shifts.as_ref().map(|sh| sh.narrow(s.from, len));
        let x = s
            .augmenter
            .train_batch_shifted(&images, shifts.as_ref(), s.rng);
        let logits = tch::autocast(s.autocast, || s.model.forward(&x, s.ctx));
        let loss = logits.to_kind(Kind::Float).cross_entropy_loss(
            &labels,
            None::<Tensor>,
            Reduction::Mean,
            -100,
            self.label_smoothing,
        );
        let hits = logits.argmax(1, false).eq_tensor(&labels).sum(Kind::Float);
        // The weighted loss is formed in float32, as the epoch mean always was.
        let weighted = loss.detach() * len as f64;
        let weight = hits.ones_like() * len as f64;
        let stats = Tensor::stack(&[weighted, hits, weight], 0).to_kind(Kind::Double);
        Ok(StepOutput { loss, stats })
    }

    fn measures_train_accuracy(&self) -> bool {
        true
    }

    fn evaluation_adds_up(&self) -> bool {
        true
    }

    fn eval_due(&self, epoch: usize, cfg: &Config) -> bool {
        let every = cfg.train.eval_every;
        epoch == cfg.train.epochs || (every > 0 && epoch.is_multiple_of(every))
    }

    fn evaluate(&self, e: EvalInput<'_>) -> Evaluation {
        let r = evaluate::evaluate(
            e.model,
            e.test,
            e.augmenter,
            e.cfg.train.eval_batch_size,
            Tta::of(&e.cfg.train),
            e.autocast,
        );
        Evaluation {
            loss: Some(r.loss),
            accuracy: Some(r.accuracy),
            top5: Some(r.top5),
            knn_accuracy: None,
            detail: Some(r),
        }
    }
}
