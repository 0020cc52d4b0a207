//! `convkit experiment ...`: comparisons of several runs in one report.

use crate::experiment::transfer;
use crate::train::progress;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ExperimentCommand {
    /// Pre-train on the CIFAR-10 animals, transfer to the vehicles with 25/100/400 labels per class
    Transfer(TransferArgs),
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    command: ExperimentCommand,
}

#[derive(Args, Debug)]
pub struct TransferArgs {
    /// CIFAR-10: a folder of the JPEG copy, the binary folder or .tar.gz, or `cifar10`
    #[arg(long)]
    data: String,
    #[arg(long, default_value = "resnet20")]
    model: String,
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
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value = "runs/experiment-transfer")]
    out: PathBuf,
}

pub fn experiment(a: ExperimentArgs) -> Result<()> {
    match a.command {
        ExperimentCommand::Transfer(t) => {
            let strategies = t
                .strategies
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<_>, String>>()
                .map_err(anyhow::Error::msg)?;
            let spec = transfer::Spec {
                data: t.data,
                model: t.model,
                pretrain_epochs: t.pretrain_epochs,
                epochs: t.epochs,
                budgets: t.budgets.clone(),
                strategies,
                seed: t.seed,
                device: t.device,
                progress: progress::wanted(),
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
