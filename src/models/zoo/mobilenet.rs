//! MobileNetV2 (Sandler et al. 2018: inverted residuals, depthwise convolutions, ReLU6) and
//! MobileNetV3 (Howard et al. 2019: squeeze-and-excitation, hard-swish), with torchvision's
//! state-dict keys.

use crate::models::blocks::{
    Act, BnCfg, ConvBnAct, Geometry, SqueezeExcitation, make_divisible, normal, run_stages,
};
use crate::models::layers::{Bn, Conv, Ctx, Fc, add, global_avg_pool};
use crate::models::{Network, Part};
use tch::{Tensor, nn};

const PT: BnCfg = BnCfg::PYTORCH;
const TF: BnCfg = BnCfg::TF;

/// MobileNetV2's inverted residual: 1x1 expansion (unless the ratio is 1), 3x3 depthwise,
/// 1x1 linear projection; the input added back when stride 1 keeps the shape.
#[derive(Debug)]
struct InvertedResidual {
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
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
            ConvBnAct::new(
                &(&c / "0"),
                (cin, hidden),
                Geometry::POINTWISE,
                PT,
                Act::Relu6,
            )
        });
        let depthwise = ConvBnAct::new(
            &(&c / at),
            (hidden, hidden),
            Geometry::new(3, stride, hidden),
            PT,
            Act::Relu6,
        );
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
        if self.residual { add(&y, x, ctx) } else { y }
    }
}

/// torchvision's `mobilenet_v2` (width 1.0): a stride-2 stem, 17 inverted residuals in 7 rows
/// of (expansion, channels, blocks, stride), a 1x1 convolution to 1280, global average pool,
/// dropout 0.2 and the linear head `classifier.1`.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBnAct,
    /// The blocks of each row of the table (torchvision numbers them features.1 to .17).
    rows: Vec<Vec<InvertedResidual>>,
    last: ConvBnAct,
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
    let stem = ConvBnAct::new(
        &(&f / "0"),
        (in_ch, 32),
        Geometry::new(3, 2, 1),
        PT,
        Act::Relu6,
    );
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
    let last = ConvBnAct::new(
        &(&f / index),
        (cin, 1280),
        Geometry::POINTWISE,
        PT,
        Act::Relu6,
    );
    MobileNetV2 {
        stem,
        rows,
        last,
        head: Fc::with_init(&(p / "classifier"), "1", 1280, classes, normal(0.01)),
    }
}

impl Network for MobileNetV2 {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        let x = run_stages(&self.rows, x, "stage", ctx, InvertedResidual::forward);
        let x = self.last.forward(&x, ctx);
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
        if self.residual { add(&y, x, ctx) } else { y }
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
    let stem = ConvBnAct::new(
        &(&f / "0"),
        (in_ch, 16),
        Geometry::new(3, 2, 1),
        TF,
        Act::HardSwish,
    );
    let rows: &[V3Row] = if large { &V3_LARGE } else { &V3_SMALL };
    let mut blocks = Vec::new();
    for (i, &(cin, k, exp, cout, se, hs, stride)) in rows.iter().enumerate() {
        let b = &f / (i + 1) / "block";
        let act = if hs { Act::HardSwish } else { Act::Relu };
        let mut at = 0;
        let expand = (exp != cin).then(|| {
            at += 1;
            ConvBnAct::new(&(&b / "0"), (cin, exp), Geometry::POINTWISE, TF, act)
        });
        let depthwise = ConvBnAct::new(
            &(&b / at),
            (exp, exp),
            Geometry::new(k, stride, exp),
            TF,
            act,
        );
        let se = se.then(|| {
            at += 1;
            let s = &b / at;
            let squeeze = make_divisible(exp as f64 / 4.0);
            SqueezeExcitation::new(&s, exp, squeeze, Act::Relu, Act::HardSigmoid)
        });
        let project = ConvBnAct::new(
            &(&b / (at + 1)),
            (exp, cout),
            Geometry::POINTWISE,
            TF,
            Act::None,
        );
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
    let last = ConvBnAct::new(
        &(&f / n),
        (last_in, 6 * last_in),
        Geometry::POINTWISE,
        TF,
        Act::HardSwish,
    );
    let hidden = if large { 1280 } else { 1024 };
    let c = p / "classifier";
    MobileNetV3 {
        stem,
        blocks,
        last,
        fc: Fc::with_init(&c, "0", 6 * last_in, hidden, normal(0.01)),
        head: Fc::with_init(&c, "3", hidden, classes, normal(0.01)),
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
        Act::HardSwish
            .apply(self.fc.forward(&x, ctx), ctx)
            .dropout(0.2, ctx.train)
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
