//! Training: the loop, evaluation, checkpoints, metrics and the run folder.
//!
//! A run folder holds `config.toml` (the effective config), `metrics.jsonl`,
//! `checkpoints/last.safetensors`, `summary.json`, `plots/` and `report.html`.

pub mod classify;
pub mod evaluate;
pub mod lr_find;
pub mod objective;
pub mod parallel;
pub mod report;
pub mod trained;

pub use trained::TrainedRun;

pub use evaluate::{EvalResult, evaluate};

use crate::augment::Augmenter;
use crate::config::{self, Config};
use crate::data::loader::{self, DeviceSplit};
use crate::data::{self, DataSpec, Dataset};
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::metrics::{self, EpochMetrics};
use crate::models::{self, Ctx, Model, features};
use crate::optim::Optimizer;
use crate::util::progress;
use crate::util::{fmt_seconds, mix_seed};
use crate::weights::{RunDir, checkpoint};
use objective::{EvalInput, Evaluation, Objective, StepInput};
use parallel::{add_up, check_data_parallel, dist_group, rank_device};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `auto`, `cpu`, `cuda`, `cuda:N`; `auto` picks the first GPU when libtorch sees one.
///
/// # Errors
/// Another name, or a GPU index libtorch does not see.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" if tch::Cuda::is_available() => cuda_device(0),
        "auto" => Ok(Device::Cpu),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda_device(0),
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => cuda_device(n),
            None => Err(Error::Invalid(format!(
                "unknown device '{other}' (auto, cpu, cuda, cuda:N)"
            ))),
        },
    }
}

/// Also turns on cuDNN's autotuner: a run's input sizes are fixed, so the fastest convolution
/// algorithm is worth finding once.
fn cuda_device(n: usize) -> Result<Device> {
    let count = tch::Cuda::device_count() as usize;
    if n < count {
        tch::Cuda::cudnn_set_benchmark(true);
        Ok(Device::Cuda(n))
    } else {
        Err(Error::Invalid(format!(
            "device cuda:{n} requested, but libtorch sees {count} GPU(s)"
        )))
    }
}

/// The headline numbers of a run (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub model: String,
    pub dataset: String,
    pub device: String,
    /// Processes that trained data-parallel (1: one process); `train.batch_size` is the batch
    /// over all of them.
    #[serde(default = "one")]
    pub ranks: usize,
    pub parameters: i64,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub test_accuracy: f64,
    pub test_top5: f64,
    pub test_loss: f64,
    pub final_train_loss: f64,
    /// Training time, evaluation excluded, summed over all epochs (also across resumes).
    pub train_seconds: f64,
    /// Wall-clock of this invocation, data loading and evaluation included.
    pub wall_seconds: f64,
    pub per_class_accuracy: Vec<(String, f64)>,
    /// Pretrained weights, frozen groups and per-group rates, when the run used any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<crate::transfer::TransferSummary>,
}

/// Loads the data a config names (`[data]`: source, format, limits, classes, label noise),
/// images resized to `data.image_size` or else `default_size` pixels where the reader resizes.
///
/// # Errors
/// The data cannot be read, a named class is absent, or the test split is empty.
pub fn load_data(cfg: &Config, default_size: i64) -> Result<Dataset> {
    let mut spec = DataSpec::new(&cfg.data.source);
    spec.format = cfg.data.format;
    spec.image_size = cfg.data.image_size.unwrap_or(default_size as u32);

    spec.val_split = cfg.data.val_split;
    spec.skip_broken = cfg.data.skip_broken;
    let mut ds = data::load(&spec)?;
    if let Some(names) = &cfg.data.classes {
        ds = ds.keep_classes(names)?;
    }
    let mut ds = ds.limit_train(cfg.data.train_limit);
    if let Some(n) = cfg.data.train_per_class {
        ds.train = ds.train.per_class(n);
    }
    if cfg.data.label_noise > 0.0 {
        let seed = crate::util::mix_seed(cfg.train.seed, 0x4015E);
        ds.train =
            ds.train
                .with_label_noise(cfg.data.label_noise, ds.classes.len() as i64, seed)?;
    }
    if let Some(n) = cfg.data.test_limit {
        ds.test = ds.test.take(n);
    }
    if ds.test.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the test split holds no images, so nothing could be evaluated (check \
             data.test_limit, data.val_split and the data's test folder)",
            cfg.data.source
        )));
    }
    if cfg.data.rgb {
        ds = ds.to_rgb();
    }
    Ok(ds)
}

/// The data a config names, and its splits moved to the config's device.
///
/// # Errors
/// As [`parse_device`] and [`load_data`].
pub fn load_onto_device(cfg: &Config) -> Result<(Dataset, (DeviceSplit, DeviceSplit))> {
    let device = parse_device(&cfg.train.device)?;
    let data = load_data(cfg, cfg.model.spec(1, 3).default_input_size())?;
    let splits = (
        DeviceSplit::new(&data.train, device),
        DeviceSplit::new(&data.test, device),
    );
    Ok((data, splits))
}

/// Removes what a killed run left half-written in a run folder (temporary checkpoint, plot
/// and report files whose process is gone), and says so.
pub fn clean_run_folder(out: &Path) {
    let run = RunDir::new(out);
    let removed: usize = [run.root.clone(), run.checkpoints(), run.plots()]
        .iter()
        .map(|dir| crate::util::clean_stale_temps(dir))
        .sum();
    if removed > 0 {
        eprintln!(
            "{}: removed {removed} temporary files a killed run left behind",
            out.display()
        );
    }
}

/// Refuses a training split or batch too small to train on: BatchNorm needs two values per
/// channel.
///
/// # Errors
/// Fewer than 2 training images (naming the settings that shrink the split), or
/// `train.batch_size` below 2.
pub fn check_training_size(n: usize, batch_size: usize) -> Result<()> {
    if batch_size < 2 {
        return Err(Error::Invalid(format!(
            "train.batch_size = {batch_size}: training needs batches of at least 2 images \
             (BatchNorm needs two values per channel)"
        )));
    }
    if n >= 2 {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "the training split holds {n} image(s); training needs at least 2 (BatchNorm needs \
         two values per channel): check data.train_limit, data.train_per_class, data.classes \
         and the data source"
    )))
}

/// Options of one training invocation.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from `out/checkpoints/last.safetensors`.
    pub resume: bool,
    pub progress: bool,
    /// Stop after this many epochs of this invocation (used to test resuming).
    pub stop_after: Option<usize>,
    /// Write no checkpoint (timed benchmark runs, which are never resumed).
    pub no_checkpoints: bool,
    /// Settings (`section.key=value`) given on the command line with `resume`: applied to the
    /// saved config when [`RESUMABLE`] allows them (and recorded in config.toml), refused
    /// otherwise; never ignored.
    pub resume_settings: Vec<String>,
}

/// What a resumed run may change: its length, its learning rate and schedule, and where and
/// how fast it runs. Anything else (data, model, batch, augmentation, seed) would make it
/// another run.
pub const RESUMABLE: [&str; 6] = [
    "train.epochs",
    "optim.lr",
    "schedule.",
    "train.eval_every",
    "train.device",
    "train.threads",
];

/// Everything a training run holds while it runs: the one training engine. The objective
/// decides the loss and what is measured; the engine owns batching, the schedule, the
/// optimiser step, lookahead, bf16, device-side loss accumulation, the divergence check,
/// checkpoints, exact resume, metrics and progress.
pub struct Trainer {
    pub cfg: Config,
    pub data: Dataset,
    pub model: Model,
    pub optim: Optimizer,
    pub device: Device,
    pub out: PathBuf,
    train: DeviceSplit,
    test: DeviceSplit,
    augmenter: Augmenter,
    objective: Box<dyn Objective>,
    /// The process group of a data-parallel run (torchrun, Slurm), None in one process.
    dist: Option<std::rc::Rc<ProcessGroup>>,
    pub history: Vec<EpochMetrics>,
    train_seconds: f64,
    pub last_eval: Option<Evaluation>,
    /// Seconds the last evaluation in `fit` took (test-time augmentation included).
    pub eval_seconds: f64,
    pub transfer: Option<crate::transfer::TransferSummary>,
    bn_eval: std::rc::Rc<[String]>,
    /// Why the augmentation is what it is, when it was chosen from the data.
    augment_reason: Option<String>,
}

/// An lr range test riding on the engine's step loop: each step's rate comes from `lrs`, each
/// step's loss is read back, and the run stops when `lrs` is used up or `stop` says so.
struct Sweep<'a> {
    lrs: &'a [f64],
    losses: Vec<f64>,
    stop: &'a dyn Fn(&[f64]) -> bool,
    bar: indicatif::ProgressBar,
}

impl Sweep<'_> {
    fn done(&self) -> bool {
        self.losses.len() >= self.lrs.len() || (self.stop)(&self.losses)
    }
}

/// What one epoch of training measured.
struct EpochRun {
    /// Images trained on (a dropped last batch is not counted).
    images: usize,
    loss: f64,
    accuracy: Option<f64>,
    seconds: f64,
    lr: f64,
}

impl Trainer {
    /// A cross-entropy classifier: loads data, builds the model and optimiser, and restores a
    /// checkpoint when resuming.
    ///
    /// # Errors
    /// As [`Trainer::with_data`], and the data cannot be loaded.
    pub fn new(cfg: Config, out: &Path, resume: bool) -> Result<Self> {
        let objective = Box::new(classify::CrossEntropy::new(&cfg));
        Self::with_objective(cfg, out, resume, objective)
    }

    /// `new` for any objective.
    ///
    /// # Errors
    /// As [`Trainer::with_data`], and the data cannot be loaded.
    pub fn with_objective(
        cfg: Config,
        out: &Path,
        resume: bool,
        objective: Box<dyn Objective>,
    ) -> Result<Self> {
        check_weights_model(&cfg)?;
        let mut cfg = cfg;
        if let Some(g) = dist_group(&cfg)? {
            cfg.train.device = rank_device(&cfg.train.device, g.local_rank);
        }
        let (data, splits) = load_onto_device(&cfg)?;
        Self::with_data(cfg, data, splits, out, resume, objective)
    }

    /// `with_objective` with the data already loaded and on the device (repeated timed runs);
    /// the run trains on the device that holds `train`.
    ///
    /// # Errors
    /// Too few images or a batch below 2, a setting the objective cannot honour, a head size
    /// that does not fit the data, images too small for the network, weights that cannot be
    /// loaded, or (resuming) a checkpoint that cannot be read into this model and optimiser.
    pub fn with_data(
        mut cfg: Config,
        mut data: Dataset,
        (train, test): (DeviceSplit, DeviceSplit),
        out: &Path,
        resume: bool,
        mut objective: Box<dyn Objective>,
    ) -> Result<Self> {
        crate::util::tune_allocator();
        if cfg.train.threads > 0 {
            // More threads than cores only adds idle ones (a million would hang the start).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads(cfg.train.threads.min(cores) as i32);
        }
        check_training_size(train.len(), cfg.train.batch_size)?;
        let mut augment_reason = None;
        if cfg.provenance.augment_from_data {
            let side = cfg.transfer.resize.unwrap_or(data.train.image_shape()[1]);
            let gray = crate::augment::is_grayscale(&data.train.images);
            let (policy, why) = crate::augment::policy_for(gray, side, &data.name);
            cfg.augment = policy;
            augment_reason = Some(why);
        }
        objective.check_config(&cfg)?;
        let dist = dist_group(&cfg)?;
        if let Some(g) = &dist {
            check_data_parallel(&cfg, g)?;
        }
        let device = train.images.device();
        let classes = data.classes.len() as i64;
        check_classes(&cfg, &data)?;
        let spec = cfg.model.spec(classes, data.channels());
        tch::manual_seed(mix_seed(cfg.train.seed, 0xA11CE) as i64);
        let mut model = models::build(&spec, device)?;
        objective.extend_model(&mut model, &cfg)?;
        model.check_input_size(cfg.transfer.resize.unwrap_or(data.train.image_shape()[1]))?;
        let mut transfer = None;
        if cfg.transfer.is_active() {
            transfer = Some(prepare_transfer(&cfg, &mut data, &mut model, resume)?);
        }
        structured_init(&cfg, &data, &train, &mut model, resume)?;
        if let Some(g) = &dist {
            // DDP's start: every rank begins from rank 0's weights and statistics, before the
            // optimiser (lookahead keeps a copy of the starting weights) is built.
            let vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
            g.broadcast_from_main(&vars)?;
        }
        if cfg.train.channels_last {
            model.to_channels_last();
        }
        let mut optim = batchnorm_options(&cfg, &model)?;
        let mut bn_eval: std::rc::Rc<[String]> = Default::default();
        if let Some(t) = &mut transfer {
            let applied = crate::transfer::apply(&cfg.transfer, &model, &mut optim)?;
            bn_eval = applied.bn_eval.into();
            t.groups = applied.groups;
        }
        let (mut history, mut train_seconds) = (Vec::new(), 0.0);
        if resume {
            let ck = checkpoint::read(&RunDir::new(out).checkpoint())?;
            let projection = model.vs.variables().keys().any(|k| model.objective_owns(k));
            if checkpoint::has_projection_head(&ck) != projection {
                return Err(Error::Invalid(format!(
                    "{}: this run was written by {}; resume it with the command that made it",
                    out.display(),
                    if projection {
                        "`convkit train` (or finetune), not by contrastive pre-training"
                    } else {
                        "contrastive pre-training: `convkit supcon --resume`"
                    }
                )));
            }
            ck.load_into(&mut model)?;
            optim
                .load_state(&ck.section("optim"))
                .map_err(|e| Error::Invalid(format!("{}: {e}", ck.path.display())))?;
            history = ck.meta.history.clone();
            objective.upgrade_history(&mut history);
            train_seconds = ck.meta.train_seconds;
        }
        let mut augmenter = Augmenter::new(cfg.augment.clone(), &data.mean, &data.std, device);
        augmenter.resize = cfg.transfer.resize;
        augmenter.seed = cfg.train.seed;
        Ok(Trainer {
            dist,
            train,
            test,
            augmenter,
            objective,
            cfg,
            data,
            model,
            optim,
            device,
            out: out.to_path_buf(),
            history,
            train_seconds,
            last_eval: None,
            eval_seconds: 0.0,
            transfer,
            bn_eval,
            augment_reason,
        })
    }

    /// Whether the objective leaves an epoch's last incomplete batch out.
    pub fn drop_last(&self) -> bool {
        self.objective.drop_last(&self.cfg)
    }

    fn steps_per_epoch(&self) -> usize {
        loader::training_steps_per_epoch(self.shard_len(), self.rank_batch(), self.drop_last())
    }

    /// The global-batch BatchNorm of a data-parallel run with `train.sync_bn`.
    fn bn_sync(&self) -> Option<std::rc::Rc<crate::models::layers::BnSync>> {
        let g = self.dist.clone().filter(|_| self.cfg.train.sync_bn)?;
        Some(std::rc::Rc::new(crate::models::layers::BnSync {
            reduce: Box::new(move |t| {
                g.all_reduce_sum_differentiable(t)
                    .map_err(|e| e.to_string())
            }),
            error: Default::default(),
        }))
    }

    /// Waits for every rank (no-op in one process).
    ///
    /// # Errors
    /// Another rank stopped.
    pub fn barrier(&self) -> Result<()> {
        if let Some(g) = &self.dist {
            g.barrier()?;
        }
        Ok(())
    }

    /// Ranks of the run (1 in one process).
    pub fn world(&self) -> usize {
        self.dist.as_ref().map_or(1, |g| g.world)
    }

    /// Whether this process writes the run folder and logs (one process, or rank 0).
    pub fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|g| g.is_main())
    }

    /// Each rank's batch: the recipe's batch is the global one, as with DDP and a
    /// `DistributedSampler` at batch_size / world, so its learning rate keeps its meaning.
    fn rank_batch(&self) -> usize {
        self.cfg.train.batch_size / self.world()
    }

    /// Images in this rank's part of an epoch (the epoch padded to a multiple of the ranks).
    fn shard_len(&self) -> usize {
        self.train.len().div_ceil(self.world())
    }

    fn use_autocast(&self) -> bool {
        self.cfg.train.bf16 && self.device.is_cuda()
    }

    /// Trains one epoch (0-based).
    ///
    /// The epoch's order (and what the objective draws for it) is uploaded once and sliced per
    /// step, and on a GPU the statistics are read once at the end of the epoch: nothing in the
    /// step loop waits for the device. A `sweep` takes each step's rate from its list and reads
    /// each step's loss (the lr range test needs it).
    fn train_epoch(
        &mut self,
        epoch: usize,
        progress: bool,
        mut sweep: Option<&mut Sweep>,
    ) -> Result<EpochRun> {
        self.freeze_whiten_bias(epoch);
        let t = &self.cfg.train;
        let (bs, epochs, seed) = (self.rank_batch(), t.epochs, t.seed);
        let spe = self.steps_per_epoch();
        let total = spe * epochs;
        let start = Instant::now();
        let mut order = loader::epoch_order(self.train.len(), seed, epoch);
        let mut rng_seed = mix_seed(seed, 1_000_000 + epoch as u64);
        if let Some(g) = &self.dist {
            order = crate::dist::shard(&order, g.rank, g.world);
            // Each rank augments its images with its own draws (rank 0 as one process would).
            rng_seed = if g.rank == 0 {
                rng_seed
            } else {
                mix_seed(rng_seed, g.rank as u64)
            };
        }
        let lens: Vec<usize> = loader::training_batches(&order, bs, self.drop_last())
            .iter()
            .map(|b| b.len())
            .collect();
        let mut rng = StdRng::seed_from_u64(rng_seed);
        self.augmenter.epoch = epoch;
        self.objective
            .begin_epoch(&self.augmenter, &order, &mut rng, self.device);
        let order = Tensor::from_slice(&order).to_device(self.device);
        let progress = progress && self.is_main();
        let bar = match sweep {
            Some(_) => indicatif::ProgressBar::hidden(),
            None => progress::steps_bar(
                lens.len() as u64,
                format!("epoch {}/{}", epoch + 1, epochs),
                progress,
            ),
        };
        let read_every = match (&sweep, self.device.is_cuda()) {
            (None, true) => usize::MAX,
            _ => 1,
        };
        let (mut sums, mut seen) = ([0.0f64; 3], 0usize);
        let mut pending = Tensor::zeros([3], (Kind::Double, self.device));
        let mut lr = self.cfg.optim.lr;
        let sync = self.bn_sync();
        let ctx = Ctx::train_with_bn_eval(self.bn_eval.clone()).with_bn_sync(sync.clone());
        for (i, &len) in lens.iter().enumerate() {
            let step = epoch * spe + i;
            lr = match &sweep {
                Some(s) => s.lrs[s.losses.len()],
                None => self.cfg.optim.lr * self.cfg.schedule.factor(step, total, spe),
            };
            let from = (i * bs) as i64;
            let index = order.narrow(0, from, len as i64);
            let out = self.objective.step(StepInput {
                model: &self.model,
                augmenter: &self.augmenter,
                train: &self.train,
                index: &index,
                from,
                rng: &mut rng,
                ctx: &ctx,
                autocast: self.use_autocast(),
                dist: self.dist.as_deref(),
            })?;
            objective::optimise(&mut self.optim, &out.loss, lr, self.dist.as_deref())?;
            if let Some(e) = sync.as_ref().and_then(|s| s.error.take()) {
                return Err(Error::Invalid(format!("synchronised BatchNorm: {e}")));
            }
            if let Some(l) = &mut self.optim.lookahead {
                l.after_step(self.optim.steps, total as i64);
                if sweep.is_none() && epoch + 1 == epochs && i + 1 == lens.len() {
                    l.finish();
                }
            }
            pending += out.stats;
            seen += len;
            if (i + 1) % read_every == 0 || i + 1 == lens.len() {
                let v = Vec::<f64>::try_from(&pending).unwrap_or_default();
                pending = pending.zero_();
                if let Some(s) = sweep.as_deref_mut() {
                    s.losses.push(v[0] / v[2]);
                    s.bar.inc(1);
                    if s.done() {
                        break;
                    }
                    continue;
                }
                if !v[0].is_finite() {
                    return Err(self.diverged(v[0], step, epoch, lr));
                }
                sums.iter_mut().zip(&v).for_each(|(s, x)| *s += x);
                let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("loss {:.3} {:.0} img/s", sums[0] / sums[2], rate));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        if let Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
        if let Some(g) = &self.dist {
            // DDP broadcasts rank 0's buffers before every forward pass, so the BatchNorm
            // running statistics evaluated and saved are rank 0's: the same once per epoch.
            let buffers: Vec<(String, Tensor)> = self
                .model
                .vs
                .variables()
                .into_iter()
                .filter(|(n, _)| models::is_buffer(n))
                .collect();
            if !buffers.is_empty() {
                g.broadcast_from_main(&buffers)?;
            }
            // The epoch's numbers over every rank's images.
            let total = g.sum_f64(&[sums[0], sums[1], sums[2], seen as f64])?;
            sums = [total[0], total[1], total[2]];
            seen = total[3] as usize;
        }
        let weight = sums[2].max(1e-300);
        Ok(EpochRun {
            images: seen,
            loss: sums[0] / weight,
            accuracy: self
                .objective
                .measures_train_accuracy()
                .then(|| sums[1] / seen.max(1) as f64),
            seconds: start.elapsed().as_secs_f64(),
            lr,
        })
    }

    /// airbench trains the whitening layer's bias for the first `model.whiten_bias_epochs`
    /// epochs only (its weights stay frozen throughout). Frozen means no gradient at all, so
    /// backward also skips the first convolution's input gradient from then on.
    fn freeze_whiten_bias(&mut self, epoch: usize) {
        let n = self.cfg.model.whiten_bias_epochs;
        if n == 0 || epoch < n {
            return;
        }
        if let Some(bias) = self.model.vs.variables().get("whiten.bias") {
            let _ = bias.set_requires_grad(false);
        }
        for p in self
            .optim
            .params
            .iter_mut()
            .filter(|p| p.name == "whiten.bias")
        {
            p.lr_scale = 0.0;
        }
    }

    fn diverged(&self, loss: f64, step: usize, epoch: usize, lr: f64) -> Error {
        diverged(&self.out, self.cfg.optim.lr, loss, step, epoch, lr)
    }

    /// The objective's evaluation of the model as it is now. In a data-parallel run each rank
    /// evaluates its part of the test split and the counts are added up when the objective's
    /// numbers are sums (classification), so the result equals one process's exactly.
    ///
    /// # Errors
    /// A collective failed (another rank stopped).
    pub fn evaluate(&self) -> Result<Evaluation> {
        let input = |test| EvalInput {
            model: &self.model,
            augmenter: &self.augmenter,
            train: &self.train,
            test,
            cfg: &self.cfg,
            classes: self.data.classes.len() as i64,
            autocast: self.use_autocast(),
        };
        match &self.dist {
            Some(g) if self.objective.evaluation_adds_up() => {
                let part = crate::dist::eval_shard(self.test.len(), g.rank, g.world);
                let index = Tensor::from_slice(&part).to_device(self.device);
                let (images, labels) = self.test.batch_at(&index);
                let shard = DeviceSplit { images, labels };
                add_up(self.objective.evaluate(input(&shard)), g)
            }
            _ => Ok(self.objective.evaluate(input(&self.test))),
        }
    }

    /// The lr range test: one training step at each rate of `lrs` in turn (cycling through
    /// epochs of data, as fastai's LRFinder does), returning each step's loss; stops early once
    /// `stop` says so (the loss exploded). The model's weights change; nothing is written.
    ///
    /// # Errors
    /// The objective's step fails.
    pub fn lr_sweep(
        &mut self,
        lrs: &[f64],
        stop: impl Fn(&[f64]) -> bool,
        progress: bool,
    ) -> Result<Vec<f64>> {
        let mut sweep = Sweep {
            lrs,
            losses: Vec::new(),
            stop: &stop,
            bar: progress::steps_bar(lrs.len() as u64, "lr-find".into(), progress),
        };
        let mut epoch = 0;
        while !sweep.done() && self.steps_per_epoch() > 0 {
            self.train_epoch(epoch, progress, Some(&mut sweep))?;
            epoch += 1;
        }
        sweep.bar.finish_and_clear();
        Ok(sweep.losses)
    }

    /// The training and test splits as they sit on the device.
    pub fn splits(&self) -> (&DeviceSplit, &DeviceSplit) {
        (&self.train, &self.test)
    }

    /// Pooled features of the model's body for every image of `split` (eval mode, no
    /// augmentation, with the run's normalisation and resize): `[N, D]`.
    /// With `stages`, the pooled output of every stage, concatenated.
    pub fn encoder_features(&self, split: &DeviceSplit, stages: bool) -> Tensor {
        let f = if stages {
            features::stage_features
        } else {
            features::encoder_features
        };
        f(
            &self.model,
            split,
            &self.augmenter,
            self.cfg.train.eval_batch_size,
        )
    }

    fn meta(&self, epoch: usize) -> checkpoint::Meta {
        checkpoint::Meta {
            format: checkpoint::FORMAT.into(),
            spec: self.model.spec.clone(),
            classes: self.data.classes.clone(),
            mean: self.data.mean.clone(),
            std: self.data.std.clone(),
            image_size: self.data.train.image_shape()[1],
            epoch,
            history: self.history.clone(),
            train_seconds: self.train_seconds,
            config: self.cfg.to_toml(),
        }
    }

    /// Trains the remaining epochs, evaluating when the objective says and checkpointing after
    /// each epoch.
    ///
    /// # Errors
    /// The loss diverged (the last checkpoint is kept), or the run folder cannot be written.
    /// In a data-parallel run every rank trains and evaluates; rank 0 alone writes the run
    /// folder and logs.
    pub fn fit(&mut self, opts: &RunOptions) -> Result<()> {
        let dir = RunDir::new(&self.out);
        if self.is_main() {
            crate::util::create_dir(&dir.checkpoints())?;
            clean_run_folder(&self.out);
            crate::util::atomic_write_bytes(&dir.config(), self.cfg.to_toml().as_bytes())?;
        }
        let start = self.history.len();
        let end = match opts.stop_after {
            Some(n) => (start + n).min(self.cfg.train.epochs),
            None => self.cfg.train.epochs,
        };
        for epoch in start..end {
            let run = self.train_epoch(epoch, opts.progress, None)?;
            self.train_seconds += run.seconds;
            let eval_start = Instant::now();
            let eval = match self.objective.eval_due(epoch + 1, &self.cfg) {
                true => Some(self.evaluate()?),
                false => None,
            };
            if eval.is_some() {
                self.eval_seconds = eval_start.elapsed().as_secs_f64();
            }
            let e = eval.clone().unwrap_or_default();
            let views = self.objective.views();
            let m = EpochMetrics {
                epoch: epoch + 1,
                lr: run.lr,
                train_loss: run.loss,
                train_accuracy: run.accuracy,
                test_loss: e.loss,
                test_accuracy: e.accuracy,
                test_top5: e.top5,
                knn_accuracy: e.knn_accuracy,
                epoch_seconds: run.seconds,
                train_seconds: self.train_seconds,
                images_per_second: (run.images * views) as f64 / run.seconds.max(1e-9),
            };
            self.history.push(m);
            if eval.is_some() {
                self.last_eval = eval;
            }
            if self.is_main() {
                self.record_epoch(&dir, opts)?;
            }
        }
        Ok(())
    }

    /// Logs the last epoch and writes metrics.jsonl and the checkpoint (rank 0's part of `fit`).
    fn record_epoch(&self, dir: &RunDir, opts: &RunOptions) -> Result<()> {
        let Some(m) = self.history.last() else {
            return Ok(());
        };
        eprintln!("{}", self.epoch_line(m));
        metrics::write_jsonl(&dir.metrics(), &self.history)?;
        if !opts.no_checkpoints {
            let meta = self.meta(m.epoch);
            checkpoint::save(
                &dir.checkpoint(),
                &self.model,
                &self.optim.state_tensors(),
                &meta,
            )?;
        }
        Ok(())
    }

    /// The log line of an epoch: what was measured, and nothing that was not.
    fn epoch_line(&self, m: &EpochMetrics) -> String {
        let pct = |v: f64| format!("{:5.1}%", 100.0 * v);
        let mut parts = vec![
            format!("epoch {:>3}/{}", m.epoch, self.cfg.train.epochs),
            format!("{} loss {:.4}", self.objective.name(), m.train_loss),
        ];
        if let Some(a) = m.train_accuracy {
            parts.push(format!("train {}", pct(a)));
        }
        match (m.test_accuracy, m.test_top5, m.knn_accuracy) {
            (Some(a), Some(t5), _) => parts.push(format!("test {} (top-5 {})", pct(a), pct(t5))),
            (_, _, Some(k)) => parts.push(format!("kNN test accuracy {}", pct(k))),
            _ => parts.push("test not evaluated".into()),
        }
        let unit = if self.objective.views() > 1 {
            "views/s"
        } else {
            "img/s"
        };
        parts.push(format!("lr {:.4}", m.lr));
        parts.push(fmt_seconds(m.epoch_seconds));
        parts.push(format!("{:.0} {unit}", m.images_per_second));
        parts.join("  ")
    }

    /// The classifier's summary of the run (evaluating once if no epoch ran in this
    /// invocation).
    ///
    /// # Errors
    /// The objective is not a classifier (its evaluation has no top-1 accuracy).
    pub fn summary(&mut self, wall_seconds: f64) -> Result<TrainSummary> {
        let eval = match self.last_eval.take() {
            Some(e) => e,
            None => self.evaluate()?,
        };
        let Some(detail) = eval.detail.clone() else {
            return Err(Error::Invalid(format!(
                "a {} run has no classification summary",
                self.objective.name()
            )));
        };
        let last = self.history.last();
        let s = TrainSummary {
            model: self.model.spec.name.clone(),
            dataset: self.data.name.clone(),
            device: format!("{:?}", self.device),
            ranks: self.world(),
            parameters: self.model.parameter_count(),
            epochs: self.history.len(),
            train_images: self.train.len(),
            test_images: self.test.len(),
            test_accuracy: detail.accuracy,
            test_top5: detail.top5,
            test_loss: detail.loss,
            final_train_loss: last.map_or(f64::NAN, |m| m.train_loss),
            train_seconds: self.train_seconds,
            wall_seconds,
            per_class_accuracy: self
                .data
                .classes
                .iter()
                .cloned()
                .zip(detail.confusion.per_class_accuracy())
                .collect(),
            transfer: self.transfer.clone(),
        };
        self.last_eval = Some(eval);
        Ok(s)
    }
}

/// Refuses a convkit checkpoint as `transfer.weights` for another model than the config's,
/// before any data is decoded (which can take minutes at the wrong model's input size).
fn check_weights_model(cfg: &Config) -> Result<()> {
    let Some(w) = &cfg.transfer.weights else {
        return Ok(());
    };
    // Only convkit checkpoints name their model; other files are checked when loaded.
    let Ok(ck) = checkpoint::read(Path::new(w)) else {
        return Ok(());
    };
    let (theirs, ours) = (&ck.meta.spec.name, &cfg.model.name);
    if theirs == ours {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{}: the weights are a convkit {theirs} checkpoint, but the model is {ours} (from the \
         recipe or --model): pass --model {theirs}",
        ck.path.display()
    )))
}

fn one() -> usize {
    1
}

/// A head set to another number of classes than the data has, or fewer than 2 classes.
fn check_classes(cfg: &Config, data: &Dataset) -> Result<()> {
    let classes = data.classes.len() as i64;
    if let Some(k) = cfg.model.classes.filter(|k| *k != classes) {
        return Err(Error::Invalid(format!(
            "the model's head is set to {k} classes, but {} has {classes} ({})",
            data.name,
            data.classes.join(", ")
        )));
    }
    if classes < 2 {
        return Err(Error::Invalid(format!(
            "{} has {classes} class ({}); a classifier needs at least 2",
            data.name,
            data.classes.join(", ")
        )));
    }
    Ok(())
}
/// The optimiser, with airbench's BatchNorm treatment when asked: scales frozen at 1
/// (`model.bn_scale_frozen`) and shifts at `optim.bn_bias_lr_mult` times the rate.
///
/// # Errors
/// The optimiser cannot be built from `cfg.optim`.
pub fn batchnorm_options(cfg: &Config, model: &Model) -> Result<Optimizer> {
    let bn = if cfg.model.bn_scale_frozen || cfg.optim.bn_bias_lr_mult != 1.0 {
        crate::transfer::groups::batchnorm_layers(model)
    } else {
        vec![]
    };
    let vars = model.vs.variables();
    if cfg.model.bn_scale_frozen {
        for layer in &bn {
            if let Some(w) = vars.get(&format!("{layer}.weight")) {
                let _ = w.set_requires_grad(false);
            }
        }
    }
    let mut optim = Optimizer::new(&model.vs, &cfg.optim)?;
    let shifts: Vec<String> = bn.iter().map(|l| format!("{l}.bias")).collect();
    for p in &mut optim.params {
        if shifts.contains(&p.name) {
            p.lr_scale *= cfg.optim.bn_bias_lr_mult;
        }
    }
    Ok(optim)
}

/// `model.whiten_init` and `model.dirac_init` (airbench's initialisations). The whitening
/// layer stays frozen on resume too; its weights then come from the checkpoint, and likewise
/// from pretrained weights (`transfer.weights`), which these initialisations never overwrite.
/// The whitening is computed on the device from the training images already there.
fn structured_init(
    cfg: &Config,
    data: &Dataset,
    train: &DeviceSplit,
    model: &mut Model,
    resume: bool,
) -> Result<()> {
    let resume = resume || cfg.transfer.weights.is_some();
    let vars = model.vs.variables();
    if cfg.model.whiten_init {
        let mut w = vars
            .get("whiten.weight")
            .map(Tensor::shallow_clone)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "model.whiten_init: {} has no `whiten` convolution (airnet has)",
                    model.spec.name
                ))
            })?;
        if !resume {
            let device = train.images.device();
            let aug = Augmenter::new(vec![], &data.mean, &data.std, device);
            let (first, _) = train.range(0, train.len().min(5000) as i64);
            let sample = aug.eval_batch(&first);
            let k = w.size()[2];
            let whitening = crate::models::init::patch_whitening(&sample, k, 5e-4);
            if whitening.size() != w.size() {
                return Err(Error::Invalid(format!(
                    "model.whiten_init: the whitening of {k}x{k} patches has shape {:?}, the `whiten` convolution {:?}",
                    whitening.size(),
                    w.size()
                )));
            }
            tch::no_grad(|| w.copy_(&whitening));
        }
        let _ = w.set_requires_grad(false);
    }
    if cfg.model.dirac_init && !resume {
        for (name, mut w) in vars {
            let s = w.size();
            if name.ends_with("weight") && s.len() == 4 && s[2] == 3 && s[3] == 3 {
                crate::models::init::dirac_first_filters(&mut w);
            }
        }
    }
    Ok(())
}

/// Chooses the normalisation that belongs to the weights and loads them (not when resuming:
/// the checkpoint then holds the weights).
fn prepare_transfer(
    cfg: &Config,
    data: &mut Dataset,
    model: &mut Model,
    resume: bool,
) -> Result<crate::transfer::TransferSummary> {
    let t = &cfg.transfer;
    let path = t
        .weights
        .as_deref()
        .map(|w| crate::weights::resolve(w, true))
        .transpose()?;
    let meta = path
        .as_ref()
        .and_then(|p| checkpoint::read(p).ok())
        .map(|l| l.meta);
    let (norm, mean, std) =
        crate::transfer::normalisation(t, meta.as_ref(), &data.mean, &data.std)?;
    data.mean = mean;
    data.std = std;
    let mut summary = crate::transfer::TransferSummary {
        weights: path.as_ref().map(|p| p.display().to_string()),
        normalisation: norm,
        train_bn: t.train_bn,
        resize: t.resize,
        ..Default::default()
    };
    if let (Some(p), false) = (&path, resume) {
        let report = crate::transfer::load_weights(t, p, model)?;
        summary.loaded_tensors = report.loaded;
        summary.replaced_head = report.replaced_head.clone();
        summary.not_loaded = report.problems();
        summary.chosen = report.chosen;
    }
    Ok(summary)
}

/// The error for a non-finite loss at 0-based `step` / `epoch`: names the step, suggests a
/// tenth of the base learning rate, and says whether a checkpoint in `out` is intact.
pub fn diverged(out: &Path, base_lr: f64, loss: f64, step: usize, epoch: usize, lr: f64) -> Error {
    let ck = RunDir::new(out).checkpoint();
    Error::Diverged {
        loss,
        step: step + 1,
        epoch: epoch + 1,
        lr,
        suggest: base_lr / 10.0,
        checkpoint: if ck.exists() {
            format!(" {}", ck.display())
        } else {
            " (none was written yet)".into()
        },
    }
}

/// The config a run uses: the given one, or when resuming the one saved in the run folder
/// with the resume settings of `opts` applied ([`RESUMABLE`]).
///
/// # Errors
/// The saved config cannot be read, or a resume setting changes what a resumed run cannot.
pub fn effective_config(cfg: Config, out: &Path, opts: &RunOptions) -> Result<Config> {
    if !opts.resume {
        return Ok(cfg);
    }
    let path = RunDir::new(out).config();
    let saved = std::fs::read_to_string(&path)
        .map_err(|e| Error::Invalid(format!("cannot resume {}: {e}", out.display())))?;
    let mut table: toml::Table =
        toml::from_str(&saved).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    for setting in &opts.resume_settings {
        let key = setting
            .split_once('=')
            .map_or(setting.as_str(), |(k, _)| k)
            .trim();
        let allowed = RESUMABLE
            .iter()
            .any(|r| key == *r || (r.ends_with('.') && key.starts_with(r)));
        if !allowed {
            return Err(Error::Invalid(format!(
                "{}: `{key}` cannot change when resuming (the run would no longer be the one \
                 its checkpoint continues); with --resume you may set: --epochs, --lr, \
                 schedule.*, train.eval_every, --device, train.threads. Start a new run in \
                 another --out for anything else",
                out.display()
            )));
        }
        config::apply_override(&mut table, setting)?;
    }
    let resumed: Config = serde::Deserialize::deserialize(toml::Value::Table(table))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    resumed
        .validate()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if !opts.resume_settings.is_empty() && crate::dist::is_main() {
        eprintln!(
            "resuming with {} (to be recorded in {})",
            opts.resume_settings.join(", "),
            path.display()
        );
    }
    let mut resumed = resumed;
    resumed.provenance.origin = format!("{} (resumed)", path.display());
    Ok(resumed)
}

/// Trains a classifier (cross-entropy) from `cfg` into the run folder `out` and writes
/// summary.json, confusion.json, the plots and report.html.
///
/// # Errors
/// The run folder is locked by another run or cannot be written, the config cannot resume, or
/// as [`Trainer::new`] and [`Trainer::fit`].
pub fn run(cfg: Config, out: &Path, opts: &RunOptions) -> Result<TrainSummary> {
    let wall = Instant::now();
    // In a data-parallel run rank 0 alone holds the folder; the others only read from it.
    let _lock = match crate::dist::is_main() {
        true => Some(crate::util::RunLock::acquire(out)?),
        false => None,
    };
    let opts = &elastic_restart(opts, out);
    let cfg = effective_config(cfg, out, opts)?;
    let mut trainer = Trainer::new(cfg, out, opts.resume)?;
    print_start(&trainer);
    trainer.fit(opts)?;
    let summary = trainer.summary(wall.elapsed().as_secs_f64())?;
    // Rank 0 has written the last checkpoint, which what follows a run may read (the second
    // phase of head-then-unfreeze); the report is rank 0's alone, so nobody waits for it.
    trainer.barrier()?;
    if !trainer.is_main() {
        return Ok(summary);
    }
    metrics::write_json(&RunDir::new(out).summary(), &summary)?;
    if let Some(eval) = trainer.last_eval.as_ref().and_then(|e| e.detail.as_ref()) {
        metrics::write_json(&out.join("confusion.json"), &eval.confusion)?;
        report::run_report(
            out,
            &trainer.cfg,
            &trainer.history,
            &summary,
            &eval.confusion,
            &trainer.data.classes,
        )?;
    }
    print_summary(&summary, out);
    if let Some(eval) = trainer.last_eval.as_ref().and_then(|e| e.detail.as_ref()) {
        let train_accuracy = trainer.history.last().and_then(|m| m.train_accuracy);
        warn_if_collapsed(&eval.confusion, &trainer.data.classes, train_accuracy);
    }
    Ok(summary)
}

/// Says so when every test image got the same class: the accuracy alone (1 / classes for
/// balanced data) reads like a model that learnt nothing, while the training accuracy often
/// says otherwise.
fn warn_if_collapsed(confusion: &metrics::Confusion, classes: &[String], train: Option<f64>) {
    let Some(c) = confusion.single_prediction() else {
        return;
    };
    eprintln!(
        "note: all {} test images were predicted as '{}'{}: \
         the network gives one answer in evaluation mode. With BatchNorm this happens when its \
         running statistics do not describe evaluation-mode activations (few training steps, \
         a small momentum such as MobileNetV3's 0.01, random weights); more steps or \
         pretrained weights help. torchvision's models behave the same in PyTorch.",
        confusion.total(),
        classes.get(c).map_or("?", String::as_str),
        train.map_or(String::new(), |a| format!(
            " (final training accuracy {:.1}%)",
            100.0 * a
        ))
    );
}

/// Under torchrun's `--max-restarts`, a restarted attempt continues the run from its last
/// checkpoint instead of starting it over (what elastic training expects of a program).
pub fn elastic_restart(opts: &RunOptions, out: &Path) -> RunOptions {
    let restart = crate::dist::Launch::from_env()
        .ok()
        .flatten()
        .is_some_and(|l| l.restart > 0);
    let mut opts = opts.clone();
    if restart && !opts.resume && RunDir::new(out).checkpoint().exists() {
        if crate::dist::is_main() {
            eprintln!(
                "torchrun restart: continuing {} from its last checkpoint",
                out.display()
            );
        }
        opts.resume = true;
    }
    opts
}

/// The first lines of a run: data, model, device, what the reader noted, the recipe and any
/// transfer set-up.
pub fn print_start(t: &Trainer) {
    if !t.is_main() {
        return;
    }
    let s = t.data.train.image_shape();
    eprintln!(
        "data: {} ({} train, {} test, {} classes, {}x{}x{})  model: {} ({} parameters)  device: {:?}",
        t.data.name,
        t.train.len(),
        t.test.len(),
        t.data.classes.len(),
        s[0],
        s[1],
        s[2],
        t.model.spec.name,
        models::summary::thousands(t.model.parameter_count()),
        t.device
    );
    for note in &t.data.notes {
        eprintln!("data: {note}");
    }
    print_recipe(t);
    if let Some(g) = &t.dist {
        eprintln!(
            "data-parallel: {} rank(s) ({}, rendezvous through PyTorch's c10d), batch {} per \
             rank = global batch {}; the learning rate applies to the global batch; BatchNorm \
             statistics {}",
            g.world,
            g.backend.name(),
            t.rank_batch(),
            t.cfg.train.batch_size,
            if t.cfg.train.sync_bn {
                "over the global batch (train.sync_bn)"
            } else {
                "per rank (DDP's default; train.sync_bn = true for the global batch)"
            }
        );
    }
    let tr = &t.cfg.train;
    if loader::drops_single_image(t.train.len(), tr.batch_size, t.drop_last()) {
        eprintln!(
            "data: {} training images in batches of {} leave a last batch of 1 image; it is \
             left out of every epoch (BatchNorm cannot train on a single value per channel)",
            t.train.len(),
            tr.batch_size
        );
    }
    if let Some(tr) = &t.transfer {
        print_transfer(tr);
    }
    if !t.history.is_empty() {
        eprintln!("resuming after epoch {}", t.history.len());
    }
}

/// The settings that shape training, and where they came from.
fn print_recipe(t: &Trainer) {
    let c = &t.cfg;
    let augment: Vec<String> = c.augment.iter().map(|a| a.to_string()).collect();
    let augment = match augment.is_empty() {
        true => "none".to_string(),
        false => augment.join(", "),
    };
    let why = match &t.augment_reason {
        Some(why) => format!(" (from the data: {why})"),
        None => String::new(),
    };
    eprintln!(
        "recipe: {}; augment {augment}{why}; {} lr {} wd {}, {:?} schedule, epochs {}, batch {}",
        c.provenance.origin,
        c.optim.name,
        c.optim.lr,
        c.optim.weight_decay,
        c.schedule.kind,
        c.train.epochs,
        c.train.batch_size
    );
}

fn print_transfer(tr: &crate::transfer::TransferSummary) {
    if let Some(chosen) = &tr.chosen {
        eprintln!("{chosen}");
    }
    if let Some(w) = &tr.weights {
        eprintln!(
            "weights: {w} ({} tensors loaded{}{}; normalisation: {})",
            tr.loaded_tensors,
            if tr.replaced_head.is_empty() {
                String::new()
            } else {
                format!("; new head: {}", tr.replaced_head.join(", "))
            },
            if tr.not_loaded.is_empty() {
                String::new()
            } else {
                format!("; not loaded: {}", tr.not_loaded)
            },
            tr.normalisation
        );
    }
    let groups: Vec<String> = tr
        .groups
        .iter()
        .map(|g| {
            if g.frozen {
                format!("{} frozen", g.name)
            } else {
                format!("{} lr {:.2e}", g.name, g.lr)
            }
        })
        .collect();
    let bn = match (tr.groups.iter().any(|g| g.frozen), tr.train_bn) {
        (false, _) => "",
        (true, true) => "  (BatchNorm in frozen groups keeps training: train_bn = true)",
        (true, false) => "  (BatchNorm in frozen groups held in eval mode: train_bn = false)",
    };
    eprintln!("groups: {}{bn}", groups.join(", "));
}

/// The closing table.
pub fn print_summary(s: &TrainSummary, out: &Path) {
    let rows = [
        (
            "model",
            format!(
                "{} ({} parameters)",
                s.model,
                models::summary::thousands(s.parameters)
            ),
        ),
        (
            "data",
            format!(
                "{} ({} train / {} test images)",
                s.dataset, s.train_images, s.test_images
            ),
        ),
        ("epochs", s.epochs.to_string()),
        (
            "test accuracy",
            format!(
                "{:.2}% (top-5 {:.2}%)",
                100.0 * s.test_accuracy,
                100.0 * s.test_top5
            ),
        ),
        ("final train loss", format!("{:.4}", s.final_train_loss)),
        ("training time", fmt_seconds(s.train_seconds)),
        ("wall time", fmt_seconds(s.wall_seconds)),
        ("run folder", out.display().to_string()),
        ("report", RunDir::new(out).report().display().to_string()),
    ];
    eprintln!("\n── summary ──────────────────────────────────────────");
    for (k, v) in rows {
        eprintln!("{k:<18} {v}");
    }
}
