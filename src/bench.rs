//! `convkit bench`: training and inference images/s of a model, and the loader's images/s on
//! its own, measured after warm-up. `bench/pytorch_reference.py` runs the same measurement in
//! PyTorch and `bench/compare-cpu.sh` puts the two side by side.

use crate::augment::{Aug, Augmenter};
use crate::data::Split;
use crate::data::loader::{self, DeviceSplit};
use crate::models::{self, Ctx, ModelSpec};
use crate::optim::{OptimConfig, Optimizer};
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub model: String,
    pub batch: i64,
    pub infer_batch: i64,
    pub steps: usize,
    pub warmup: usize,
    pub size: i64,
    pub classes: i64,
    pub device: Device,
    pub channels_last: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub device: String,
    pub threads: i32,
    pub batch: i64,
    pub train_images_per_second: f64,
    pub infer_images_per_second: f64,
    pub loader_images_per_second: f64,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The model and a random input batch, in the layout training uses.
fn model_and_input(s: &BenchSpec, batch: i64) -> (models::Model, Tensor) {
    tch::manual_seed(0);
    let mut model =
        models::build(&ModelSpec::new(&s.model, s.classes), s.device).expect("bench model builds");
    let mut x = Tensor::randn([batch, 3, s.size, s.size], (Kind::Float, s.device));
    if s.channels_last {
        model.to_channels_last();
        x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    }
    (model, x)
}

fn timed(device: Device, warmup: usize, steps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..steps {
        f();
    }
    sync(device);
    t.elapsed().as_secs_f64()
}

/// Forward + cross-entropy + backward + SGD-momentum step, as the PyTorch reference does.
pub fn train_rate(s: &BenchSpec) -> f64 {
    let (model, x) = model_and_input(s, s.batch);
    let cfg = OptimConfig {
        nesterov: false,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&model.vs, &cfg).expect("sgd");
    let y = Tensor::randint(s.classes, [s.batch], (Kind::Int64, s.device));
    let secs = timed(s.device, s.warmup, s.steps, || {
        let loss = model.forward(&x, &Ctx::train()).cross_entropy_loss(
            &y,
            None::<Tensor>,
            Reduction::Mean,
            -100,
            0.0,
        );
        opt.zero_grad();
        loss.backward();
        opt.step(0.01);
    });
    (s.batch as usize * s.steps) as f64 / secs
}

pub fn infer_rate(s: &BenchSpec) -> f64 {
    let (model, x) = model_and_input(s, s.infer_batch);
    let secs = timed(s.device, s.warmup, s.steps, || {
        tch::no_grad(|| {
            let _ = model.forward(&x, &Ctx::eval());
        });
    });
    (s.infer_batch as usize * s.steps) as f64 / secs
}

/// Pooled body features (`Network::features`, eval mode, no gradients): what a linear probe
/// or transfer set-up computes once per image.
pub fn features_rate(s: &BenchSpec) -> f64 {
    let (model, x) = model_and_input(s, s.infer_batch);
    let secs = timed(s.device, s.warmup, s.steps, || {
        tch::no_grad(|| {
            let _ = model.net.features(&x, &Ctx::eval());
        });
    });
    (s.infer_batch as usize * s.steps) as f64 / secs
}

/// The training input pipeline alone: shuffle, gather, crop + flip, normalise.
pub fn loader_rate(s: &BenchSpec) -> f64 {
    let n = 10_000;
    let split = Split {
        images: Tensor::randint(256, [n, s.size, s.size, 3], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::randint(s.classes, [n], (Kind::Int64, Device::Cpu)),
    };
    let data = DeviceSplit::new(&split, s.device);
    let aug = Augmenter::new(
        vec![
            Aug::Crop {
                pad: 4,
                reflect: false,
            },
            Aug::Flip,
        ],
        &[0.5; 3],
        &[0.25; 3],
        s.device,
    );
    let order = loader::epoch_order(n as usize, 0, 0);
    let batches = loader::batches(&order, s.batch as usize, true);
    let mut rng = StdRng::seed_from_u64(0);
    let mut i = 0;
    let secs = timed(s.device, s.warmup, s.steps, || {
        let (images, _) = data.batch(batches[i % batches.len()]);
        let _ = aug.train_batch(&images, &mut rng);
        i += 1;
    });
    (s.batch as usize * s.steps) as f64 / secs
}

/// SupCon loss forward + backward for `2 x batch` L2-normalised 128-d features, in loss
/// evaluations per second (the PyTorch reference times the reference formula the same way).
pub fn supcon_rate(batch: i64, steps: usize, warmup: usize) -> f64 {
    use crate::contrastive::{ContrastMode, supcon_loss};
    tch::manual_seed(0);
    let x = Tensor::randn([batch, 2, 128], (Kind::Float, Device::Cpu));
    let x = (&x / x.norm_scalaropt_dim(2, [2i64].as_slice(), true)).set_requires_grad(true);
    let labels = Tensor::randint(10, [batch], (Kind::Int64, Device::Cpu));
    let secs = timed(Device::Cpu, warmup, steps, || {
        let loss = supcon_loss(&x, Some(&labels), 0.1, ContrastMode::All).expect("valid batch");
        loss.backward();
    });
    steps as f64 / secs
}

/// Contrastive pre-training images/s with the `cifar10-supcon` recipe (ResNet-20 unless `model`
/// says otherwise): the whole step of `convkit supcon` (two augmented views of a random u8
/// batch, encoder, projection head, SupCon loss, backward, SGD), each image counted once.
pub fn pretrain_rate(s: &BenchSpec) -> f64 {
    use crate::contrastive::objective::Contrastive;
    use crate::train::objective::{Objective, optimise};
    let mut cfg = crate::config::load(Some("cifar10-supcon"), &[]).expect("shipped recipe parses");
    cfg.model.name = s.model.clone();
    cfg.train.channels_last = s.channels_last;
    let spec = cfg.model.spec(s.classes, 3);
    let mut model = crate::models::build(&spec, s.device).expect("bench model builds");
    let mut objective = Contrastive::new(&cfg).expect("the recipe's batch is valid");
    objective
        .extend_model(&mut model, &cfg)
        .expect("the projection head fits");
    if s.channels_last {
        model.to_channels_last();
    }
    let mut optim = crate::optim::Optimizer::new(&model.vs, &cfg.optim).expect("sgd");
    let augmenter = Augmenter::new(cfg.augment.clone(), &[0.5; 3], &[0.25; 3], s.device);
    let images = Tensor::randint(256, [s.batch, s.size, s.size, 3], (Kind::Uint8, s.device));
    let labels = Tensor::randint(s.classes, [s.batch], (Kind::Int64, s.device));
    let ctx = crate::models::Ctx::train();
    let mut rng = StdRng::seed_from_u64(0);
    let secs = timed(s.device, s.warmup, s.steps, || {
        let loss = objective
            .loss(
                &model,
                &augmenter,
                (&images, &labels),
                &mut rng,
                &ctx,
                false,
            )
            .expect("a valid contrastive batch");
        optimise(&mut optim, &loss, cfg.optim.lr, None).expect("no collective in one process");
    });
    (s.batch as usize * s.steps) as f64 / secs
}

pub fn run(s: &BenchSpec) -> BenchResult {
    crate::util::tune_allocator();
    BenchResult {
        model: s.model.clone(),
        device: format!("{:?}", s.device),
        threads: tch::get_num_threads(),
        batch: s.batch,
        train_images_per_second: train_rate(s),
        infer_images_per_second: infer_rate(s),
        loader_images_per_second: loader_rate(s),
    }
}

/// One timed run of a recipe (`convkit bench --recipe`).
#[derive(Debug, Clone, Serialize)]
pub struct RecipeRun {
    pub seed: u64,
    /// Final test accuracy, with the recipe's test-time augmentation.
    pub accuracy: f64,
    /// As airbench times a run: set-up on the device (whitening included), the training
    /// epochs and the final evaluation, each ended by a device synchronisation. Evaluations
    /// after earlier epochs are left out.
    pub seconds: f64,
    /// Training seconds until the first evaluated epoch at or above the target accuracy.
    pub time_to_target: Option<f64>,
    /// (test accuracy, cumulative training seconds) after each evaluated epoch.
    pub epochs: Vec<(f64, f64)>,
}

/// Runs `cfg` `runs` times (seeds 0..runs) from data loaded once and kept on the device, after
/// `warmup` untimed runs (seeds from 1000; cuDNN autotuning, as airbench warms up); each run
/// writes its metrics under `out/run-<seed>` (no checkpoints).
pub fn recipe_runs(
    cfg: &crate::config::Config,
    (warmup, runs): (usize, usize),
    target: f64,
    out: &std::path::Path,
    progress: bool,
) -> crate::error::Result<Vec<RecipeRun>> {
    use crate::train::{self, RunOptions, Trainer};
    let (data, on_device) = train::load_onto_device(cfg)?;
    let device = on_device.0.images.device();
    let opts = RunOptions {
        progress,
        no_checkpoints: true,
        ..Default::default()
    };
    let mut results = Vec::new();
    let seeds = (1000..1000 + warmup as u64).chain(0..runs as u64);
    for seed in seeds {
        let mut cfg = cfg.clone();
        cfg.train.seed = seed;
        let splits = (on_device.0.share(), on_device.1.share());
        sync(device);
        let start = Instant::now();
        let objective = Box::new(crate::train::classify::CrossEntropy::new(&cfg));
        let mut trainer = Trainer::with_data(
            cfg,
            data.share(),
            splits,
            &out.join(format!("run-{seed}")),
            false,
            objective,
        )?;
        sync(device);
        let setup = start.elapsed().as_secs_f64();
        trainer.fit(&opts)?;
        let accuracy = trainer
            .last_eval
            .as_ref()
            .and_then(|e| e.accuracy)
            .unwrap_or(f64::NAN);
        let epochs: Vec<(f64, f64)> = trainer
            .history
            .iter()
            .filter_map(|m| Some((m.test_accuracy?, m.train_seconds)))
            .collect();
        let run = RecipeRun {
            seed,
            accuracy,
            seconds: setup
                + trainer.history.last().map_or(0.0, |m| m.train_seconds)
                + trainer.eval_seconds,
            time_to_target: epochs.iter().find(|e| e.0 >= target).map(|e| e.1),
            epochs,
        };
        eprintln!(
            "{} {seed}: acc={:.4} seconds={:.3} time_to_{:.0}={}",
            if seed < 1000 { "run" } else { "warm-up run" },
            run.accuracy,
            run.seconds,
            100.0 * target,
            run.time_to_target
                .map_or("not reached".into(), |t| format!("{t:.2}"))
        );
        if seed < 1000 {
            results.push(run);
        }
    }
    Ok(results)
}
