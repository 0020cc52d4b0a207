//! `convkit supcon`: contrastive pre-training of an encoder with a projection head, monitored
//! by weighted kNN accuracy on the test set, checkpointed and resumable like `train`.

use super::objective::Contrastive;
use crate::config::Config;
use crate::error::Result;
use crate::metrics::{self, EpochMetrics};
use crate::train::{self, RunOptions, Trainer};
use crate::util::fmt_seconds;
use crate::weights::RunDir;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub method: String,
    pub model: String,
    pub dataset: String,
    /// Processes that trained data-parallel (1: one process); `train.batch_size` is the batch
    /// over all of them.
    #[serde(default = "one")]
    pub ranks: usize,
    pub epochs: usize,
    pub train_images: usize,
    pub final_loss: f64,
    /// kNN test accuracy at each evaluation, in order.
    pub knn_accuracy: Vec<f64>,
    pub train_seconds: f64,
    pub wall_seconds: f64,
}

/// Pre-trains into `out` with the one training engine and the [`Contrastive`] objective;
/// writes metrics.jsonl (`knn_accuracy` on the epochs the monitor ran), checkpoints,
/// summary.json, plots and report.html.
///
/// # Errors
/// Everything `train::run` refuses, and a batch below 2.
pub fn run(cfg: Config, out: &Path, opts: &RunOptions) -> Result<PretrainSummary> {
    let wall = Instant::now();
    let _lock = match crate::dist::is_main() {
        true => Some(crate::util::RunLock::acquire(out)?),
        false => None,
    };
    let opts = &train::elastic_restart(opts, out);
    let cfg = train::effective_config(cfg, out, opts)?;
    let objective = Box::new(Contrastive::new(&cfg)?);
    let mut trainer = Trainer::with_objective(cfg, out, opts.resume, objective)?;
    train::print_start(&trainer);
    let c = trainer.cfg.contrastive.clone();
    let main = trainer.is_main();
    main.then(|| eprintln!(
        "{}: {} ({} train images, 2 views each), encoder {} -> {}-d features -> {}-d projection, temperature {}",
        c.method,
        trainer.data.name,
        trainer.splits().0.len(),
        trainer.model.spec.name,
        trainer.model.net.classifier().in_features(),
        c.head_out,
        c.temperature
    ));
    trainer.fit(opts)?;
    let history = &trainer.history;
    let summary = PretrainSummary {
        method: c.method.to_string(),
        model: trainer.model.spec.name.clone(),
        dataset: trainer.data.name.clone(),
        ranks: trainer.world(),
        epochs: history.len(),
        train_images: trainer.splits().0.len(),
        final_loss: history.last().map_or(f64::NAN, |m| m.train_loss),
        knn_accuracy: history.iter().filter_map(|m| m.knn_accuracy).collect(),
        train_seconds: history.last().map_or(0.0, |m| m.train_seconds),
        wall_seconds: wall.elapsed().as_secs_f64(),
    };
    // Every rank is done training; the report (with its embedding) is rank 0's alone.
    trainer.barrier()?;
    if !main {
        return Ok(summary);
    }
    metrics::write_json(&RunDir::new(out).summary(), &summary)?;
    write_plots(out, history, c.method.as_str())?;
    write_report(out, &summary, &trainer.cfg)?;
    eprintln!(
        "\n{} pre-training: {} epochs, final loss {:.4}, kNN accuracy {}; {} of training. Next: convkit probe {}",
        summary.method,
        summary.epochs,
        summary.final_loss,
        summary
            .knn_accuracy
            .iter()
            .map(|a| format!("{:.1}%", 100.0 * a))
            .collect::<Vec<_>>()
            .join(" -> "),
        fmt_seconds(summary.train_seconds),
        out.display()
    );
    Ok(summary)
}

fn one() -> usize {
    1
}

fn write_plots(out: &Path, history: &[EpochMetrics], method: &str) -> std::io::Result<()> {
    let plots = RunDir::new(out).plots();
    crate::util::create_dir(&plots)?;
    let series = |f: fn(&EpochMetrics) -> f64| crate::report::epoch_series(history, f);
    crate::report::line_chart(
        &plots.join("loss.png"),
        &format!("{method} loss"),
        ("epoch", "loss"),
        &[("train", series(|m| m.train_loss))],
    )?;
    crate::report::line_chart(
        &plots.join("knn.png"),
        "kNN test accuracy",
        ("epoch", "accuracy"),
        &[("kNN", series(|m| m.knn_accuracy.unwrap_or(f64::NAN)))],
    )?;
    Ok(())
}

/// `report.html`: the loss and kNN curves and, unless `contrastive.embed_images` is 0, the
/// representation space of the test set (`embed/`: the numbers of `convkit embed` and a t-SNE map).
fn write_report(out: &Path, s: &PretrainSummary, cfg: &Config) -> Result<()> {
    let mut plots = vec!["plots/loss.png".to_string(), "plots/knn.png".to_string()];
    let mut table = crate::report::html::Table::new(&["run"]);
    if cfg.contrastive.embed_images > 0 {
        let spec = super::embed::EmbedSpec {
            images: cfg.contrastive.embed_images,
            device: cfg.train.device.clone(),
            ..Default::default()
        };
        let e = super::embed::run(&[out.to_path_buf()], &out.join("embed"), &spec)?;
        plots.extend(e.rows.iter().map(|r| format!("embed/{}", r.tsne)));
        table = super::embed::table(&e.rows);
    }
    let knn: Vec<String> = s
        .knn_accuracy
        .iter()
        .map(|a| format!("{:.1}%", 100.0 * a))
        .collect();
    let intro = format!(
        "{} pre-training of {} on {} ({} images, {} epochs, {}): final loss {:.4}; weighted kNN \
         test accuracy (k = {}) {}. {}",
        s.method,
        s.model,
        s.dataset,
        s.train_images,
        s.epochs,
        fmt_seconds(s.train_seconds),
        s.final_loss,
        cfg.contrastive.knn_k,
        knn.join(" -> "),
        super::embed::EXPLANATION
    );
    let plots: Vec<&str> = plots.iter().map(String::as_str).collect();
    crate::report::html::write_report(
        out,
        &format!("convkit {}: {}", s.method, s.model),
        &intro,
        &[&table],
        &plots,
        &[format!(
            "convkit embed {} --compare <a cross-entropy run> puts another model beside these numbers.",
            out.display()
        )],
    )?;
    Ok(())
}
