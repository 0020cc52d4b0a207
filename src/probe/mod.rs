//! The one linear probe: a linear classifier on the frozen features of pretrained weights, its
//! L2 strength chosen by cross-validation ([`linear::fit_with_l2_search`]). The features of the
//! whole data set are computed once through the frozen body and cached (`features.safetensors`,
//! keyed by the data, model, weights file, resize, normalisation and feature kind); the
//! classifier then trains on the cache in seconds. `convkit probe`, the `linear-probe`
//! fine-tuning strategy and the experiments all run [`linear_probe`].

pub mod linear;

use crate::config::{Config, ProbeFeatures, TransferConfig};
use crate::data::loader::DeviceSplit;
use crate::error::{Error, Result};
use crate::metrics;
use crate::train::{self, TrainedRun, Trainer};
use crate::util::{atomic_write, fnv1a};
use linear::LinearSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Tensor};

/// What a linear probe measured (`convkit probe`'s `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// The weights probed (a checkpoint, a weights file or a torchvision name).
    pub weights: Option<String>,
    pub feature_dim: i64,
    pub train_images: usize,
    pub test_images: usize,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub epochs: usize,
    /// The L2 strength cross-validation chose, and each candidate's validation accuracy.
    pub l2: f64,
    pub l2_validation: Vec<(f64, f64)>,
    /// Wall-clock, feature extraction (when not cached) included.
    pub seconds: f64,
}

/// Identifies cached features: the data, the model, the weights file (path, size, time; key
/// path and prefix), the input resize, normalisation and feature kind, and the seed (which
/// draws label noise).
fn feature_tag(cfg: &Config) -> i64 {
    let weights = cfg.transfer.weights.as_deref().unwrap_or_default();
    let stamp = std::fs::metadata(weights)
        .map(|m| format!("{}|{:?}", m.len(), m.modified().ok()))
        .unwrap_or_default();
    let key = format!(
        "{}|{:?}|{weights}|{stamp}|{:?}|{:?}|{:?}|{:?}|{:?}|{}",
        toml::to_string(&cfg.data).unwrap_or_default(),
        cfg.model,
        cfg.transfer.resize,
        cfg.transfer.normalise,
        cfg.transfer.probe_features,
        cfg.transfer.weights_key,
        cfg.transfer.strip_prefix,
        // The seed draws the label noise of `data.label_noise`.
        cfg.train.seed
    );
    fnv1a(key.as_bytes()) as i64
}

/// `[train_x, train_y, test_x, test_y, classes]` on the host, from `out/features.safetensors` when it
/// belongs to this config, else computed through the frozen body and cached.
pub fn cached_features(cfg: &Config, out: &Path) -> Result<[Tensor; 5]> {
    let path = out.join("features.safetensors");
    let tag = Tensor::from_slice(&[feature_tag(cfg)]);
    let names = ["train_x", "train_y", "test_x", "test_y", "classes"];
    if let Ok(t) = Tensor::read_safetensors(&path)
        && t.iter().any(|(n, v)| n == "tag" && v.equal(&tag))
    {
        let get = |name: &str| {
            t.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.shallow_clone())
        };
        if let [Some(a), Some(b), Some(c), Some(d), Some(e)] = names.map(get) {
            return Ok([a, b, c, d, e]);
        }
    }
    let mut frozen = cfg.clone();
    frozen.transfer.freeze_to = None;
    frozen.transfer.freeze.clear();
    let trainer = Trainer::new(frozen, out, false)?;
    let stages = cfg.transfer.probe_features == ProbeFeatures::Stages;
    let feats = |split: &DeviceSplit| {
        trainer
            .encoder_features(split, stages)
            .to_device(Device::Cpu)
    };
    let (train_split, test_split) = trainer.splits();
    let result = [
        feats(train_split),
        trainer.data.train.labels.shallow_clone(),
        feats(test_split),
        trainer.data.test.labels.shallow_clone(),
        Tensor::from_slice(&[trainer.data.classes.len() as i64]),
    ];
    let mut tensors: Vec<(String, Tensor)> = names
        .iter()
        .zip(&result)
        .map(|(n, t)| (n.to_string(), t.shallow_clone()))
        .collect();
    tensors.push(("tag".into(), tag));
    crate::util::create_dir(out)?;
    atomic_write(&path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(|e| std::io::Error::other(e.to_string()))
    })?;
    Ok(result)
}

/// Fits the linear probe of `cfg` (its `transfer.weights` frozen; `train.epochs` epochs of SGD
/// at rate `lr` on standardised features, so one rate suits every encoder; the L2 strength
/// cross-validated) on cached features in `out`, and scores it. `cfg.optim` is the network's,
/// not the probe's, and is not used.
///
/// # Errors
/// The data, model or weights cannot be loaded, or the features cannot be cached in `out`.
pub fn linear_probe(cfg: &Config, out: &Path, lr: f64) -> Result<ProbeSummary> {
    crate::train::parallel::refuse_launch("the linear probe")?;
    let start = Instant::now();
    crate::util::create_dir(out)?;
    let device = train::parse_device(&cfg.train.device)?;
    let [train_x, train_y, test_x, test_y, classes] =
        cached_features(cfg, out)?.map(|t| t.to_device(device));
    let classes = classes.int64_value(&[0]);
    let spec = LinearSpec {
        epochs: cfg.train.epochs,
        lr,
        seed: cfg.train.seed,
        ..Default::default()
    };
    let (probe, l2, l2_validation) =
        linear::fit_with_l2_search(&train_x, &train_y, classes, &spec)?;
    Ok(ProbeSummary {
        weights: cfg.transfer.weights.clone(),
        feature_dim: train_x.size()[1],
        train_images: train_x.size()[0] as usize,
        test_images: test_x.size()[0] as usize,
        train_accuracy: probe.accuracy(&train_x, &train_y),
        test_accuracy: probe.accuracy(&test_x, &test_y),
        epochs: cfg.train.epochs,
        l2,
        l2_validation,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `convkit probe`'s settings.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub epochs: usize,
    pub lr: f64,
    pub device: String,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        let l = LinearSpec::default();
        ProbeSpec {
            epochs: l.epochs,
            lr: l.lr,
            device: "auto".into(),
        }
    }
}

/// The probe config of a run: its data and model, its checkpoint as the frozen weights (with
/// the checkpoint's own normalisation), `spec`'s epochs and device.
///
/// # Errors
/// The checkpoint or its config cannot be read.
pub fn probe_config(run: &Path, spec: &ProbeSpec) -> Result<Config> {
    let run = TrainedRun::open(run)?;
    let mut cfg = run.config.clone();
    cfg.train.epochs = spec.epochs;
    cfg.train.device = spec.device.clone();
    cfg.contrastive = Default::default();
    cfg.transfer = TransferConfig {
        weights: Some(run.path().display().to_string()),
        resize: cfg.transfer.resize,
        ..Default::default()
    };
    Ok(cfg)
}

/// The linear probe of the run (or checkpoint) `run`; writes `out/summary.json`.
///
/// # Errors
/// As [`probe_config`] and [`linear_probe`].
pub fn run(run: &Path, out: &Path, spec: &ProbeSpec) -> Result<ProbeSummary> {
    crate::util::tune_allocator();
    let summary = linear_probe(&probe_config(run, spec)?, out, spec.lr)?;
    metrics::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The config `convkit probe --finetune` trains with: the contrastive run's data and encoder
/// (its checkpoint as the weights, with a new head for the classes), trained end to end with
/// the `finetune` recipe's optimiser, schedule, batch size and augmentation at one rate.
pub fn finetune_config(run: &Path, epochs: Option<usize>) -> Result<Config> {
    let run = TrainedRun::open(run)?;
    let mut cfg = run.config.clone();
    let recipe =
        crate::config::load(Some("finetune"), &[]).map_err(|e| Error::Invalid(e.to_string()))?;
    cfg.optim = recipe.optim;
    cfg.schedule = recipe.schedule;
    cfg.augment = recipe.augment;
    cfg.train.batch_size = recipe.train.batch_size;
    cfg.train.epochs = epochs.unwrap_or(recipe.train.epochs);
    cfg.provenance.origin = format!(
        "{}'s data and model with the finetune recipe's training settings",
        run.path().display()
    );
    cfg.contrastive = Default::default();
    cfg.transfer = crate::config::TransferConfig {
        weights: Some(run.path().display().to_string()),
        ..recipe.transfer
    };
    Ok(cfg)
}
