//! Batching: a seeded permutation per epoch, batches of indices, and the images moved to the
//! device once as u8 so that each step only gathers and augments on the device.

use super::Split;
use crate::util::mix_seed;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use tch::{Device, Tensor};

/// A split held on the training device: u8 NHWC images and i64 labels.
pub struct DeviceSplit {
    pub images: Tensor,
    pub labels: Tensor,
}

impl DeviceSplit {
    pub fn new(split: &Split, device: Device) -> Self {
        DeviceSplit {
            images: split.images.to_device(device),
            labels: split.labels.to_device(device),
        }
    }
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Gathers the images and labels of one batch of indices.
    pub fn batch(&self, index: &[i64]) -> (Tensor, Tensor) {
        self.batch_at(&Tensor::from_slice(index).to_device(self.images.device()))
    }
    /// `batch` with the indices already on the device (no host-to-device copy).
    pub fn batch_at(&self, index: &Tensor) -> (Tensor, Tensor) {
        (
            self.images.index_select(0, index),
            self.labels.index_select(0, index),
        )
    }
    /// Images `from..from + len` in data-set order (a view: no copy, no index upload).
    pub fn range(&self, from: i64, len: i64) -> (Tensor, Tensor) {
        (
            self.images.narrow(0, from, len),
            self.labels.narrow(0, from, len),
        )
    }
    /// The same tensors, shared (the data is not copied).
    pub fn share(&self) -> DeviceSplit {
        DeviceSplit {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }
}

/// The order of the training images in `epoch`: a permutation that depends only on (seed, epoch),
/// so a resumed run sees exactly the batches an uninterrupted run would.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix_seed(seed, epoch as u64)));
    order
}

/// Splits an order into batches; with `drop_last` a final short batch is left out (BatchNorm
/// statistics of a tiny last batch are noisy).
pub fn batches(order: &[i64], batch_size: usize, drop_last: bool) -> Vec<&[i64]> {
    order
        .chunks(batch_size)
        .filter(|b| !drop_last || b.len() == batch_size || order.len() < batch_size)
        .collect()
}

/// The batches a training epoch takes: [`batches`], without a final batch of a single image,
/// on which BatchNorm would see one value per channel (its variance, and so the running
/// statistics, would become NaN). PyTorch refuses such a batch; convkit leaves it out and
/// says so at the start of the run ([`drops_single_image`]).
pub fn training_batches(order: &[i64], batch_size: usize, drop_last: bool) -> Vec<&[i64]> {
    let mut out = batches(order, batch_size, drop_last);
    if out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
        out.pop();
    }
    out
}

/// Whether [`training_batches`] leaves out a last batch of one image for `n` images.
pub fn drops_single_image(n: usize, batch_size: usize, drop_last: bool) -> bool {
    steps_per_epoch(n, batch_size, drop_last) > training_steps_per_epoch(n, batch_size, drop_last)
}

/// Steps per training epoch for `n` images: the length of [`training_batches`] (which the
/// trainer only calls with `batch_size >= 2`).
pub fn training_steps_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    let steps = steps_per_epoch(n, batch_size, drop_last);
    let single = !drop_last && n > batch_size && n % batch_size == 1;
    steps - usize::from(single)
}

/// Steps per epoch for `n` images.
pub fn steps_per_epoch(n: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last && n >= batch_size {
        n / batch_size
    } else {
        n.div_ceil(batch_size)
    }
}
