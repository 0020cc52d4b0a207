//! `convkit experiment residual`: He et al. 2016, section 4.2, on a CPU budget. Plain and
//! residual CIFAR networks of depth 20 and 56 (the same layers, with and without shortcuts)
//! train with one recipe; the report shows training loss and test accuracy per epoch and the
//! gradient norm of every convolution at initialisation, where the deep plain net's early
//! layers receive the weakest signal.

use super::{Prior, Table, prior, write_report};
use crate::augment::Augmenter;
use crate::config;
use crate::config::Config;
use crate::data::loader::DeviceSplit;
use crate::error::Result;
use crate::metrics;
use crate::models::{self, Ctx};
use crate::train;
use crate::util::{fmt_seconds, mix_seed};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

#[derive(Debug, Clone)]
pub struct Spec {
    /// Data, device, progress bars.
    pub run: super::Common,
    pub train_images: usize,
    /// Test images evaluated after every epoch (the first N).
    pub test_images: usize,
    pub epochs: usize,
    pub models: Vec<String>,
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            run: Default::default(),
            train_images: 10_000,
            test_images: 2_000,
            epochs: 5,
            models: ["plain20", "resnet20", "plain56", "resnet56"]
                .map(String::from)
                .to_vec(),
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub model: String,
    pub depth: usize,
    pub residual: bool,
    pub final_train_loss: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
    pub train_loss: Vec<f64>,
    pub test_curve: Vec<f64>,
    /// (convolution, gradient norm of its weight) at initialisation, input to output.
    pub init_gradient_norms: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub data: String,
    pub train_images: usize,
    pub epochs: usize,
    pub rows: Vec<Row>,
    pub seconds: f64,
}

/// The shared recipe: SGD momentum 0.9, lr 0.1 one-cycle, weight decay 1e-4 (He et al.'s rate
/// and decay), crop + flip, batch 128, test after every epoch.
fn recipe(spec: &Spec, model: &str) -> Result<Config> {
    let mut cfg = config::load(Some("quickstart"), &[])?;
    spec.run.apply(&mut cfg);
    cfg.data.train_limit = Some(spec.train_images);
    cfg.data.test_limit = Some(spec.test_images);
    cfg.model.name = model.to_string();
    cfg.train.epochs = spec.epochs;
    cfg.train.seed = spec.seed;
    cfg.optim.lr = 0.1;
    cfg.optim.weight_decay = 1e-4;
    Ok(cfg)
}

/// Gradient norm of every convolution weight for one batch of 128 training images at
/// initialisation, in forward order.
pub fn init_gradient_norms(cfg: &Config) -> Result<Vec<(String, f64)>> {
    let device = train::parse_device(&cfg.train.device)?;
    let data = train::load_data(cfg, 32)?;
    let spec = cfg.model.spec(data.classes.len() as i64, data.channels());
    tch::manual_seed(mix_seed(cfg.train.seed, 0xA11CE) as i64);
    let model = models::build(&spec, device)?;
    let aug = Augmenter::new(vec![], &data.mean, &data.std, device);
    let split = DeviceSplit::new(&data.train, device);
    let idx: Vec<i64> = (0..128.min(split.len() as i64)).collect();
    let (images, labels) = split.batch(&idx);
    // Training mode: BatchNorm normalises with batch statistics, as in the first step.
    let mut ctx = Ctx::tracing();
    ctx.train = true;
    let loss = model
        .forward(&aug.eval_batch(&images), &ctx)
        .cross_entropy_loss(&labels, None::<Tensor>, Reduction::Mean, -100, 0.0);
    loss.backward();
    let vars = model.vs.variables();
    Ok(ctx
        .take_trace()
        .into_iter()
        .filter(|l| l.kind == "conv")
        .filter_map(|l| {
            let g = vars.get(&format!("{}.weight", l.name))?.grad();
            Some((l.name, g.norm().to_kind(Kind::Double).double_value(&[])))
        })
        .collect())
}

fn depth_of(model: &str) -> usize {
    model
        .trim_start_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(0)
}

fn run_model(spec: &Spec, out: &Path, model: &str) -> Result<Row> {
    let dir = out.join("runs").join(model);
    let cfg = recipe(spec, model)?;
    let norms = init_gradient_norms(&cfg)?;
    let s: train::TrainSummary = match prior(&dir, &cfg)? {
        Prior::Done(s) => s,
        p => {
            eprintln!(
                "── {model}: {} images, {} epochs",
                spec.train_images, spec.epochs
            );
            let opts = spec.run.options(&p);
            train::run(cfg, &dir, &opts)?
        }
    };
    let history = metrics::read_jsonl(&crate::weights::RunDir::new(&dir).metrics())?;
    eprintln!(
        "   {model}: final training loss {:.4}, test {:.2}% in {}",
        s.final_train_loss,
        100.0 * s.test_accuracy,
        fmt_seconds(s.wall_seconds)
    );
    Ok(Row {
        model: model.to_string(),
        depth: depth_of(model),
        residual: !model.starts_with("plain"),
        final_train_loss: s.final_train_loss,
        test_accuracy: s.test_accuracy,
        seconds: s.wall_seconds,
        train_loss: history.iter().map(|m| m.train_loss).collect(),
        test_curve: history
            .iter()
            .map(|m| m.test_accuracy.unwrap_or(f64::NAN))
            .collect(),
        init_gradient_norms: norms,
    })
}

pub fn run(spec: &Spec, out: &Path) -> Result<Summary> {
    crate::train::parallel::refuse_launch("convkit experiment")?;
    let start = Instant::now();
    crate::util::create_dir(&out.join("plots"))?;
    let rows = spec
        .models
        .iter()
        .map(|m| run_model(spec, out, m))
        .collect::<Result<Vec<_>>>()?;
    let summary = Summary {
        data: spec.run.data.clone(),
        train_images: spec.train_images,
        epochs: spec.epochs,
        rows,
        seconds: start.elapsed().as_secs_f64(),
    };
    metrics::write_json(&out.join("summary.json"), &summary)?;
    report(out, &summary)?;
    Ok(summary)
}

pub fn table(s: &Summary) -> Table {
    let mut t = Table::new(&[
        "model",
        "depth",
        "shortcuts",
        "final train loss",
        "test accuracy",
        "first-conv grad norm at init",
        "seconds",
    ]);
    for r in &s.rows {
        t.rows.push(vec![
            r.model.clone(),
            r.depth.to_string(),
            if r.residual { "yes" } else { "no" }.into(),
            format!("{:.4}", r.final_train_loss),
            format!("{:.2}%", 100.0 * r.test_accuracy),
            r.init_gradient_norms
                .first()
                .map_or("-".into(), |(_, g)| format!("{g:.2e}")),
            format!("{:.0}", r.seconds),
        ]);
    }
    t
}

fn report(out: &Path, s: &Summary) -> Result<()> {
    let plots = out.join("plots");
    let curve = |f: fn(&Row) -> &Vec<f64>| -> Vec<(&str, Vec<(f64, f64)>)> {
        s.rows
            .iter()
            .map(|r| {
                let pts = f(r)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ((i + 1) as f64, *v))
                    .collect();
                (r.model.as_str(), pts)
            })
            .collect()
    };
    let chart =
        |file: &str, title: &str, axes: (&str, &str), series: &[(&str, Vec<(f64, f64)>)]| {
            crate::report::line_chart(&plots.join(file), title, axes, series)
                .map_err(|e| crate::error::Error::Invalid(e.to_string()))
        };
    chart(
        "train-loss.png",
        "training loss",
        ("epoch", "cross-entropy"),
        &curve(|r| &r.train_loss),
    )?;
    chart(
        "test-accuracy.png",
        "test accuracy",
        ("epoch", "accuracy"),
        &curve(|r| &r.test_curve),
    )?;
    let norms: Vec<(&str, Vec<(f64, f64)>)> = s
        .rows
        .iter()
        .map(|r| {
            let n = r.init_gradient_norms.len().max(2) as f64 - 1.0;
            let pts = r
                .init_gradient_norms
                .iter()
                .enumerate()
                .map(|(i, (_, g))| (i as f64 / n, g.max(1e-30).log10()))
                .collect();
            (r.model.as_str(), pts)
        })
        .collect();
    chart(
        "init-gradients.png",
        "gradient norm of each convolution at initialisation",
        (
            "relative depth (0 = first convolution)",
            "log10 gradient norm",
        ),
        &norms,
    )?;
    let intro = format!(
        "Plain and residual CIFAR networks (He et al. 2016, section 4.2) trained on the first {} \
         training images of {} for {} epochs with one recipe (SGD, lr 0.1 one-cycle, weight decay \
         1e-4, crop + flip, batch 128).",
        s.train_images, s.data, s.epochs
    );
    write_report(
        out,
        "convkit experiment residual: plain vs residual networks",
        &intro,
        &[&table(s)],
        &[
            "plots/train-loss.png",
            "plots/test-accuracy.png",
            "plots/init-gradients.png",
        ],
        &[format!("total time {}", fmt_seconds(s.seconds))],
    )?;
    Ok(())
}
