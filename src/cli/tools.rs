//! `convkit summary`, `convkit data`, `convkit bench`, `convkit list`.

use crate::bench::{self, BenchSpec};
use crate::config;
use crate::data::{self, DataSpec, download};
use crate::metrics;
use crate::models::{self, ModelSpec, Stem, summary};
use crate::train;
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// Model name (see `convkit list`)
    model: String,
    #[arg(long, default_value_t = 10)]
    classes: i64,
    /// CxHxW; default 3x224x224 for ImageNet-stem ResNets, else 3x32x32
    #[arg(long)]
    input: Option<String>,
    /// imagenet or cifar (ResNet-18/34/50)
    #[arg(long)]
    stem: Option<Stem>,
}

/// The largest side `convkit summary` traces (a 4096 x 4096 image through a ResNet-50 needs
/// about 20 GB of activations at once).
const MAX_SIDE: i64 = 2048;

fn parse_input(s: &str) -> Result<[i64; 3]> {
    let v: Vec<i64> = s
        .split('x')
        .map(|p| p.trim().parse::<i64>())
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [c, h, w]
            if (1..=64).contains(c) && (1..=MAX_SIDE).contains(h) && (1..=MAX_SIDE).contains(w) =>
        {
            Ok([*c, *h, *w])
        }
        _ => bail!(
            "--input '{s}': expected CxHxW with 1 to 64 channels and sides of 1 to {MAX_SIDE} \
             pixels, for example 3x32x32"
        ),
    }
}

pub fn summary(a: SummaryArgs) -> Result<()> {
    let mut spec = ModelSpec::new(&a.model, a.classes);
    spec.stem = a.stem;
    let input = match &a.input {
        Some(s) => parse_input(s)?,
        None => {
            let n = spec.default_input_size();
            [3, n, n]
        }
    };
    spec.in_channels = input[0];
    let model = models::build(&spec, tch::Device::Cpu)?;
    model.check_input_shape(input[1], input[2])?;
    print!("{}", summary::summarise(&model, input).render(&a.model));
    Ok(())
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Fetch cifar10 or cifar100 into the data cache ($CONVKIT_DATA or ~/.cache/convkit)
    Download { name: String },
    /// Decode a source (into the cache) and print what it holds
    Info {
        source: String,
        #[arg(long)]
        format: Option<String>,
        #[arg(long, default_value_t = 32)]
        image_size: u32,
        /// Share of a single class tree held out as the test split (image folders)
        #[arg(long, default_value_t = 0.1)]
        val_split: f64,
        /// Leave out image files that do not decode (listed) instead of failing
        #[arg(long)]
        skip_broken: bool,
    },
}

pub fn data(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Download { name } => {
            let Some(remote) = download::cifar_remote(&name) else {
                bail!("unknown data set '{name}' (cifar10 or cifar100)");
            };
            let path =
                download::fetch(&remote, &data::data_dir(), crate::util::progress::wanted())?;
            println!("{name}: {} (checksum verified)", path.display());
        }
        DataCommand::Info {
            source,
            format,
            image_size,
            val_split,
            skip_broken,
        } => {
            let mut spec = DataSpec::new(&source);
            spec.format = format
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            spec.image_size = image_size;
            spec.val_split = val_split;
            spec.skip_broken = skip_broken;
            let t = Instant::now();
            let ds = data::load(&spec)?;
            let s = ds.train.image_shape();
            println!(
                "{}: {} train, {} test images of {}x{}x{}, {} classes ({:.2} s)",
                ds.name,
                ds.train.len(),
                ds.test.len(),
                s[0],
                s[1],
                s[2],
                ds.classes.len(),
                t.elapsed().as_secs_f64()
            );
            println!("classes: {}", ds.classes.join(", "));
            println!("mean {:?}\nstd  {:?}", ds.mean, ds.std);
            for note in &ds.notes {
                println!("{note}");
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, default_value = "net8")]
    model: String,
    #[arg(long, default_value_t = 128)]
    batch: i64,
    #[arg(long, default_value_t = 256)]
    infer_batch: i64,
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// cpu, cuda, cuda:N (default: cpu; with --recipe, the recipe's `auto`)
    #[arg(long)]
    device: Option<String>,
    /// Time whole training runs of a recipe (e.g. cifar10-airbench) from data loaded once onto
    /// the device: training plus the final test-time-augmented evaluation, as airbench times
    /// them; prints each run, then `recipe: acc=<mean> sd=<sd> seconds=<mean> runs=<N>`
    #[arg(long)]
    recipe: Option<String>,
    /// Runs of --recipe (seeds 0..N)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs of --recipe before the timed ones (1 on a GPU: cuDNN autotuning)
    #[arg(long, default_value_t = 0)]
    warmup_runs: usize,
    /// Data for --recipe (as `convkit train --data`)
    #[arg(long)]
    data: Option<String>,
    /// Accuracy whose time-to-reach --recipe reports (from the epochs it evaluates)
    #[arg(long, default_value_t = 0.8)]
    target: f64,
    /// Any config field of --recipe: --set train.epochs=8 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Keep weights and inputs in NCHW memory instead of channels-last
    #[arg(long)]
    nchw: bool,
    /// Time only the SupCon loss (forward + backward, 2 x 1024 x 128 features)
    #[arg(long)]
    supcon: bool,
    /// Time only feature extraction through the body (eval, no gradients), batch --infer-batch
    #[arg(long)]
    features: bool,
    /// Time contrastive pre-training steps (cifar10-supcon recipe, two views, --model resnet20)
    #[arg(long)]
    pretrain: bool,
    /// Input side in pixels
    #[arg(long, default_value_t = 32)]
    size: i64,
    /// Write summary.json here (with --recipe: runs.json and each run's metrics)
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if let Some(recipe) = &a.recipe {
        return bench_recipe(recipe, &a);
    }
    if a.supcon {
        let rate = bench::supcon_rate(1024, a.steps, a.warmup);
        println!(
            "supcon: {rate:.2} loss+grad/s ({:.2} ms each; 2x1024 128-d features, t = 0.1)",
            1000.0 / rate
        );
        return Ok(());
    }
    let spec = BenchSpec {
        model: a.model,
        batch: a.batch,
        infer_batch: a.infer_batch,
        steps: a.steps,
        warmup: a.warmup,
        size: a.size,
        classes: 10,
        device: train::parse_device(a.device.as_deref().unwrap_or("cpu"))?,
        channels_last: !a.nchw,
    };
    if a.pretrain {
        crate::util::tune_allocator();
        let rate = bench::pretrain_rate(&spec);
        println!(
            "pretrain: {rate:.1} img/s ({}, batch {} x 2 views, {} threads)",
            spec.model,
            spec.batch,
            tch::get_num_threads()
        );
        return Ok(());
    }
    if a.features {
        crate::util::tune_allocator();
        let rate = bench::features_rate(&spec);
        println!(
            "features: {rate:.1} img/s ({} at {}x{}, batch {}, {} threads)",
            spec.model,
            spec.size,
            spec.size,
            spec.infer_batch,
            tch::get_num_threads()
        );
        return Ok(());
    }
    let r = bench::run(&spec);
    println!(
        "model {} on {} ({} threads), batch {}",
        r.model, r.device, r.threads, r.batch
    );
    println!("train: {:.1} img/s", r.train_images_per_second);
    println!("infer: {:.1} img/s", r.infer_images_per_second);
    println!(
        "loader: {:.1} img/s ({:.1}x training)",
        r.loader_images_per_second,
        r.loader_images_per_second / r.train_images_per_second
    );
    if let Some(out) = a.out {
        crate::util::create_dir(&out)?;
        metrics::write_json(&out.join("summary.json"), &r)?;
    }
    Ok(())
}

fn bench_recipe(recipe: &str, a: &BenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs 0: --recipe needs at least one timed run");
    }
    if !(0.0..=1.0).contains(&a.target) {
        bail!(
            "--target {}: an accuracy between 0 and 1 (0.8 for 80%)",
            a.target
        );
    }
    let mut sets = super::Overrides::default();
    sets.set("data.source", a.data.as_deref().map(super::train::quoted));
    sets.set(
        "train.device",
        a.device.as_deref().map(super::train::quoted),
    );
    sets.0.extend(a.sets.iter().cloned());
    let cfg = config::load(Some(recipe), &sets.0)?;
    let device = train::parse_device(&cfg.train.device)?;
    if let tch::Device::Cuda(i) = device {
        println!(
            "device: cuda:{i} ({} GPU(s) visible)",
            tch::Cuda::device_count()
        );
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("bench-{recipe}")));
    let runs = bench::recipe_runs(
        &cfg,
        (a.warmup_runs, a.runs),
        a.target,
        &out,
        crate::util::progress::wanted(),
    )?;
    metrics::write_json(&out.join("runs.json"), &runs)?;
    let accs: Vec<f64> = runs.iter().map(|r| r.accuracy).collect();
    let secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let (acc, sd) = crate::util::mean_sd(&accs);
    let (seconds, _) = crate::util::mean_sd(&secs);
    println!(
        "recipe: acc={acc:.4} sd={sd:.4} seconds={seconds:.3} runs={}",
        runs.len()
    );
    let mut reached: Vec<f64> = runs.iter().filter_map(|r| r.time_to_target).collect();
    if !reached.is_empty() {
        reached.sort_by(f64::total_cmp);
        println!(
            "time_to_{:.0}: {:.2}",
            100.0 * a.target,
            reached[reached.len() / 2]
        );
    }
    Ok(())
}

pub fn list() -> Result<()> {
    println!("recipes (--config NAME):");
    for (name, text) in config::RECIPES {
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches('#')
            .trim();
        println!("  {name:<20} {first}");
    }
    println!("models:");
    for e in &models::REGISTRY {
        let stats = match e.normalisation {
            models::InputStats::Data => "data mean/std",
            models::InputStats::Imagenet => "ImageNet mean/std",
        };
        println!(
            "  {:<20} {} ({} px, {stats})",
            e.name, e.description, e.input_size
        );
    }
    Ok(())
}
