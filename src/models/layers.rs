//! Named layers that can report themselves: each forward call may record its output shape,
//! parameters and FLOPs into the context (for `convkit summary`) and stage outputs can be
//! captured (for inspection tools). The names are the state-dict keys' prefixes.

use std::cell::RefCell;
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// One traced layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerInfo {
    pub name: String,
    pub kind: &'static str,
    pub output: Vec<i64>,
    pub params: i64,
    /// Multiply-adds counted as 2 FLOPs.
    pub flops: i64,
    /// For convolutions: the parameters a fully connected layer with the same input and output
    /// sizes would need.
    pub dense_params: Option<i64>,
    /// Convolutions and pooling: (kernel, stride), for receptive fields.
    pub window: Option<(i64, i64)>,
}

/// How a forward pass runs: training or evaluation mode, optionally tracing layers or capturing
/// the output of every stage.
#[derive(Default)]
pub struct Ctx {
    pub train: bool,
    /// BatchNorm layers that run in eval mode even when training (frozen, `train_bn = false`).
    pub bn_eval: std::rc::Rc<[String]>,
    /// Synchronised BatchNorm of a data-parallel run: statistics over every rank's batch.
    pub bn_sync: Option<std::rc::Rc<BnSync>>,
    trace: Option<RefCell<Vec<LayerInfo>>>,
    stages: Option<RefCell<Vec<(String, Tensor)>>>,
    ops: Option<RefCell<Vec<Recorded>>>,
}

/// What one recorded operation computes (eval mode), with its parameters: enough to write it
/// in another runtime's terms (ONNX). Shapes are PyTorch's.
#[derive(Debug)]
pub enum Op {
    /// `weight` `[out, in / groups, k, k]`, square `stride` and `padding`.
    Conv {
        weight: Tensor,
        bias: Option<Tensor>,
        stride: i64,
        padding: i64,
        groups: i64,
    },
    /// Evaluation-mode BatchNorm over dimension 1.
    BatchNorm {
        weight: Tensor,
        bias: Tensor,
        mean: Tensor,
        var: Tensor,
        eps: f64,
    },
    /// `y = (x W^T + b) * scale` over the last dimension; `weight` `[out, in]`.
    Linear {
        weight: Tensor,
        bias: Option<Tensor>,
        scale: f64,
    },
    /// LayerNorm over dimension 1 (`channels`) or over the last dimension.
    LayerNorm {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
        channels: bool,
    },
    /// An activation, elementwise.
    Act(Act),
    /// Elementwise sum of two tensors, broadcasting.
    Add,
    /// Elementwise product of two tensors, broadcasting (`[B, C, H, W] * [B, C, 1, 1]`).
    Mul,
    /// The inputs joined along `axis`.
    Concat {
        axis: i64,
    },
    /// Mean over dimensions 2 and 3.
    MeanHw {
        keepdim: bool,
    },
    /// Maximum over dimensions 2 and 3.
    MaxHw {
        keepdim: bool,
    },
    MaxPool {
        kernel: i64,
        stride: i64,
        padding: i64,
    },
    AvgPool {
        kernel: i64,
        stride: i64,
    },
    /// Adaptive average pooling to `size` x `size`.
    AdaptiveAvgPool {
        size: i64,
    },
    /// Flattens dimensions 1.. into one.
    Flatten,
    Permute(Vec<i64>),
    /// Every second row and column, and `extra` zero channels split around the input's
    /// (the parameter-free shortcut of He et al.'s CIFAR ResNets, option A).
    SubsamplePadChannels {
        extra: i64,
    },
}

impl Op {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "convolution",
            Op::BatchNorm { .. } => "BatchNorm",
            Op::Linear { .. } => "linear layer",
            Op::LayerNorm { .. } => "LayerNorm",
            Op::Act(_) => "activation",
            Op::Add => "addition",
            Op::Mul => "multiplication",
            Op::Concat { .. } => "concatenation",
            Op::MeanHw { .. } => "spatial mean",
            Op::MaxHw { .. } => "spatial maximum",
            Op::MaxPool { .. } => "max pooling",
            Op::AvgPool { .. } => "average pooling",
            Op::AdaptiveAvgPool { .. } => "adaptive average pooling",
            Op::Flatten => "flatten",
            Op::Permute(_) => "permutation",
            Op::SubsamplePadChannels { .. } => "subsampling shortcut",
        }
    }
}

/// An operation of a forward pass with the tensors it read and the one it made.
#[derive(Debug)]
pub struct Recorded {
    pub op: Op,
    pub inputs: Vec<Tensor>,
    pub output: Tensor,
}

/// An activation function, as the layers name them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    Relu,
    /// min(max(x, 0), 6): MobileNetV2.
    Relu6,
    /// x * relu6(x + 3) / 6: MobileNetV3 (Howard et al. 2019).
    HardSwish,
    /// x * sigmoid(x) (also called swish): EfficientNet.
    Silu,
    /// relu6(x + 3) / 6: MobileNetV3's squeeze-and-excitation gate.
    HardSigmoid,
    Sigmoid,
    /// The exact (erf) GELU: ConvNeXt, airbench.
    Gelu,
    None,
}

impl Act {
    /// The activation of `x`, elementwise.
    pub fn apply(self, x: Tensor, ctx: &Ctx) -> Tensor {
        let y = match self {
            Act::Relu => x.relu(),
            Act::Relu6 => x.relu6(),
            Act::HardSwish => x.hardswish(),
            Act::Silu => x.silu(),
            Act::HardSigmoid => x.hardsigmoid(),
            Act::Sigmoid => x.sigmoid(),
            Act::Gelu => x.gelu("none"),
            Act::None => return x,
        };
        ctx.op(Op::Act(self), &[&x], &y);
        y
    }
}

impl Ctx {
    pub fn train() -> Self {
        Ctx {
            train: true,
            ..Default::default()
        }
    }
    pub fn eval() -> Self {
        Ctx::default()
    }
    /// Training mode with the listed BatchNorm layers held in eval mode.
    pub fn train_with_bn_eval(bn_eval: std::rc::Rc<[String]>) -> Self {
        Ctx {
            train: true,
            bn_eval,
            ..Default::default()
        }
    }
    /// The same context with synchronised BatchNorm (data-parallel training, `train.sync_bn`).
    pub fn with_bn_sync(mut self, sync: Option<std::rc::Rc<BnSync>>) -> Self {
        self.bn_sync = sync;
        self
    }
    pub fn tracing() -> Self {
        Ctx {
            trace: Some(RefCell::new(Vec::new())),
            ..Default::default()
        }
    }
    pub fn capturing() -> Self {
        Ctx {
            stages: Some(RefCell::new(Vec::new())),
            ..Default::default()
        }
    }
    pub fn record(&self, info: impl FnOnce() -> LayerInfo) {
        if let Some(t) = &self.trace {
            t.borrow_mut().push(info());
        }
    }
    /// Marks the output of a stage (stem, layer1, ...); kept only when capturing.
    pub fn stage(&self, name: &str, x: &Tensor) {
        if let Some(s) = &self.stages {
            s.borrow_mut().push((name.to_string(), x.shallow_clone()));
        }
    }
    pub fn take_trace(&self) -> Vec<LayerInfo> {
        self.trace.as_ref().map(|t| t.take()).unwrap_or_default()
    }
    pub fn take_stages(&self) -> Vec<(String, Tensor)> {
        self.stages.as_ref().map(|t| t.take()).unwrap_or_default()
    }
    /// Evaluation mode, recording every operation with its inputs and output (for export).
    pub fn recording() -> Self {
        Ctx {
            ops: Some(RefCell::new(Vec::new())),
            ..Default::default()
        }
    }
    /// Records `op` when recording. The export finds each input among earlier outputs by its
    /// data pointer, sizes and strides, so two rules hold for forward passes: no tensor is
    /// changed in place after it was recorded, and an operation that returns its input as it
    /// is (dropout and stochastic depth in evaluation) need not be recorded.
    pub fn op(&self, op: Op, inputs: &[&Tensor], output: &Tensor) {
        if let Some(ops) = &self.ops {
            ops.borrow_mut().push(Recorded {
                op,
                inputs: inputs.iter().map(|t| t.shallow_clone()).collect(),
                output: output.shallow_clone(),
            });
        }
    }
    /// Whether operations are being recorded ([`Ctx::recording`]).
    pub fn is_recording(&self) -> bool {
        self.ops.is_some()
    }
    /// The operations recorded so far, in order, leaving none.
    pub fn take_ops(&self) -> Vec<Recorded> {
        self.ops.as_ref().map(|t| t.take()).unwrap_or_default()
    }
}

fn numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

/// A 2-D convolution with its geometry kept for reporting.
#[derive(Debug)]
pub struct Conv {
    pub name: String,
    pub inner: nn::Conv2D,
    pub kernel: i64,
    pub stride: i64,
    pub padding: i64,
    pub groups: i64,
}

impl Conv {
    /// torchvision's initialisation: Kaiming normal, fan-out, ReLU gain.
    pub fn new(
        p: &nn::Path,
        name: &str,
        channels: (i64, i64),
        kernel: i64,
        stride: i64,
        padding: i64,
        bias: bool,
    ) -> Self {
        let init = nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        Self::with_init(p, name, channels, (kernel, stride, padding), bias, init)
    }

    /// A grouped convolution (ResNeXt's cardinality): `groups` divides both channel counts;
    /// torchvision's initialisation.
    pub fn grouped(
        p: &nn::Path,
        name: &str,
        channels: (i64, i64),
        geometry: (i64, i64, i64),
        groups: i64,
    ) -> Self {
        let init = nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        Self::with_groups(p, name, channels, geometry, (false, groups), init)
    }

    /// PyTorch's own `nn.Conv2d` initialisation (Kaiming uniform with a = sqrt(5): weights and
    /// bias uniform in +-1/sqrt(fan_in)), which airbench keeps. Behind BatchNorm only the
    /// weights' direction matters, but their size sets the effective step: torchvision's init
    /// makes airnet's weights 1.7-2.4x larger, so each SGD step turns them less.
    pub fn pytorch_default(
        p: &nn::Path,
        name: &str,
        (cin, cout): (i64, i64),
        (kernel, stride, padding): (i64, i64, i64),
        bias: bool,
    ) -> Self {
        let init = nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Uniform,
            fan: nn::init::FanInOut::FanIn,
            non_linearity: nn::init::NonLinearity::ExplicitGain(1.0 / 3f64.sqrt()),
        };
        let mut conv = Self::with_init(p, name, (cin, cout), (kernel, stride, padding), bias, init);
        if let Some(b) = &mut conv.inner.bs {
            let bound = 1.0 / ((cin * kernel * kernel) as f64).sqrt();
            tch::no_grad(|| {
                let _ = b.uniform_(-bound, bound);
            });
        }
        conv
    }

    fn with_init(
        p: &nn::Path,
        name: &str,
        channels: (i64, i64),
        geometry: (i64, i64, i64),
        bias: bool,
        ws_init: nn::Init,
    ) -> Self {
        Self::with_groups(p, name, channels, geometry, (bias, 1), ws_init)
    }

    /// Any convolution: bias, groups and the weights' initialisation given (biases start at 0).
    pub fn with_groups(
        p: &nn::Path,
        name: &str,
        (cin, cout): (i64, i64),
        (kernel, stride, padding): (i64, i64, i64),
        (bias, groups): (bool, i64),
        ws_init: nn::Init,
    ) -> Self {
        let cfg = nn::ConvConfig {
            stride,
            padding,
            bias,
            groups,
            ws_init,
            ..Default::default()
        };
        Conv {
            name: p.path(name),
            inner: nn::conv2d(p / name, cin, cout, kernel, cfg),
            kernel,
            stride,
            padding,
            groups,
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = self.inner.forward(x);
        if ctx.is_recording() {
            let op = Op::Conv {
                weight: self.inner.ws.shallow_clone(),
                bias: self.inner.bs.as_ref().map(Tensor::shallow_clone),
                stride: self.stride,
                padding: self.padding,
                groups: self.groups,
            };
            ctx.op(op, &[x], &y);
        }
        ctx.record(|| {
            let (ins, outs) = (x.size(), y.size());
            let params = self.inner.ws.numel() as i64
                + self.inner.bs.as_ref().map_or(0, |b| b.numel() as i64);
            let w = self.inner.ws.size();
            let macs = numel(&outs[1..]) * w[1] * w[2] * w[3];
            let (din, dout) = (numel(&ins[1..]), numel(&outs[1..]));
            LayerInfo {
                name: self.name.clone(),
                kind: "conv",
                output: outs,
                params,
                flops: 2 * macs,
                dense_params: Some(din * dout + dout),
                window: Some((self.kernel, self.stride)),
            }
        });
        y
    }
}

/// BatchNorm with PyTorch's defaults (weight 1, bias 0) and torchvision's key names.
#[derive(Debug)]
pub struct Bn {
    pub name: String,
    pub inner: nn::BatchNorm,
    /// PyTorch's convention: the weight of a new batch statistic in the running one.
    momentum: f64,
    eps: f64,
}

impl Bn {
    pub fn new(p: &nn::Path, name: &str, c: i64) -> Self {
        Self::with(p, name, c, 0.1, 1e-5)
    }
    /// `momentum` in PyTorch's convention (weight of the new batch statistic).
    pub fn with(p: &nn::Path, name: &str, c: i64, momentum: f64, eps: f64) -> Self {
        let cfg = nn::BatchNormConfig {
            momentum,
            eps,
            ws_init: nn::Init::Const(1.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        Bn {
            name: p.path(name),
            inner: nn::batch_norm2d(p / name, c, cfg),
            momentum,
            eps,
        }
    }
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let train = ctx.train && !ctx.bn_eval.contains(&self.name);
        let y = match (&ctx.bn_sync, train) {
            (Some(sync), true) => self.forward_synced(x, sync),
            _ => self.inner.forward_t(x, train),
        };
        if ctx.is_recording() {
            let op = Op::BatchNorm {
                weight: self
                    .inner
                    .ws
                    .as_ref()
                    .expect("affine BatchNorm")
                    .shallow_clone(),
                bias: self
                    .inner
                    .bs
                    .as_ref()
                    .expect("affine BatchNorm")
                    .shallow_clone(),
                mean: self.inner.running_mean.shallow_clone(),
                var: self.inner.running_var.shallow_clone(),
                eps: self.eps,
            };
            ctx.op(op, &[x], &y);
        }
        ctx.record(|| LayerInfo {
            name: self.name.clone(),
            kind: "batchnorm",
            output: y.size(),
            params: 2 * x.size()[1],
            flops: 2 * numel(&y.size()[1..]),
            dense_params: None,
            window: None,
        });
        y
    }
}

/// Sums a tensor over the ranks, differentiably, or says why it could not.
pub type Reduce = dyn Fn(&Tensor) -> Result<Tensor, String>;

/// A differentiable sum over the ranks of a data-parallel run (its backward sums gradients over
/// the ranks too), supplied by the engine: models know nothing of processes. A failed reduction
/// is kept in `error` for the engine to report after the step, since a layer's forward cannot
/// fail.
pub struct BnSync {
    pub reduce: Box<Reduce>,
    pub error: RefCell<Option<String>>,
}

impl std::fmt::Debug for BnSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BnSync")
    }
}

impl Bn {
    /// PyTorch's SyncBatchNorm: per-channel sum, sum of squares and count summed over the
    /// ranks, the global mean and variance normalising this rank's `x` `[N, C, H, W]`, the
    /// running statistics updated from them (unbiased variance), and in backward the gradients
    /// of the sums summed over the ranks, so each rank's gradient is its exact share of the
    /// global batch's.
    fn forward_synced(&self, x: &Tensor, sync: &BnSync) -> Tensor {
        let c = x.size()[1];
        let dims = [0i64, 2, 3];
        let xf = x.to_kind(Kind::Float);
        let s1 = xf.sum_dim_intlist(dims.as_slice(), false, Kind::Float);
        let s2 = (&xf * &xf).sum_dim_intlist(dims.as_slice(), false, Kind::Float);
        let count = s1.ones_like().narrow(0, 0, 1) * (x.numel() as i64 / c) as f64;
        let local = Tensor::cat(&[&s1, &s2, &count], 0);
        let global = match (sync.reduce)(&local) {
            Ok(g) => g,
            Err(e) => {
                sync.error.borrow_mut().get_or_insert(e);
                local
            }
        };
        let n = global.narrow(0, 2 * c, 1).detach();
        let mean = global.narrow(0, 0, c) / &n;
        let var = (global.narrow(0, c, c) / &n - &mean * &mean).clamp_min(0.0);
        let bn = &self.inner;
        tch::no_grad(|| {
            let m = self.momentum;
            let unbiased = var.detach() * (&n / (&n - 1.0).clamp_min(1.0));
            let mut rm = bn.running_mean.shallow_clone();
            let mut rv = bn.running_var.shallow_clone();
            rm.copy_(&(&rm * (1.0 - m) + mean.detach() * m));
            rv.copy_(&(&rv * (1.0 - m) + unbiased * m));
        });
        let shape = [1, c, 1, 1];
        let mut y = (xf - mean.view(shape)) / (var + self.eps).sqrt().view(shape);
        if let Some(w) = &bn.ws {
            y *= w.view(shape);
        }
        if let Some(b) = &bn.bs {
            y += b.view(shape);
        }
        y.to_kind(x.kind())
    }
}

/// A fully connected layer, optionally followed by a constant scale (airbench's 1/9 head).
#[derive(Debug)]
pub struct Fc {
    pub name: String,
    pub inner: nn::Linear,
    pub scale: f64,
}

impl Fc {
    pub fn new(p: &nn::Path, name: &str, din: i64, dout: i64, bias: bool) -> Self {
        let cfg = nn::LinearConfig {
            bias,
            ..Default::default()
        };
        Fc {
            name: p.path(name),
            inner: nn::linear(p / name, din, dout, cfg),
            scale: 1.0,
        }
    }
    /// A linear layer whose weights start from `ws_init` and whose bias starts at 0, as
    /// torchvision initialises VGG, MobileNet, EfficientNet, RegNet and ConvNeXt.
    pub fn with_init(p: &nn::Path, name: &str, din: i64, dout: i64, ws_init: nn::Init) -> Self {
        let cfg = nn::LinearConfig {
            ws_init,
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Fc {
            name: p.path(name),
            inner: nn::linear(p / name, din, dout, cfg),
            scale: 1.0,
        }
    }
    pub fn in_features(&self) -> i64 {
        self.inner.ws.size()[1]
    }
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let mut y = self.inner.forward(x);
        if self.scale != 1.0 {
            y *= self.scale;
        }
        if ctx.is_recording() {
            let op = Op::Linear {
                weight: self.inner.ws.shallow_clone(),
                bias: self.inner.bs.as_ref().map(Tensor::shallow_clone),
                scale: self.scale,
            };
            ctx.op(op, &[x], &y);
        }
        ctx.record(|| {
            let w = self.inner.ws.size();
            LayerInfo {
                name: self.name.clone(),
                kind: "linear",
                output: y.size(),
                params: w[0] * w[1] + self.inner.bs.as_ref().map_or(0, |b| b.numel() as i64),
                // Per example: a layer applied at every position (ConvNeXt's pointwise
                // linear layers on [B, H, W, C]) costs that many times more.
                flops: 2 * w[1] * numel(&y.size()[1..]),
                dense_params: None,
                window: None,
            }
        });
        y
    }
}

/// Max pooling, recorded for the summary.
pub fn max_pool(x: &Tensor, k: i64, s: i64, pad: i64, name: &str, ctx: &Ctx) -> Tensor {
    let y = x.max_pool2d([k, k], [s, s], [pad, pad], [1, 1], false);
    let op = Op::MaxPool {
        kernel: k,
        stride: s,
        padding: pad,
    };
    ctx.op(op, &[x], &y);
    ctx.record(|| LayerInfo {
        name: name.to_string(),
        kind: "maxpool",
        output: y.size(),
        params: 0,
        flops: 0,
        dense_params: None,
        window: Some((k, s)),
    });
    y
}

/// Global average pooling to a `[B, C]` feature vector.
pub fn global_avg_pool(x: &Tensor, ctx: &Ctx) -> Tensor {
    let y = x.mean_dim([2i64, 3].as_slice(), false, x.kind());
    ctx.op(Op::MeanHw { keepdim: false }, &[x], &y);
    record_pool(y, "avgpool", ctx)
}

/// Global max pooling to a `[B, C]` feature vector.
pub fn global_max_pool(x: &Tensor, ctx: &Ctx) -> Tensor {
    let y = x.amax([2i64, 3].as_slice(), false);
    ctx.op(Op::MaxHw { keepdim: false }, &[x], &y);
    record_pool(y, "maxpool", ctx)
}

fn record_pool(y: Tensor, name: &str, ctx: &Ctx) -> Tensor {
    ctx.record(|| LayerInfo {
        name: name.to_string(),
        kind: "pool",
        output: y.size(),
        params: 0,
        flops: 0,
        dense_params: None,
        window: None,
    });
    y
}

/// `a + b` (broadcasting), recorded.
pub fn add(a: &Tensor, b: &Tensor, ctx: &Ctx) -> Tensor {
    let y = a + b;
    ctx.op(Op::Add, &[a, b], &y);
    y
}

/// `a * b` (broadcasting), recorded.
pub fn mul(a: &Tensor, b: &Tensor, ctx: &Ctx) -> Tensor {
    let y = a * b;
    ctx.op(Op::Mul, &[a, b], &y);
    y
}

/// The tensors joined along `axis`, recorded.
pub fn cat(xs: &[&Tensor], axis: i64, ctx: &Ctx) -> Tensor {
    let y = Tensor::cat(xs, axis);
    ctx.op(Op::Concat { axis }, xs, &y);
    y
}

/// The mean over the spatial dimensions, kept as 1 x 1 (squeeze-and-excitation), recorded.
pub fn mean_hw_keepdim(x: &Tensor, ctx: &Ctx) -> Tensor {
    let y = x.mean_dim([2i64, 3].as_slice(), true, x.kind());
    ctx.op(Op::MeanHw { keepdim: true }, &[x], &y);
    y
}

/// `k` x `k` average pooling with stride `s`, no padding, recorded.
pub fn avg_pool(x: &Tensor, k: i64, s: i64, ctx: &Ctx) -> Tensor {
    let y = x.avg_pool2d([k, k], [s, s], [0, 0], false, true, None::<i64>);
    ctx.op(
        Op::AvgPool {
            kernel: k,
            stride: s,
        },
        &[x],
        &y,
    );
    y
}

/// Adaptive average pooling to `size` x `size` (VGG's 7 x 7), recorded.
pub fn adaptive_avg_pool(x: &Tensor, size: i64, ctx: &Ctx) -> Tensor {
    let y = x.adaptive_avg_pool2d([size, size]);
    ctx.op(Op::AdaptiveAvgPool { size }, &[x], &y);
    y
}

/// Dimensions 1.. flattened into one, recorded.
pub fn flatten(x: &Tensor, ctx: &Ctx) -> Tensor {
    let y = x.flatten(1, -1);
    ctx.op(Op::Flatten, &[x], &y);
    y
}

/// The dimensions reordered, recorded.
pub fn permute(x: &Tensor, dims: &[i64], ctx: &Ctx) -> Tensor {
    let y = x.permute(dims);
    ctx.op(Op::Permute(dims.to_vec()), &[x], &y);
    y
}
