//! The SupCon loss L_out: for each anchor, the mean over its positives (same label, the anchor
//! itself excluded) of the log-probability of that positive among all other samples.
//!
//! Follows the reference implementation (HobbitLong/SupContrast, `losses.py`) with two
//! deliberate differences: anchors without any positive are left out of the mean instead of
//! producing NaN, and the `temperature / base_temperature` factor, which its author advises to
//! ignore, is not applied.

use tch::{Device, Kind, Tensor};

pub use crate::config::ContrastMode;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContrastiveError {
    #[error("features must be [batch, views, dim], got shape {0:?}")]
    Shape(Vec<i64>),
    #[error("{0} labels for a batch of {1} images")]
    Labels(i64, i64),
    #[error("temperature must be > 0, got {0}")]
    Temperature(f64),
    #[error("a contrastive batch needs at least 2 samples (images x views), got {0}")]
    TooSmall(i64),
    #[error("the projection head expects {head}-d features but the encoder gives {encoder}-d")]
    HeadMismatch { encoder: i64, head: i64 },
    #[error(
        "no anchor in the batch has a positive (every label occurs once and there is one view): \
the loss is undefined; use two views or larger batches"
    )]
    NoPositives,
}

/// SupCon loss for L2-normalised `features` `[B, V, D]` (V views per image). With `labels`
/// `None`, every image is its own class: SimCLR's NT-Xent.
pub fn supcon_loss(
    features: &Tensor,
    labels: Option<&Tensor>,
    temperature: f64,
    mode: ContrastMode,
) -> Result<Tensor, ContrastiveError> {
    let shape = features.size();
    let [b, v, _d] = shape[..] else {
        return Err(ContrastiveError::Shape(shape));
    };
    if temperature <= 0.0 || temperature.is_nan() {
        return Err(ContrastiveError::Temperature(temperature));
    }
    if b * v < 2 {
        return Err(ContrastiveError::TooSmall(b * v));
    }
    let (device, kind) = (features.device(), features.kind());
    let same_class = match labels {
        Some(l) => {
            if l.numel() as i64 != b {
                return Err(ContrastiveError::Labels(l.numel() as i64, b));
            }
            let l = l.reshape([-1, 1]).to_device(device);
            l.eq_tensor(&l.transpose(0, 1)).to_kind(kind)
        }
        None => Tensor::eye(b, (kind, device)),
    };
    // Views stacked view-major: row k = view k / B of image k % B.
    let contrast = Tensor::cat(&features.unbind(1), 0);
    let (anchor, anchors_per_image) = match mode {
        ContrastMode::All => (contrast.shallow_clone(), v),
        ContrastMode::One => (features.select(1, 0), 1),
    };
    let n_anchor = b * anchors_per_image;
    let logits = anchor.matmul(&contrast.transpose(0, 1)) / temperature;
    let logits = &logits - logits.amax([1i64].as_slice(), true).detach();
    let not_self = not_self_mask(n_anchor, b * v, (kind, device));
    let positives = same_class.repeat([anchors_per_image, v]) * &not_self;
    let exp = logits.exp() * &not_self;
    let log_prob = &logits - exp.sum_dim_intlist(1, true, kind).log();
    let n_pos = positives.sum_dim_intlist(1, false, kind);
    let has_pos = n_pos.gt(0.0);
    // With two or more views every anchor has its other view as a positive; only a single view
    // can leave an anchor without one. Checking that only then keeps the training step free of
    // host synchronisation.
    if v < 2 && has_pos.sum(Kind::Int64).int64_value(&[]) == 0 {
        return Err(ContrastiveError::NoPositives);
    }
    let mean_log_prob_pos =
        (&positives * log_prob).sum_dim_intlist(1, false, kind) / n_pos.clamp_min(1.0);
    // The mean over anchors that have a positive, as a masked sum (no data-dependent shape).
    let has_pos = has_pos.to_kind(kind);
    let per_anchor = -(mean_log_prob_pos * &has_pos);
    Ok(per_anchor.sum(kind) / has_pos.sum(kind).clamp_min(1.0))
}

/// Ones everywhere except at each anchor's own column (anchor i is contrast sample i).
fn not_self_mask(rows: i64, cols: i64, options: (Kind, Device)) -> Tensor {
    let eye = Tensor::eye_m(rows, cols, options);
    eye.ones_like() - eye
}
