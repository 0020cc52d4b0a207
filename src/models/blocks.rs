//! Building blocks of torchvision's mobile and modern families, under torchvision's names:
//! conv-norm-activation (`Conv2dNormActivation`), squeeze-and-excitation (Hu et al. 2018,
//! torchvision's `ops.SqueezeExcitation`), stochastic depth (Huang et al. 2016, `ops.
//! StochasticDepth` in "row" mode) and LayerNorm over channels (ConvNeXt's `LayerNorm2d`).

use super::Part;
use super::layers::{Bn, Conv, Ctx, LayerInfo, Op, mean_hw_keepdim, mul};
use tch::{Tensor, nn};

pub use super::layers::Act;

/// BatchNorm settings in PyTorch's convention (`momentum` is the weight of a new batch
/// statistic): each family keeps its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BnCfg {
    pub momentum: f64,
    pub eps: f64,
}

impl BnCfg {
    /// `nn.BatchNorm2d`'s defaults.
    pub const PYTORCH: BnCfg = BnCfg {
        momentum: 0.1,
        eps: 1e-5,
    };
    /// MobileNetV3's (TensorFlow's defaults).
    pub const TF: BnCfg = BnCfg {
        momentum: 0.01,
        eps: 1e-3,
    };
}

/// A convolution's geometry: square kernel, stride and groups; the padding is torchvision's
/// `(kernel - 1) / 2`.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub kernel: i64,
    pub stride: i64,
    pub groups: i64,
}

impl Geometry {
    /// A 1x1 convolution.
    pub const POINTWISE: Geometry = Geometry {
        kernel: 1,
        stride: 1,
        groups: 1,
    };
    /// A `kernel` x `kernel` convolution with `stride` over `groups` channel groups.
    pub fn new(kernel: i64, stride: i64, groups: i64) -> Self {
        Geometry {
            kernel,
            stride,
            groups,
        }
    }
}

/// Convolution (no bias), BatchNorm and an activation, under torchvision's
/// `Conv2dNormActivation` names (`.0` the convolution, `.1` the norm).
#[derive(Debug)]
pub struct ConvBnAct {
    conv: Conv,
    bn: Bn,
    act: Act,
}

impl ConvBnAct {
    /// `cin` -> `cout` channels under `p` (`p.0`, `p.1`).
    pub fn new(p: &nn::Path, (cin, cout): (i64, i64), g: Geometry, bn: BnCfg, act: Act) -> Self {
        let padding = (g.kernel - 1) / 2;
        let conv = Conv::grouped(p, "0", (cin, cout), (g.kernel, g.stride, padding), g.groups);
        ConvBnAct {
            conv,
            bn: Bn::with(p, "1", cout, bn.momentum, bn.eps),
            act,
        }
    }
    /// `[B, cin, H, W]` -> `[B, cout, H / stride, W / stride]`.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self.bn.forward(&self.conv.forward(x, ctx), ctx);
        self.act.apply(y, ctx)
    }
}

/// Squeeze-and-excitation (Hu et al. 2018): global average, a 1x1 convolution down to
/// `squeeze` channels (`fc1`), `act`, one back up (`fc2`), `gate`; the channels are rescaled by
/// the result. MobileNetV3 gates with hard-sigmoid, EfficientNet and RegNet with sigmoid.
#[derive(Debug)]
pub struct SqueezeExcitation {
    fc1: Conv,
    fc2: Conv,
    act: Act,
    gate: Act,
}

impl SqueezeExcitation {
    /// Rescales `channels` channels through a `squeeze`-wide bottleneck (`p.fc1`, `p.fc2`).
    pub fn new(p: &nn::Path, channels: i64, squeeze: i64, act: Act, gate: Act) -> Self {
        SqueezeExcitation {
            fc1: Conv::new(p, "fc1", (channels, squeeze), 1, 1, 0, true),
            fc2: Conv::new(p, "fc2", (squeeze, channels), 1, 1, 0, true),
            act,
            gate,
        }
    }
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let s = self
            .act
            .apply(self.fc1.forward(&mean_hw_keepdim(x, ctx), ctx), ctx);
        mul(x, &self.gate.apply(self.fc2.forward(&s, ctx), ctx), ctx)
    }
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, never more
/// than 10% below `v`.
pub fn make_divisible(v: f64) -> i64 {
    let mut out = (8.0f64).max(((v + 4.0) / 8.0).floor() * 8.0);
    if out < 0.9 * v {
        out += 8.0;
    }
    out as i64
}

/// Stochastic depth in "row" mode (torchvision's `stochastic_depth`): in training, each
/// example's residual branch `x` `[B, ...]` is dropped with probability `p` and the kept ones
/// are scaled by 1 / (1 - p); in evaluation (or with `p` = 0) `x` itself.
///
/// # Panics
/// `p` outside [0, 1]: the families set it from constants, never from input.
pub fn stochastic_depth(x: Tensor, p: f64, ctx: &Ctx) -> Tensor {
    assert!((0.0..=1.0).contains(&p), "stochastic depth probability {p}");
    if !ctx.train || p == 0.0 {
        return x;
    }
    let survival = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let mut keep = Tensor::empty(shape.as_slice(), (x.kind(), x.device()));
    let keep = keep.bernoulli_float_(survival);
    if survival > 0.0 {
        // Scaling the [B, 1, 1, 1] mask, not the branch: one pass over the activations.
        x * (keep / survival)
    } else {
        x * keep
    }
}

/// LayerNorm over the channels of an NCHW tensor at every position (ConvNeXt's `LayerNorm2d`;
/// with `over_last` false) or over the last dimension of an NHWC tensor (ConvNeXt's block
/// norm, `nn.LayerNorm`); weight 1, bias 0 at first.
#[derive(Debug)]
pub struct LayerNorm {
    pub name: String,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    over_last: bool,
}

impl LayerNorm {
    /// Normalises dimension 1 of an NCHW tensor.
    pub fn over_channels(p: &nn::Path, name: &str, c: i64, eps: f64) -> Self {
        Self::new(p, name, c, eps, false)
    }
    /// Normalises the last dimension.
    pub fn over_last(p: &nn::Path, name: &str, c: i64, eps: f64) -> Self {
        Self::new(p, name, c, eps, true)
    }
    fn new(p: &nn::Path, name: &str, c: i64, eps: f64, over_last: bool) -> Self {
        let q = p / name;
        LayerNorm {
            name: p.path(name),
            weight: q.var("weight", &[c], nn::Init::Const(1.0)),
            bias: q.var("bias", &[c], nn::Init::Const(0.0)),
            eps,
            over_last,
        }
    }
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let c = self.weight.size()[0];
        let norm =
            |t: &Tensor| t.layer_norm([c], Some(&self.weight), Some(&self.bias), self.eps, true);
        let y = if self.over_last {
            norm(x)
        } else {
            norm(&x.permute([0, 2, 3, 1])).permute([0, 3, 1, 2])
        };
        if ctx.is_recording() {
            let op = Op::LayerNorm {
                weight: self.weight.shallow_clone(),
                bias: self.bias.shallow_clone(),
                eps: self.eps,
                channels: !self.over_last,
            };
            ctx.op(op, &[x], &y);
        }
        ctx.record(|| LayerInfo {
            name: self.name.clone(),
            kind: "layernorm",
            output: y.size(),
            params: 2 * c,
            flops: 5 * y.size()[1..].iter().product::<i64>(),
            dense_params: None,
            window: None,
        });
        y
    }
}

/// Normal initialisation with mean 0 and standard deviation `std` (torchvision's linear layers
/// in VGG, MobileNet and RegNet: 0.01).
pub fn normal(std: f64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// A learnable per-channel scale `[C, 1, 1]` of a residual branch (ConvNeXt's `layer_scale`,
/// CaiT's LayerScale), `init` at first (1e-6 in ConvNeXt).
pub fn layer_scale(p: &nn::Path, name: &str, c: i64, init: f64) -> Tensor {
    p.var(name, &[c, 1, 1], nn::Init::Const(init))
}

/// Runs the blocks of each stage in order, reporting each stage's output to `ctx` as
/// `{name}{i}` from 1 (`stage1`, `block2`): the body of the staged families.
pub fn run_stages<B>(
    stages: &[Vec<B>],
    mut x: Tensor,
    name: &str,
    ctx: &Ctx,
    forward: impl Fn(&B, &Tensor, &Ctx) -> Tensor,
) -> Tensor {
    for (i, stage) in stages.iter().enumerate() {
        for block in stage {
            x = forward(block, &x, ctx);
        }
        ctx.stage(&format!("{name}{}", i + 1), &x);
    }
    x
}

/// One part per stage, `{name}{i}` owning `{module}{i}` (`stage1` owns `features.1`).
pub fn stage_parts(count: usize, name: &str, module: impl Fn(usize) -> String) -> Vec<Part> {
    (1..=count)
        .map(|i| Part {
            name: format!("{name}{i}"),
            prefixes: vec![module(i)],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stochastic_depth_drops_whole_examples_and_rescales_the_rest() {
        tch::manual_seed(0);
        let x = Tensor::ones([1000, 2, 3, 3], (tch::Kind::Float, tch::Device::Cpu));
        let y = stochastic_depth(x.shallow_clone(), 0.25, &Ctx::train()).view([1000, -1]);
        let (lo, hi) = (y.amin(1, false), y.amax(1, false));
        assert!(lo.equal(&hi), "an example was partly dropped");
        let kept = hi.gt(0.0).to_kind(tch::Kind::Float);
        let expected = &kept * (4.0 / 3.0);
        assert!(
            hi.allclose(&expected, 1e-6, 1e-6, false),
            "kept rows scaled by 1/(1-p)"
        );
        // 750 expected; the binomial standard deviation is 13.7.
        let n = kept.sum(tch::Kind::Float).double_value(&[]);
        assert!((700.0..=800.0).contains(&n), "{n} kept");
        let eval = stochastic_depth(x.shallow_clone(), 0.25, &Ctx::eval());
        assert!(eval.equal(&x));
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        // torchvision's _make_divisible(v, 8) for v = 4, 18, 60, 144 (printed by torchvision
        // 0.26.0): 18 would round to 16, more than 10% below, so it becomes 24.
        assert_eq!(make_divisible(4.0), 8);
        assert_eq!(make_divisible(18.0), 24);
        assert_eq!(make_divisible(60.0), 64);
        assert_eq!(make_divisible(144.0), 144);
    }
}
