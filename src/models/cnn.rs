//! Plain convolutional networks: the chapter's conv-BN-ReLU-pool stack, the benchmark net
//! "Net8", and an airbench-style fast net.

use super::layers::{Act, Bn, Conv, Ctx, Fc, add, global_avg_pool, global_max_pool, max_pool};
use super::{Network, Part};
use tch::{Tensor, nn};

/// conv3x3 -> BN -> ReLU -> max-pool 2, once per width, then global average pool and a linear
/// classifier.
#[derive(Debug)]
pub struct PlainCnn {
    stages: Vec<(Conv, Bn)>,
    fc: Fc,
}

pub fn plain_cnn(p: &nn::Path, in_ch: i64, classes: i64, widths: &[i64]) -> PlainCnn {
    let mut cin = in_ch;
    let stages = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let sp = p / "features" / i;
            let stage = (
                Conv::new(&sp, "conv", (cin, w), 3, 1, 1, false),
                Bn::new(&sp, "bn", w),
            );
            cin = w;
            stage
        })
        .collect();
    PlainCnn {
        stages,
        fc: Fc::new(p, "fc", cin, classes, true),
    }
}

impl Network for PlainCnn {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = x.shallow_clone();
        for (i, (conv, bn)) in self.stages.iter().enumerate() {
            let name = format!("features.{i}");
            x = Act::Relu.apply(bn.forward(&conv.forward(&x, ctx), ctx), ctx);
            x = max_pool(&x, 2, 2, 0, &format!("{name}.pool"), ctx);
            ctx.stage(&name, &x);
        }
        global_avg_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.fc
    }
    fn parts(&self) -> Vec<Part> {
        (0..self.stages.len())
            .map(|i| Part::stage(format!("features.{i}")))
            .chain([Part::new("head", &["fc"])])
            .collect()
    }
}

/// A conv-BN-ReLU unit.
#[derive(Debug)]
struct ConvBn(Conv, Bn);

impl ConvBn {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        ConvBn(
            Conv::new(p, "conv", (cin, cout), 3, stride, 1, false),
            Bn::new(p, "bn", cout),
        )
    }
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        Act::Relu.apply(self.1.forward(&self.0.forward(x, ctx), ctx), ctx)
    }
}

/// The benchmark net of docs/performance.md: conv3x3(3->32)+BN+ReLU, three stages (stride-2
/// conv+BN+ReLU and one basic residual block each), global average pool, linear.
#[derive(Debug)]
pub struct Net8 {
    stem: ConvBn,
    stages: Vec<(ConvBn, ConvBn, ConvBn)>,
    fc: Fc,
}

pub fn net8(p: &nn::Path, in_ch: i64, classes: i64) -> Net8 {
    let stem = ConvBn::new(&(p / "stem"), in_ch, 32, 1);
    let stages = [(32, 64), (64, 128), (128, 256)]
        .iter()
        .enumerate()
        .map(|(i, &(cin, cout))| {
            let sp = p / "stages" / i;
            (
                ConvBn::new(&(&sp / "down"), cin, cout, 2),
                ConvBn::new(&(&sp / "res1"), cout, cout, 1),
                ConvBn::new(&(&sp / "res2"), cout, cout, 1),
            )
        })
        .collect();
    Net8 {
        stem,
        stages,
        fc: Fc::new(p, "fc", 256, classes, true),
    }
}

impl Network for Net8 {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = self.stem.forward(x, ctx);
        ctx.stage("stem", &x);
        for (i, (down, r1, r2)) in self.stages.iter().enumerate() {
            x = down.forward(&x, ctx);
            // The block's second BN output joins the shortcut before its ReLU.
            let y = r1.forward(&x, ctx);
            let y = r2.1.forward(&r2.0.forward(&y, ctx), ctx);
            x = Act::Relu.apply(add(&y, &x, ctx), ctx);
            ctx.stage(&format!("stages.{i}"), &x);
        }
        global_avg_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.fc
    }
    fn parts(&self) -> Vec<Part> {
        let stages = (0..self.stages.len()).map(|i| Part::stage(format!("stages.{i}")));
        std::iter::once(Part::new("stem", &["stem"]))
            .chain(stages)
            .chain([Part::new("head", &["fc"])])
            .collect()
    }
}

/// An airbench-style net (Jordan 2024): 2x2 conv + GELU, then per width
/// conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU; global max pool; a linear head
/// without bias scaled by 1/9; PyTorch's default initialisation, as airbench. (Whitening
/// initialisation and lookahead are separate pieces.)
#[derive(Debug)]
pub struct AirNet {
    whiten: Conv,
    groups: Vec<(Conv, Bn, Conv, Bn)>,
    fc: Fc,
}

pub fn airnet(p: &nn::Path, in_ch: i64, classes: i64, widths: &[i64]) -> AirNet {
    let whiten = Conv::pytorch_default(p, "whiten", (in_ch, 24), (2, 1, 0), true);
    let mut cin = 24;
    let groups = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let gp = p / "groups" / i;
            // airbench's BatchNorm: momentum 0.6 in its convention = 0.4 in PyTorch's.
            let g = (
                Conv::pytorch_default(&gp, "conv1", (cin, w), (3, 1, 1), false),
                Bn::with(&gp, "bn1", w, 0.4, 1e-12),
                Conv::pytorch_default(&gp, "conv2", (w, w), (3, 1, 1), false),
                Bn::with(&gp, "bn2", w, 0.4, 1e-12),
            );
            cin = w;
            g
        })
        .collect();
    let mut fc = Fc::new(p, "fc", cin, classes, false);
    fc.scale = 1.0 / 9.0;
    AirNet { whiten, groups, fc }
}

impl Network for AirNet {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = Act::Gelu.apply(self.whiten.forward(x, ctx), ctx);
        ctx.stage("stem", &x);
        for (i, (c1, b1, c2, b2)) in self.groups.iter().enumerate() {
            let name = format!("groups.{i}");
            x = c1.forward(&x, ctx);
            x = max_pool(&x, 2, 2, 0, &format!("{name}.pool"), ctx);
            x = Act::Gelu.apply(b1.forward(&x, ctx), ctx);
            x = Act::Gelu.apply(b2.forward(&c2.forward(&x, ctx), ctx), ctx);
            ctx.stage(&name, &x);
        }
        global_max_pool(&x, ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.fc
    }
    fn parts(&self) -> Vec<Part> {
        let groups = (0..self.groups.len()).map(|i| Part::stage(format!("groups.{i}")));
        std::iter::once(Part::new("stem", &["whiten"]))
            .chain(groups)
            .chain([Part::new("head", &["fc"])])
            .collect()
    }
}
