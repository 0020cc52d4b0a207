//! `convkit finetune`, `convkit lr-find`, `convkit weights`, and the transfer flags that every
//! training command accepts.

use super::train::{TrainArgs, quoted};
use crate::config;
use crate::finetune;
use crate::train::lr_find;
use crate::util::progress;
use crate::weights;
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug, Default)]
pub struct TransferArgs {
    /// Pretrained weights: a .pth, .safetensors or convkit checkpoint file, or torchvision
    /// weights by name (`convkit weights list`: the model's name, -v2 for IMAGENET1K_V2, or
    /// torchvision's own such as ResNet50_Weights.DEFAULT)
    #[arg(long)]
    weights: Option<String>,
    /// Key path of the state dict inside the weights file, '/'-separated (e.g. state_dict,
    /// checkpoint/model); found automatically when not given
    #[arg(long, value_name = "PATH")]
    weights_key: Option<String>,
    /// Remove this prefix from the file's tensor names (e.g. module.); found automatically
    /// when not given
    #[arg(long, value_name = "P")]
    strip_prefix: Option<String>,
    /// Refuse weights that do not fit exactly (a new head is always allowed)
    #[arg(long, value_name = "BOOL")]
    strict: Option<bool>,
    /// Groups to freeze, comma-separated (stem,layer1,...,head)
    #[arg(long, value_delimiter = ',')]
    freeze: Vec<String>,
    /// Freeze the first N groups
    #[arg(long)]
    freeze_to: Option<usize>,
    /// BatchNorm in frozen groups keeps training (default true, as fastai)
    #[arg(long, value_name = "BOOL")]
    train_bn: Option<bool>,
    /// Discriminative rates: the lowest group trains at lr / MULT (fastai's slice)
    #[arg(long)]
    lr_mult: Option<f64>,
    /// Explicit learning rate per group, first to last, comma-separated
    #[arg(long, value_delimiter = ',')]
    lr_groups: Vec<f64>,
    /// timm's layer-wise learning-rate decay
    #[arg(long)]
    layer_decay: Option<f64>,
    /// Upsample every batch to SIZE px on the device (e.g. 224 for ImageNet weights)
    #[arg(long)]
    resize: Option<i64>,
    /// The head's number of classes (checked against the data)
    #[arg(long)]
    classes: Option<i64>,
    /// auto (the weights' own), data or imagenet
    #[arg(long)]
    normalise: Option<String>,
}

impl TransferArgs {
    pub fn overrides(&self) -> Vec<String> {
        let mut o = super::Overrides::default();
        let list = |v: &[String]| (!v.is_empty()).then(|| format!("{v:?}"));
        o.set("transfer.weights", self.weights.as_deref().map(quoted));
        o.set(
            "transfer.weights_key",
            self.weights_key.as_deref().map(quoted),
        );
        o.set(
            "transfer.strip_prefix",
            self.strip_prefix.as_deref().map(quoted),
        );
        o.set("transfer.strict", self.strict.map(|v| v.to_string()));
        o.set("transfer.freeze", list(&self.freeze));
        o.set("transfer.freeze_to", self.freeze_to.map(|v| v.to_string()));
        o.set("transfer.train_bn", self.train_bn.map(|v| v.to_string()));
        o.set("transfer.lr_mult", self.lr_mult.map(|v| format!("{v:?}")));
        o.set(
            "transfer.lr_groups",
            (!self.lr_groups.is_empty()).then(|| format!("{:?}", self.lr_groups)),
        );
        o.set(
            "transfer.layer_decay",
            self.layer_decay.map(|v| format!("{v:?}")),
        );
        o.set("transfer.resize", self.resize.map(|v| v.to_string()));
        o.set("model.classes", self.classes.map(|v| v.to_string()));
        o.set("transfer.normalise", self.normalise.as_deref().map(quoted));
        o.0
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// scratch, linear-probe, head-then-unfreeze, partial:K (top K stages + head), full
    #[arg(long, default_value = "head-then-unfreeze")]
    strategy: String,
    /// head-then-unfreeze: epochs with the body frozen (default: a fifth of --epochs)
    #[arg(long)]
    head_epochs: Option<usize>,
    /// head-then-unfreeze: rate multiple for the head-only phase (default 10)
    #[arg(long)]
    head_lr_mult: Option<f64>,
    /// Benchmark: the linear probe (cold cache) against training the head through the frozen
    /// body for the same epochs; prints both times and the speed-up
    #[arg(long)]
    compare_frozen: bool,
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let strategy: finetune::Strategy = a.strategy.parse().map_err(anyhow::Error::msg)?;
    let cfg = config::load(
        Some(a.train.config.as_deref().unwrap_or("finetune")),
        &a.train.overrides(),
    )?;
    let out = a
        .train
        .out
        .clone()
        .unwrap_or_else(|| "runs/finetune".into());
    let opts = finetune::FinetuneOptions {
        head_epochs: a.head_epochs,
        head_lr_mult: a.head_lr_mult,
        run: a.train.options()?,
    };
    if a.compare_frozen {
        let r = finetune::probe_vs_frozen(&cfg, &out, &opts)?;
        println!(
            "linear probe on cached features: {:.1} s ({:.2}%); head through the frozen body: {:.1} s ({:.2}%); {} epochs, {} images",
            r.probe_seconds,
            100.0 * r.probe_accuracy,
            r.frozen_seconds,
            100.0 * r.frozen_accuracy,
            r.epochs,
            r.train_images
        );
        println!("probe speedup: {:.1}", r.speedup);
        return Ok(());
    }
    let s = finetune::run(cfg, strategy, &out, &opts)?;
    if !crate::dist::is_main() {
        return Ok(());
    }
    println!(
        "{}: test accuracy {:.2}% ({} training images, {} epochs, {:.1} s){}; {}",
        s.strategy,
        100.0 * s.test_accuracy,
        s.train_images,
        s.epochs,
        s.seconds,
        s.l2.map(|l| format!(", L2 {l:e} chosen by cross-validation"))
            .unwrap_or_default(),
        out.join("summary.json").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct LrFindArgs {
    #[command(flatten)]
    train: TrainArgs,
    #[arg(long, default_value_t = 1e-7)]
    start: f64,
    #[arg(long, default_value_t = 10.0)]
    end: f64,
    #[arg(long, default_value_t = 100)]
    steps: usize,
}

pub fn lr_find(a: LrFindArgs) -> Result<()> {
    if a.train.resume {
        anyhow::bail!(
            "lr-find cannot --resume: each range test starts from fresh (or --weights) weights"
        );
    }
    if !(a.start > 0.0 && a.end > a.start) {
        anyhow::bail!(
            "--start {} --end {}: the sweep rises from a positive start to a larger end",
            a.start,
            a.end
        );
    }
    let cfg = config::load(a.train.config.as_deref(), &a.train.overrides())?;
    let out = a.train.out.clone().unwrap_or_else(|| "runs/lr-find".into());
    let spec = lr_find::SweepSpec {
        start: a.start,
        end: a.end,
        steps: a.steps,
    };
    let r = lr_find::run(cfg, &spec, &out, progress::wanted())?;
    println!(
        "suggested learning rate {:.2e} (steepest descent; minimum/10: {:.2e}) after {} steps; plot: {}",
        r.suggested_lr,
        r.min_lr_over_10,
        r.losses.len(),
        out.join("plots").join("lr-find.png").display()
    );
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Fetch torchvision's official ImageNet weights into the cache (verified by SHA-256)
    Download { name: String },
    /// List every tensor (name, shape, dtype) of a .pth or .safetensors file
    Inspect {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The weights convkit knows by name
    List,
}

#[derive(Args, Debug)]
pub struct WeightsArgs {
    #[command(subcommand)]
    command: WeightsCommand,
}

pub fn weights(a: WeightsArgs) -> Result<()> {
    match a.command {
        WeightsCommand::Download { name } => {
            let path = weights::fetch(&name, progress::wanted())?;
            println!("{name}: {}", path.display());
        }
        WeightsCommand::Inspect { file, json } => {
            let info = weights::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(());
            }
            let width = info.iter().map(|i| i.name.len()).max().unwrap_or(4);
            let mut total = 0i64;
            for i in &info {
                total += i.shape.iter().product::<i64>();
                println!("{:<width$}  {:<8}  {:?}", i.name, i.dtype, i.shape);
            }
            println!(
                "{} tensors, {} values",
                info.len(),
                crate::models::summary::thousands(total)
            );
        }
        WeightsCommand::List => {
            print_pretrained();
        }
    }
    Ok(())
}

/// `convkit weights list`: torchvision's weight sets with their size, published accuracy and
/// the evaluation preprocessing that belongs to each.
fn print_pretrained() {
    use crate::models::summary::thousands;
    println!(
        "{:<22} {:>11} {:>6} {:>6}  {:<21} {:<13} torchvision",
        "name", "parameters", "top-1", "top-5", "eval preprocessing", "classifier"
    );
    for p in &weights::torchvision::PRETRAINED {
        let pre = format!(
            "{} -> {} {:?}",
            p.preprocess.resize, p.preprocess.crop, p.preprocess.interpolation
        )
        .to_lowercase();
        let default = if p.default { " (DEFAULT)" } else { "" };
        println!(
            "{:<22} {:>11} {:>6.2} {:>6.2}  {:<21} {:<13} {}{default}",
            p.name,
            thousands(p.parameters),
            p.top1,
            p.top5,
            pre,
            p.classifier,
            p.torchvision
        );
    }
    println!(
        "ImageNet-1K accuracy as torchvision publishes it; preprocessing: shorter side resized, \
         centre crop, ImageNet mean/std."
    );
    println!(
        "Use a name (or the torchvision name) with --weights or `convkit weights download`; \
         cache: {}",
        weights::weights_dir().display()
    );
}
