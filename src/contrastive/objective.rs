//! Contrastive pre-training as an objective of the one training engine: two augmented views per
//! image, encoder features, the projection head, SupCon (Khosla et al. 2020) or, without labels,
//! SimCLR's NT-Xent; monitored by weighted kNN accuracy of the L2-normalised features.

use super::{ContrastMode, ProjectionHead, knn_accuracy, normalize, supcon_loss};
use crate::augment::Augmenter;
use crate::config::Config;
use crate::config::ContrastiveMethod;
use crate::data::loader::DeviceSplit;
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::models::{Ctx, Model, features};
use crate::train::objective::{EvalInput, Evaluation, Objective, StepInput, StepOutput};

use tch::{Kind, Tensor};

/// SupCon or SimCLR with the `[contrastive]` section's settings.
pub struct Contrastive {
    method: ContrastiveMethod,
    mode: ContrastMode,
    temperature: f64,
    head: Option<ProjectionHead>,
}

impl Contrastive {
    /// # Errors
    /// A batch smaller than 2 (a contrastive loss needs another image to compare with).
    pub fn new(cfg: &Config) -> Result<Self> {
        let c = &cfg.contrastive;
        if cfg.train.batch_size < 2 {
            return Err(Error::Invalid(format!(
                "batch size {} is too small for contrastive learning (at least 2; the paper uses 1024)",
                cfg.train.batch_size
            )));
        }
        Ok(Contrastive {
            method: c.method,
            mode: c.contrast_mode,
            temperature: c.temperature,
            head: None,
        })
    }

    /// The loss of a u8 batch `[B, H, W, C]`: two views, encoder, head, SupCon (labels) or
    /// NT-Xent (none). `convkit bench --pretrain` times exactly this plus
    /// [`crate::train::objective::optimise`].
    ///
    /// # Errors
    /// The loss refuses the batch (fewer than 2 images).
    pub fn loss(
        &self,
        model: &Model,
        augmenter: &Augmenter,
        (images, labels): (&Tensor, &Tensor),
        rng: &mut rand::rngs::StdRng,
        ctx: &Ctx,
        autocast: bool,
    ) -> Result<Tensor> {
        let z = self.projections(model, augmenter, images, rng, ctx, autocast)?;
        self.loss_of(&z, labels)
    }

    /// The L2-normalised projections of two augmented views of every image of a u8 batch
    /// `[B, H, W, C]`: `[B, 2, D]` float32.
    ///
    /// # Errors
    /// The projection head was not built (the engine builds it in `extend_model`).
    pub fn projections(
        &self,
        model: &Model,
        augmenter: &Augmenter,
        images: &Tensor,
        rng: &mut rand::rngs::StdRng,
        ctx: &Ctx,
        autocast: bool,
    ) -> Result<Tensor> {
        let head = self
            .head
            .as_ref()
            .ok_or_else(|| Error::Invalid("the projection head was not built".into()))?;
        let b = images.size()[0];
        let views = augmenter.two_views(images, rng);
        // The loss itself runs in float32 under bf16 autocast: its softmax over the batch needs it.
        let z = tch::autocast(autocast, || head.forward(&model.net.features(&views, ctx)))
            .to_kind(Kind::Float);
        Ok(z.view([2, b, -1]).transpose(0, 1))
    }

    /// The method's loss of projections `[B, 2, D]` with labels `[B]` (ignored by SimCLR).
    ///
    /// # Errors
    /// The loss refuses the batch (fewer than 2 images).
    pub fn loss_of(&self, z: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let labels = (self.method == ContrastiveMethod::SupCon).then_some(labels);
        supcon_loss(z, labels, self.temperature, self.mode)
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// The loss over the global batch of a data-parallel run, as multi-GPU SupCon and SimCLR
    /// compute it: every rank's projections and labels are gathered, this rank's own rows
    /// keep their gradient, and every rank computes the same loss over all anchors. The
    /// gradient that reaches this rank's projections is then exactly their part of the
    /// one-process gradient on the concatenated batch.
    ///
    /// # Errors
    /// A collective failed, or the loss refuses the batch.
    pub fn global_loss(&self, z: &Tensor, labels: &Tensor, g: &ProcessGroup) -> Result<Tensor> {
        let b = z.size()[0];
        let all = g.all_gather(z)?;
        let rest = |from: i64, len: i64| all.narrow(0, from, len);
        let r = g.rank as i64;
        let parts = [
            rest(0, r * b),
            z.shallow_clone(),
            rest((r + 1) * b, (g.world as i64 - r - 1) * b),
        ];
        let z_all = Tensor::cat(&parts, 0);
        let labels_all = g.all_gather(labels)?;
        self.loss_of(&z_all, &labels_all)
    }
}

impl Objective for Contrastive {
    fn name(&self) -> &str {
        self.method.as_str()
    }

    /// Classification settings that have no meaning for a contrastive loss are refused.
    fn check_config(&self, cfg: &Config) -> Result<()> {
        let t = &cfg.train;
        let refuse = |setting: &str, why: &str| {
            Err(Error::Invalid(format!(
                "{setting} does not apply to {} pre-training: {why}",
                self.method
            )))
        };
        if t.label_smoothing != 0.0 {
            return refuse(
                "train.label_smoothing",
                "the contrastive loss has no class targets to smooth",
            );
        }
        if t.tta_flip || t.tta_translate {
            return refuse(
                "test-time augmentation (train.tta_flip / train.tta_translate)",
                "the kNN monitor embeds each test image once",
            );
        }
        if !t.drop_last {
            return refuse(
                "train.drop_last = false",
                "contrastive batches are always full (the last partial batch is left out)",
            );
        }
        if t.eval_every != crate::config::TrainSettings::default().eval_every {
            return refuse(
                "train.eval_every",
                "the kNN monitor runs every contrastive.knn_every epochs; set that instead",
            );
        }
        Ok(())
    }

    /// The projection head on the encoder's features (VarStore prefix `head`, SupContrast's
    /// name; the parameter group `projection`, before the classifier's `head` group); the
    /// classifier takes no part in pre-training, so it is frozen (neither updated nor decayed).
    fn extend_model(&mut self, model: &mut Model, cfg: &Config) -> Result<()> {
        let dim = model.net.classifier().in_features();
        let c = &cfg.contrastive;
        let hidden = if c.head_hidden > 0 {
            c.head_hidden
        } else {
            dim
        };
        let head = ProjectionHead::new(&model.vs.root(), dim, dim, hidden, c.head_out)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.head = Some(head);
        model.add_part("projection", "head");
        let fc = &model.net.classifier().inner;
        let _ = fc.ws.set_requires_grad(false);
        if let Some(b) = &fc.bs {
            let _ = b.set_requires_grad(false);
        }
        Ok(())
    }

    /// Before the one training engine, pre-training wrote its kNN accuracy as `test_accuracy`
    /// and zeros for what it did not measure.
    fn upgrade_history(&self, history: &mut [crate::metrics::EpochMetrics]) {
        for m in history.iter_mut().filter(|m| m.knn_accuracy.is_none()) {
            m.knn_accuracy = m.test_accuracy.take();
            (m.train_accuracy, m.test_loss, m.test_top5) = (None, None, None);
        }
    }

    /// Contrastive batches are always full: SupCon's reference code drops the last one too.
    fn drop_last(&self, _cfg: &Config) -> bool {
        true
    }

    fn step(&mut self, s: StepInput<'_>) -> Result<StepOutput> {
        let (images, labels) = s.train.batch_at(s.index);
        let z = self.projections(s.model, s.augmenter, &images, s.rng, s.ctx, s.autocast)?;
        let (loss, scale) = match s.dist {
            None => (self.loss_of(&z, &labels)?, 1.0),
            // The engine averages gradients over the ranks, and each rank's gradient is already
            // its full share of the global loss's: scaled back up by the number of ranks.
            Some(g) => (self.global_loss(&z, &labels, g)?, g.world as f64),
        };
        let l = loss.detach().to_kind(Kind::Double);
        let stats = Tensor::stack(&[l.shallow_clone(), l.zeros_like(), l.ones_like()], 0);
        let loss = if scale == 1.0 { loss } else { loss * scale };
        Ok(StepOutput { loss, stats })
    }

    fn measures_train_accuracy(&self) -> bool {
        false
    }

    fn views(&self) -> usize {
        2
    }

    fn eval_due(&self, epoch: usize, cfg: &Config) -> bool {
        epoch.is_multiple_of(cfg.contrastive.knn_every.max(1)) || epoch == cfg.train.epochs
    }

    fn evaluate(&self, e: EvalInput<'_>) -> Evaluation {
        let c = &e.cfg.contrastive;
        let embed = |split: &DeviceSplit| {
            normalize(&features::encoder_features(
                e.model,
                split,
                e.augmenter,
                e.cfg.train.eval_batch_size,
            ))
        };
        let accuracy = knn_accuracy(
            &embed(e.test),
            &e.test.labels,
            &embed(e.train),
            &e.train.labels,
            e.classes,
            c.knn_k,
            c.knn_temperature,
        );
        Evaluation {
            knn_accuracy: Some(accuracy),
            ..Default::default()
        }
    }
}
