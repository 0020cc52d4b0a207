//! Evaluation: loss, top-1, top-5, per-class accuracy and the confusion matrix, optionally with
//! test-time augmentation (mirror, and airbench's one-pixel translations).

use crate::augment::Augmenter;
use crate::data::loader::DeviceSplit;
use crate::metrics::{Confusion, topk_hits};
use crate::models::{Ctx, Model};
use tch::{Kind, Reduction, Tensor};

#[derive(Debug, Clone)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub top5: f64,
    pub confusion: Confusion,
}

/// Test-time augmentation. `flip`: the mirror image's logits averaged in. `translate`
/// (airbench): the image shifted one pixel up-left and one down-right (reflect padding), each
/// (with its mirror when `flip`) weighted a quarter, the unshifted views a half.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tta {
    pub flip: bool,
    pub translate: bool,
}

impl Tta {
    pub fn of(t: &crate::config::TrainSettings) -> Self {
        Tta {
            flip: t.tta_flip,
            translate: t.tta_translate,
        }
    }
}

/// Logits for normalised images `[N, C, H, W]` under test-time augmentation `tta`.
pub fn predict_logits(model: &Model, x: &Tensor, tta: Tta, autocast: bool) -> Tensor {
    tch::no_grad(|| {
        tch::autocast(autocast, || {
            let ctx = Ctx::eval();
            let views = |x: &Tensor| {
                let logits = model.forward(x, &ctx).to_kind(Kind::Float);
                if tta.flip {
                    (logits + model.forward(&x.flip([3]), &ctx).to_kind(Kind::Float)) / 2.0
                } else {
                    logits
                }
            };
            let base = views(x);
            if !tta.translate {
                return base;
            }
            let (h, w) = (x.size()[2], x.size()[3]);
            let padded = x.reflection_pad2d([1, 1, 1, 1]);
            let down_right = padded.narrow(2, 0, h).narrow(3, 0, w);
            let up_left = padded.narrow(2, 2, h).narrow(3, 2, w);
            base * 0.5 + views(&down_right) * 0.25 + views(&up_left) * 0.25
        })
    })
}

/// Loss, accuracy, top-5 and the confusion matrix of `model` on `split`. Per-batch results stay
/// on the device and are read once at the end (no host sync per batch).
pub fn evaluate(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch_size: usize,
    tta: Tta,
    autocast: bool,
) -> EvalResult {
    let n = split.len() as i64;
    let classes = model.spec.classes as usize;
    let bs = batch_size.max(1) as i64;
    let (mut sums, mut preds) = (Vec::new(), Vec::new());
    for from in (0..n).step_by(bs as usize) {
        let (images, labels) = split.range(from, bs.min(n - from));
        let logits = predict_logits(model, &augmenter.eval_batch(&images), tta, autocast);
        let loss = logits.cross_entropy_loss(&labels, None::<Tensor>, Reduction::Sum, -100, 0.0);
        let top5 = topk_hits(&logits, &labels, 5).to_kind(Kind::Double);
        sums.push(Tensor::stack(&[loss.to_kind(Kind::Double), top5], 0));
        preds.push(logits.argmax(1, false));
    }
    let mut confusion = Confusion::new(classes);
    let (mut loss_sum, mut top5) = (0.0, 0.0);
    if !sums.is_empty() {
        let totals =
            Vec::<f64>::try_from(Tensor::stack(&sums, 0).sum_dim_intlist(0, false, Kind::Double))
                .unwrap_or_default();
        (loss_sum, top5) = (totals[0], totals[1]);
        let pred = Vec::<i64>::try_from(Tensor::cat(&preds, 0).to_device(tch::Device::Cpu))
            .unwrap_or_default();
        let truth =
            Vec::<i64>::try_from(split.labels.to_device(tch::Device::Cpu)).unwrap_or_default();
        confusion.add(&truth, &pred);
    }
    let n = n.max(1) as f64;
    EvalResult {
        loss: loss_sum / n,
        accuracy: confusion.accuracy(),
        top5: top5 / n,
        confusion,
    }
}
