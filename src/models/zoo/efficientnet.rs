//! EfficientNet (Tan & Le 2019: MBConv blocks with SiLU and squeeze-and-excitation, width and
//! depth scaled together) and EfficientNetV2 (Tan & Le 2021: Fused-MBConv in the early stages),
//! with torchvision's state-dict keys and stochastic depth.

use crate::models::blocks::{
    Act, BnCfg, ConvBnAct, Geometry, SqueezeExcitation, make_divisible, run_stages, stage_parts,
    stochastic_depth,
};
use crate::models::layers::{Ctx, Fc, add, global_avg_pool};
use crate::models::{Network, Part};
use tch::{Tensor, nn};

/// The EfficientNets convkit builds, as torchvision names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    B0,
    B3,
    V2S,
}

/// One row of a network's table (torchvision's `MBConvConfig` / `FusedMBConvConfig`): block
/// type, expansion ratio, kernel, first stride, input and output channels, blocks.
#[derive(Debug, Clone, Copy)]
struct Row {
    fused: bool,
    expand: f64,
    kernel: i64,
    stride: i64,
    cin: i64,
    cout: i64,
    layers: i64,
}

const fn mb(expand: f64, kernel: i64, stride: i64, cin: i64, cout: i64, layers: i64) -> Row {
    Row {
        fused: false,
        expand,
        kernel,
        stride,
        cin,
        cout,
        layers,
    }
}

const fn fused(expand: f64, kernel: i64, stride: i64, cin: i64, cout: i64, layers: i64) -> Row {
    Row {
        fused: true,
        ..mb(expand, kernel, stride, cin, cout, layers)
    }
}

/// EfficientNet-B0's table; B1-B7 scale its widths and depths.
const B0: [Row; 7] = [
    mb(1.0, 3, 1, 32, 16, 1),
    mb(6.0, 3, 2, 16, 24, 2),
    mb(6.0, 5, 2, 24, 40, 2),
    mb(6.0, 3, 2, 40, 80, 3),
    mb(6.0, 5, 1, 80, 112, 3),
    mb(6.0, 5, 2, 112, 192, 4),
    mb(6.0, 3, 1, 192, 320, 1),
];

const V2_S: [Row; 6] = [
    fused(1.0, 3, 1, 24, 24, 2),
    fused(4.0, 3, 2, 24, 48, 4),
    fused(4.0, 3, 2, 48, 64, 4),
    mb(4.0, 3, 2, 64, 128, 6),
    mb(6.0, 3, 1, 128, 160, 9),
    mb(6.0, 3, 2, 160, 256, 15),
];

/// EfficientNetV2's BatchNorm: PyTorch's momentum, TensorFlow's epsilon.
const V2_BN: BnCfg = BnCfg {
    momentum: 0.1,
    eps: 1e-3,
};

/// torchvision's settings of a variant: table (already scaled), last width, classifier dropout
/// and BatchNorm.
struct Settings {
    rows: Vec<Row>,
    last: i64,
    dropout: f64,
    bn: BnCfg,
}

/// Scales B0's table as torchvision does: widths by `width` (to multiples of 8), block counts
/// by `depth` (rounded up).
fn scaled(width: f64, depth: f64) -> Vec<Row> {
    let w = |c: i64| make_divisible(c as f64 * width);
    B0.iter()
        .map(|r| Row {
            cin: w(r.cin),
            cout: w(r.cout),
            layers: (r.layers as f64 * depth).ceil() as i64,
            ..*r
        })
        .collect()
}

fn settings(v: Variant) -> Settings {
    let (rows, last, dropout, bn) = match v {
        Variant::B0 => (scaled(1.0, 1.0), None, 0.2, BnCfg::PYTORCH),
        Variant::B3 => (scaled(1.2, 1.4), None, 0.3, BnCfg::PYTORCH),
        Variant::V2S => (V2_S.to_vec(), Some(1280), 0.2, V2_BN),
    };
    let last = last.unwrap_or(4 * rows[rows.len() - 1].cout);
    Settings {
        rows,
        last,
        dropout,
        bn,
    }
}

/// A layer of a block's `block` sequence.
#[derive(Debug)]
enum Layer {
    Conv(ConvBnAct),
    Se(SqueezeExcitation),
}

/// MBConv (1x1 expansion unless the ratio is 1, depthwise k x k, squeeze-and-excitation to a
/// quarter of the input width, 1x1 projection) or Fused-MBConv (k x k expansion and 1x1
/// projection, or one k x k convolution at ratio 1); a residual connection with stochastic
/// depth when the shape is kept.
#[derive(Debug)]
struct Block {
    layers: Vec<Layer>,
    residual: bool,
    drop: f64,
}

impl Block {
    fn new(p: &nn::Path, r: &Row, bn: BnCfg, drop: f64) -> Self {
        let b = p / "block";
        let layers = if r.fused {
            fused_mbconv_layers(&b, r, bn)
        } else {
            mbconv_layers(&b, r, bn)
        };
        Block {
            layers,
            residual: r.stride == 1 && r.cin == r.cout,
            drop,
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut y = x.shallow_clone();
        for layer in &self.layers {
            y = match layer {
                Layer::Conv(c) => c.forward(&y, ctx),
                Layer::Se(se) => se.forward(&y, ctx),
            };
        }
        if self.residual {
            add(&stochastic_depth(y, self.drop, ctx), x, ctx)
        } else {
            y
        }
    }
}

/// The expanded width of a block: the input's times the ratio, to a multiple of 8.
fn expanded(r: &Row) -> i64 {
    make_divisible(r.cin as f64 * r.expand)
}

/// A conv-BN-activation as the `at`-th layer of a block's `block` sequence.
fn conv_layer(b: &nn::Path, at: usize, ch: (i64, i64), g: Geometry, bn: BnCfg, act: Act) -> Layer {
    Layer::Conv(ConvBnAct::new(&(b / at), ch, g, bn, act))
}

/// MBConv: 1x1 expansion (unless the ratio is 1), depthwise k x k with the stride,
/// squeeze-and-excitation to a quarter of the block's input width, linear 1x1 projection.
fn mbconv_layers(b: &nn::Path, r: &Row, bn: BnCfg) -> Vec<Layer> {
    let hidden = expanded(r);
    let mut layers = Vec::new();
    if hidden != r.cin {
        layers.push(conv_layer(
            b,
            0,
            (r.cin, hidden),
            Geometry::POINTWISE,
            bn,
            Act::Silu,
        ));
    }
    let depthwise = Geometry::new(r.kernel, r.stride, hidden);
    let at = layers.len();
    layers.push(conv_layer(
        b,
        at,
        (hidden, hidden),
        depthwise,
        bn,
        Act::Silu,
    ));
    let squeeze = (r.cin / 4).max(1);
    let se = SqueezeExcitation::new(&(b / (at + 1)), hidden, squeeze, Act::Silu, Act::Sigmoid);
    layers.push(Layer::Se(se));
    layers.push(conv_layer(
        b,
        at + 2,
        (hidden, r.cout),
        Geometry::POINTWISE,
        bn,
        Act::None,
    ));
    layers
}

/// Fused-MBConv: k x k expansion with the stride and a linear 1x1 projection, or at ratio 1
/// one k x k convolution with SiLU.
fn fused_mbconv_layers(b: &nn::Path, r: &Row, bn: BnCfg) -> Vec<Layer> {
    let hidden = expanded(r);
    let k = Geometry::new(r.kernel, r.stride, 1);
    if hidden == r.cin {
        return vec![conv_layer(b, 0, (r.cin, r.cout), k, bn, Act::Silu)];
    }
    vec![
        conv_layer(b, 0, (r.cin, hidden), k, bn, Act::Silu),
        conv_layer(b, 1, (hidden, r.cout), Geometry::POINTWISE, bn, Act::None),
    ]
}

/// torchvision's `efficientnet_b0`, `efficientnet_b3` and `efficientnet_v2_s`: a stride-2
/// SiLU stem (`features.0`), one stage per table row (`features.1`, ...), a 1x1 SiLU
/// convolution, global average pool, then `classifier` = dropout and the linear head
/// `classifier.1`. Stochastic depth grows linearly from 0 to 0.2 over the blocks.
#[derive(Debug)]
pub struct EfficientNet {
    stem: ConvBnAct,
    stages: Vec<Vec<Block>>,
    last: ConvBnAct,
    dropout: f64,
    head: Fc,
}

/// EfficientNet's linear initialisation (torchvision's, after the TensorFlow original):
/// uniform in +-1/sqrt(outputs).
fn linear_init(outputs: i64) -> nn::Init {
    let bound = 1.0 / (outputs as f64).sqrt();
    nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// torchvision's default final stochastic-depth probability.
const STOCHASTIC_DEPTH: f64 = 0.2;

/// Builds the EfficientNet `v` for `in_ch`-channel images and `classes` classes.
pub fn efficientnet(p: &nn::Path, in_ch: i64, classes: i64, v: Variant) -> EfficientNet {
    let s = settings(v);
    let f = p / "features";
    let stem_g = Geometry::new(3, 2, 1);
    let stem = ConvBnAct::new(&(&f / 0), (in_ch, s.rows[0].cin), stem_g, s.bn, Act::Silu);
    let total: i64 = s.rows.iter().map(|r| r.layers).sum();
    let mut id = 0;
    let mut stages = Vec::new();
    for (i, row) in s.rows.iter().enumerate() {
        let stage = (0..row.layers)
            .map(|j| {
                let r = if j == 0 {
                    *row
                } else {
                    Row {
                        cin: row.cout,
                        stride: 1,
                        ..*row
                    }
                };
                let drop = STOCHASTIC_DEPTH * id as f64 / total as f64;
                id += 1;
                Block::new(&(&f / (i + 1) / j), &r, s.bn, drop)
            })
            .collect();
        stages.push(stage);
    }
    let last_in = s.rows[s.rows.len() - 1].cout;
    let n = s.rows.len() + 1;
    let last = ConvBnAct::new(
        &(&f / n),
        (last_in, s.last),
        Geometry::POINTWISE,
        s.bn,
        Act::Silu,
    );
    EfficientNet {
        stem,
        stages,
        last,
        dropout: s.dropout,
        head: Fc::with_init(
            &(p / "classifier"),
            "1",
            s.last,
            classes,
            linear_init(classes),
        ),
    }
}

impl Network for EfficientNet {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        let x = run_stages(&self.stages, x, "stage", ctx, Block::forward);
        let x = self.last.forward(&x, ctx);
        ctx.stage("conv_last", &x);
        global_avg_pool(&x, ctx).dropout(self.dropout, ctx.train)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, each stage (`stage1` = `features.1`, ...), the last 1x1 convolution, the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new("stem", &["features.0"])];
        parts.extend(stage_parts(self.stages.len(), "stage", |i| {
            format!("features.{i}")
        }));
        parts.push(Part {
            name: "conv_last".into(),
            prefixes: vec![format!("features.{}", self.stages.len() + 1)],
        });
        parts.push(Part::new("head", &["classifier"]));
        parts
    }
}
