//! torchvision's other classification families, with torchvision's state-dict keys: VGG-16
//! with BatchNorm (Simonyan & Zisserman 2015), MobileNetV2 (Sandler et al. 2018: inverted
//! residuals, depthwise convolutions, ReLU6), DenseNet-121 (Huang et al. 2017) and MobileNetV3
//! (Howard et al. 2019: squeeze-and-excitation, hard-swish).

use super::layers::{Bn, Conv, Ctx, Fc, global_avg_pool, max_pool};
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
        fc1: Fc::new(&c, "0", 512 * 7 * 7, 4096, true),
        fc2: Fc::new(&c, "3", 4096, 4096, true),
        head: Fc::new(&c, "6", 4096, classes, true),
    }
}

impl Network for Vgg {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, (stage, pool)) in self.stages.iter().zip(&self.pools).enumerate() {
            for (conv, bn) in stage {
                x = bn.forward(&conv.forward(&x, ctx), ctx).relu();
            }
            x = max_pool(&x, 2, 2, 0, &format!("features.{pool}"), ctx);
            ctx.stage(&format!("stage{}", i + 1), &x);
        }
        let x = x.adaptive_avg_pool2d([7, 7]).flatten(1, -1);
        let x = self.fc1.forward(&x, ctx).relu().dropout(0.5, ctx.train);
        self.fc2.forward(&x, ctx).relu().dropout(0.5, ctx.train)
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

/// Conv, BatchNorm and ReLU6 under torchvision's `Conv2dNormActivation` names (`.0`, `.1`).
#[derive(Debug)]
struct ConvBnRelu6(Conv, Bn);

impl ConvBnRelu6 {
    fn new(p: &nn::Path, (cin, cout): (i64, i64), kernel: i64, stride: i64, groups: i64) -> Self {
        let conv = Conv::grouped(
            p,
            "0",
            (cin, cout),
            (kernel, stride, (kernel - 1) / 2),
            groups,
        );
        ConvBnRelu6(conv, Bn::new(p, "1", cout))
    }
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.1.forward(&self.0.forward(x, ctx), ctx).clamp(0.0, 6.0)
    }
}

/// MobileNetV2's inverted residual: 1x1 expansion (unless the ratio is 1), 3x3 depthwise,
/// 1x1 linear projection; the input added back when stride 1 keeps the shape.
#[derive(Debug)]
struct InvertedResidual {
    expand: Option<ConvBnRelu6>,
    depthwise: ConvBnRelu6,
    project: (Conv, Bn),
    residual: bool,
}

impl InvertedResidual {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64, ratio: i64) -> Self {
        let c = p / "conv";
        let hidden = cin * ratio;
        let mut at = 0;
        let expand = (ratio != 1).then(|| {
            at += 1;
            ConvBnRelu6::new(&(&c / "0"), (cin, hidden), 1, 1, 1)
        });
        let depthwise = ConvBnRelu6::new(&(&c / at), (hidden, hidden), 3, stride, hidden);
        let project = (
            Conv::new(&c, &(at + 1).to_string(), (hidden, cout), 1, 1, 0, false),
            Bn::new(&c, &(at + 2).to_string(), cout),
        );
        InvertedResidual {
            expand,
            depthwise,
            project,
            residual: stride == 1 && cin == cout,
        }
    }
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = match &self.expand {
            Some(e) => e.forward(x, ctx),
            None => x.shallow_clone(),
        };
        let y = self.depthwise.forward(&y, ctx);
        let y = self
            .project
            .1
            .forward(&self.project.0.forward(&y, ctx), ctx);
        if self.residual { y + x } else { y }
    }
}

/// torchvision's `mobilenet_v2` (width 1.0): a stride-2 stem, 17 inverted residuals in 7 rows
/// of (expansion, channels, blocks, stride), a 1x1 convolution to 1280, global average pool,
/// dropout 0.2 and the linear head `classifier.1`.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBnRelu6,
    /// The blocks of each row of the table (torchvision numbers them features.1 to .17).
    rows: Vec<Vec<InvertedResidual>>,
    last: ConvBnRelu6,
    head: Fc,
}

const MOBILENET_V2: [(i64, i64, usize, i64); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

pub fn mobilenet_v2(p: &nn::Path, in_ch: i64, classes: i64) -> MobileNetV2 {
    let f = p / "features";
    let stem = ConvBnRelu6::new(&(&f / "0"), (in_ch, 32), 3, 2, 1);
    let (mut index, mut cin) = (1usize, 32);
    let mut rows = Vec::new();
    for (t, c, n, s) in MOBILENET_V2 {
        let mut row = Vec::new();
        for b in 0..n {
            let stride = if b == 0 { s } else { 1 };
            row.push(InvertedResidual::new(&(&f / index), cin, c, stride, t));
            (index, cin) = (index + 1, c);
        }
        rows.push(row);
    }
    let last = ConvBnRelu6::new(&(&f / index), (cin, 1280), 1, 1, 1);
    MobileNetV2 {
        stem,
        rows,
        last,
        head: Fc::new(&(p / "classifier"), "1", 1280, classes, true),
    }
}

impl Network for MobileNetV2 {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        for (i, row) in self.rows.iter().enumerate() {
            for block in row {
                x = block.forward(&x, ctx);
            }
            ctx.stage(&format!("stage{}", i + 1), &x);
        }
        x = self.last.forward(&x, ctx);
        ctx.stage("conv_last", &x);
        global_avg_pool(&x, ctx).dropout(0.2, ctx.train)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, one stage per row of the table, the final 1x1 convolution, the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new("stem", &["features.0"])];
        let mut index = 1;
        for (i, row) in self.rows.iter().enumerate() {
            let prefixes = (index..index + row.len())
                .map(|k| format!("features.{k}"))
                .collect();
            index += row.len();
            parts.push(Part {
                name: format!("stage{}", i + 1),
                prefixes,
            });
        }
        parts.push(Part {
            name: "conv_last".into(),
            prefixes: vec![format!("features.{index}")],
        });
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
        let y = self.conv1.forward(&self.norm1.forward(x, ctx).relu(), ctx);
        let y = self.conv2.forward(&self.norm2.forward(&y, ctx).relu(), ctx);
        Tensor::cat(&[x.shallow_clone(), y], 1)
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
        let x = self.norm0.forward(&self.conv0.forward(x, ctx), ctx).relu();
        let mut x = max_pool(&x, 3, 2, 1, "features.pool0", ctx);
        ctx.stage("stem", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                x = layer.forward(&x, ctx);
            }
            match self.transitions.get(i) {
                Some(t) => {
                    x = t.conv.forward(&t.norm.forward(&x, ctx).relu(), ctx);
                    x = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
                }
                None => x = self.norm5.forward(&x, ctx).relu(),
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

/// MobileNetV3's activation of a block: ReLU or hard-swish.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    Relu,
    HardSwish,
    None,
}

impl Act {
    fn apply(self, x: Tensor) -> Tensor {
        match self {
            Act::Relu => x.relu(),
            Act::HardSwish => x.hardswish(),
            Act::None => x,
        }
    }
}

/// Conv, BatchNorm (eps 0.001, momentum 0.01, as MobileNetV3) and an activation, under
/// torchvision's `Conv2dNormActivation` names.
#[derive(Debug)]
struct ConvBnAct(Conv, Bn, Act);

impl ConvBnAct {
    fn new(
        p: &nn::Path,
        (cin, cout): (i64, i64),
        (k, stride, groups): (i64, i64, i64),
        act: Act,
    ) -> Self {
        let conv = Conv::grouped(p, "0", (cin, cout), (k, stride, (k - 1) / 2), groups);
        ConvBnAct(conv, Bn::with(p, "1", cout, 0.01, 0.001), act)
    }
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        self.2.apply(self.1.forward(&self.0.forward(x, ctx), ctx))
    }
}

/// Squeeze-and-excitation (Hu et al. 2018) as MobileNetV3 uses it: global average, 1x1 conv
/// down, ReLU, 1x1 conv up, hard-sigmoid, the channels rescaled.
#[derive(Debug)]
struct SqueezeExcitation {
    fc1: Conv,
    fc2: Conv,
}

impl SqueezeExcitation {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let s = x.mean_dim([2i64, 3].as_slice(), true, x.kind());
        let s = self
            .fc2
            .forward(&self.fc1.forward(&s, ctx).relu(), ctx)
            .hardsigmoid();
        x * s
    }
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, never more
/// than 10% below `v`.
fn make_divisible(v: f64) -> i64 {
    let mut out = (8.0f64).max(((v + 4.0) / 8.0).floor() * 8.0);
    if out < 0.9 * v {
        out += 8.0;
    }
    out as i64
}

#[derive(Debug)]
struct V3Block {
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
    se: Option<SqueezeExcitation>,
    project: ConvBnAct,
    residual: bool,
}

impl V3Block {
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut y = match &self.expand {
            Some(e) => e.forward(x, ctx),
            None => x.shallow_clone(),
        };
        y = self.depthwise.forward(&y, ctx);
        if let Some(se) = &self.se {
            y = se.forward(&y, ctx);
        }
        y = self.project.forward(&y, ctx);
        if self.residual { y + x } else { y }
    }
}

/// One row of MobileNetV3's table: input, kernel, expanded and output channels, squeeze-and-
/// excitation, hard-swish (else ReLU), stride.
type V3Row = (i64, i64, i64, i64, bool, bool, i64);

const V3_SMALL: [V3Row; 11] = [
    (16, 3, 16, 16, true, false, 2),
    (16, 3, 72, 24, false, false, 2),
    (24, 3, 88, 24, false, false, 1),
    (24, 5, 96, 40, true, true, 2),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 120, 48, true, true, 1),
    (48, 5, 144, 48, true, true, 1),
    (48, 5, 288, 96, true, true, 2),
    (96, 5, 576, 96, true, true, 1),
    (96, 5, 576, 96, true, true, 1),
];

const V3_LARGE: [V3Row; 15] = [
    (16, 3, 16, 16, false, false, 1),
    (16, 3, 64, 24, false, false, 2),
    (24, 3, 72, 24, false, false, 1),
    (24, 5, 72, 40, true, false, 2),
    (40, 5, 120, 40, true, false, 1),
    (40, 5, 120, 40, true, false, 1),
    (40, 3, 240, 80, false, true, 2),
    (80, 3, 200, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 480, 112, true, true, 1),
    (112, 3, 672, 112, true, true, 1),
    (112, 5, 672, 160, true, true, 2),
    (160, 5, 960, 160, true, true, 1),
    (160, 5, 960, 160, true, true, 1),
];

/// torchvision's `mobilenet_v3_small` / `mobilenet_v3_large` (Howard et al. 2019): a
/// hard-swish stem, the table's blocks (depthwise, squeeze-and-excitation, hard-swish), a 1x1
/// convolution to 6x the last width, global average pool, then `classifier` = Linear,
/// hard-swish, dropout 0.2 and the linear head `classifier.3`.
#[derive(Debug)]
pub struct MobileNetV3 {
    stem: ConvBnAct,
    blocks: Vec<V3Block>,
    last: ConvBnAct,
    fc: Fc,
    head: Fc,
}

pub fn mobilenet_v3(p: &nn::Path, in_ch: i64, classes: i64, large: bool) -> MobileNetV3 {
    let f = p / "features";
    let stem = ConvBnAct::new(&(&f / "0"), (in_ch, 16), (3, 2, 1), Act::HardSwish);
    let rows: &[V3Row] = if large { &V3_LARGE } else { &V3_SMALL };
    let mut blocks = Vec::new();
    for (i, &(cin, k, exp, cout, se, hs, stride)) in rows.iter().enumerate() {
        let b = &f / (i + 1) / "block";
        let act = if hs { Act::HardSwish } else { Act::Relu };
        let mut at = 0;
        let expand = (exp != cin).then(|| {
            at += 1;
            ConvBnAct::new(&(&b / "0"), (cin, exp), (1, 1, 1), act)
        });
        let depthwise = ConvBnAct::new(&(&b / at), (exp, exp), (k, stride, exp), act);
        let se = se.then(|| {
            at += 1;
            let s = &b / at;
            let squeeze = make_divisible(exp as f64 / 4.0);
            SqueezeExcitation {
                fc1: Conv::new(&s, "fc1", (exp, squeeze), 1, 1, 0, true),
                fc2: Conv::new(&s, "fc2", (squeeze, exp), 1, 1, 0, true),
            }
        });
        let project = ConvBnAct::new(&(&b / (at + 1)), (exp, cout), (1, 1, 1), Act::None);
        blocks.push(V3Block {
            expand,
            depthwise,
            se,
            project,
            residual: stride == 1 && cin == cout,
        });
    }
    let last_in = rows[rows.len() - 1].3;
    let n = rows.len() + 1;
    let last = ConvBnAct::new(&(&f / n), (last_in, 6 * last_in), (1, 1, 1), Act::HardSwish);
    let hidden = if large { 1280 } else { 1024 };
    let c = p / "classifier";
    MobileNetV3 {
        stem,
        blocks,
        last,
        fc: Fc::new(&c, "0", 6 * last_in, hidden, true),
        head: Fc::new(&c, "3", hidden, classes, true),
    }
}

impl Network for MobileNetV3 {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, ctx);
            ctx.stage(&format!("features.{}", i + 1), &x);
        }
        x = self.last.forward(&x, ctx);
        ctx.stage("conv_last", &x);
        let x = global_avg_pool(&x, ctx);
        self.fc.forward(&x, ctx).hardswish().dropout(0.2, ctx.train)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, each block (`features.1`, ...), the last convolution, and the classifier's
    /// two linear layers as the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new("stem", &["features.0"])];
        parts.extend((1..=self.blocks.len()).map(|i| Part::stage(format!("features.{i}"))));
        parts.push(Part {
            name: "conv_last".into(),
            prefixes: vec![format!("features.{}", self.blocks.len() + 1)],
        });
        parts.push(Part::new("head", &["classifier"]));
        parts
    }
}
