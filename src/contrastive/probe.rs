//! `convkit probe`: a linear classifier on frozen encoder features. The features of the whole
//! data set are computed once and cached in the run folder; the classifier then trains on the
//! cache in seconds.

use crate::augment::Augmenter;
use crate::config::Config;
use crate::data::loader::DeviceSplit;
use crate::metrics;
use crate::models;
use crate::train::linear::{LinearProbe, LinearSpec};
use crate::train::{self, Result, TrainError};
use crate::util::atomic_write;
use crate::weights::checkpoint;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub device: String,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            epochs: 30,
            lr: 0.1,
            batch_size: 256,
            weight_decay: 0.0,
            device: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSummary {
    pub checkpoint: String,
    pub feature_dim: i64,
    pub train_images: usize,
    pub test_images: usize,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub epochs: usize,
    pub seconds: f64,
}

/// Raw (unnormalised) encoder features of a split: `[N, D]` on the host.
fn features(model: &models::Model, split: &DeviceSplit, aug: &Augmenter) -> Tensor {
    crate::models::features::encoder_features(model, split, aug, 500).to_device(Device::Cpu)
}

fn cache_path(out: &Path) -> PathBuf {
    out.join("probe-features.safetensors")
}

/// The checkpoint's network without its projection head (a cross-entropy checkpoint has none).
pub fn encoder(ck: &checkpoint::Loaded, device: Device) -> Result<models::Model> {
    let mut model = models::build(&ck.meta.spec, device)?;
    let weights: Vec<(String, Tensor)> = ck
        .section("model")
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect();
    checkpoint::copy_weights(&ck.path, &weights, &mut model)?;
    Ok(model)
}

/// Whether the checkpoint was written by contrastive pre-training (it carries a projection head).
pub fn has_projection_head(ck: &checkpoint::Loaded) -> bool {
    ck.section("model")
        .iter()
        .any(|(n, _)| n.starts_with("head."))
}

/// The cached features if they belong to this checkpoint epoch, else computes and caches them.
fn cached_features(
    ck: &checkpoint::Loaded,
    out: &Path,
    device: Device,
) -> Result<Vec<(String, Tensor)>> {
    let path = cache_path(out);
    let tag = Tensor::from_slice(&[ck.meta.epoch as i64]);
    if let Ok(t) = Tensor::read_safetensors(&path)
        && t.iter().any(|(n, v)| n == "epoch" && v.equal(&tag))
    {
        return Ok(t);
    }
    let cfg: Config = toml::from_str(&ck.meta.config)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", ck.path.display())))?;
    let data = train::load_data(&cfg, ck.meta.image_size)?;
    let model = encoder(ck, device)?;
    let aug = Augmenter::new(vec![], &ck.meta.mean, &ck.meta.std, device);
    let (train_split, test_split) = (
        DeviceSplit::new(&data.train, device),
        DeviceSplit::new(&data.test, device),
    );
    let tensors = vec![
        ("epoch".to_string(), tag),
        ("train_x".into(), features(&model, &train_split, &aug)),
        ("train_y".into(), data.train.labels.shallow_clone()),
        ("test_x".into(), features(&model, &test_split, &aug)),
        ("test_y".into(), data.test.labels.shallow_clone()),
    ];
    atomic_write(&path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(|e| std::io::Error::other(e.to_string()))
    })?;
    Ok(tensors)
}

fn get(t: &[(String, Tensor)], name: &str) -> Tensor {
    t.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.shallow_clone())
        .expect("probe cache entry")
}

/// The config `convkit probe --finetune` trains with: the contrastive run's data and encoder
/// (its checkpoint as the weights, with a new head for the classes), trained end to end with
/// the `finetune` recipe's optimiser, schedule, batch size and augmentation at one rate.
pub fn finetune_config(run: &Path, epochs: Option<usize>) -> Result<Config> {
    let ck = checkpoint::read(run)?;
    let mut cfg: Config = toml::from_str(&ck.meta.config)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", ck.path.display())))?;
    let recipe = crate::config::load(Some("finetune"), &[])
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    cfg.optim = recipe.optim;
    cfg.schedule = recipe.schedule;
    cfg.augment = recipe.augment;
    cfg.train.batch_size = recipe.train.batch_size;
    cfg.train.epochs = epochs.unwrap_or(recipe.train.epochs);
    cfg.contrastive = Default::default();
    cfg.transfer = crate::config::TransferConfig {
        weights: Some(ck.path.display().to_string()),
        ..recipe.transfer
    };
    Ok(cfg)
}

/// Trains and evaluates a linear probe on the checkpoint in `run`; writes `out/summary.json`.
pub fn run(run: &Path, out: &Path, spec: &ProbeSpec) -> Result<ProbeSummary> {
    let start = Instant::now();
    crate::util::tune_allocator();
    let device = train::parse_device(&spec.device)?;
    let ck = checkpoint::read(run)?;
    crate::util::create_dir(out)?;
    let cache = cached_features(&ck, out, device)?;
    let (train_x, train_y) = (
        get(&cache, "train_x").to_device(device),
        get(&cache, "train_y").to_device(device),
    );
    let (test_x, test_y) = (
        get(&cache, "test_x").to_device(device),
        get(&cache, "test_y").to_device(device),
    );
    let dim = train_x.size()[1];
    let classes = ck.meta.classes.len() as i64;
    let linear = LinearSpec {
        epochs: spec.epochs,
        lr: spec.lr,
        batch_size: spec.batch_size,
        weight_decay: spec.weight_decay,
        seed: 0,
    };
    let probe = LinearProbe::fit(&train_x, &train_y, classes, &linear)?;
    let n = train_x.size()[0] as usize;
    let summary = ProbeSummary {
        checkpoint: ck.path.display().to_string(),
        feature_dim: dim,
        train_images: n,
        test_images: test_x.size()[0] as usize,
        train_accuracy: probe.accuracy(&train_x, &train_y),
        test_accuracy: probe.accuracy(&test_x, &test_y),
        epochs: spec.epochs,
        seconds: start.elapsed().as_secs_f64(),
    };
    metrics::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}
