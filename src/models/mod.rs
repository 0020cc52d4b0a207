//! Models built by name from a registry. Every model is a feature extractor (`features`, a
//! pooled `[B, D]` vector) plus a linear classifier, so heads can be replaced and bodies reused.

pub mod blocks;
pub mod cnn;
pub mod features;
pub mod init;
pub mod layers;
pub mod resnet;
pub mod summary;
pub mod zoo;

pub use layers::{Ctx, LayerInfo};

use layers::Fc;
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};
use zoo::convnext::Variant as ConvNeXtVariant;
use zoo::efficientnet::Variant as EfficientNetVariant;

/// A network: features, then a classifier.
pub trait Network: std::fmt::Debug {
    /// The pooled feature vector `[B, D]` that the classifier reads.
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor;
    fn classifier(&self) -> &Fc;
    /// The network's parts in input order, as timm's `group_matcher` declares them: the stem,
    /// each stage (named as `features` reports it to [`Ctx::stage`]), and the classifier last,
    /// named `head`. Freezing, per-group learning rates, layer decay, Grad-CAM, activations and
    /// receptive fields all use them.
    fn parts(&self) -> Vec<Part>;
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.classifier().forward(&self.features(x, ctx), ctx)
    }
}

/// A named part of a network: the variables (state-dict keys) and traced layers under any of
/// its name prefixes (`layer1` owns `layer1.0.conv1.weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub prefixes: Vec<String>,
}

impl Part {
    pub fn new(name: &str, prefixes: &[&str]) -> Self {
        Part {
            name: name.to_string(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// A stage whose name is also its only prefix (`layer2`, `groups.1`).
    pub fn stage(name: String) -> Self {
        Part {
            prefixes: vec![name.clone()],
            name,
        }
    }

    /// Whether the variable or layer `name` lies under one of the part's prefixes.
    pub fn owns(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| {
            name.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
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
    /// The input side a model expects by default: its registry entry's (224 for torchvision's
    /// ResNets), 32 with a `cifar` stem or for a name the registry does not know.
    pub fn default_input_size(&self) -> i64 {
        match (entry(&self.name), self.stem) {
            (_, Some(Stem::Cifar)) | (None, _) => 32,
            (Some(e), _) => e.input_size,
        }
    }
}

/// The input statistics a model's usual weights were trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputStats {
    /// The training data's own per-channel mean and standard deviation.
    Data,
    /// ImageNet's (torchvision's pretrained weights).
    Imagenet,
}

/// One registered model: its name, what it is, the input it is made for, and its constructor.
pub struct Entry {
    pub name: &'static str,
    pub description: &'static str,
    /// The square input side (a `cifar` stem makes a torchvision ResNet a 32 px network).
    pub input_size: i64,
    pub normalisation: InputStats,
    build: fn(&nn::Path, &ModelSpec) -> Box<dyn Network>,
}

fn widths(spec: &ModelSpec, default: &[i64]) -> Vec<i64> {
    spec.widths.clone().unwrap_or_else(|| default.to_vec())
}

fn stem(spec: &ModelSpec) -> Stem {
    spec.stem.unwrap_or(Stem::Imagenet)
}

/// A torchvision ResNet of shape `arch` for the spec's channels, classes and stem.
fn torchvision_resnet(p: &nn::Path, s: &ModelSpec, arch: resnet::Arch) -> Box<dyn Network> {
    Box::new(resnet::torchvision_arch(
        p,
        arch,
        s.in_channels,
        s.classes,
        stem(s),
    ))
}

/// Every model convkit builds by name, in `convkit list` order.
pub const REGISTRY: [Entry; 25] = [
    Entry {
        name: "cnn",
        description: "plain conv-BN-ReLU-maxpool stack (widths configurable, default 32,64,128)",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| {
            let w = widths(s, &[32, 64, 128]);
            Box::new(cnn::plain_cnn(p, s.in_channels, s.classes, &w))
        },
    },
    Entry {
        name: "resnet18",
        description: "torchvision ResNet-18 (stem imagenet|cifar)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| torchvision_resnet(p, s, resnet::Arch::depth(18)),
    },
    Entry {
        name: "resnet34",
        description: "torchvision ResNet-34 (stem imagenet|cifar)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| torchvision_resnet(p, s, resnet::Arch::depth(34)),
    },
    Entry {
        name: "resnet50",
        description: "torchvision ResNet-50, bottleneck v1.5 (stem imagenet|cifar)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| torchvision_resnet(p, s, resnet::Arch::depth(50)),
    },
    Entry {
        name: "resnet101",
        description: "torchvision ResNet-101 (44.5M parameters at 1000 classes)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| torchvision_resnet(p, s, resnet::Arch::depth(101)),
    },
    Entry {
        name: "resnet152",
        description: "torchvision ResNet-152 (60.2M parameters at 1000 classes)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| torchvision_resnet(p, s, resnet::Arch::depth(152)),
    },
    Entry {
        name: "resnext50_32x4d",
        description: "torchvision ResNeXt-50 32x4d: grouped 3x3 convolutions (25.0M parameters)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            let arch = resnet::Arch {
                groups: 32,
                base_width: 4,
                ..resnet::Arch::depth(50)
            };
            torchvision_resnet(p, s, arch)
        },
    },
    Entry {
        name: "wide_resnet50_2",
        description: "torchvision Wide ResNet-50-2: bottlenecks twice as wide (68.9M parameters)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            let arch = resnet::Arch {
                base_width: 128,
                ..resnet::Arch::depth(50)
            };
            torchvision_resnet(p, s, arch)
        },
    },
    Entry {
        name: "vgg16_bn",
        description: "torchvision VGG-16 with BatchNorm (138.4M parameters at 1000 classes)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::vgg16_bn(p, s.in_channels, s.classes)),
    },
    Entry {
        name: "densenet121",
        description: "torchvision DenseNet-121: dense blocks of concatenated features (8.0M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::densenet121(p, s.in_channels, s.classes)),
    },
    Entry {
        name: "mobilenet_v2",
        description: "torchvision MobileNetV2: inverted residuals, depthwise convolutions (3.5M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::mobilenet_v2(p, s.in_channels, s.classes)),
    },
    Entry {
        name: "mobilenet_v3_small",
        description: "torchvision MobileNetV3-Small: squeeze-and-excitation, hard-swish (2.5M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::mobilenet_v3(p, s.in_channels, s.classes, false)),
    },
    Entry {
        name: "mobilenet_v3_large",
        description: "torchvision MobileNetV3-Large: squeeze-and-excitation, hard-swish (5.5M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::mobilenet_v3(p, s.in_channels, s.classes, true)),
    },
    Entry {
        name: "efficientnet_b0",
        description: "torchvision EfficientNet-B0: MBConv, SiLU, squeeze-and-excitation (5.3M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            Box::new(zoo::efficientnet(
                p,
                s.in_channels,
                s.classes,
                EfficientNetVariant::B0,
            ))
        },
    },
    Entry {
        name: "efficientnet_b3",
        description: "torchvision EfficientNet-B3: B0 1.2x wider, 1.4x deeper, 300 px (12.2M)",
        input_size: 300,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            Box::new(zoo::efficientnet(
                p,
                s.in_channels,
                s.classes,
                EfficientNetVariant::B3,
            ))
        },
    },
    Entry {
        name: "efficientnet_v2_s",
        description: "torchvision EfficientNetV2-S: Fused-MBConv early stages, 384 px (21.5M)",
        input_size: 384,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            Box::new(zoo::efficientnet(
                p,
                s.in_channels,
                s.classes,
                EfficientNetVariant::V2S,
            ))
        },
    },
    Entry {
        name: "regnet_y_800mf",
        description: "torchvision RegNetY-800MF: grouped bottlenecks with squeeze-and-excitation (6.4M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| Box::new(zoo::regnet_y_800mf(p, s.in_channels, s.classes)),
    },
    Entry {
        name: "convnext_tiny",
        description: "torchvision ConvNeXt-T: 7x7 depthwise, LayerNorm, GELU MLPs, layer scale (28.6M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            Box::new(zoo::convnext(
                p,
                s.in_channels,
                s.classes,
                ConvNeXtVariant::Tiny,
            ))
        },
    },
    Entry {
        name: "convnext_small",
        description: "torchvision ConvNeXt-S: ConvNeXt-T with 27 blocks in stage 3 (50.2M)",
        input_size: 224,
        normalisation: InputStats::Imagenet,
        build: |p, s| {
            Box::new(zoo::convnext(
                p,
                s.in_channels,
                s.classes,
                ConvNeXtVariant::Small,
            ))
        },
    },
    Entry {
        name: "resnet20",
        description: "CIFAR ResNet-20 of He et al. 2016 (0.27M parameters)",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| Box::new(resnet::cifar(p, 20, s.in_channels, s.classes, true)),
    },
    Entry {
        name: "resnet56",
        description: "CIFAR ResNet-56 of He et al. 2016 (0.85M parameters)",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| Box::new(resnet::cifar(p, 56, s.in_channels, s.classes, true)),
    },
    Entry {
        name: "plain20",
        description: "ResNet-20 without shortcuts",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| Box::new(resnet::cifar(p, 20, s.in_channels, s.classes, false)),
    },
    Entry {
        name: "plain56",
        description: "ResNet-56 without shortcuts",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| Box::new(resnet::cifar(p, 56, s.in_channels, s.classes, false)),
    },
    Entry {
        name: "airnet",
        description: "airbench-style fast net (widths default 64,256,256)",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| {
            let w = widths(s, &[64, 256, 256]);
            Box::new(cnn::airnet(p, s.in_channels, s.classes, &w))
        },
    },
    Entry {
        name: "net8",
        description: "the benchmark net of docs/performance.md",
        input_size: 32,
        normalisation: InputStats::Data,
        build: |p, s| Box::new(cnn::net8(p, s.in_channels, s.classes)),
    },
];

/// The registry entry of a model name.
pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

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
    /// Parts a training objective added to the VarStore (SupCon's projection head).
    extra_parts: Vec<Part>,
}

/// Inputs at least this large pass every registry network (the deepest downsamples 32x).
const SURELY_LARGE_ENOUGH: i64 = 64;

impl Model {
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.net.forward(x, ctx)
    }

    /// The network's parts in input order, with any part an objective added placed just before
    /// the classifier (`head`).
    pub fn parts(&self) -> Vec<Part> {
        let mut parts = self.net.parts();
        let at = parts.len().saturating_sub(1);
        parts.splice(at..at, self.extra_parts.iter().cloned());
        parts
    }

    /// Whether a training objective added the variable `var` (it is in no weights file).
    pub fn objective_owns(&self, var: &str) -> bool {
        self.extra_parts.iter().any(|p| p.owns(var))
    }

    /// Declares variables an objective added to the VarStore under `prefix` as the part `name`.
    pub fn add_part(&mut self, name: &str, prefix: &str) {
        self.extra_parts.push(Part::new(name, &[prefix]));
    }

    /// Checks that the network takes `size` x `size` inputs: a small image can shrink to
    /// nothing before the last pooling, which libtorch refuses by aborting the step. Sizes
    /// under 64 px are tried with one forward pass of zeros (in eval mode, no gradient).
    ///
    /// # Errors
    /// The network cannot process images of that size.
    pub fn check_input_size(&self, size: i64) -> Result<(), ModelError> {
        self.check_input_shape(size, size)
    }

    /// [`Model::check_input_size`] for `h` x `w` images.
    ///
    /// # Errors
    /// The network cannot process images of that size.
    pub fn check_input_shape(&self, h: i64, w: i64) -> Result<(), ModelError> {
        if h.min(w) >= SURELY_LARGE_ENOUGH {
            return Ok(());
        }
        let x = Tensor::zeros(
            [1, self.spec.in_channels, h, w],
            (tch::Kind::Float, self.device()),
        );
        // tch reports a libtorch error as a panic; it is caught here, quietly, and becomes
        // the error below.
        let ok =
            crate::util::catch_quietly(|| tch::no_grad(|| self.forward(&x, &Ctx::eval()))).is_ok();
        if ok {
            return Ok(());
        }
        Err(ModelError::Invalid(
            self.spec.name.clone(),
            format!("images of {h}x{w} pixels are too small for this network"),
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
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds a model by name.
pub fn build(spec: &ModelSpec, device: Device) -> Result<Model, ModelError> {
    let vs = nn::VarStore::new(device);
    let p = vs.root();
    spec.validate()
        .map_err(|p| ModelError::Invalid(spec.name.clone(), p))?;
    let e =
        entry(&spec.name).ok_or_else(|| ModelError::Unknown(spec.name.clone(), known_names()))?;
    let net = (e.build)(&p, spec);
    Ok(Model {
        vs,
        net,
        spec: spec.clone(),
        extra_parts: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stages a network reports while it runs (what inspection shows) are its declared
    /// parts, in the same order, the classifier aside; and every variable belongs to a part.
    #[test]
    fn every_registry_model_declares_the_stages_it_runs_through() {
        for e in &REGISTRY {
            let m = build(&ModelSpec::new(e.name, 10), Device::Cpu).unwrap();
            let x = Tensor::zeros([1, 3, 64, 64], (tch::Kind::Float, Device::Cpu));
            let ctx = Ctx::capturing();
            let _ = tch::no_grad(|| m.net.features(&x, &ctx));
            let ran: Vec<String> = ctx.take_stages().into_iter().map(|(n, _)| n).collect();
            let parts: Vec<String> = m.parts().into_iter().map(|p| p.name).collect();
            assert_eq!(ran, parts[..parts.len() - 1], "{}", e.name);
            assert_eq!(parts.last().map(String::as_str), Some("head"));
            for name in m.vs.variables().keys() {
                assert!(m.parts().iter().any(|p| p.owns(name)), "{}: {name}", e.name);
            }
        }
    }
}
