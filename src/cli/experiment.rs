//! `convkit experiment ...`: comparisons of several runs in one report.

use crate::experiment::{Common, residual, supcon, transfer};
use crate::util::progress;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Pre-train on the CIFAR-10 animals, transfer to the vehicles with 25/100/400 labels per class
    Transfer(TransferArgs),
    /// Plain vs residual nets of depth 20 and 56: loss curves, accuracy, gradients at init
    Residual(ResidualArgs),
    /// Cross-entropy vs SupCon/SimCLR + linear probe with 100/10/1% labels and 20/40% label noise
    SupconVsCe(SupconVsCeArgs),
}

#[derive(Args, Debug)]
pub struct SupconVsCeArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// Training images used (the first N of the fixed shuffled order)
    #[arg(long, default_value_t = 4000)]
    train_images: usize,
    #[arg(long, default_value_t = 2000)]
    test_images: usize,
    /// Epochs over the training subset, for every method
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Label fractions available to the classifier stage, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,0.1,0.01")]
    fractions: Vec<f64>,
    /// Fractions of flipped training labels, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.4")]
    noise: Vec<f64>,
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// cross-entropy, supcon, simclr (comma-separated)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cross-entropy,supcon,simclr"
    )]
    methods: Vec<String>,
    #[arg(long, default_value = "runs/experiment-supcon-vs-ce")]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ResidualArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Training images used (the first N)
    #[arg(long, default_value_t = 10_000)]
    train_images: usize,
    /// Test images evaluated after every epoch (the first N)
    #[arg(long, default_value_t = 2_000)]
    test_images: usize,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain20,resnet20,plain56,resnet56"
    )]
    models: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "runs/experiment-residual")]
    out: PathBuf,
}

/// The arguments every experiment takes.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// CIFAR-10: the JPEG folder copy, the binary folder or .tar.gz, or `cifar10`
    #[arg(long)]
    data: String,
    /// auto, cpu, cuda, cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
}

impl CommonArgs {
    fn common(self) -> Common {
        Common {
            data: self.data,
            device: self.device,
            progress: progress::wanted(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    command: ExperimentCommand,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Any registry model (`convkit list`)
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// Side the images are decoded to (32: CIFAR as stored); ImageNet-style models shrink
    /// their input 32x, so give them 64 or more
    #[arg(long, default_value_t = 32)]
    image_size: u32,
    #[arg(long, default_value_t = 6)]
    pretrain_epochs: usize,
    /// Epoch budget of every transfer strategy
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Labelled training images per class, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "25,100,400")]
    budgets: Vec<usize>,
    /// Strategies, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scratch,linear-probe,head-then-unfreeze,full"
    )]
    strategies: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "runs/experiment-transfer")]
    out: PathBuf,
}

pub fn experiment(a: ExperimentArgs) -> Result<()> {
    match a.command {
        ExperimentCommand::Residual(r) => {
            let spec = residual::Spec {
                run: r.common.common(),
                train_images: r.train_images,
                test_images: r.test_images,
                epochs: r.epochs,
                models: r.models,
                seed: r.seed,
            };
            let s = residual::run(&spec, &r.out)?;
            println!("{}", residual::table(&s).text());
            println!("report: {}", r.out.join("report.html").display());
        }
        ExperimentCommand::SupconVsCe(a) => {
            let spec = supcon::Spec {
                run: a.common.common(),
                model: a.model,
                train_images: a.train_images,
                test_images: a.test_images,
                epochs: a.epochs,
                batch_size: a.batch_size,
                fractions: a.fractions,
                noise: a.noise,
                seeds: a.seeds,
                methods: a.methods,
            };
            let s = supcon::run(&spec, &a.out)?;
            println!("{}", supcon::table(&s).text());
            println!("report: {}", a.out.join("report.html").display());
        }
        ExperimentCommand::Transfer(t) => {
            let strategies = t
                .strategies
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<_>, String>>()
                .map_err(anyhow::Error::msg)?;
            let spec = transfer::Spec {
                run: t.common.common(),
                model: t.model,
                image_size: t.image_size,
                pretrain_epochs: t.pretrain_epochs,
                epochs: t.epochs,
                budgets: t.budgets.clone(),
                strategies,
                seed: t.seed,
            };
            let s = transfer::run(&spec, &t.out)?;
            println!("{}", transfer::table(&s, &t.budgets).text());
            println!(
                "pre-training: {:.2}% on the animal test images; report: {}",
                100.0 * s.pretrain.test_accuracy,
                t.out.join("report.html").display()
            );
        }
    }
    Ok(())
}
