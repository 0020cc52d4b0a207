//! Features of a whole split for linear probes, kNN and embeddings: the pooled output of the
//! network's body (what the classifier reads), or of every stage.

use super::{Ctx, Model};
use crate::augment::Augmenter;
use crate::data::loader::DeviceSplit;
use tch::{Kind, Tensor};

/// `f` applied to every batch of `batch` images of a split (evaluation input: normalised and
/// resized by `augmenter`, no augmentation), concatenated as float32.
fn over_split(
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
    f: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let index: Vec<i64> = (0..split.len() as i64).collect();
    let parts: Vec<Tensor> = index
        .chunks(batch.max(1))
        .map(|idx| {
            let (images, _) = split.batch(idx);
            tch::no_grad(|| f(&augmenter.eval_batch(&images))).to_kind(Kind::Float)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Pooled body features of every image of `split`, in evaluation mode: `[N, D]` float32, D the
/// classifier's input width.
pub fn encoder_features(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
) -> Tensor {
    over_split(split, augmenter, batch, |x| {
        model.net.features(x, &Ctx::eval())
    })
}

/// The global average of every stage's output (stem, layer1, ...), concatenated: `[N, sum C]`.
/// Earlier stages hold more generic features, which carry better to a distant target domain
/// (DINO's linear evaluation likewise concatenates several blocks).
pub fn stage_features(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
) -> Tensor {
    over_split(split, augmenter, batch, |x| {
        let ctx = Ctx::capturing();
        let _ = model.net.features(x, &ctx);
        let pooled: Vec<Tensor> = ctx
            .take_stages()
            .iter()
            .map(|(_, t)| t.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
            .collect();
        Tensor::cat(&pooled, 1)
    })
}

/// Rows scaled to unit L2 norm (zero rows stay zero).
pub fn normalize(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12)
}
