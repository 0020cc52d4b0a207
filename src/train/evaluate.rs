//! Evaluation: loss, top-1, top-5, per-class accuracy and the confusion matrix, optionally with
//! flip test-time augmentation.

use crate::analysis::{Confusion, topk_correct};
use crate::augment::Augmenter;
use crate::data::loader::DeviceSplit;
use crate::models::{Ctx, Model};
use tch::{Kind, Reduction, Tensor};

#[derive(Debug, Clone)]
pub struct EvalResult {
    pub loss: f64,
    pub accuracy: f64,
    pub top5: f64,
    pub confusion: Confusion,
}

/// Logits for normalised images, averaged with the mirrored images' logits when `tta_flip`.
pub fn predict_logits(model: &Model, x: &Tensor, tta_flip: bool, autocast: bool) -> Tensor {
    tch::no_grad(|| {
        tch::autocast(autocast, || {
            let ctx = Ctx::eval();
            let logits = model.forward(x, &ctx).to_kind(Kind::Float);
            if tta_flip {
                (logits + model.forward(&x.flip([3]), &ctx).to_kind(Kind::Float)) / 2.0
            } else {
                logits
            }
        })
    })
}

pub fn evaluate(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch_size: usize,
    tta_flip: bool,
    autocast: bool,
) -> EvalResult {
    let n = split.len();
    let classes = model.spec.classes as usize;
    let mut confusion = Confusion::new(classes);
    let (mut loss_sum, mut top5) = (0.0, 0i64);
    let index: Vec<i64> = (0..n as i64).collect();
    for idx in index.chunks(batch_size.max(1)) {
        let (images, labels) = split.batch(idx);
        let logits = predict_logits(model, &augmenter.eval_batch(&images), tta_flip, autocast);
        let loss = logits.cross_entropy_loss(&labels, None::<Tensor>, Reduction::Sum, -100, 0.0);
        loss_sum += loss.double_value(&[]);
        top5 += topk_correct(&logits, &labels, 5);
        let pred = Vec::<i64>::try_from(logits.argmax(1, false).to_device(tch::Device::Cpu))
            .unwrap_or_default();
        let truth = Vec::<i64>::try_from(labels.to_device(tch::Device::Cpu)).unwrap_or_default();
        confusion.add(&truth, &pred);
    }
    let n = n.max(1) as f64;
    EvalResult {
        loss: loss_sum / n,
        accuracy: confusion.accuracy(),
        top5: top5 as f64 / n,
        confusion,
    }
}
