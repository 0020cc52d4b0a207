//! Transfer learning: start from pretrained weights, replace the head, freeze groups, and give
//! each group its own learning rate (fastai's `slice`, an explicit list, or timm's layer decay).
//!
//! Defaults follow fastai: BatchNorm layers inside frozen groups keep training (their affine
//! parameters and running statistics), because ImageNet statistics rarely fit the new data;
//! `train_bn = false` holds them fixed in eval mode instead.

pub mod groups;

pub use groups::{Group, batchnorm_layers, param_groups};

use crate::config::{Normalise, TransferConfig};

/// A transfer setting that does not fit the model or the data (the message names it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TransferError(pub String);

impl From<String> for TransferError {
    fn from(s: String) -> Self {
        TransferError(s)
    }
}

impl TransferError {
    /// Whether the message contains `text` (for checks on what a refusal names).
    pub fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }
}
use crate::models::Model;
use crate::optim::Optimizer;
use crate::weights::{self, LoadOptions, LoadReport};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One group as the run summary shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSummary {
    pub name: String,
    pub lr: f64,
    pub frozen: bool,
    pub parameters: i64,
}

/// What transfer set-up did, for the run summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TransferSummary {
    pub weights: Option<String>,
    /// Which tensors of the file were used: key path and prefix stripped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    pub loaded_tensors: usize,
    pub replaced_head: Vec<String>,
    pub not_loaded: String,
    pub normalisation: String,
    pub train_bn: bool,
    pub resize: Option<i64>,
    pub groups: Vec<GroupSummary>,
}

/// Learning-rate scale (relative to the base rate) for each of `n` groups, first to last.
///
/// # Errors
/// `lr_groups` with another number of rates than groups, or a rate, `lr_mult` or
/// `layer_decay` out of range.
pub fn group_scales(
    cfg: &TransferConfig,
    base_lr: f64,
    n: usize,
) -> Result<Vec<f64>, TransferError> {
    if let Some(rates) = &cfg.lr_groups {
        if rates.len() != n {
            return Err(TransferError(format!(
                "lr_groups lists {} rates but the model has {n} groups",
                rates.len()
            )));
        }
        return Ok(rates.iter().map(|r| r / base_lr).collect());
    }
    let last = (n.max(2) - 1) as f64;
    if let Some(d) = cfg.layer_decay {
        if !(d > 0.0 && d <= 1.0) {
            return Err(TransferError(format!("layer_decay {d} must lie in (0, 1]")));
        }
        return Ok((0..n).map(|i| d.powf(last - i as f64)).collect());
    }
    if cfg.lr_mult < 1.0 {
        return Err(TransferError(format!(
            "lr_mult {} must be at least 1",
            cfg.lr_mult
        )));
    }
    Ok((0..n)
        .map(|i| cfg.lr_mult.powf(-(last - i as f64) / last))
        .collect())
}

/// The groups to freeze, checked against the model's group names.
///
/// # Errors
/// A name the model has no group for, or `freeze_to` beyond the number of groups.
pub fn frozen_groups(cfg: &TransferConfig, groups: &[Group]) -> Result<Vec<String>, TransferError> {
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let mut frozen = Vec::new();
    for f in &cfg.freeze {
        if !names.contains(&f.as_str()) {
            return Err(TransferError(format!(
                "cannot freeze '{f}': the model's groups are {}",
                names.join(", ")
            )));
        }
        frozen.push(f.clone());
    }
    if let Some(k) = cfg.freeze_to {
        if k > names.len() {
            return Err(TransferError(format!(
                "freeze_to {k}: the model has only {} groups ({})",
                names.len(),
                names.join(", ")
            )));
        }
        frozen.extend(names[..k].iter().map(|s| s.to_string()));
    }
    frozen.sort();
    frozen.dedup();
    Ok(frozen)
}

/// Freezing and learning rates applied to an optimiser over the model.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// BatchNorm layers held in eval mode during training (`train_bn = false`).
    pub bn_eval: Vec<String>,
    pub groups: Vec<GroupSummary>,
}

/// Sets each parameter's learning-rate scale and freezes (no gradient, no update) the
/// parameters of frozen groups. Groups that do not train at all whatever the settings (the
/// classifier during contrastive pre-training, which its objective froze) take no part: they
/// get no rate of the spread and are not counted by `freeze_to` or `lr_groups`.
///
/// # Errors
/// As [`group_scales`] and [`frozen_groups`].
pub fn apply(
    cfg: &TransferConfig,
    model: &Model,
    optim: &mut Optimizer,
) -> Result<Applied, TransferError> {
    let trainable: Vec<&String> = optim.params.iter().map(|p| &p.name).collect();
    let mut groups = param_groups(model);
    groups.retain(|g| g.vars.iter().any(|v| trainable.contains(&v)));
    let scales = group_scales(cfg, optim.config.lr, groups.len())?;
    let frozen = frozen_groups(cfg, &groups)?;
    let bn_layers = batchnorm_layers(model);
    let is_bn_param = |var: &str| bn_layers.iter().any(|b| var.starts_with(&format!("{b}.")));
    let group_of = |var: &str| groups.iter().position(|g| g.vars.iter().any(|v| v == var));
    for p in &mut optim.params {
        let g = group_of(&p.name).expect("every variable is in a group");
        let keeps_training =
            !frozen.contains(&groups[g].name) || (cfg.train_bn && is_bn_param(&p.name));
        p.lr_scale = if keeps_training {
            p.lr_scale * scales[g]
        } else {
            0.0
        };
        let _ = p.tensor.set_requires_grad(keeps_training);
    }
    let bn_eval = if cfg.train_bn {
        vec![]
    } else {
        bn_layers
            .iter()
            .filter(|b| {
                let var = format!("{b}.weight");
                group_of(&var).is_some_and(|g| frozen.contains(&groups[g].name))
            })
            .cloned()
            .collect()
    };
    let vars = model.vs.variables();
    let summary = groups
        .iter()
        .zip(&scales)
        .map(|(g, s)| GroupSummary {
            name: g.name.clone(),
            lr: optim.config.lr * s,
            frozen: frozen.contains(&g.name),
            parameters: g
                .vars
                .iter()
                .filter(|v| !crate::models::is_buffer(v))
                .map(|v| vars[v].numel() as i64)
                .sum(),
        })
        .collect();
    Ok(Applied {
        bn_eval,
        groups: summary,
    })
}

/// Where the normalisation comes from, and the statistics to use: (name, mean, std), one value
/// per channel.
///
/// # Errors
/// The chosen statistics have another number of channels than the images.
pub fn normalisation(
    cfg: &TransferConfig,
    weights_meta: Option<&crate::weights::checkpoint::Meta>,
    data_mean: &[f64],
    data_std: &[f64],
) -> Result<(String, Vec<f64>, Vec<f64>), TransferError> {
    let imagenet = || {
        (
            "imagenet".to_string(),
            weights::IMAGENET_MEAN.to_vec(),
            weights::IMAGENET_STD.to_vec(),
        )
    };
    let data = || ("data".to_string(), data_mean.to_vec(), data_std.to_vec());
    let chosen = match (cfg.normalise, &cfg.weights, weights_meta) {
        (Normalise::Data, _, _) | (Normalise::Auto, None, _) => data(),
        (Normalise::Imagenet, _, _) => imagenet(),
        (Normalise::Auto, Some(_), Some(m)) => ("checkpoint".into(), m.mean.clone(), m.std.clone()),
        (Normalise::Auto, Some(_), None) => imagenet(),
    };
    if chosen.1.len() != data_mean.len() {
        return Err(TransferError(format!(
            "{} normalisation has {} channels but the images have {}",
            chosen.0,
            chosen.1.len(),
            data_mean.len()
        )));
    }
    Ok(chosen)
}

/// The model's variables (state-dict names) and shapes, sorted by name.
pub fn model_shapes(model: &Model) -> Vec<(String, Vec<i64>)> {
    let mut v: Vec<(String, Vec<i64>)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    v.sort();
    v
}

/// Loads pretrained weights into a model whose head may have another size. A replaced head
/// starts at zero (MAE and BEiT initialise new heads with std 2e-5): its first predictions are
/// uniform, so early steps neither push random gradients into the pretrained body nor start
/// from confidently wrong answers, which a randomly initialised head on strongly clustered
/// features does.
///
/// The state dict is found inside training checkpoints (key path and prefix, or the config's
/// `weights_key` / `strip_prefix`); the report says what was chosen.
pub fn load_weights(
    cfg: &TransferConfig,
    path: &Path,
    model: &mut Model,
) -> weights::Result<LoadReport> {
    let contents = weights::read_contents(path)?;
    let (tensors, choice) = weights::choose(
        &contents,
        &model_shapes(model),
        cfg.weights_key.as_deref(),
        cfg.strip_prefix.as_deref(),
    )?;
    let opts = LoadOptions {
        strict: cfg.strict,
        replace_head: true,
    };
    let mut report = weights::load_into(path, &tensors, model, opts)?;
    report.chosen = Some(choice.describe(path));
    if !report.replaced_head.is_empty() {
        let fc = &model.net.classifier().inner;
        tch::no_grad(|| {
            let _ = fc.ws.shallow_clone().zero_();
            if let Some(b) = &fc.bs {
                let _ = b.shallow_clone().zero_();
            }
        });
    }
    Ok(report)
}
