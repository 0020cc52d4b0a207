//! Per-epoch metrics, `metrics.jsonl` and `summary.json`.

pub mod confusion;

pub use confusion::{Confusion, topk_correct, topk_hits};

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of `metrics.jsonl`. A value that was not measured is `None`, written as `null`
/// (a contrastive run measures no training accuracy; an epoch without evaluation, under
/// `train.eval_every` or `contrastive.knn_every`, has no test numbers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    /// Mean training loss of the epoch (the objective's loss: cross-entropy, SupCon, ...).
    pub train_loss: f64,
    /// Fraction of training images classified correctly during the epoch (augmented).
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    #[serde(default)]
    pub test_loss: Option<f64>,
    /// Top-1 test accuracy of the classifier, in [0, 1].
    #[serde(default)]
    pub test_accuracy: Option<f64>,
    #[serde(default)]
    pub test_top5: Option<f64>,
    /// Weighted kNN test accuracy of the normalised features (contrastive runs).
    #[serde(default)]
    pub knn_accuracy: Option<f64>,
    /// Training time of this epoch (evaluation excluded).
    pub epoch_seconds: f64,
    /// Training time since the start of the run (evaluation excluded).
    pub train_seconds: f64,
    /// Images (views, for two-view objectives) per second of training.
    pub images_per_second: f64,
}

/// Rewrites `metrics.jsonl` from the history (atomic, so resumed runs never duplicate lines).
pub fn write_jsonl(path: &Path, history: &[EpochMetrics]) -> std::io::Result<()> {
    let text: String = history
        .iter()
        .map(|m| serde_json::to_string(m).expect("metrics serialise") + "\n")
        .collect();
    crate::util::atomic_write_bytes(path, text.as_bytes())
}

pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

/// Writes any serialisable summary as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).expect("summary serialises");
    crate::util::atomic_write_bytes(path, text.as_bytes())
}
