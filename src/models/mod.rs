//! Models built by name from a registry. Every model is a feature extractor (`features`, a
//! pooled `[B, D]` vector) plus a linear classifier, so heads can be replaced and bodies reused.

pub mod cnn;
pub mod features;
pub mod init;
pub mod layers;
pub mod resnet;
pub mod summary;

pub use layers::{Ctx, LayerInfo};

use layers::Fc;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

/// A network: features, then a classifier.
pub trait Network: std::fmt::Debug {
    /// The pooled feature vector `[B, D]` that the classifier reads.
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor;
    fn classifier(&self) -> &Fc;
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.classifier().forward(&self.features(x, ctx), ctx)
    }
}

/// ResNet input stems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7x7 stride 2 + max-pool: for 224 px ImageNet-style input.
    Imagenet,
    /// 3x3 stride 1, no pool: for 32 px input.
    Cifar,
}

impl std::str::FromStr for Stem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "imagenet" => Ok(Stem::Imagenet),
            "cifar" => Ok(Stem::Cifar),
            _ => Err(format!("unknown stem '{s}' (imagenet or cifar)")),
        }
    }
}

/// Everything needed to rebuild a model; stored in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub classes: i64,
    #[serde(default = "three")]
    pub in_channels: i64,
    /// ResNet-18/34/50 only.
    #[serde(default)]
    pub stem: Option<Stem>,
    /// `cnn` and `airnet` only.
    #[serde(default)]
    pub widths: Option<Vec<i64>>,
}

/// Bounds on what a spec may ask for, far above any real network, so that a damaged checkpoint
/// or a typo cannot build a 10^12-class head or a zero-width layer.
const MAX_CLASSES: i64 = 1_000_000;
const MAX_CHANNELS: i64 = 64;
const MAX_WIDTH: i64 = 16_384;
const MAX_STAGES: usize = 8;

impl ModelSpec {
    /// Checks the numbers a spec carries (from a config or a checkpoint's metadata).
    ///
    /// # Errors
    /// Classes outside 1..=1,000,000, input channels outside 1..=64, or widths that are empty,
    /// more than 8, or outside 1..=16,384; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CLASSES).contains(&self.classes) {
            return Err(format!(
                "{} classes: must be 1 to {MAX_CLASSES}",
                self.classes
            ));
        }
        if !(1..=MAX_CHANNELS).contains(&self.in_channels) {
            return Err(format!(
                "{} input channels: must be 1 to {MAX_CHANNELS}",
                self.in_channels
            ));
        }
        if let Some(w) = &self.widths {
            let bad = w.iter().find(|x| !(1..=MAX_WIDTH).contains(*x));
            if w.is_empty() || w.len() > MAX_STAGES || bad.is_some() {
                return Err(format!(
                    "model.widths {w:?}: 1 to {MAX_STAGES} widths, each 1 to {MAX_WIDTH}"
                ));
            }
        }
        Ok(())
    }
}

fn three() -> i64 {
    3
}

impl ModelSpec {
    pub fn new(name: &str, classes: i64) -> Self {
        ModelSpec {
            name: name.to_string(),
            classes,
            in_channels: 3,
            stem: None,
            widths: None,
        }
    }
    /// The input side a model expects by default (224 for ImageNet stems, else 32).
    pub fn default_input_size(&self) -> i64 {
        match (self.name.starts_with("resnet"), self.stem_or_default()) {
            (true, Stem::Imagenet) if self.is_torchvision() => 224,
            _ => 32,
        }
    }
    fn is_torchvision(&self) -> bool {
        matches!(self.name.as_str(), "resnet18" | "resnet34" | "resnet50")
    }
    fn stem_or_default(&self) -> Stem {
        self.stem.unwrap_or(Stem::Imagenet)
    }
}

/// Registered model names, with a line each for `--help` and error messages.
pub const REGISTRY: [(&str, &str); 10] = [
    (
        "cnn",
        "plain conv-BN-ReLU-maxpool stack (widths configurable, default 32,64,128)",
    ),
    ("resnet18", "torchvision ResNet-18 (stem imagenet|cifar)"),
    ("resnet34", "torchvision ResNet-34 (stem imagenet|cifar)"),
    (
        "resnet50",
        "torchvision ResNet-50, bottleneck v1.5 (stem imagenet|cifar)",
    ),
    (
        "resnet20",
        "CIFAR ResNet-20 of He et al. 2016 (0.27M parameters)",
    ),
    (
        "resnet56",
        "CIFAR ResNet-56 of He et al. 2016 (0.85M parameters)",
    ),
    ("plain20", "ResNet-20 without shortcuts"),
    ("plain56", "ResNet-56 without shortcuts"),
    (
        "airnet",
        "airbench-style fast net (widths default 64,256,256)",
    ),
    ("net8", "the benchmark net of docs/performance.md"),
];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown model '{0}'; known models: {1}")]
    Unknown(String, String),
    #[error("model '{0}': {1}")]
    Invalid(String, String),
}

/// A built model: its parameters (in a VarStore, whose names are the state-dict keys), the
/// network and the spec that rebuilds it.
#[derive(Debug)]
pub struct Model {
    pub vs: nn::VarStore,
    pub net: Box<dyn Network>,
    pub spec: ModelSpec,
}

/// Inputs at least this large pass every registry network (the deepest downsamples 32x).
const SURELY_LARGE_ENOUGH: i64 = 64;

impl Model {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.net.forward(x, ctx)
    }

    /// Checks that the network takes `size` x `size` inputs: a small image can shrink to
    /// nothing before the last pooling, which libtorch refuses by aborting the step. Sizes
    /// under 64 px are tried with one forward pass of zeros (in eval mode, no gradient).
    ///
    /// # Errors
    /// The network cannot process images of that size.
    pub fn check_input_size(&self, size: i64) -> Result<(), ModelError> {
        if size >= SURELY_LARGE_ENOUGH {
            return Ok(());
        }
        let x = Tensor::zeros(
            [1, self.spec.in_channels, size, size],
            (tch::Kind::Float, self.device()),
        );
        // tch reports a libtorch error as a panic; it is caught here, quietly, and becomes
        // the error below.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tch::no_grad(|| self.forward(&x, &Ctx::eval()))
        }))
        .is_ok();
        std::panic::set_hook(hook);
        if ok {
            return Ok(());
        }
        Err(ModelError::Invalid(
            self.spec.name.clone(),
            format!("images of {size}x{size} pixels are too small for this network"),
        ))
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    /// Gives every 4-D weight channels-last memory (same shape, NHWC strides). With
    /// channels-last input, oneDNN then runs its fastest convolutions without converting layouts
    /// (measured on the 2-core CPU: 1.4x faster training, docs/performance.md).
    pub fn to_channels_last(&mut self) {
        tch::no_grad(|| {
            for (_, mut w) in self.vs.variables() {
                if w.dim() == 4 {
                    let nhwc = w.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                    w.set_data(&nhwc);
                }
            }
        });
    }

    /// Learnable parameters (BatchNorm running statistics excluded), as torchvision counts them.
    pub fn parameter_count(&self) -> i64 {
        self.vs
            .variables()
            .iter()
            .filter(|(name, _)| !is_buffer(name))
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

/// BatchNorm statistics: state, not parameters.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean")
        || name.ends_with("running_var")
        || name.ends_with("num_batches_tracked")
}

pub fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds a model by name.
pub fn build(spec: &ModelSpec, device: Device) -> Result<Model, ModelError> {
    let vs = nn::VarStore::new(device);
    let p = vs.root();
    spec.validate()
        .map_err(|p| ModelError::Invalid(spec.name.clone(), p))?;
    let (c, k) = (spec.in_channels, spec.classes);
    let widths = |default: &[i64]| spec.widths.clone().unwrap_or_else(|| default.to_vec());
    let stem = spec.stem.unwrap_or(Stem::Imagenet);
    let net: Box<dyn Network> = match spec.name.as_str() {
        "cnn" => Box::new(cnn::plain_cnn(&p, c, k, &widths(&[32, 64, 128]))),
        "resnet18" => Box::new(resnet::torchvision(&p, 18, c, k, stem)),
        "resnet34" => Box::new(resnet::torchvision(&p, 34, c, k, stem)),
        "resnet50" => Box::new(resnet::torchvision(&p, 50, c, k, stem)),
        "resnet20" => Box::new(resnet::cifar(&p, 20, c, k, true)),
        "resnet56" => Box::new(resnet::cifar(&p, 56, c, k, true)),
        "plain20" => Box::new(resnet::cifar(&p, 20, c, k, false)),
        "plain56" => Box::new(resnet::cifar(&p, 56, c, k, false)),
        "airnet" => Box::new(cnn::airnet(&p, c, k, &widths(&[64, 256, 256]))),
        "net8" => Box::new(cnn::net8(&p, c, k)),
        other => return Err(ModelError::Unknown(other.to_string(), known_names())),
    };
    Ok(Model {
        vs,
        net,
        spec: spec.clone(),
    })
}
