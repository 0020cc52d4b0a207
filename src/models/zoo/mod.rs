//! torchvision's classification families beyond ResNet, with torchvision's state-dict keys:
//! VGG-16 with BatchNorm (Simonyan & Zisserman 2015) and DenseNet-121 (Huang et al. 2017)
//! here; MobileNetV2/V3, EfficientNet V1/V2, RegNetY and ConvNeXt in their own files.

pub mod convnext;
pub mod efficientnet;
mod mobilenet;
mod regnet;

pub use convnext::{ConvNeXt, convnext};
pub use efficientnet::{EfficientNet, efficientnet};
pub use mobilenet::{MobileNetV2, MobileNetV3, mobilenet_v2, mobilenet_v3};
pub use regnet::{RegNet, regnet_y_800mf};

use super::blocks::normal;
use super::layers::{
    Act, Bn, Conv, Ctx, Fc, adaptive_avg_pool, avg_pool, cat, flatten, global_avg_pool, max_pool,
};
use super::{Network, Part};
use tch::{Tensor, nn};

/// torchvision's `vgg16_bn`: 13 conv-BN-ReLU layers in 5 stages ending in max-pools, an
/// adaptive average pool to 7x7, then `classifier` = Linear(25088, 4096), ReLU, Dropout,
/// Linear(4096, 4096), ReLU, Dropout, Linear(4096, classes). `features` returns the 4096-d
/// output of the second linear layer, which the last one (the replaceable head) reads.
#[derive(Debug)]
pub struct Vgg {
    stages: Vec<Vec<(Conv, Bn)>>,
    /// Index in torchvision's `features` of each stage's max-pool.
    pools: Vec<usize>,
    fc1: Fc,
    fc2: Fc,
    head: Fc,
}

const VGG16: [&[i64]; 5] = [
    &[64, 64],
    &[128, 128],
    &[256, 256, 256],
    &[512, 512, 512],
    &[512, 512, 512],
];

pub fn vgg16_bn(p: &nn::Path, in_ch: i64, classes: i64) -> Vgg {
    let f = p / "features";
    let (mut index, mut cin) = (0usize, in_ch);
    let mut stages = Vec::new();
    let mut pools = Vec::new();
    for widths in VGG16 {
        let mut stage = Vec::new();
        for &w in widths {
            let conv = Conv::new(&f, &index.to_string(), (cin, w), 3, 1, 1, true);
            let bn = Bn::new(&f, &(index + 1).to_string(), w);
            stage.push((conv, bn));
            (index, cin) = (index + 3, w);
        }
        pools.push(index);
        index += 1;
        stages.push(stage);
    }
    let c = p / "classifier";
    Vgg {
        stages,
        pools,
        fc1: Fc::with_init(&c, "0", 512 * 7 * 7, 4096, normal(0.01)),
        fc2: Fc::with_init(&c, "3", 4096, 4096, normal(0.01)),
        head: Fc::with_init(&c, "6", 4096, classes, normal(0.01)),
    }
}

impl Network for Vgg {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, (stage, pool)) in self.stages.iter().zip(&self.pools).enumerate() {
            for (conv, bn) in stage {
                x = Act::Relu.apply(bn.forward(&conv.forward(&x, ctx), ctx), ctx);
            }
            x = max_pool(&x, 2, 2, 0, &format!("features.{pool}"), ctx);
            ctx.stage(&format!("stage{}", i + 1), &x);
        }
        let x = flatten(&adaptive_avg_pool(&x, 7, ctx), ctx);
        let x = Act::Relu
            .apply(self.fc1.forward(&x, ctx), ctx)
            .dropout(0.5, ctx.train);
        Act::Relu
            .apply(self.fc2.forward(&x, ctx), ctx)
            .dropout(0.5, ctx.train)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// Five convolution stages (`features.*` up to each max-pool) and the whole classifier as
    /// the head, as fastai splits VGG.
    fn parts(&self) -> Vec<Part> {
        let mut from = 0;
        let mut parts: Vec<Part> = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, &pool)| {
                let prefixes: Vec<String> =
                    (from..=pool).map(|k| format!("features.{k}")).collect();
                from = pool + 1;
                Part {
                    name: format!("stage{}", i + 1),
                    prefixes,
                }
            })
            .collect();
        parts.push(Part::new("head", &["classifier"]));
        parts
    }
}

/// One DenseNet layer: BN-ReLU-1x1 conv to `bn_size * growth`, BN-ReLU-3x3 conv to `growth`
/// new feature maps, concatenated to its input.
#[derive(Debug)]
struct DenseLayer {
    norm1: Bn,
    conv1: Conv,
    norm2: Bn,
    conv2: Conv,
}

impl DenseLayer {
    fn new(p: &nn::Path, cin: i64, growth: i64, bn_size: i64) -> Self {
        let mid = bn_size * growth;
        DenseLayer {
            norm1: Bn::new(p, "norm1", cin),
            conv1: Conv::new(p, "conv1", (cin, mid), 1, 1, 0, false),
            norm2: Bn::new(p, "norm2", mid),
            conv2: Conv::new(p, "conv2", (mid, growth), 3, 1, 1, false),
        }
    }
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self
            .conv1
            .forward(&Act::Relu.apply(self.norm1.forward(x, ctx), ctx), ctx);
        let y = self
            .conv2
            .forward(&Act::Relu.apply(self.norm2.forward(&y, ctx), ctx), ctx);
        cat(&[x, &y], 1, ctx)
    }
}

/// DenseNet's transition between blocks: BN-ReLU-1x1 conv halving the channels, 2x2 average
/// pool.
#[derive(Debug)]
struct Transition {
    norm: Bn,
    conv: Conv,
}

/// torchvision's `densenet121` (Huang et al. 2017): a 7x7 stem with max-pool, dense blocks of
/// 6, 12, 24 and 16 layers (growth 32, bottleneck 4 x 32) joined by transitions, a final
/// BatchNorm, ReLU, global average pool and the linear head `classifier`.
#[derive(Debug)]
pub struct DenseNet {
    conv0: Conv,
    norm0: Bn,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: Bn,
    head: Fc,
}

pub fn densenet121(p: &nn::Path, in_ch: i64, classes: i64) -> DenseNet {
    let (growth, bn_size) = (32, 4);
    let f = p / "features";
    let mut c = 64;
    let mut blocks = Vec::new();
    let mut transitions = Vec::new();
    for (i, &n) in [6usize, 12, 24, 16].iter().enumerate() {
        let b = &f / format!("denseblock{}", i + 1);
        let layers = (0..n)
            .map(|k| {
                let layer =
                    DenseLayer::new(&(&b / format!("denselayer{}", k + 1)), c, growth, bn_size);
                c += growth;
                layer
            })
            .collect();
        blocks.push(layers);
        if i < 3 {
            let t = &f / format!("transition{}", i + 1);
            transitions.push(Transition {
                norm: Bn::new(&t, "norm", c),
                conv: Conv::new(&t, "conv", (c, c / 2), 1, 1, 0, false),
            });
            c /= 2;
        }
    }
    DenseNet {
        conv0: Conv::new(&f, "conv0", (in_ch, 64), 7, 2, 3, false),
        norm0: Bn::new(&f, "norm0", 64),
        blocks,
        transitions,
        norm5: Bn::new(&f, "norm5", c),
        head: Fc::new(p, "classifier", c, classes, true),
    }
}

impl Network for DenseNet {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let x = Act::Relu.apply(self.norm0.forward(&self.conv0.forward(x, ctx), ctx), ctx);
        let mut x = max_pool(&x, 3, 2, 1, "features.pool0", ctx);
        ctx.stage("stem", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                x = layer.forward(&x, ctx);
            }
            match self.transitions.get(i) {
                Some(t) => {
                    x = t
                        .conv
                        .forward(&Act::Relu.apply(t.norm.forward(&x, ctx), ctx), ctx);
                    x = avg_pool(&x, 2, 2, ctx);
                }
                None => x = Act::Relu.apply(self.norm5.forward(&x, ctx), ctx),
            }
            ctx.stage(&format!("stage{}", i + 1), &x);
        }
        global_avg_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, each dense block with the transition after it (the last with the final
    /// BatchNorm), the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new(
            "stem",
            &["features.conv0", "features.norm0", "features.pool0"],
        )];
        for i in 1..=self.blocks.len() {
            let after = match i < self.blocks.len() {
                true => format!("features.transition{i}"),
                false => "features.norm5".to_string(),
            };
            parts.push(Part {
                name: format!("stage{i}"),
                prefixes: vec![format!("features.denseblock{i}"), after],
            });
        }
        parts.push(Part::new("head", &["classifier"]));
        parts
    }
}
