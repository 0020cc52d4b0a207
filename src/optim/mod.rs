//! Optimisers written on tensors (so their state can be checkpointed and resumed exactly, and
//! every parameter can carry its own learning-rate scale), and learning-rate schedules.

pub mod schedule;

pub use schedule::{Schedule, ScheduleKind};

use serde::{Deserialize, Serialize};
use tch::{Tensor, nn};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// `sgd`, `adamw` or `lars` (SGD with a layer-wise trust ratio, for large batches).
    pub name: OptimizerKind,
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// SGD: L2 added to the gradient (PyTorch's form); AdamW: decoupled. Not applied to
    /// per-channel parameters (BatchNorm, biases, layer scale) unless `decay_1d`.
    pub weight_decay: f64,
    /// SGD/LARS: `weight_decay` is the shrink of every weight per step at the schedule's full
    /// rate, the same whatever the base rate and each parameter's rate scale (airbench's
    /// decoupled hyperparameters: its decay term `wd / (lr * scale) * w` still enters the
    /// momentum buffer, so tuning the rate leaves the regularisation alone).
    pub decoupled_decay: bool,
    /// Also decay 1-D parameters: BatchNorm shifts and biases (airbench does).
    pub decay_1d: bool,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Learning-rate multiplier of BatchNorm shifts (airbench: 64); applied by the trainer,
    /// which knows the BatchNorm layers.
    pub bn_bias_lr_mult: f64,
    /// Lookahead/EMA every N steps (0: off) with this base decay per step (airbench: 5, 0.95).
    pub lookahead_every: usize,
    pub lookahead_decay: f64,
    /// LARS trust coefficient: each weight's step is scaled to `trust * ||w|| / ||g + wd w||`
    /// of the learning rate (You et al. 2017).
    pub trust: f64,
}

/// The update rule (`optim.name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (PyTorch's `torch.optim.SGD`, Nesterov optional).
    Sgd,
    /// Adam with decoupled weight decay (Loshchilov & Hutter 2019; `torch.optim.AdamW`).
    Adamw,
    /// SGD with a layer-wise trust ratio (You et al. 2017), for batches of 1024 and more.
    Lars,
}

impl OptimizerKind {
    /// State tensors kept per parameter (momentum; AdamW's two moments).
    fn slots(self) -> usize {
        match self {
            OptimizerKind::Sgd | OptimizerKind::Lars => 1,
            OptimizerKind::Adamw => 2,
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adamw => "adamw",
            OptimizerKind::Lars => "lars",
        })
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            name: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            decoupled_decay: false,
            decay_1d: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            trust: 0.001,
            bn_bias_lr_mult: 1.0,
            lookahead_every: 0,
            lookahead_decay: 0.95,
        }
    }
}

/// Whether a tensor is one number per channel: 1-D (BatchNorm, LayerNorm, biases) or shaped
/// `[C, 1, 1]` to broadcast over an image (ConvNeXt's layer scale, which timm keeps 1-D as
/// `gamma` and so does not decay, while torchvision's reference recipe does); these are not
/// decayed unless asked.
fn is_per_channel(t: &Tensor) -> bool {
    let s = t.size();
    s.len() <= 1 || (s.len() == 3 && s[1..] == [1, 1])
}

/// One optimised tensor.
#[derive(Debug)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
    /// Multiplies the schedule's learning rate (discriminative rates, frozen = 0).
    pub lr_scale: f64,
    /// SGD: [momentum]; AdamW: [m, v].
    state: Vec<Tensor>,
}

#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimConfig,
    pub params: Vec<Param>,
    pub steps: i64,
    /// airbench's lookahead/EMA, when `lookahead_every > 0`.
    pub lookahead: Option<Lookahead>,
}

/// Lookahead with an EMA of the weights (airbench): every `every` steps the slow copy moves
/// towards the weights, `slow = decay slow + (1 - decay) fast`, and the weights jump back to it;
/// `decay = base^every (t / T)^3` grows from 0 to base^every over the run, so early training is
/// plain SGD and the end averages. Covers every float tensor of the model, BatchNorm statistics
/// included; [`Lookahead::finish`] leaves the final weights equal to the slow copy.
#[derive(Debug)]
pub struct Lookahead {
    pub every: usize,
    pub base: f64,
    /// (fast tensor, slow copy), sorted by name.
    pairs: Vec<(String, Tensor, Tensor)>,
}

impl Lookahead {
    pub fn new(vs: &nn::VarStore, every: usize, base: f64) -> Self {
        let pairs = sorted_variables(vs, Tensor::is_floating_point)
            .into_iter()
            .map(|(n, t)| {
                let slow = tch::no_grad(|| t.detach().copy());
                (n, t, slow)
            })
            .collect();
        Lookahead { every, base, pairs }
    }

    fn update(&mut self, decay: f64) {
        tch::no_grad(|| {
            for (_, fast, slow) in &mut self.pairs {
                let _ = slow.lerp_(&*fast, 1.0 - decay);
                fast.copy_(slow);
            }
        });
    }

    /// After optimiser step `step` (1-based) of `total`.
    pub fn after_step(&mut self, step: i64, total: i64) {
        if self.every > 0 && step % self.every as i64 == 0 {
            let progress = (step as f64 / total.max(1) as f64).min(1.0);
            self.update(self.base.powi(self.every as i32) * progress.powi(3));
        }
    }

    /// The weights become the slow copy (the end of training).
    pub fn finish(&mut self) {
        self.update(1.0);
    }
}

/// The variables of `vs` that `keep` accepts, sorted by name (a stable order for checkpoints).
fn sorted_variables(vs: &nn::VarStore, keep: impl Fn(&Tensor) -> bool) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| keep(t))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimiser state: {0}")]
    State(String),
}

impl Optimizer {
    /// Optimises every trainable variable of `vs`, sorted by name for a stable order.
    pub fn new(vs: &nn::VarStore, config: &OptimConfig) -> Result<Self, OptimError> {
        let slots = config.name.slots();
        let params = sorted_variables(vs, Tensor::requires_grad)
            .into_iter()
            .map(|(name, tensor)| Param {
                decay: config.decay_1d || !is_per_channel(&tensor),
                state: (0..slots).map(|_| tensor.zeros_like()).collect(),
                name,
                tensor,
                lr_scale: 1.0,
            })
            .collect();
        let lookahead = (config.lookahead_every > 0)
            .then(|| Lookahead::new(vs, config.lookahead_every, config.lookahead_decay));
        Ok(Optimizer {
            config: config.clone(),
            params,
            steps: 0,
            lookahead,
        })
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update with learning rate `lr` (times each parameter's scale).
    pub fn step(&mut self, lr: f64) {
        self.steps += 1;
        let c = self.config.clone();
        tch::no_grad(|| {
            for p in &mut self.params {
                let grad = p.tensor.grad();
                if !grad.defined() || p.lr_scale == 0.0 {
                    continue;
                }
                let wd = match (p.decay, c.decoupled_decay) {
                    (false, _) => 0.0,
                    (true, false) => c.weight_decay,
                    // A zero base rate means no step at all, decay included.
                    (true, true) if c.lr == 0.0 => 0.0,
                    (true, true) => c.weight_decay / (c.lr * p.lr_scale),
                };
                let lr = lr * p.lr_scale;
                match c.name {
                    OptimizerKind::Adamw => adamw(p, &grad, lr, wd, &c, self.steps),
                    OptimizerKind::Lars => lars(p, &grad, lr, wd, &c),
                    OptimizerKind::Sgd => sgd(p, &grad, lr, wd, &c),
                }
            }
        });
    }

    /// State tensors for a checkpoint, named `<param>.<slot>`, plus the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> =
            self.params
                .iter()
                .flat_map(|p| {
                    p.state.iter().enumerate().map(move |(i, t)| {
                        (format!("{}.{i}", p.name), t.to_device(tch::Device::Cpu))
                    })
                })
                .collect();
        out.push(("__steps".into(), Tensor::from_slice(&[self.steps])));
        if let Some(l) = &self.lookahead {
            out.extend(
                l.pairs.iter().map(|(n, _, slow)| {
                    (format!("lookahead.{n}"), slow.to_device(tch::Device::Cpu))
                }),
            );
        }
        out
    }

    /// Restores state written by `state_tensors`.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), OptimError> {
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        for p in &mut self.params {
            for (i, slot) in p.state.iter_mut().enumerate() {
                let key = format!("{}.{i}", p.name);
                let t = find(&key).ok_or_else(|| OptimError::State(format!("missing {key}")))?;
                if t.size() != slot.size() {
                    return Err(OptimError::State(format!(
                        "{key} has shape {:?}, expected {:?}",
                        t.size(),
                        slot.size()
                    )));
                }
                tch::no_grad(|| slot.copy_(t));
            }
        }
        let steps = find("__steps").ok_or_else(|| OptimError::State("missing __steps".into()))?;
        self.steps = match (steps.size().as_slice(), steps.kind()) {
            ([1], tch::Kind::Int64) => steps.int64_value(&[0]),
            (shape, kind) => {
                return Err(OptimError::State(format!(
                    "__steps is a {kind:?} tensor of shape {shape:?}, expected one int64"
                )));
            }
        };
        if self.steps < 0 {
            return Err(OptimError::State(format!("__steps is {}", self.steps)));
        }
        if let Some(l) = &mut self.lookahead {
            for (n, _, slow) in &mut l.pairs {
                let key = format!("lookahead.{n}");
                let t = find(&key).ok_or_else(|| OptimError::State(format!("missing {key}")))?;
                if t.size() != slow.size() {
                    return Err(OptimError::State(format!(
                        "{key} has shape {:?}, expected {:?}",
                        t.size(),
                        slow.size()
                    )));
                }
                tch::no_grad(|| slow.copy_(t));
            }
        }
        Ok(())
    }
}

/// PyTorch's SGD: g += wd p; buf = momentum buf + g; step along g + momentum buf (Nesterov)
/// or buf.
fn sgd(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, c: &OptimConfig) {
    let g = with_decay(p, grad, wd);
    momentum_step(p, g, lr, c);
}

fn with_decay(p: &Param, grad: &Tensor, wd: f64) -> Tensor {
    if wd != 0.0 {
        grad + &p.tensor * wd
    } else {
        grad.shallow_clone()
    }
}

/// LARS as SupCon's and SimCLR's reference code uses it: the decayed gradient of every weight
/// is scaled by `trust ||w|| / ||g + wd w||` (1 where either norm is 0) before momentum;
/// BatchNorm parameters and biases (1-D, `decay == false`) are neither decayed nor scaled.
/// The ratio stays a tensor, so the step never waits for the device.
fn lars(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, c: &OptimConfig) {
    let g = with_decay(p, grad, wd);
    let g = if p.decay {
        let (w_norm, g_norm) = (p.tensor.norm(), g.norm());
        let one = w_norm.ones_like();
        let ratio = (&w_norm * c.trust / &g_norm).nan_to_num(1.0, 1.0, 1.0);
        let ratio = ratio.where_self(&w_norm.gt(0.0).logical_and(&g_norm.gt(0.0)), &one);
        g * ratio
    } else {
        g
    };
    momentum_step(p, g, lr, c);
}

fn momentum_step(p: &mut Param, mut g: Tensor, lr: f64, c: &OptimConfig) {
    if c.momentum != 0.0 {
        let buf = &mut p.state[0];
        let _ = buf.g_mul_scalar_(c.momentum).g_add_(&g);
        g = if c.nesterov {
            g + &*buf * c.momentum
        } else {
            buf.shallow_clone()
        };
    }
    let _ = p.tensor.g_add_(&(g * -lr));
}

/// AdamW (Loshchilov and Hutter): decoupled decay, bias-corrected moments.
fn adamw(p: &mut Param, grad: &Tensor, lr: f64, wd: f64, c: &OptimConfig, t: i64) {
    if wd != 0.0 {
        let _ = p.tensor.g_mul_scalar_(1.0 - lr * wd);
    }
    let _ = p.state[0]
        .g_mul_scalar_(c.beta1)
        .g_add_(&(grad * (1.0 - c.beta1)));
    let _ = p.state[1]
        .g_mul_scalar_(c.beta2)
        .g_add_(&(grad * grad * (1.0 - c.beta2)));
    let bc1 = 1.0 - c.beta1.powi(t as i32);
    let bc2 = 1.0 - c.beta2.powi(t as i32);
    let denom = (&p.state[1] / bc2).sqrt() + c.eps;
    let _ = p.tensor.g_add_(&(&p.state[0] / denom * (-lr / bc1)));
}

#[cfg(test)]
mod tests {
    use super::is_per_channel;
    use tch::{Kind, Tensor};

    #[test]
    fn layer_scale_is_per_channel_like_biases_but_weights_are_not() {
        let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
        assert!(is_per_channel(&t(&[96])));
        assert!(is_per_channel(&t(&[96, 1, 1])));
        assert!(!is_per_channel(&t(&[96, 1, 7, 7])));
        assert!(!is_per_channel(&t(&[10, 512])));
        // A 1x1 convolution of one input channel per group is a weight.
        assert!(!is_per_channel(&t(&[96, 1, 1, 1])));
        assert!(!is_per_channel(&t(&[10, 1])));
    }
}
