//! ResNets with torchvision's exact parameter names (`conv1`, `bn1`, `layer1.0.conv1`,
//! `layer2.0.downsample.0`, `fc`), so torchvision and timm state dicts load without renaming;
//! and the CIFAR ResNets of He et al. 2016, section 4.2, with and without shortcuts.

use super::blocks::run_stages;
use super::layers::{Act, Bn, Conv, Ctx, Fc, Op, add, global_avg_pool, max_pool};
use super::{Network, Part, Stem};
use tch::{Tensor, nn};

/// How a block's input reaches its output.
#[derive(Debug)]
enum Shortcut {
    /// A plain network: no shortcut at all.
    None,
    Identity,
    /// He et al.'s option A: subsample by 2 and zero-pad the new channels (no parameters).
    PadChannels {
        extra: i64,
    },
    /// 1x1 convolution + BN (torchvision's `downsample`).
    Projection(Box<(Conv, Bn)>),
}

impl Shortcut {
    fn apply(&self, x: &Tensor, ctx: &Ctx) -> Option<Tensor> {
        match self {
            Shortcut::None => None,
            Shortcut::Identity => Some(x.shallow_clone()),
            Shortcut::PadChannels { extra } => {
                let sub = x.slice(2, 0, None, 2).slice(3, 0, None, 2);
                let half = extra / 2;
                let y = sub.constant_pad_nd([0, 0, 0, 0, half, extra - half]);
                ctx.op(Op::SubsamplePadChannels { extra: *extra }, &[x], &y);
                Some(y)
            }
            Shortcut::Projection(p) => Some(p.1.forward(&p.0.forward(x, ctx), ctx)),
        }
    }
}

// Blocks are built once per model; the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Block {
    Basic {
        conv1: Conv,
        bn1: Bn,
        conv2: Conv,
        bn2: Bn,
        shortcut: Shortcut,
    },
    Bottleneck {
        conv1: Conv,
        bn1: Bn,
        conv2: Conv,
        bn2: Bn,
        conv3: Conv,
        bn3: Bn,
        shortcut: Shortcut,
    },
}

impl Block {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let (out, shortcut) = match self {
            Block::Basic {
                conv1,
                bn1,
                conv2,
                bn2,
                shortcut,
            } => {
                let y = Act::Relu.apply(bn1.forward(&conv1.forward(x, ctx), ctx), ctx);
                (bn2.forward(&conv2.forward(&y, ctx), ctx), shortcut)
            }
            Block::Bottleneck {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                bn3,
                shortcut,
            } => {
                let y = Act::Relu.apply(bn1.forward(&conv1.forward(x, ctx), ctx), ctx);
                let y = Act::Relu.apply(bn2.forward(&conv2.forward(&y, ctx), ctx), ctx);
                (bn3.forward(&conv3.forward(&y, ctx), ctx), shortcut)
            }
        };
        match shortcut.apply(x, ctx) {
            Some(s) => Act::Relu.apply(add(&out, &s, ctx), ctx),
            None => Act::Relu.apply(out, ctx),
        }
    }
}

fn projection(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Shortcut {
    let d = p / "downsample";
    Shortcut::Projection(Box::new((
        Conv::new(&d, "0", (cin, cout), 1, stride, 0, false),
        Bn::new(&d, "1", cout),
    )))
}

fn basic_block(p: &nn::Path, cin: i64, cout: i64, stride: i64, shortcut: Shortcut) -> Block {
    Block::Basic {
        conv1: Conv::new(p, "conv1", (cin, cout), 3, stride, 1, false),
        bn1: Bn::new(p, "bn1", cout),
        conv2: Conv::new(p, "conv2", (cout, cout), 3, 1, 1, false),
        bn2: Bn::new(p, "bn2", cout),
        shortcut,
    }
}

/// torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 convolution).
/// torchvision's Bottleneck (v1.5: the stride on the 3x3): the 3x3 convolution is `width =
/// planes * base_width / 64 * groups` wide and grouped (ResNeXt), the output `planes * 4`.
fn bottleneck(
    p: &nn::Path,
    cin: i64,
    planes: i64,
    stride: i64,
    (groups, base_width): (i64, i64),
) -> Block {
    let cout = planes * 4;
    let width = planes * base_width / 64 * groups;
    let shortcut = if stride != 1 || cin != cout {
        projection(p, cin, cout, stride)
    } else {
        Shortcut::Identity
    };
    Block::Bottleneck {
        conv1: Conv::new(p, "conv1", (cin, width), 1, 1, 0, false),
        bn1: Bn::new(p, "bn1", width),
        conv2: Conv::grouped(p, "conv2", (width, width), (3, stride, 1), groups),
        bn2: Bn::new(p, "bn2", width),
        conv3: Conv::new(p, "conv3", (width, cout), 1, 1, 0, false),
        bn3: Bn::new(p, "bn3", cout),
        shortcut,
    }
}

/// A ResNet: stem, stages of blocks, global average pool, linear classifier.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv,
    bn1: Bn,
    stem_pool: bool,
    layers: Vec<Vec<Block>>,
    fc: Fc,
}

impl Network for ResNet {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = Act::Relu.apply(self.bn1.forward(&self.conv1.forward(x, ctx), ctx), ctx);
        if self.stem_pool {
            x = max_pool(&x, 3, 2, 1, "maxpool", ctx);
        }
        ctx.stage("stem", &x);
        let x = run_stages(&self.layers, x, "layer", ctx, Block::forward);
        global_avg_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.fc
    }
    fn parts(&self) -> Vec<Part> {
        let stages = (1..=self.layers.len()).map(|i| Part::stage(format!("layer{i}")));
        std::iter::once(Part::new("stem", &["conv1", "bn1", "maxpool"]))
            .chain(stages)
            .chain([Part::new("head", &["fc"])])
            .collect()
    }
}

/// A torchvision ResNet's shape: blocks per stage, bottleneck blocks or basic ones, and the
/// bottleneck's groups and base width (ResNeXt, Wide ResNet).
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    pub counts: [usize; 4],
    pub bottleneck: bool,
    pub groups: i64,
    pub base_width: i64,
}

impl Arch {
    /// resnet18/34/50/101/152 by depth (torchvision's table).
    pub fn depth(depth: usize) -> Self {
        let (counts, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            101 => ([3, 4, 23, 3], true),
            152 => ([3, 8, 36, 3], true),
            _ => ([3, 4, 6, 3], true),
        };
        Arch {
            counts,
            bottleneck,
            groups: 1,
            base_width: 64,
        }
    }
}

/// Any torchvision ResNet: resnet18 to resnet152, resnext50_32x4d (groups 32, width 4),
/// wide_resnet50_2 (base width 128), with torchvision's state-dict keys.
pub fn torchvision_arch(p: &nn::Path, arch: Arch, in_ch: i64, classes: i64, stem: Stem) -> ResNet {
    let (counts, bottle) = (arch.counts, arch.bottleneck);
    let (conv1, stem_pool) = match stem {
        Stem::Imagenet => (Conv::new(p, "conv1", (in_ch, 64), 7, 2, 3, false), true),
        Stem::Cifar => (Conv::new(p, "conv1", (in_ch, 64), 3, 1, 1, false), false),
    };
    let mut cin = 64;
    let mut layers = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        let lp = p / format!("layer{}", i + 1);
        let planes = 64 << i;
        let mut blocks = Vec::new();
        for b in 0..n {
            let bp = &lp / b;
            let stride = if b == 0 && i > 0 { 2 } else { 1 };
            let block = if bottle {
                bottleneck(&bp, cin, planes, stride, (arch.groups, arch.base_width))
            } else {
                let shortcut = if stride != 1 || cin != planes {
                    projection(&bp, cin, planes, stride)
                } else {
                    Shortcut::Identity
                };
                basic_block(&bp, cin, planes, stride, shortcut)
            };
            cin = if bottle { planes * 4 } else { planes };
            blocks.push(block);
        }
        layers.push(blocks);
    }
    ResNet {
        conv1,
        bn1: Bn::new(p, "bn1", 64),
        stem_pool,
        layers,
        fc: Fc::new(p, "fc", cin, classes, true),
    }
}

/// He et al. 2016 (4.2): 6n+2 layers, widths 16/32/64, option-A shortcuts; `residual = false`
/// gives the plain network of the same depth.
pub fn cifar(p: &nn::Path, depth: usize, in_ch: i64, classes: i64, residual: bool) -> ResNet {
    let n = (depth - 2) / 6;
    let mut cin = 16;
    let mut layers = Vec::new();
    for (i, width) in [16i64, 32, 64].into_iter().enumerate() {
        let lp = p / format!("layer{}", i + 1);
        let blocks = (0..n)
            .map(|b| {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                let shortcut = match (residual, cin != width) {
                    (false, _) => Shortcut::None,
                    (true, true) => Shortcut::PadChannels { extra: width - cin },
                    (true, false) => Shortcut::Identity,
                };
                let block = basic_block(&(&lp / b), cin, width, stride, shortcut);
                cin = width;
                block
            })
            .collect();
        layers.push(blocks);
    }
    ResNet {
        conv1: Conv::new(p, "conv1", (in_ch, 16), 3, 1, 1, false),
        bn1: Bn::new(p, "bn1", 16),
        stem_pool: false,
        layers,
        fc: Fc::new(p, "fc", 64, classes, true),
    }
}
