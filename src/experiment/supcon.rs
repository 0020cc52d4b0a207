//! `convkit experiment supcon-vs-ce`: when does contrastive pre-training plus a linear
//! classifier beat direct supervised training? One backbone and epoch budget; cross-entropy
//! against SupCon (and label-free SimCLR) pre-training followed by a linear probe,
//! (a) with 100%, 10% and 1% of the labels available to the classifier stage and
//! (b) with 20% and 40% of the training labels flipped at random; several seeds each.
//!
//! Fairness rules, stated in the report: every model sees the same training images for the
//! same number of epochs over the full subset. Cross-entropy on a label fraction f trains on the
//! labelled images for epochs / f epochs (the same number of images processed). SupCon's encoder
//! is pre-trained with every (possibly noisy) label of the subset, so in (a) only its linear
//! classifier is limited to the fraction; SimCLR's encoder sees no labels at all, which makes it
//! the label-scarce comparison proper.

use super::{Prior, Table, prior, write_report};
use crate::config;
use crate::config::Config;
use crate::contrastive::{embed, pretrain};
use crate::error::Result;
use crate::finetune::{self, FinetuneSummary, Strategy};
use crate::metrics;
use crate::train::{self, TrainSummary};
use crate::util::{fmt_seconds, mean_sd};
use crate::weights::RunDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Spec {
    /// Data, device, progress bars.
    pub run: super::Common,
    pub model: String,
    pub train_images: usize,
    pub test_images: usize,
    /// Epochs over the full training subset, for every method.
    pub epochs: usize,
    pub batch_size: usize,
    /// Label fractions available to the classifier stage.
    pub fractions: Vec<f64>,
    /// Fractions of flipped training labels.
    pub noise: Vec<f64>,
    pub seeds: usize,
    /// `cross-entropy`, `supcon`, `simclr`.
    pub methods: Vec<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            run: Default::default(),
            model: "resnet20".into(),
            train_images: 4000,
            test_images: 2000,
            epochs: 6,
            batch_size: 128,
            fractions: vec![1.0, 0.1, 0.01],
            noise: vec![0.2, 0.4],
            seeds: 3,
            methods: ["cross-entropy", "supcon", "simclr"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// One experimental condition.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Setting {
    labels: f64,
    noise: f64,
}

impl Setting {
    fn name(&self) -> String {
        if self.noise > 0.0 {
            format!("{}% noisy labels", pct(self.noise))
        } else {
            format!("{}% labels", pct(self.labels))
        }
    }
    fn tag(&self) -> String {
        if self.noise > 0.0 {
            format!("noise{}", pct(self.noise))
        } else {
            format!("labels{}", pct(self.labels))
        }
    }
}

fn pct(f: f64) -> String {
    let p = 100.0 * f;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `cross-entropy`, `supcon + linear probe` or `simclr + linear probe`.
    pub method: String,
    pub setting: String,
    pub label_fraction: f64,
    pub label_noise: f64,
    pub accuracy_mean: f64,
    /// Sample standard deviation over seeds (0 with one seed).
    pub accuracy_sd: f64,
    pub accuracies: Vec<f64>,
    /// Mean seconds per seed to produce the result, pre-training included.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub data: String,
    pub model: String,
    pub train_images: usize,
    pub test_images: usize,
    pub epochs: usize,
    pub seeds: usize,
    pub rows: Vec<Row>,
    /// The representation spaces of the seed-0 SupCon encoder and cross-entropy model.
    pub embedding: Vec<embed::SpaceRow>,
    pub seconds: f64,
}

fn settings(spec: &Spec) -> Vec<Setting> {
    let fractions = spec
        .fractions
        .iter()
        .map(|&labels| Setting { labels, noise: 0.0 });
    let noisy = spec
        .noise
        .iter()
        .map(|&noise| Setting { labels: 1.0, noise });
    fractions.chain(noisy).collect()
}

/// The supervised data and recipe of one setting: the subset, its labelled part, its noise.
fn ce_config(spec: &Spec, s: Setting, seed: u64, classes: usize) -> Result<Config> {
    let mut cfg = config::load(Some("quickstart"), &[])?;
    spec.run.apply(&mut cfg);
    cfg.data.train_limit = Some(spec.train_images);
    cfg.data.test_limit = Some(spec.test_images);
    cfg.data.label_noise = s.noise;
    cfg.model.name = spec.model.clone();
    cfg.train.seed = seed;
    cfg.train.eval_every = 0;
    cfg.train.epochs = spec.epochs;
    cfg.train.batch_size = spec.batch_size;
    if s.labels < 1.0 {
        let per_class = ((s.labels * spec.train_images as f64) / classes as f64)
            .round()
            .max(1.0) as usize;
        cfg.data.train_per_class = Some(per_class);
        // The same number of images processed as one full-subset run.
        cfg.train.epochs = (spec.epochs as f64 / s.labels).ceil() as usize;
        cfg.train.batch_size = spec.batch_size.min(per_class * classes);
    }
    Ok(cfg)
}

/// Contrastive pre-training on the whole subset (labels with the setting's noise for SupCon).
fn pretrain_config(spec: &Spec, method: &str, noise: f64, seed: u64) -> Result<Config> {
    let mut cfg = config::load(Some("cifar10-supcon"), &[])?;
    spec.run.apply(&mut cfg);
    cfg.data.train_limit = Some(spec.train_images);
    cfg.data.test_limit = Some(spec.test_images);
    cfg.data.label_noise = noise;
    cfg.model.name = spec.model.clone();
    cfg.train.seed = seed;
    cfg.train.epochs = spec.epochs;
    cfg.train.batch_size = spec.batch_size;
    cfg.contrastive.method = match method {
        "simclr" => crate::config::ContrastiveMethod::SimClr,
        _ => crate::config::ContrastiveMethod::SupCon,
    };
    cfg.contrastive.knn_every = spec.epochs;
    cfg.contrastive.embed_images = 0;
    Ok(cfg)
}

fn train_ce(spec: &Spec, cfg: Config, dir: &Path) -> Result<TrainSummary> {
    match prior(dir, &cfg)? {
        Prior::Done(s) => Ok(s),
        p => train::run(cfg, dir, &spec.run.options(&p)),
    }
}

fn pretrain_once(spec: &Spec, cfg: Config, dir: &Path) -> Result<pretrain::PretrainSummary> {
    match prior(dir, &cfg)? {
        Prior::Done(s) => Ok(s),
        p => pretrain::run(cfg, dir, &spec.run.options(&p)),
    }
}

/// A linear probe on the encoder in `encoder`, trained on exactly the images and labels the
/// cross-entropy run of the same setting and seed trains on.
fn probe(ce: &Config, encoder: &Path, dir: &Path) -> Result<FinetuneSummary> {
    let mut cfg = ce.clone();
    cfg.transfer.weights = Some(RunDir::new(encoder).checkpoint().display().to_string());
    cfg.train.epochs = 30;
    match prior(dir, &cfg)? {
        Prior::Done(s) => Ok(s),
        _ => finetune::run(cfg, Strategy::LinearProbe, dir, &Default::default()),
    }
}

/// Accuracies and seconds of one (method, setting) over the seeds.
#[derive(Default)]
struct Collected {
    accuracies: Vec<f64>,
    seconds: Vec<f64>,
}

struct Runner<'a> {
    spec: &'a Spec,
    out: &'a Path,
    classes: usize,
}

impl Runner<'_> {
    fn seed_dir(&self, seed: u64) -> PathBuf {
        self.out.join("runs").join(format!("seed{seed}"))
    }

    /// Every method in every setting for one seed: (method, setting) -> (accuracy, seconds).
    fn seed(&self, seed: u64) -> Result<Vec<(String, Setting, f64, f64)>> {
        let dir = self.seed_dir(seed);
        let mut results = vec![];
        for s in settings(self.spec) {
            let ce = ce_config(self.spec, s, seed, self.classes)?;
            for method in &self.spec.methods {
                eprintln!("── seed {seed}, {}: {method}", s.name());
                let (acc, secs) = match method.as_str() {
                    "cross-entropy" => {
                        let r =
                            train_ce(self.spec, ce.clone(), &dir.join(format!("ce-{}", s.tag())))?;
                        (r.test_accuracy, r.wall_seconds)
                    }
                    m @ ("supcon" | "simclr") => {
                        // SimCLR ignores labels, so one encoder serves every setting.
                        let noise = if m == "supcon" { s.noise } else { 0.0 };
                        let name = format!("{m}-pretrain-noise{}", pct(noise));
                        let cfg = pretrain_config(self.spec, m, noise, seed)?;
                        let pre = pretrain_once(self.spec, cfg, &dir.join(&name))?;
                        let p = probe(
                            &ce,
                            &dir.join(&name),
                            &dir.join(format!("{m}-probe-{}", s.tag())),
                        )?;
                        (p.test_accuracy, pre.wall_seconds + p.seconds)
                    }
                    other => {
                        return Err(crate::error::Error::Invalid(format!(
                            "unknown method '{other}' (cross-entropy, supcon, simclr)"
                        )));
                    }
                };
                eprintln!("   {:.2}% ({})", 100.0 * acc, fmt_seconds(secs));
                results.push((method.clone(), s, acc, secs));
            }
        }
        Ok(results)
    }
}

fn method_label(m: &str) -> String {
    match m {
        "cross-entropy" => m.to_string(),
        other => format!("{other} + linear probe"),
    }
}

pub fn run(spec: &Spec, out: &Path) -> Result<Summary> {
    crate::train::parallel::refuse_launch("convkit experiment")?;
    let start = Instant::now();
    if spec.seeds == 0 || spec.methods.is_empty() {
        return Err(crate::error::Error::Invalid(
            "supcon-vs-ce needs at least one seed and one method".into(),
        ));
    }
    crate::util::create_dir(&out.join("plots"))?;
    let probe_cfg = ce_config(
        spec,
        Setting {
            labels: 1.0,
            noise: 0.0,
        },
        0,
        1,
    )?;
    let classes = train::load_data(&probe_cfg, 32)?.classes.len();
    let runner = Runner { spec, out, classes };
    let mut all = vec![];
    for seed in 0..spec.seeds as u64 {
        all.extend(runner.seed(seed)?);
    }
    let mut rows = vec![];
    for s in settings(spec) {
        for m in &spec.methods {
            let mut c = Collected::default();
            for (_, _, acc, secs) in all.iter().filter(|(mm, ss, _, _)| mm == m && *ss == s) {
                c.accuracies.push(*acc);
                c.seconds.push(*secs);
            }
            let (mean, sd) = mean_sd(&c.accuracies);
            rows.push(Row {
                method: method_label(m),
                setting: s.name(),
                label_fraction: s.labels,
                label_noise: s.noise,
                accuracy_mean: mean,
                accuracy_sd: sd,
                accuracies: c.accuracies,
                seconds: mean_sd(&c.seconds).0,
            });
        }
    }
    let embedding = compare_spaces(spec, &runner)?;
    let summary = Summary {
        data: spec.run.data.clone(),
        model: spec.model.clone(),
        train_images: spec.train_images,
        test_images: spec.test_images,
        epochs: spec.epochs,
        seeds: spec.seeds,
        rows,
        embedding,
        seconds: start.elapsed().as_secs_f64(),
    };
    metrics::write_json(&out.join("summary.json"), &summary)?;
    report(out, &summary)?;
    Ok(summary)
}

/// The seed-0 clean SupCon encoder beside the seed-0 cross-entropy model on all labels.
fn compare_spaces(spec: &Spec, runner: &Runner) -> Result<Vec<embed::SpaceRow>> {
    let dir = runner.seed_dir(0);
    let candidates = [dir.join("supcon-pretrain-noise0"), dir.join("ce-labels100")];
    let runs: Vec<PathBuf> = candidates.into_iter().filter(|d| d.exists()).collect();
    if runs.is_empty() {
        return Ok(vec![]);
    }
    let e = embed::EmbedSpec {
        device: spec.run.device.clone(),
        ..Default::default()
    };
    Ok(embed::run(&runs, &runner.out.join("embed"), &e)?.rows)
}

pub fn table(s: &Summary) -> Table {
    let mut t = Table::new(&["setting", "method", "test accuracy", "per seed", "seconds"]);
    for r in &s.rows {
        let per_seed: Vec<String> = r
            .accuracies
            .iter()
            .map(|a| format!("{:.1}", 100.0 * a))
            .collect();
        t.rows.push(vec![
            r.setting.clone(),
            r.method.clone(),
            format!(
                "{:.2}% ± {:.2}",
                100.0 * r.accuracy_mean,
                100.0 * r.accuracy_sd
            ),
            per_seed.join(" / "),
            format!("{:.0}", r.seconds),
        ]);
    }
    t
}

/// Accuracy against label fraction (log scale) and against label noise, one line per method.
fn plots(out: &Path, s: &Summary) -> Result<()> {
    let methods: Vec<String> = s.rows.iter().fold(vec![], |mut v, r| {
        if !v.contains(&r.method) {
            v.push(r.method.clone());
        }
        v
    });
    let series = |x: fn(&Row) -> Option<f64>| -> Vec<(&str, Vec<(f64, f64)>)> {
        methods
            .iter()
            .map(|m| {
                let mut pts: Vec<(f64, f64)> = s
                    .rows
                    .iter()
                    .filter(|r| &r.method == m)
                    .filter_map(|r| Some((x(r)?, 100.0 * r.accuracy_mean)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (m.as_str(), pts)
            })
            .collect()
    };
    let chart = |file: &str, title: &str, axes: (&str, &str), data: &[(&str, Vec<(f64, f64)>)]| {
        crate::report::line_chart(&out.join("plots").join(file), title, axes, data)
            .map_err(|e| crate::error::Error::Invalid(e.to_string()))
    };
    chart(
        "labels.png",
        "test accuracy against labels available",
        ("log10 of the labelled percentage", "test accuracy (%)"),
        &series(|r| (r.label_noise == 0.0).then(|| (100.0 * r.label_fraction).log10())),
    )?;
    chart(
        "noise.png",
        "test accuracy against label noise",
        ("flipped labels (%)", "test accuracy (%)"),
        &series(|r| (r.label_fraction == 1.0).then_some(100.0 * r.label_noise)),
    )?;
    Ok(())
}

fn report(out: &Path, s: &Summary) -> Result<()> {
    plots(out, s)?;
    let intro = format!(
        "{model} on the first {n} training images of {data} (tested on {t}), {e} epochs over the \
         subset for every method, {seeds} seed(s). Cross-entropy: the quickstart recipe (SGD \
         one-cycle, crop + flip); on a label fraction f it trains on the labelled images for \
         epochs / f epochs, the same number of images processed. SupCon / SimCLR: the \
         cifar10-supcon recipe (two views, temperature 0.1), then a linear probe (L2 chosen by \
         cross-validation) on the frozen encoder, trained on exactly the images and labels the \
         cross-entropy run of the setting uses. SupCon's encoder is pre-trained with all (noisy \
         where stated) labels of the subset, so under a label fraction only its classifier is \
         limited; SimCLR's encoder uses no labels. Noise flips the stated share of training labels \
         to another class at random; test labels are clean.",
        model = s.model,
        n = s.train_images,
        data = s.data,
        t = s.test_images,
        e = s.epochs,
        seeds = s.seeds
    );
    let mut spaces = embed::table(&s.embedding);
    spaces.title = "Representation space (seed 0, all clean labels)".into();
    let mut plots = vec![
        "plots/labels.png".to_string(),
        "plots/noise.png".to_string(),
    ];
    plots.extend(s.embedding.iter().map(|r| format!("embed/{}", r.tsne)));
    let plots: Vec<&str> = plots.iter().map(String::as_str).collect();
    write_report(
        out,
        "convkit experiment supcon-vs-ce: contrastive pre-training + linear probe vs cross-entropy",
        &intro,
        &[&table(s), &spaces],
        &plots,
        &[
            embed::EXPLANATION.to_string(),
            format!("total time {}", fmt_seconds(s.seconds)),
        ],
    )?;
    Ok(())
}
