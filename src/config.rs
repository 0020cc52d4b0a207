//! The training configuration: one serde structure with defaults for every field, loaded from a
//! recipe (shipped TOML, or a file), overridden from the command line, and saved with the run.

use crate::augment::Aug;
use crate::models::{ModelSpec, Stem};
use crate::optim::{OptimConfig, Schedule};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainSettings,
    pub optim: OptimConfig,
    pub schedule: Schedule,
    /// Applied to training batches only; see `augment` for the order and the string forms.
    pub augment: Vec<Aug>,
    /// Contrastive pre-training (`convkit supcon`) only.
    pub contrastive: ContrastiveConfig,
    /// Pretrained weights, freezing and per-group learning rates.
    pub transfer: TransferConfig,
    /// Data-parallel training when a launcher (torchrun, Slurm) started several processes.
    pub dist: DistConfig,
    /// Where the settings came from; not part of what they mean.
    #[serde(skip)]
    pub provenance: Provenance,
}

/// Where a config came from. Configs that differ only here are equal: a run's saved config
/// read back is the same config, whatever the command line that made it.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// `defaults`, `recipe NAME` or a file, and the number of command-line settings, for the
    /// first lines of a run.
    pub origin: String,
    /// No recipe or setting chose the augmentation: the trainer picks it from the data
    /// ([`crate::augment::policy_for`]) and the run's config.toml records the choice.
    pub augment_from_data: bool,
    /// The recipe or a setting names the `[contrastive]` section (which only `convkit supcon`
    /// uses, so other commands refuse it).
    pub contrastive_given: bool,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            origin: "defaults".into(),
            augment_from_data: false,
            contrastive_given: false,
        }
    }
}

impl PartialEq for Provenance {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastiveConfig {
    /// `supcon` (labels define positives) or `simclr` (no labels).
    pub method: ContrastiveMethod,
    pub temperature: f64,
    /// `all` or `one`.
    pub contrast_mode: ContrastMode,
    /// Projection head: hidden width (0: the encoder's feature size) and output size.
    pub head_hidden: i64,
    pub head_out: i64,
    /// Weighted kNN monitor on the test set every N epochs (and after the last).
    pub knn_every: usize,
    pub knn_k: i64,
    pub knn_temperature: f64,
    /// Test images whose embedding the run's report measures and maps (t-SNE); 0 skips it.
    pub embed_images: usize,
}

/// The contrastive loss: SupCon (Khosla et al. 2020: images of the same class are positives)
/// or SimCLR's NT-Xent (Chen et al. 2020: only the other view of the same image is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContrastiveMethod {
    #[serde(rename = "supcon")]
    SupCon,
    #[serde(rename = "simclr")]
    SimClr,
}

impl ContrastiveMethod {
    /// The name as config files and reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContrastiveMethod::SupCon => "supcon",
            ContrastiveMethod::SimClr => "simclr",
        }
    }
}

impl std::fmt::Display for ContrastiveMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which views serve as anchors of the contrastive loss (SupContrast's `contrast_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContrastMode {
    /// Every view of every image is an anchor (the paper's setting).
    All,
    /// Only the first view of each image is an anchor.
    One,
}

impl Default for ContrastiveConfig {
    fn default() -> Self {
        ContrastiveConfig {
            method: ContrastiveMethod::SupCon,
            temperature: 0.1,
            contrast_mode: ContrastMode::All,
            head_hidden: 0,
            head_out: 128,
            knn_every: 1,
            knn_k: 200,
            knn_temperature: 0.1,
            embed_images: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: DataConfig::default(),
            model: ModelConfig::default(),
            train: TrainSettings::default(),
            optim: OptimConfig::default(),
            schedule: Schedule::default(),
            augment: vec![
                Aug::Crop {
                    pad: 4,
                    reflect: false,
                },
                Aug::Flip,
            ],
            contrastive: ContrastiveConfig::default(),
            transfer: Default::default(),
            dist: DistConfig::default(),
            provenance: Provenance::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// A path (CIFAR folder or .tar.gz, image folder, IDX folder), `synthetic`, or
    /// `cifar10`/`cifar100` from the data cache.
    pub source: String,
    /// Forces a reader: cifar-binary, cifar-python, folder, idx, synthetic.
    pub format: Option<crate::data::Format>,
    /// Square side images are resized to (image folders); default: the model's input size.
    pub image_size: Option<u32>,
    /// Held-out fraction for a single image folder without train/ and test/.
    pub val_split: f64,
    /// Use only the first N training images (the order is fixed per source).
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    pub test_limit: Option<usize>,
    /// Repeat grayscale images to 3 channels (for RGB models).
    pub rgb: bool,
    /// Keep only these classes (by name, relabelled in this order).
    pub classes: Option<Vec<String>>,
    /// Keep the first N training images of each class (small label budgets; after
    /// `train_limit`, so the labelled images are a subset of the limited set).
    pub train_per_class: Option<usize>,
    /// Fraction of training labels replaced by another class drawn at random (symmetric label
    /// noise, fixed by `train.seed`); test labels stay clean.
    pub label_noise: f64,
    /// Image folders: leave out files that do not decode, listed in a warning, instead of
    /// stopping with an error that lists them.
    pub skip_broken: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: "synthetic".into(),
            format: None,
            image_size: None,
            val_split: 0.1,
            train_limit: None,
            test_limit: None,
            rgb: false,
            classes: None,
            train_per_class: None,
            label_noise: 0.0,
            skip_broken: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    /// The head's size; must match the data when given (default: taken from the data).
    pub classes: Option<i64>,
    pub stem: Option<Stem>,
    pub widths: Option<Vec<i64>>,
    /// Set the `whiten` convolution (airnet) to the patch whitening of the first 5,000 training
    /// images and freeze it (airbench).
    pub whiten_init: bool,
    /// Train the `whiten` convolution's bias for the first N epochs only (airbench: 3); 0: all.
    pub whiten_bias_epochs: usize,
    /// Dirac (identity) initialisation of the first C_in filters of every 3x3 convolution.
    pub dirac_init: bool,
    /// BatchNorm scales stay at 1 (not trained); only the shifts learn (airbench).
    pub bn_scale_frozen: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: "resnet20".into(),
            classes: None,
            stem: None,
            widths: None,
            whiten_init: false,
            whiten_bias_epochs: 0,
            dirac_init: false,
            bn_scale_frozen: false,
        }
    }
}

impl ModelConfig {
    pub fn spec(&self, classes: i64, in_channels: i64) -> ModelSpec {
        ModelSpec {
            name: self.name.clone(),
            classes,
            in_channels,
            stem: self.stem,
            widths: self.widths.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub label_smoothing: f64,
    pub seed: u64,
    /// `auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// bf16 autocast on CUDA.
    pub bf16: bool,
    /// Average the predictions for each test image and its mirror image.
    pub tta_flip: bool,
    /// Also the image shifted by one pixel both ways (airbench's test-time augmentation).
    pub tta_translate: bool,
    /// Channels-last memory for weights and inputs (faster convolutions on CPU and GPU).
    pub channels_last: bool,
    /// Leave out a short last batch.
    pub drop_last: bool,
    /// CPU threads for libtorch (0: libtorch's default).
    pub threads: usize,
    /// Evaluate on the test set every N epochs (and always after the last); 0: last only.
    pub eval_every: usize,
    /// Data-parallel runs: BatchNorm statistics over the global batch (PyTorch's SyncBatchNorm:
    /// the sums all-reduced in the forward pass and their gradients in the backward pass)
    /// instead of each rank's own (DDP's default). No effect in one process.
    pub sync_bn: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            epochs: 10,
            batch_size: 128,
            eval_batch_size: 500,
            label_smoothing: 0.0,
            seed: 0,
            device: "auto".into(),
            bf16: true,
            tta_flip: false,
            tta_translate: false,
            channels_last: true,
            drop_last: true,
            threads: 0,
            eval_every: 1,
            sync_bn: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// A `.pth`, `.safetensors` or convkit checkpoint file, or a torchvision name (`resnet18`).
    pub weights: Option<String>,
    /// The `/`-separated key path of the state dict inside the weights file (`state_dict`,
    /// `checkpoint/model`); found automatically when unset (see [`crate::weights::choose`]).
    pub weights_key: Option<String>,
    /// A prefix to remove from the file's tensor names (`module.`); found automatically when
    /// unset.
    pub strip_prefix: Option<String>,
    /// Refuse weights with missing, unexpected or wrongly shaped tensors (a classifier of
    /// another size is always replaced, not refused).
    pub strict: bool,
    /// Groups to freeze, by name (`stem`, `layer1`, ..., `head`).
    pub freeze: Vec<String>,
    /// Freeze the first N groups (fastai's `freeze_to`); combined with `freeze`.
    pub freeze_to: Option<usize>,
    /// BatchNorm inside frozen groups keeps training (fastai's default).
    pub train_bn: bool,
    /// Discriminative rates: the first group gets lr / lr_mult, the head lr, the groups between
    /// a log-spread (fastai's `slice(lr / lr_mult, lr)`).
    pub lr_mult: f64,
    /// Explicit learning rate per group, first to last (overrides lr_mult).
    pub lr_groups: Option<Vec<f64>>,
    /// timm's layer-wise decay: group i of n gets lr * decay^(n - 1 - i).
    pub layer_decay: Option<f64>,
    /// Upsample every batch to this side on the device (e.g. 32 -> 224 for ImageNet weights).
    pub resize: Option<i64>,
    /// `auto` (the weights' own: ImageNet mean/std for torchvision and timm files, the stored
    /// statistics for convkit checkpoints), `data` or `imagenet`.
    pub normalise: Normalise,
    /// Linear probes read `final` (the pooled features the classifier sees) or `stages` (every
    /// stage's pooled output, concatenated).
    pub probe_features: ProbeFeatures,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            weights: None,
            weights_key: None,
            strip_prefix: None,
            strict: true,
            freeze: vec![],
            freeze_to: None,
            train_bn: true,
            lr_mult: 1.0,
            lr_groups: None,
            layer_decay: None,
            resize: None,
            normalise: Normalise::Auto,
            probe_features: ProbeFeatures::Final,
        }
    }
}

impl TransferConfig {
    /// Anything beyond plain training from scratch?
    pub fn is_active(&self) -> bool {
        *self != TransferConfig::default()
    }
}

/// The mean and standard deviation inputs are normalised with (`transfer.normalise`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalise {
    /// The weights' own: ImageNet statistics for torchvision and timm files, the stored ones
    /// for convkit checkpoints; the data's without weights.
    Auto,
    /// The training data's per-channel statistics.
    Data,
    /// ImageNet's (torchvision's `mean=[0.485, 0.456, 0.406]`, `std=[0.229, 0.224, 0.225]`).
    Imagenet,
}

/// What a linear probe reads (`transfer.probe_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeFeatures {
    /// The pooled features the classifier sees.
    Final,
    /// Every stage's pooled output, concatenated (more generic features for a distant domain).
    Stages,
}

/// Data-parallel settings (`[dist]`); the ranks themselves come from the launcher's environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// `auto` (Gloo on CPU, NCCL on CUDA), `gloo` or `nccl`.
    pub backend: DistBackend,
    /// Seconds a rendezvous or a collective may wait for the other ranks before the run stops
    /// with an error (a rank that died).
    pub timeout_s: u64,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig {
            backend: DistBackend::Auto,
            timeout_s: 300,
        }
    }
}

/// The process-group backend (`dist.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    Auto,
    Gloo,
    Nccl,
}

/// Recipes shipped with convkit, usable by name with `--config`.
pub const RECIPES: [(&str, &str); 8] = [
    ("finetune", include_str!("../recipes/finetune.toml")),
    (
        "cifar10-supcon",
        include_str!("../recipes/cifar10-supcon.toml"),
    ),
    ("quickstart", include_str!("../recipes/quickstart.toml")),
    (
        "cifar10-resnet18",
        include_str!("../recipes/cifar10-resnet18.toml"),
    ),
    (
        "cifar10-fast-cpu",
        include_str!("../recipes/cifar10-fast-cpu.toml"),
    ),
    (
        "cifar10-airbench",
        include_str!("../recipes/cifar10-airbench.toml"),
    ),
    (
        "cifar10-airbench-cpu",
        include_str!("../recipes/cifar10-airbench-cpu.toml"),
    ),
    (
        "cifar10-resnet20",
        include_str!("../recipes/cifar10-resnet20.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}: {1}")]
    File(String, String),
    #[error("override '{0}': {1}")]
    Override(String, String),
}

/// The TOML text of a recipe name or a recipe file.
pub fn recipe_text(name_or_path: &str) -> Result<(String, String), ConfigError> {
    if let Some((_, text)) = RECIPES.iter().find(|(n, _)| *n == name_or_path) {
        return Ok((format!("recipe {name_or_path}"), text.to_string()));
    }
    let path = Path::new(name_or_path);
    let known: Vec<&str> = RECIPES.iter().map(|(n, _)| *n).collect();
    std::fs::read_to_string(path)
        .map(|t| (path.display().to_string(), t))
        .map_err(|e| {
            ConfigError::File(
                name_or_path.into(),
                format!(
                    "{e} (not a file, nor a shipped recipe: {})",
                    known.join(", ")
                ),
            )
        })
}

/// Loads a recipe (or the defaults) and applies `section.key=value` overrides in order.
pub fn load(recipe: Option<&str>, overrides: &[String]) -> Result<Config, ConfigError> {
    let (origin, text) = match recipe {
        Some(r) => recipe_text(r)?,
        None => ("defaults".into(), String::new()),
    };
    let mut value: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::File(origin.clone(), e.to_string()))?;
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    let augment_from_data = !value.contains_key("augment");
    let contrastive_given = value.contains_key("contrastive");
    let origin = match overrides.len() {
        0 => origin,
        n => format!("{origin} + {n} settings from the command line"),
    };
    let mut cfg = Config::deserialize(toml::Value::Table(value))
        .map_err(|e| ConfigError::File(origin.clone(), one_line(&e.to_string())))?;
    cfg.validate()
        .map_err(|e| ConfigError::File(origin.clone(), e))?;
    cfg.provenance.origin = origin;
    cfg.provenance.augment_from_data = augment_from_data;
    cfg.provenance.contrastive_given = contrastive_given;
    Ok(cfg)
}

/// A multi-line parser message (TOML's: the problem, then where) as one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets `a.b=value` in a TOML table; the value is parsed as TOML (number, bool, array) or taken
/// as a string.
///
/// # Errors
/// No `=`, or a key path through something that is not a table.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::Override(item.into(), "expected section.key=value".into()))?;
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().expect("split yields one part");
    let mut t = table;
    for s in sections {
        t = t
            .entry(s.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .ok_or_else(|| ConfigError::Override(item.into(), format!("'{s}' is not a section")))?;
    }
    t.insert(last.to_string(), parsed);
    Ok(())
}

/// The most intra-op threads a run may ask for; more only adds idle threads.
pub const MAX_THREADS: usize = 1024;
/// The most epochs a run may ask for (a typo of a few billion would run for ever).
pub const MAX_EPOCHS: usize = 100_000;

impl Config {
    /// Checks every numeric setting's range, naming the field (`train.batch_size = 0: ...`).
    /// Model widths and classes are checked by the model spec, image sizes by the data layer.
    ///
    /// # Errors
    /// The first setting out of its range.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        let o = &self.optim;
        let d = &self.data;
        let sc = &self.schedule;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let checks: Vec<(bool, String)> = vec![
            (
                (1..=86_400).contains(&self.dist.timeout_s),
                format!(
                    "dist.timeout_s = {}: 1 to 86400 seconds",
                    self.dist.timeout_s
                ),
            ),
            (
                (1..=MAX_EPOCHS).contains(&t.epochs),
                format!("train.epochs = {}: 1 to {MAX_EPOCHS}", t.epochs),
            ),
            (
                t.batch_size >= 1,
                format!("train.batch_size = {}: at least 1", t.batch_size),
            ),
            (
                t.eval_batch_size >= 1,
                format!("train.eval_batch_size = {}: at least 1", t.eval_batch_size),
            ),
            (
                (0.0..1.0).contains(&t.label_smoothing),
                format!(
                    "train.label_smoothing = {}: must be in [0, 1)",
                    t.label_smoothing
                ),
            ),
            (
                t.threads <= MAX_THREADS,
                format!("train.threads = {}: at most {MAX_THREADS}", t.threads),
            ),
            (
                o.lr.is_finite() && o.lr > 0.0,
                format!("optim.lr = {}: must be above 0", o.lr),
            ),
            (
                o.weight_decay.is_finite() && o.weight_decay >= 0.0,
                format!("optim.weight_decay = {}: must be 0 or more", o.weight_decay),
            ),
            (
                (0.0..1.0).contains(&o.momentum),
                format!("optim.momentum = {}: must be in [0, 1)", o.momentum),
            ),
            (
                (0.0..1.0).contains(&d.val_split),
                format!("data.val_split = {}: must be in [0, 1)", d.val_split),
            ),
            (
                (0.0..=1.0).contains(&d.label_noise),
                format!("data.label_noise = {}: must be in [0, 1]", d.label_noise),
            ),
            (
                self.transfer
                    .resize
                    .is_none_or(|r| (1..=crate::data::MAX_IMAGE_SIZE as i64).contains(&r)),
                format!(
                    "transfer.resize = {:?}: must be 1 to {} pixels",
                    self.transfer.resize,
                    crate::data::MAX_IMAGE_SIZE
                ),
            ),
            (
                (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2),
                format!(
                    "optim.beta1 / beta2 = {} / {}: each in [0, 1)",
                    o.beta1, o.beta2
                ),
            ),
            (
                positive(o.eps),
                format!("optim.eps = {}: must be above 0", o.eps),
            ),
            (
                o.trust.is_finite() && o.trust >= 0.0,
                format!("optim.trust = {}: must be 0 or more", o.trust),
            ),
            (
                positive(sc.gamma),
                format!("schedule.gamma = {}: must be above 0", sc.gamma),
            ),
            (
                positive(sc.div),
                format!("schedule.div = {}: must be above 0", sc.div),
            ),
            (
                positive(sc.final_div),
                format!("schedule.final_div = {}: must be above 0", sc.final_div),
            ),
            (
                sc.pct_start > 0.0 && sc.pct_start < 1.0,
                format!("schedule.pct_start = {}: must be in (0, 1)", sc.pct_start),
            ),
            (
                sc.warmup_epochs.is_finite() && (0.0..=t.epochs as f64).contains(&sc.warmup_epochs),
                format!(
                    "schedule.warmup_epochs = {}: 0 to train.epochs ({})",
                    sc.warmup_epochs, t.epochs
                ),
            ),
            (
                sc.milestones.iter().all(|m| m.is_finite() && *m >= 0.0),
                format!(
                    "schedule.milestones = {:?}: epochs, 0 or more",
                    sc.milestones
                ),
            ),
            (
                positive(self.contrastive.temperature),
                format!(
                    "contrastive.temperature = {}: must be above 0",
                    self.contrastive.temperature
                ),
            ),
        ];
        if let Some((_, problem)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(problem);
        }
        // Widths and a fixed class count are the model spec's to check; the data's class and
        // channel counts are not known yet, so 1 stands in for them.
        let classes = self.model.classes.unwrap_or(1);
        self.model.spec(classes, 1).validate()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}
