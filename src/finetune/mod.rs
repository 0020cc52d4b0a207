//! `convkit finetune --strategy ...`: the usual ways to adapt a pretrained network, each a
//! transformation of one training config, so every strategy shares the trainer, its
//! checkpoints, reports and summary.

use crate::config::{Config, TransferConfig};
use crate::error::{Error, Result};
use crate::metrics;
use crate::models;
use crate::train::{self, RunOptions};
use crate::weights::RunDir;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::Device;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No pretrained weights: the baseline.
    Scratch,
    /// Frozen body; a linear classifier on cached features.
    LinearProbe,
    /// fastai's `fine_tune`: the head alone first, then everything with discriminative rates.
    HeadThenUnfreeze,
    /// The top `k` stages and the head train; the rest stays frozen.
    Partial(usize),
    /// Every layer with one rate.
    Full,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "scratch" => Ok(Strategy::Scratch),
            "linear-probe" => Ok(Strategy::LinearProbe),
            "head-then-unfreeze" => Ok(Strategy::HeadThenUnfreeze),
            "full" => Ok(Strategy::Full),
            "partial" => Ok(Strategy::Partial(1)),
            _ => match s.strip_prefix("partial:").map(str::parse) {
                Some(Ok(k)) => Ok(Strategy::Partial(k)),
                _ => Err(format!(
                    "unknown strategy '{s}' (scratch, linear-probe, head-then-unfreeze, partial:K, full)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Strategy::Scratch => write!(f, "scratch"),
            Strategy::LinearProbe => write!(f, "linear-probe"),
            Strategy::HeadThenUnfreeze => write!(f, "head-then-unfreeze"),
            Strategy::Partial(k) => write!(f, "partial:{k}"),
            Strategy::Full => write!(f, "full"),
        }
    }
}

/// The headline of a fine-tuning run (its `summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub strategy: String,
    pub test_accuracy: f64,
    pub train_images: usize,
    pub test_images: usize,
    pub epochs: usize,
    /// Wall-clock of the whole strategy, feature extraction and evaluation included.
    pub seconds: f64,
    /// Linear probe only: the chosen L2 strength and the validation accuracy of each candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l2_validation: Vec<(f64, f64)>,
}

/// Options beyond the config.
#[derive(Debug, Clone, Default)]
pub struct FinetuneOptions {
    /// head-then-unfreeze: epochs with the body frozen (default: a fifth of the budget, >= 1).
    pub head_epochs: Option<usize>,
    /// head-then-unfreeze: the head-only phase runs at this multiple of the base rate (default
    /// 10: a new linear layer on fixed features needs a larger rate than the pretrained body,
    /// as Caffe's fine-tuning recipes give new layers 10x).
    pub head_lr_mult: Option<f64>,
    pub run: RunOptions,
}

/// The model's group names (built once on the CPU, without data).
fn group_names(cfg: &Config) -> Result<Vec<String>> {
    let spec = cfg.model.spec(2, 3);
    let model = models::build(&spec, Device::Cpu)?;
    Ok(crate::transfer::param_groups(&model)
        .into_iter()
        .map(|g| g.name)
        .collect())
}

/// `--freeze` and `--freeze-to` shape `full` and `head-then-unfreeze` (those groups stay
/// frozen throughout); the other strategies decide what trains themselves, so the flags would
/// be ignored: refused instead.
fn check_freezing(cfg: &Config, strategy: Strategy) -> Result<()> {
    let asked = !cfg.transfer.freeze.is_empty() || cfg.transfer.freeze_to.is_some();
    let honoured = matches!(strategy, Strategy::Full | Strategy::HeadThenUnfreeze);
    if asked && !honoured {
        return Err(Error::Invalid(format!(
            "strategy {strategy} decides which groups train itself; --freeze and --freeze-to \
             (transfer.freeze, transfer.freeze_to) apply to full and head-then-unfreeze"
        )));
    }
    Ok(())
}

fn require_weights(cfg: &Config, strategy: Strategy) -> Result<()> {
    match (&cfg.transfer.weights, strategy) {
        (None, s) if s != Strategy::Scratch => Err(Error::Invalid(format!(
            "strategy {s} needs pretrained weights (--weights FILE or a torchvision name)"
        ))),
        _ => Ok(()),
    }
}

/// Runs one strategy into `out`; writes `out/summary.json` (a [`FinetuneSummary`]).
pub fn run(
    mut cfg: Config,
    strategy: Strategy,
    out: &Path,
    opts: &FinetuneOptions,
) -> Result<FinetuneSummary> {
    require_weights(&cfg, strategy)?;
    check_freezing(&cfg, strategy)?;
    let start = Instant::now();
    let groups = group_names(&cfg)?;
    let mut summary = match strategy {
        Strategy::LinearProbe => return linear_probe(&cfg, out, start),
        Strategy::HeadThenUnfreeze => return head_then_unfreeze(cfg, &groups, out, opts, start),
        Strategy::Scratch => {
            cfg.transfer = TransferConfig {
                resize: cfg.transfer.resize,
                ..Default::default()
            };
            from_train(train::run(cfg, out, &opts.run)?, strategy)
        }
        // The groups the user froze (`--freeze`, `--freeze-to`) stay frozen.
        Strategy::Full => from_train(train::run(cfg, out, &opts.run)?, strategy),
        Strategy::Partial(k) => {
            let stages = groups.len().saturating_sub(1);
            if k > stages {
                return Err(Error::Invalid(format!(
                    "partial:{k}: the model has only {stages} groups below the head ({})",
                    groups.join(", ")
                )));
            }
            cfg.transfer.freeze.clear();
            cfg.transfer.freeze_to = Some(stages - k);
            from_train(train::run(cfg, out, &opts.run)?, strategy)
        }
    };
    summary.seconds = start.elapsed().as_secs_f64();
    if crate::dist::is_main() {
        metrics::write_json(&out.join("summary.json"), &summary)?;
    }
    Ok(summary)
}

fn from_train(s: train::TrainSummary, strategy: Strategy) -> FinetuneSummary {
    FinetuneSummary {
        strategy: strategy.to_string(),
        test_accuracy: s.test_accuracy,
        train_images: s.train_images,
        test_images: s.test_images,
        epochs: s.epochs,
        seconds: s.wall_seconds,
        l2: None,
        l2_validation: vec![],
    }
}

/// Phase 1 trains the head alone (into `out/head`, at `head_lr_mult` times the base rate);
/// phase 2 starts from its checkpoint and trains every group, the head at half the base rate
/// and the lowest group at that over lr_mult (fastai's fine_tune: lr_mult 100).
fn head_then_unfreeze(
    cfg: Config,
    groups: &[String],
    out: &Path,
    opts: &FinetuneOptions,
    start: Instant,
) -> Result<FinetuneSummary> {
    let total = cfg.train.epochs;
    if total < 2 {
        return Err(Error::Invalid(
            "head-then-unfreeze needs at least 2 epochs (head, then all layers)".into(),
        ));
    }
    let head_epochs = opts
        .head_epochs
        .unwrap_or((total / 5).max(1))
        .clamp(1, total - 1);
    let mut head = cfg.clone();
    head.train.epochs = head_epochs;
    head.optim.lr *= opts.head_lr_mult.unwrap_or(10.0);
    head.train.eval_every = 0;
    head.transfer.freeze = groups[..groups.len() - 1].to_vec();
    head.transfer.freeze_to = None;
    let head_out = out.join("head");
    let head_done = RunDir::new(&head_out).summary().exists() && opts.run.resume;
    if !head_done {
        let run = RunOptions {
            resume: false,
            ..opts.run.clone()
        };
        train::run(head, &head_out, &run)?;
    }
    let mut all = cfg;
    all.train.epochs = total - head_epochs;
    all.optim.lr /= 2.0;
    if all.transfer.lr_mult <= 1.0 && all.transfer.layer_decay.is_none() {
        all.transfer.lr_mult = 100.0;
    }
    // Phase 2 unfreezes what the user did not freeze (fastai's `freeze_to`).
    all.transfer.weights = Some(RunDir::new(&head_out).checkpoint().display().to_string());
    let mut s = from_train(train::run(all, out, &opts.run)?, Strategy::HeadThenUnfreeze);
    s.epochs = total;
    s.seconds = start.elapsed().as_secs_f64();
    if crate::dist::is_main() {
        metrics::write_json(&out.join("summary.json"), &s)?;
    }
    Ok(s)
}

/// The linear probe against training the same head through the frozen body (every group but
/// the head frozen, BatchNorm held, the same epochs and data), both end to end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeSpeed {
    pub epochs: usize,
    pub train_images: usize,
    pub probe_seconds: f64,
    pub probe_accuracy: f64,
    pub frozen_seconds: f64,
    pub frozen_accuracy: f64,
    /// frozen_seconds / probe_seconds
    pub speedup: f64,
}

pub fn probe_vs_frozen(cfg: &Config, out: &Path, opts: &FinetuneOptions) -> Result<ProbeSpeed> {
    require_weights(cfg, Strategy::LinearProbe)?;
    let probe_dir = out.join("linear-probe");
    // A cold start: the feature cache is part of what is measured.
    let _ = std::fs::remove_dir_all(&probe_dir);
    let probe = linear_probe(cfg, &probe_dir, Instant::now())?;
    let groups = group_names(cfg)?;
    let mut frozen = cfg.clone();
    frozen.transfer.freeze = groups[..groups.len() - 1].to_vec();
    frozen.transfer.freeze_to = None;
    frozen.transfer.train_bn = false;
    frozen.train.eval_every = 0;
    let start = Instant::now();
    let s = train::run(frozen, &out.join("frozen-body"), &opts.run)?;
    let frozen_seconds = start.elapsed().as_secs_f64();
    let r = ProbeSpeed {
        epochs: cfg.train.epochs,
        train_images: probe.train_images,
        probe_seconds: probe.seconds,
        probe_accuracy: probe.test_accuracy,
        frozen_seconds,
        frozen_accuracy: s.test_accuracy,
        speedup: frozen_seconds / probe.seconds,
    };
    metrics::write_json(&out.join("probe-speed.json"), &r)?;
    Ok(r)
}

/// The linear-probe strategy: [`crate::probe::linear_probe`] on the config at the probe's
/// default rate, as a fine-tuning summary.
fn linear_probe(cfg: &Config, out: &Path, start: Instant) -> Result<FinetuneSummary> {
    let lr = crate::probe::linear::LinearSpec::default().lr;
    let p = crate::probe::linear_probe(cfg, out, lr)?;
    let s = FinetuneSummary {
        strategy: Strategy::LinearProbe.to_string(),
        test_accuracy: p.test_accuracy,
        train_images: p.train_images,
        test_images: p.test_images,
        epochs: p.epochs,
        seconds: start.elapsed().as_secs_f64(),
        l2: Some(p.l2),
        l2_validation: p.l2_validation,
    };
    if crate::dist::is_main() {
        metrics::write_json(&out.join("summary.json"), &s)?;
    }
    Ok(s)
}
