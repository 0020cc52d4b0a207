//! The command line: argument structures and a thin layer over the library.

mod experiment;
mod export;
mod inspect;
mod predict;
mod tools;
mod train;
mod transfer;

use clap::{Parser, Subcommand};

/// `section.key=value` config overrides collected from optional command-line flags.
#[derive(Debug, Default)]
pub struct Overrides(pub Vec<String>);

impl Overrides {
    /// Adds `key=value` when the flag was given.
    pub fn set(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value {
            self.0.push(format!("{key}={v}"));
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "convkit",
    version,
    about = "Image classification with convolutional networks: train, evaluate, inspect"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a small ResNet for a few minutes (CIFAR-10 if cached or downloadable, else synthetic data)
    Quickstart(train::QuickstartArgs),
    /// Train a model from a recipe, with any field overridden
    Train(train::TrainArgs),
    /// Supervised contrastive (or SimCLR) pre-training with a kNN monitor
    Supcon(train::SupconArgs),
    /// Linear probe on the frozen encoder of a run
    Probe(train::ProbeArgs),
    /// The representation space of runs: t-SNE, alignment/uniformity, class cosines, silhouette
    Embed(train::EmbedArgs),
    /// Adapt pretrained weights: linear-probe, head-then-unfreeze, partial:K, full (or scratch)
    Finetune(transfer::FinetuneArgs),
    /// Learning-rate range test: exponential sweep, plot, suggested rate
    LrFind(transfer::LrFindArgs),
    /// Download, list and inspect pretrained weights
    Weights(transfer::WeightsArgs),
    /// Comparisons of several runs with one report (transfer)
    Experiment(experiment::ExperimentArgs),
    /// How a trained CNN sees: filters, activations, Grad-CAM, shift equivariance
    Inspect(inspect::InspectArgs),
    /// Evaluate a run or checkpoint on its test data (or on --data)
    Eval(predict::EvalArgs),
    /// Classify image files and whole folders with a run: top-k per image, CSV or JSON
    Predict(predict::PredictArgs),
    /// Export a run for other runtimes: ONNX, TorchScript or safetensors with torchvision's names
    Export(export::ExportArgs),
    /// Layer-by-layer output shapes, parameters and FLOPs of a model
    Summary(tools::SummaryArgs),
    /// Download data sets or decode a source into the cache
    Data(tools::DataArgs),
    /// Training, inference and loader images/s
    Bench(tools::BenchArgs),
    /// List the shipped recipes and registered models
    List,
}

/// Parses the command line and runs it; errors reach the user as one clear message.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Quickstart(a) => train::quickstart(a),
        Command::Train(a) => train::train(a),
        Command::Supcon(a) => train::supcon(a),
        Command::Probe(a) => train::probe(a),
        Command::Embed(a) => train::embed(a),
        Command::Finetune(a) => transfer::finetune(a),
        Command::LrFind(a) => transfer::lr_find(a),
        Command::Weights(a) => transfer::weights(a),
        Command::Experiment(a) => experiment::experiment(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Eval(a) => predict::eval(a),
        Command::Predict(a) => predict::predict(a),
        Command::Export(a) => export::export(a),
        Command::Summary(a) => tools::summary(a),
        Command::Data(a) => tools::data(a),
        Command::Bench(a) => tools::bench(a),
        Command::List => tools::list(),
    }
}
