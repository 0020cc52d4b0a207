//! ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"): patchify stem, 7x7 depthwise
//! convolutions, LayerNorm, inverted-bottleneck MLPs with GELU, layer scale and stochastic
//! depth, with torchvision's state-dict keys.

use crate::models::blocks::{Act, LayerNorm, layer_scale, stochastic_depth};
use crate::models::layers::{Conv, Ctx, Fc, add, global_avg_pool, mul, permute};
use crate::models::{Network, Part};
use tch::{Tensor, nn};

/// The ConvNeXts convkit builds, as torchvision names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Tiny,
    Small,
}

/// (blocks per stage, final stochastic-depth probability): torchvision's `convnext_tiny` and
/// `convnext_small`, both with widths 96, 192, 384, 768.
fn settings(v: Variant) -> ([usize; 4], f64) {
    match v {
        Variant::Tiny => ([3, 3, 9, 3], 0.1),
        Variant::Small => ([3, 3, 27, 3], 0.4),
    }
}

const WIDTHS: [i64; 4] = [96, 192, 384, 768];
/// The LayerNorms' epsilon and the layer scale's first value, as in the paper.
const EPS: f64 = 1e-6;
const LAYER_SCALE: f64 = 1e-6;

/// ConvNeXt's initialisation: truncated normal with std 0.02 (at +-2, i.e. never truncated).
fn init() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    }
}

/// `CNBlock`: depthwise 7x7 (`block.0`), channels last, LayerNorm (`block.2`), Linear to 4x
/// (`block.3`), GELU, Linear back (`block.5`), channels first, times `layer_scale`, stochastic
/// depth, plus the input.
#[derive(Debug)]
struct Block {
    depthwise: Conv,
    norm: LayerNorm,
    fc1: Fc,
    fc2: Fc,
    scale: Tensor,
    drop: f64,
}

impl Block {
    fn new(p: &nn::Path, dim: i64, drop: f64) -> Self {
        let b = p / "block";
        Block {
            depthwise: Conv::with_groups(&b, "0", (dim, dim), (7, 1, 3), (true, dim), init()),
            norm: LayerNorm::over_last(&b, "2", dim, EPS),
            fc1: Fc::with_init(&b, "3", dim, 4 * dim, init()),
            fc2: Fc::with_init(&b, "5", 4 * dim, dim, init()),
            scale: layer_scale(p, "layer_scale", dim, LAYER_SCALE),
            drop,
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = permute(&self.depthwise.forward(x, ctx), &[0, 2, 3, 1], ctx);
        let y = self.norm.forward(&y, ctx);
        let y = Act::Gelu.apply(self.fc1.forward(&y, ctx), ctx);
        let y = permute(&self.fc2.forward(&y, ctx), &[0, 3, 1, 2], ctx);
        add(
            &stochastic_depth(mul(&self.scale, &y, ctx), self.drop, ctx),
            x,
            ctx,
        )
    }
}

/// Between stages: LayerNorm over channels (`.0`), then a 2x2 stride-2 convolution (`.1`).
#[derive(Debug)]
struct Downsample(LayerNorm, Conv);

/// torchvision's `convnext_tiny` and `convnext_small`: a 4x4 stride-4 stem with LayerNorm
/// (`features.0`), four stages (`features.1`, `.3`, `.5`, `.7`) with downsampling between them
/// (`features.2`, `.4`, `.6`), global average pool, then `classifier` = LayerNorm (`.0`),
/// flatten and the linear head `classifier.2`. `features` returns the normalised vector.
#[derive(Debug)]
pub struct ConvNeXt {
    stem: (Conv, LayerNorm),
    stages: Vec<(Option<Downsample>, Vec<Block>)>,
    norm: LayerNorm,
    head: Fc,
}

/// Builds the ConvNeXt `v` for `in_ch`-channel images and `classes` classes.
pub fn convnext(p: &nn::Path, in_ch: i64, classes: i64, v: Variant) -> ConvNeXt {
    let (depths, final_drop) = settings(v);
    let f = p / "features";
    let s0 = &f / 0;
    let stem = (
        Conv::with_groups(&s0, "0", (in_ch, WIDTHS[0]), (4, 4, 0), (true, 1), init()),
        LayerNorm::over_channels(&s0, "1", WIDTHS[0], EPS),
    );
    let total: usize = depths.iter().sum();
    let mut id = 0;
    let mut stages = Vec::new();
    for (i, &depth) in depths.iter().enumerate() {
        let down = (i > 0).then(|| {
            let d = &f / (2 * i);
            let (cin, cout) = (WIDTHS[i - 1], WIDTHS[i]);
            Downsample(
                LayerNorm::over_channels(&d, "0", cin, EPS),
                Conv::with_groups(&d, "1", (cin, cout), (2, 2, 0), (true, 1), init()),
            )
        });
        let s = &f / (2 * i + 1);
        let blocks = (0..depth)
            .map(|j| {
                let drop = final_drop * id as f64 / (total - 1) as f64;
                id += 1;
                Block::new(&(&s / j), WIDTHS[i], drop)
            })
            .collect();
        stages.push((down, blocks));
    }
    let c = p / "classifier";
    let last = WIDTHS[3];
    ConvNeXt {
        stem,
        stages,
        norm: LayerNorm::over_last(&c, "0", last, EPS),
        head: Fc::with_init(&c, "2", last, classes, init()),
    }
}

impl Network for ConvNeXt {
    fn features(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut x = self.stem.1.forward(&self.stem.0.forward(x, ctx), ctx);
        ctx.stage("stem", &x);
        for (i, (down, blocks)) in self.stages.iter().enumerate() {
            if let Some(Downsample(norm, conv)) = down {
                x = conv.forward(&norm.forward(&x, ctx), ctx);
            }
            for block in blocks {
                x = block.forward(&x, ctx);
            }
            ctx.stage(&format!("stage{}", i + 1), &x);
        }
        // torchvision normalises the pooled [B, C, 1, 1] over channels, then flattens: the
        // same as normalising the [B, C] vector.
        self.norm.forward(&global_avg_pool(&x, ctx), ctx)
    }
    fn classifier(&self) -> &Fc {
        &self.head
    }
    /// The stem, four stages (each with the downsampling before it, as timm groups them) and
    /// the classifier (its LayerNorm and the linear layer) as the head.
    fn parts(&self) -> Vec<Part> {
        let mut parts = vec![Part::new("stem", &["features.0"])];
        for i in 0..self.stages.len() {
            let mut prefixes = vec![format!("features.{}", 2 * i + 1)];
            if i > 0 {
                prefixes.insert(0, format!("features.{}", 2 * i));
            }
            parts.push(Part {
                name: format!("stage{}", i + 1),
                prefixes,
            });
        }
        parts.push(Part::new("head", &["classifier"]));
        parts
    }
}
