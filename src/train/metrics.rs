//! Per-epoch metrics, `metrics.jsonl` and `summary.json`.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// Test metrics are null for epochs that were not evaluated (`train.eval_every`).
    #[serde(with = "nan_as_null")]
    pub test_loss: f64,
    #[serde(with = "nan_as_null")]
    pub test_accuracy: f64,
    #[serde(with = "nan_as_null")]
    pub test_top5: f64,
    /// Training time of this epoch (evaluation excluded).
    pub epoch_seconds: f64,
    /// Training time since the start of the run (evaluation excluded).
    pub train_seconds: f64,
    pub images_per_second: f64,
}

/// JSON has no NaN: a missing value is written as null and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
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
