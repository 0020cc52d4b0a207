//! A linear classifier trained on fixed feature vectors (linear probes of frozen encoders):
//! features are standardised with training statistics, so one learning rate suits every
//! encoder, and trained with SGD and a cosine schedule in seconds.

use crate::data::loader;
use crate::optim::{OptimConfig, OptimError, Optimizer, Schedule, ScheduleKind};
use tch::{Kind, Reduction, Tensor, nn, nn::Module};

#[derive(Debug, Clone)]
pub struct LinearSpec {
    pub epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    /// L2 penalty on the weights.
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for LinearSpec {
    fn default() -> Self {
        LinearSpec {
            epochs: 30,
            lr: 0.1,
            batch_size: 256,
            weight_decay: 0.0,
            seed: 0,
        }
    }
}

pub struct LinearProbe {
    mean: Tensor,
    std: Tensor,
    linear: nn::Linear,
    _vs: nn::VarStore,
}

impl LinearProbe {
    /// Trains on `x` `[N, D]` and labels `y` `[N]` (same device).
    pub fn fit(
        x: &Tensor,
        y: &Tensor,
        classes: i64,
        spec: &LinearSpec,
    ) -> Result<Self, OptimError> {
        let device = x.device();
        let mean = x.mean_dim(0, true, Kind::Float);
        let std = x.std_dim(0, false, true) + 1e-6;
        let x = (x - &mean) / &std;
        // Zero initialisation: the problem is convex, and no global random state is touched, so
        // fits can run on several threads and stay reproducible.
        let vs = nn::VarStore::new(device);
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let linear = nn::linear(vs.root() / "fc", x.size()[1], classes, zero);
        let cfg = OptimConfig {
            lr: spec.lr,
            weight_decay: spec.weight_decay,
            nesterov: false,
            ..Default::default()
        };
        let mut optim = Optimizer::new(&vs, &cfg)?;
        let schedule = Schedule {
            kind: ScheduleKind::Cosine,
            ..Default::default()
        };
        let n = x.size()[0] as usize;
        // At least ~10 steps per epoch: with 100 images a batch of 256 would give the probe one
        // step per epoch and leave it far from converged.
        let batch = spec.batch_size.min((n / 10).max(16));
        let spe = loader::steps_per_epoch(n, batch, false);
        for epoch in 0..spec.epochs {
            let order = loader::epoch_order(n, spec.seed, epoch);
            for (i, idx) in loader::batches(&order, batch, false).iter().enumerate() {
                let idx = Tensor::from_slice(idx).to_device(device);
                let loss = linear.forward(&x.index_select(0, &idx)).cross_entropy_loss(
                    &y.index_select(0, &idx),
                    None::<Tensor>,
                    Reduction::Mean,
                    -100,
                    0.0,
                );
                optim.zero_grad();
                loss.backward();
                optim.step(spec.lr * schedule.factor(epoch * spe + i, spe * spec.epochs, spe));
            }
        }
        Ok(LinearProbe {
            mean,
            std,
            linear,
            _vs: vs,
        })
    }

    pub fn logits(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| self.linear.forward(&((x - &self.mean) / &self.std)))
    }

    pub fn accuracy(&self, x: &Tensor, y: &Tensor) -> f64 {
        self.logits(x)
            .argmax(1, false)
            .eq_tensor(y)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[])
    }
}

/// The fitted probe, the chosen L2 strength and each candidate's mean validation accuracy.
pub type L2Search = (LinearProbe, f64, Vec<(f64, f64)>);

const FOLDS: i64 = 5;

/// Mean validation accuracy over the first `folds` of 5 folds (fold k: every fifth image from k).
fn cross_validate(
    x: &Tensor,
    y: &Tensor,
    classes: i64,
    spec: &LinearSpec,
    folds: i64,
) -> Result<f64, OptimError> {
    let n = x.size()[0];
    let pick = |idx: &[i64]| Tensor::from_slice(idx).to_device(x.device());
    let mut total = 0.0;
    for k in 0..folds {
        let (val, fit): (Vec<i64>, Vec<i64>) = (0..n).partition(|i| i % FOLDS == k);
        let (fi, vi) = (pick(&fit), pick(&val));
        let probe = LinearProbe::fit(
            &x.index_select(0, &fi),
            &y.index_select(0, &fi),
            classes,
            spec,
        )?;
        total += probe.accuracy(&x.index_select(0, &vi), &y.index_select(0, &vi));
    }
    Ok(total / folds as f64)
}

/// The L2 strengths tried by [`fit_with_l2_search`].
pub const L2_CANDIDATES: [f64; 6] = [0.0, 1e-4, 1e-3, 1e-2, 5e-2, 0.1];

/// Chooses the L2 strength by cross-validation on the training features (fold k holds every
/// fifth image from k, so classes stay in proportion), then refits on all of them. Small sets
/// (up to 2,000 images) use all 5 folds, where one fold would be too noisy; larger ones the
/// first fold only, which is reliable there and 5x cheaper. Returns the probe, the chosen
/// strength and each candidate's mean validation accuracy.
pub fn fit_with_l2_search(
    x: &Tensor,
    y: &Tensor,
    classes: i64,
    spec: &LinearSpec,
) -> Result<L2Search, OptimError> {
    let n = x.size()[0];
    let folds = if n <= 2000 { FOLDS } else { 1 };
    let mut table = Vec::new();
    if n >= 2 * FOLDS {
        // One thread per candidate: each fit is a chain of tiny operations that cannot use
        // more than one core on its own.
        let scores: Vec<Result<f64, OptimError>> = std::thread::scope(|s| {
            let handles: Vec<_> = L2_CANDIDATES
                .iter()
                .map(|&wd| {
                    let (x, y) = (x.shallow_clone(), y.shallow_clone());
                    let spec = LinearSpec {
                        weight_decay: wd,
                        ..spec.clone()
                    };
                    s.spawn(move || cross_validate(&x, &y, classes, &spec, folds))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a probe fit panicked"))
                .collect()
        });
        for (wd, score) in L2_CANDIDATES.iter().zip(scores) {
            table.push((*wd, score?));
        }
    }
    // The strongest penalty among the best (ties favour regularisation on small data).
    let best = table
        .iter()
        .fold(None::<(f64, f64)>, |b, &(wd, acc)| match b {
            Some((_, a)) if a > acc => b,
            _ => Some((wd, acc)),
        })
        .map_or(spec.weight_decay, |(wd, _)| wd);
    let s = LinearSpec {
        weight_decay: best,
        ..spec.clone()
    };
    Ok((LinearProbe::fit(x, y, classes, &s)?, best, table))
}
