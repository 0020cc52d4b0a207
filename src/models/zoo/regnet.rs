//! RegNetY (Radosavovic et al. 2020, "Designing Network Design Spaces"): residual bottlenecks
//! with grouped 3x3 convolutions and squeeze-and-excitation, widths from a quantised linear
//! rule, with torchvision's state-dict keys.

use crate::models::blocks::{
    Act, BnCfg, ConvBnAct, Geometry, SqueezeExcitation, normal, run_stages, stage_parts,
};
use crate::models::layers::{Ctx, Fc, add, global_avg_pool};
use crate::models::{Network, Part};
use tch::{Tensor, nn};

/// RegNetY-800MF's stages as torchvision's `BlockParams.from_init_params(depth=14, w_0=56,
/// w_a=38.84, w_m=2.4, group_width=16, se_ratio=0.25)` computes them: (depth, width), each
/// stage starting with stride 2, groups of 16 channels, bottleneck ratio 1.
const Y_800MF: [(usize, i64); 4] = [(1, 64), (3, 144), (8, 320), (2, 784)];
const GROUP_WIDTH: i64 = 16;
const SE_RATIO: f64 = 0.25;
const STEM_WIDTH: i64 = 32;

/// `ResBottleneckBlock`: `f` = 1x1 (`a`), grouped 3x3 with the stride (`b`), squeeze-and-
/// excitation to a quarter of the block's input width (`se`), 1x1 (`c`); a 1x1 projection
/// (`proj`) of the input when the shape changes; ReLU after the sum.
#[derive(Debug)]
struct Block {
    proj: Option<ConvBnAct>,
    a: ConvBnAct,
    b: ConvBnAct,
    se: SqueezeExcitation,
    c: ConvBnAct,
}

impl Block {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let bn = BnCfg::PYTORCH;
        let f = p / "f";
        let proj = (cin != cout || stride != 1).then(|| {
            let g = Geometry::new(1, stride, 1);
            ConvBnAct::new(&(p / "proj"), (cin, cout), g, bn, Act::None)
        });
        let groups = cout / GROUP_WIDTH;
        let squeeze = (SE_RATIO * cin as f64).round() as i64;
        Block {
            proj,
            a: ConvBnAct::new(&(&f / "a"), (cin, cout), Geometry::POINTWISE, bn, Act::Relu),
            b: ConvBnAct::new(
                &(&f / "b"),
                (cout, cout),
                Geometry::new(3, stride, groups),
                bn,
                Act::Relu,
            ),
            se: SqueezeExcitation::new(&(&f / "se"), cout, squeeze, Act::Relu, Act::Sigmoid),
            c: ConvBnAct::new(
                &(&f / "c"),
                (cout, cout),
                Geometry::POINTWISE,
                bn,
                Act::None,
            ),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self.a.forward(x, ctx);
        let y = self.se.forward(&self.b.forward(&y, ctx), ctx);
        let y = self.c.forward(&y, ctx);
        let shortcut = match &self.proj {
            Some(p) => p.forward(x, ctx),
            None => x.shallow_clone(),
        };
        Act::Relu.apply(add(&shortcut, &y, ctx), ctx)
    }
}

/// torchvision's `regnet_y_800mf`: a stride-2 3x3 stem to 32 channels (`stem`), four stages
/// (`trunk_output.block1` ... `block4`), global average pool and the linear head `fc`.
#[derive(Debug)]
pub struct RegNet {
    stem: ConvBnAct,
    stages: Vec<Vec<Block>>,
    head: Fc,
}

/// Builds RegNetY-800MF for `in_ch`-channel images and `classes` classes. Its squeeze-and-
/// excitation biases start at 0 (torchvision leaves them at PyTorch's uniform default).
pub fn regnet_y_800mf(p: &nn::Path, in_ch: i64, classes: i64) -> RegNet {
    let stem_g = Geometry::new(3, 2, 1);
    let stem = ConvBnAct::new(
        &(p / "stem"),
        (in_ch, STEM_WIDTH),
        stem_g,
        BnCfg::PYTORCH,
        Act::Relu,
    );
    let trunk = p / "trunk_output";
    let mut cin = STEM_WIDTH;
    let mut stages = Vec::new();
    for (i, &(depth, width)) in Y_800MF.iter().enumerate() {
        let s = &trunk / format!("block{}", i + 1);
        let stage = (0..depth)
            .map(|j| {
                let stride = if j == 0 { 2 } else { 1 };
                let block = Block::new(&(&s / format!("block{}-{j}", i + 1)), cin, width, stride);
                cin = width;
                block
            })
            .collect();
        stages.push(stage);
    }
    RegNet {
        stem,
        stages,
        head: Fc::with_init(p, "fc", cin, classes, normal(0.01)),
    }
}

impl Network for RegNet {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        let x = run_stages(&self.stages, x, "block", ctx, Block::forward);
        global_avg_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, the four stages under torchvision's names (`block1` = `trunk_output.block1`),
    /// the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new("stem", &["stem"])];
        parts.extend(stage_parts(self.stages.len(), "block", |i| {
            format!("trunk_output.block{i}")
        }));
        parts.push(Part::new("head", &["fc"]));
        parts
    }
}
