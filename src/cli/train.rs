//! `convkit train` and `convkit quickstart`.

use crate::config;
use crate::data::{data_dir, download};
use crate::train::{self, RunOptions};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A shipped recipe (see `convkit list`) or a TOML file
    #[arg(long)]
    pub config: Option<String>,
    /// Data: a CIFAR folder or .tar.gz, an image folder, an IDX folder, `synthetic`, `cifar10`
    #[arg(long)]
    data: Option<String>,
    /// Force the data format: cifar-binary, cifar-python, folder, idx, synthetic
    #[arg(long)]
    format: Option<String>,
    /// Model name (see `convkit list`)
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// auto, cpu, cuda, cuda:N
    #[arg(long)]
    device: Option<String>,
    /// Use only the first N training images
    #[arg(long)]
    train_limit: Option<usize>,
    /// Held-out fraction for a single image folder
    #[arg(long)]
    val_split: Option<f64>,
    /// Any config field: --set optim.momentum=0.85 --set 'augment=["flip"]' (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run folder (default runs/<command>)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    transfer: super::transfer::TransferArgs,
}

pub fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl TrainArgs {
    pub fn overrides(&self) -> Vec<String> {
        let mut o = super::Overrides::default();
        o.set("data.source", self.data.as_deref().map(quoted));
        o.set("data.format", self.format.as_deref().map(quoted));
        o.set("model.name", self.model.as_deref().map(quoted));
        o.set("train.epochs", self.epochs.map(|v| v.to_string()));
        o.set("train.batch_size", self.batch_size.map(|v| v.to_string()));
        o.set("optim.lr", self.lr.map(|v| format!("{v:?}")));
        o.set("train.seed", self.seed.map(|v| v.to_string()));
        o.set("train.device", self.device.as_deref().map(quoted));
        o.set("data.train_limit", self.train_limit.map(|v| v.to_string()));
        o.set("data.val_split", self.val_split.map(|v| format!("{v:?}")));
        o.0.extend(self.transfer.overrides());
        o.0.extend(self.sets.iter().cloned());
        o.0
    }
}

impl TrainArgs {
    /// Run options; with `--resume`, the command line's settings go with them, to be applied
    /// to the saved config or refused (never ignored).
    ///
    /// # Errors
    /// `--config` given with `--resume` (the run's own config is used).
    pub fn options(&self) -> Result<RunOptions> {
        if self.resume && self.config.is_some() {
            anyhow::bail!(
                "--config cannot be given with --resume: a resumed run continues with the config \
                 saved in its folder (change its length or rate with --epochs, --lr)"
            );
        }
        Ok(RunOptions {
            resume: self.resume,
            progress: crate::util::progress::wanted(),
            resume_settings: if self.resume {
                self.overrides()
            } else {
                Vec::new()
            },
            ..Default::default()
        })
    }
}

pub fn train(a: TrainArgs) -> Result<()> {
    let cfg = config::load(a.config.as_deref(), &a.overrides())?;
    let out = a.out.clone().unwrap_or_else(|| "runs/train".into());
    train::run(cfg, &out, &a.options()?)?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct SupconArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// supcon (labels define positives) or simclr (no labels)
    #[arg(long)]
    method: Option<String>,
    /// Contrastive temperature (default 0.1)
    #[arg(long)]
    temperature: Option<f64>,
    /// sgd, or lars (layer-wise trust ratio, for batches of 1024 and more)
    #[arg(long)]
    optimizer: Option<String>,
}

pub fn supcon(a: SupconArgs) -> Result<()> {
    let mut overrides = a.train.overrides();
    if let Some(m) = &a.method {
        overrides.push(format!("contrastive.method={}", quoted(m)));
    }
    if let Some(t) = a.temperature {
        overrides.push(format!("contrastive.temperature={t:?}"));
    }
    if let Some(o) = &a.optimizer {
        overrides.push(format!("optim.name={}", quoted(o)));
    }
    let cfg = config::load(
        Some(a.train.config.as_deref().unwrap_or("cifar10-supcon")),
        &overrides,
    )?;
    let out = a.train.out.clone().unwrap_or_else(|| "runs/supcon".into());
    let mut opts = a.train.options()?;
    if opts.resume {
        opts.resume_settings = overrides;
    }
    crate::contrastive::pretrain::run(cfg, &out, &opts)?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// A supcon run folder or checkpoint
    run: PathBuf,
    /// Epochs (default: 30 for the linear probe, the finetune recipe's 5 with --finetune)
    #[arg(long)]
    epochs: Option<usize>,
    /// Linear probe learning rate
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Train the encoder end to end with a new linear head instead of freezing it
    #[arg(long)]
    finetune: bool,
    /// Where summary.json and the feature cache go (default: the run folder's probe/, or
    /// finetune/ with --finetune)
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn probe(a: ProbeArgs) -> Result<()> {
    use crate::probe;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_folder(&a.run).join(if a.finetune { "finetune" } else { "probe" }));
    if a.finetune {
        return probe_finetune(&a, &out);
    }
    let spec = probe::ProbeSpec {
        epochs: a.epochs.unwrap_or(30),
        lr: a.lr,
        device: a.device.clone(),
    };
    let s = probe::run(&a.run, &out, &spec)?;
    println!(
        "linear probe on frozen {}-d features: test accuracy {:.2}% (train {:.2}%), {} epochs, L2 {:e} chosen by cross-validation, {:.1} s; {}",
        s.feature_dim,
        100.0 * s.test_accuracy,
        100.0 * s.train_accuracy,
        s.epochs,
        s.l2,
        s.seconds,
        out.join("summary.json").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A run folder or checkpoint (contrastive or cross-entropy)
    run: PathBuf,
    /// Runs to show side by side (for example a cross-entropy run with the same backbone)
    #[arg(long, num_args = 1..)]
    compare: Vec<PathBuf>,
    /// Test images to embed (t-SNE costs grow with the square)
    #[arg(long, default_value_t = 1000)]
    images: usize,
    #[arg(long, default_value_t = 30.0)]
    perplexity: f64,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder (default: the run folder's embed/)
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn embed(a: EmbedArgs) -> Result<()> {
    use crate::contrastive::embed;
    crate::train::parallel::refuse_launch("convkit embed")?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| run_folder(&a.run).join("embed"));
    let spec = embed::EmbedSpec {
        images: a.images,
        tsne: crate::analysis::embedding::TsneSpec {
            perplexity: a.perplexity,
            ..Default::default()
        },
        device: a.device.clone(),
        ..Default::default()
    };
    let runs: Vec<PathBuf> = std::iter::once(a.run.clone()).chain(a.compare).collect();
    let s = embed::run(&runs, &out, &spec)?;
    println!("{}", embed::table(&s.rows).text());
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

/// The run folder of a run folder or of a checkpoint inside one; for a checkpoint file outside
/// a run folder, the folder it lies in.
fn run_folder(run: &std::path::Path) -> PathBuf {
    use crate::weights::RunDir;
    if run.is_dir() {
        return run.to_path_buf();
    }
    match RunDir::of_checkpoint(run) {
        Some(d) => d.root,
        None => run.parent().map(PathBuf::from).unwrap_or_default(),
    }
}

/// `probe --finetune`: the whole encoder and a new head trained on the run's data.
fn probe_finetune(a: &ProbeArgs, out: &std::path::Path) -> Result<()> {
    use crate::finetune;
    let mut cfg = crate::probe::finetune_config(&a.run, a.epochs)?;
    cfg.train.device = a.device.clone();
    let opts = finetune::FinetuneOptions {
        head_epochs: None,
        head_lr_mult: None,
        run: RunOptions {
            progress: crate::util::progress::wanted(),
            ..Default::default()
        },
    };
    let s = finetune::run(cfg, finetune::Strategy::Full, out, &opts)?;
    println!(
        "end-to-end fine-tuning of the encoder: test accuracy {:.2}%, {} epochs, {:.1} s; {}",
        100.0 * s.test_accuracy,
        s.epochs,
        s.seconds,
        out.join("summary.json").display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    #[arg(long)]
    epochs: Option<usize>,
    /// Do not try to download CIFAR-10
    #[arg(long)]
    offline: bool,
}

/// CIFAR-10 from the cache or a download; otherwise the synthetic set, said in one line.
fn quickstart_source(offline: bool) -> String {
    if download::cached_archive("cifar10").is_some() {
        return "cifar10".into();
    }
    if !offline {
        let remote = download::cifar_remote("cifar10").expect("cifar10 is known");
        match download::fetch(&remote, &data_dir(), crate::util::progress::wanted()) {
            Ok(_) => return "cifar10".into(),
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                eprintln!(
                    "CIFAR-10 is not in the data cache and could not be downloaded ({first}); using the built-in synthetic data set."
                );
            }
        }
    }
    "synthetic".into()
}

pub fn quickstart(a: QuickstartArgs) -> Result<()> {
    let source = quickstart_source(a.offline);
    let mut overrides = vec![format!("data.source={}", quoted(&source))];
    if let Some(e) = a.epochs {
        overrides.push(format!("train.epochs={e}"));
    }
    let cfg = config::load(Some("quickstart"), &overrides)?;
    let opts = RunOptions {
        progress: crate::util::progress::wanted(),
        ..Default::default()
    };
    train::run(cfg, &a.out, &opts)?;
    Ok(())
}
