//! `convkit experiment transfer`: transfer inside CIFAR-10, where no ImageNet weights are
//! needed. A ResNet is pre-trained on the six animal classes (all their training images), then
//! adapted to the four vehicle classes with only 25, 100 or 400 labelled images per class and
//! evaluated on every vehicle test image. Training from scratch, a linear probe,
//! head-then-unfreeze and full fine-tuning get the same epoch budget and recipe.
//!
//! Every run keeps its folder under `out/`; a finished run made from the same config is not
//! repeated and an interrupted pre-training resumes, so a killed experiment continues where it
//! stopped.

use super::{Prior, Table, prior, write_report};
use crate::config;
use crate::config::Config;
use crate::error::Result;
use crate::finetune::{self, FinetuneOptions, FinetuneSummary, Strategy};
use crate::metrics;
use crate::train::{self, RunOptions};
use crate::util::fmt_seconds;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

pub const ANIMALS: [&str; 6] = ["bird", "cat", "deer", "dog", "frog", "horse"];
pub const VEHICLES: [&str; 4] = ["airplane", "automobile", "ship", "truck"];

#[derive(Debug, Clone)]
pub struct Spec {
    /// Data (a CIFAR-10 source whose class names include the animals and vehicles), device,
    /// progress bars.
    pub run: super::Common,
    pub model: String,
    /// Side the CIFAR images are decoded to, in pixels (32: as stored).
    pub image_size: u32,
    pub pretrain_epochs: usize,
    /// The epoch budget of every transfer strategy.
    pub epochs: usize,
    pub budgets: Vec<usize>,
    pub strategies: Vec<Strategy>,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            run: Default::default(),
            model: "resnet20".into(),
            image_size: 32,
            pretrain_epochs: 6,
            epochs: 30,
            budgets: vec![25, 100, 400],
            strategies: vec![
                Strategy::Scratch,
                Strategy::LinearProbe,
                Strategy::HeadThenUnfreeze,
                Strategy::Full,
            ],
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub strategy: String,
    pub labels_per_class: usize,
    pub accuracy: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pretrain {
    pub classes: Vec<String>,
    pub epochs: usize,
    pub train_images: usize,
    /// On the animal test images.
    pub test_accuracy: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub data: String,
    pub model: String,
    /// Side of the decoded images (summaries written before this field: 32).
    #[serde(default = "cifar_side")]
    pub image_size: u32,
    pub pretrain: Pretrain,
    pub target_classes: Vec<String>,
    pub epochs: usize,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

fn cifar_side() -> u32 {
    32
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The pre-training recipe: one-cycle SGD, crop + flip (the quickstart recipe's settings).
fn pretrain_config(spec: &Spec) -> Result<Config> {
    let mut cfg = config::load(Some("quickstart"), &[])?;
    spec.run.apply(&mut cfg);
    cfg.data.train_limit = None;
    cfg.data.classes = Some(names(&ANIMALS));
    cfg.model.name = spec.model.clone();
    cfg.data.image_size = Some(spec.image_size);
    cfg.train.epochs = spec.pretrain_epochs;
    cfg.train.eval_every = 0;
    cfg.train.seed = spec.seed;
    Ok(cfg)
}

/// The transfer recipe shared by every strategy (`finetune`, batch 32, test at the end).
fn transfer_config(spec: &Spec, weights: &Path, budget: usize) -> Result<Config> {
    let mut cfg = config::load(Some("finetune"), &[])?;
    spec.run.apply(&mut cfg);
    cfg.data.classes = Some(names(&VEHICLES));
    cfg.data.train_per_class = Some(budget);
    cfg.model.name = spec.model.clone();
    cfg.data.image_size = Some(spec.image_size);
    cfg.train.epochs = spec.epochs;
    cfg.train.batch_size = 32;
    cfg.train.drop_last = false;
    cfg.train.eval_every = 0;
    cfg.train.seed = spec.seed;
    cfg.transfer.weights = Some(weights.display().to_string());
    // Animals -> vehicles is a distant transfer: the earlier, more generic stages carry more
    // of it than the last (measured: 58.4% vs 52.5% at 25 images per class).
    cfg.transfer.probe_features = crate::config::ProbeFeatures::Stages;
    Ok(cfg)
}

fn pretrain(spec: &Spec, out: &Path) -> Result<Pretrain> {
    let dir = out.join("pretrain");
    let cfg = pretrain_config(spec)?;
    let s = match prior::<train::TrainSummary>(&dir, &cfg)? {
        Prior::Done(s) => s,
        p => {
            eprintln!(
                "── pre-training {} on the animal classes ({}) for {} epochs",
                spec.model,
                ANIMALS.join(", "),
                spec.pretrain_epochs
            );
            let opts = spec.run.options(&p);
            train::run(cfg, &dir, &opts)?
        }
    };
    Ok(Pretrain {
        classes: names(&ANIMALS),
        epochs: s.epochs,
        train_images: s.train_images,
        test_accuracy: s.test_accuracy,
        seconds: s.wall_seconds,
    })
}

fn transfer_run(spec: &Spec, out: &Path, strategy: Strategy, budget: usize) -> Result<Row> {
    let dir = out.join("runs").join(format!("{strategy}-{budget}"));
    let weights = crate::weights::RunDir::new(out.join("pretrain")).checkpoint();
    let cfg = transfer_config(spec, &weights, budget)?;
    // Rows are short: an interrupted one starts again.
    let s = match prior::<FinetuneSummary>(&dir, &cfg)? {
        Prior::Done(s) => s,
        _ => {
            eprintln!("── {strategy}, {budget} labelled images per class");
            let opts = FinetuneOptions {
                head_epochs: None,
                head_lr_mult: None,
                run: RunOptions {
                    progress: spec.run.progress,
                    ..Default::default()
                },
            };
            finetune::run(cfg, strategy, &dir, &opts)?
        }
    };
    eprintln!(
        "   {strategy} @ {budget}/class: {:.2}% in {}",
        100.0 * s.test_accuracy,
        fmt_seconds(s.seconds)
    );
    Ok(Row {
        strategy: strategy.to_string(),
        labels_per_class: budget,
        accuracy: s.test_accuracy,
        seconds: s.seconds,
    })
}

/// Runs the experiment into `out`: `summary.json`, `report.html`, `plots/accuracy.png`.
pub fn run(spec: &Spec, out: &Path) -> Result<Summary> {
    crate::train::parallel::refuse_launch("convkit experiment")?;
    let start = Instant::now();
    crate::util::create_dir(&out.join("plots"))?;
    let pre = pretrain(spec, out)?;
    let mut rows = Vec::new();
    for &budget in &spec.budgets {
        for &strategy in &spec.strategies {
            rows.push(transfer_run(spec, out, strategy, budget)?);
        }
    }
    let summary = Summary {
        data: spec.run.data.clone(),
        model: spec.model.clone(),
        image_size: spec.image_size,
        pretrain: pre,
        target_classes: names(&VEHICLES),
        epochs: spec.epochs,
        rows,
        seconds: start.elapsed().as_secs_f64(),
    };
    metrics::write_json(&out.join("summary.json"), &summary)?;
    report(spec, out, &summary)?;
    Ok(summary)
}

/// One row per strategy, one column per label budget.
pub fn table(summary: &Summary, budgets: &[usize]) -> Table {
    let mut header = vec!["strategy".to_string()];
    header.extend(budgets.iter().map(|b| format!("{b}/class")));
    header.push("seconds (all budgets)".into());
    let mut t = Table {
        title: String::new(),
        header,
        rows: vec![],
    };
    let mut strategies: Vec<&str> = Vec::new();
    for r in &summary.rows {
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    for s in strategies {
        let mine: Vec<&Row> = summary.rows.iter().filter(|r| r.strategy == s).collect();
        let mut row = vec![s.to_string()];
        for b in budgets {
            row.push(
                mine.iter()
                    .find(|r| r.labels_per_class == *b)
                    .map_or("-".into(), |r| format!("{:.2}%", 100.0 * r.accuracy)),
            );
        }
        row.push(format!(
            "{:.0}",
            mine.iter().map(|r| r.seconds).sum::<f64>()
        ));
        t.rows.push(row);
    }
    t
}

fn report(spec: &Spec, out: &Path, s: &Summary) -> Result<()> {
    let table = table(s, &spec.budgets);
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for r in &s.rows {
        let point = ((r.labels_per_class as f64).log10(), r.accuracy);
        match series.iter_mut().find(|(n, _)| *n == r.strategy) {
            Some((_, v)) => v.push(point),
            None => series.push((&r.strategy, vec![point])),
        }
    }
    crate::report::line_chart(
        &out.join("plots").join("accuracy.png"),
        "vehicle test accuracy vs labelled images",
        ("log10 labelled images per class", "test accuracy"),
        &series,
    )
    .map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
    let intro = format!(
        "{} pre-trained on the CIFAR-10 animal classes ({} images at {} px, {} epochs, {:.2}% on \
         the animal test images), then adapted to the vehicle classes ({}) with few labels; accuracy on all \
         vehicle test images. Every strategy: the same recipe (finetune) and {} epochs.",
        s.model,
        s.pretrain.train_images,
        s.image_size,
        s.pretrain.epochs,
        100.0 * s.pretrain.test_accuracy,
        VEHICLES.join(", "),
        s.epochs
    );
    let notes = vec![
        format!("total time {}", fmt_seconds(s.seconds)),
        "scratch: no pretrained weights; linear-probe: frozen body, cached features (every \
         stage's pooled output, concatenated), L2 chosen \
         by cross-validation; head-then-unfreeze: the head alone for a fifth of the epochs at 10x \
         the rate, then every layer at lr/2 with rates spread over 100x; full: every layer at one rate."
            .to_string(),
    ];
    write_report(
        out,
        "convkit experiment transfer: animals to vehicles",
        &intro,
        &[&table],
        &["plots/accuracy.png"],
        &notes,
    )?;
    Ok(())
}
