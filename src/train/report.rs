//! The classifier's run report: `plots/{loss,accuracy,lr,confusion}.png` and `report.html`
//! (headline numbers, transfer set-up, curves, confusion matrix, per-class accuracy, epochs,
//! the inspection block `convkit inspect` refreshes, and the config).

use super::TrainSummary;
use crate::config::Config;
use crate::metrics::{Confusion, EpochMetrics};
use crate::report::html::{escape, page};
use crate::weights::RunDir;
use std::path::Path;

/// Writes `plots/{loss,accuracy,lr,confusion}.png` and `report.html` into a run folder.
pub fn run_report(
    out: &Path,
    cfg: &Config,
    history: &[EpochMetrics],
    summary: &TrainSummary,
    confusion: &Confusion,
    classes: &[String],
) -> std::io::Result<()> {
    let plots = RunDir::new(out).plots();
    crate::util::create_dir(&plots)?;
    let series = |f: fn(&EpochMetrics) -> f64| crate::report::epoch_series(history, f);
    crate::report::line_chart(
        &plots.join("loss.png"),
        "loss",
        ("epoch", "cross-entropy"),
        &[
            ("train", series(|m| m.train_loss)),
            ("test", series(|m| m.test_loss.unwrap_or(f64::NAN))),
        ],
    )?;
    crate::report::line_chart(
        &plots.join("accuracy.png"),
        "accuracy",
        ("epoch", "accuracy"),
        &[
            ("train", series(|m| m.train_accuracy.unwrap_or(f64::NAN))),
            ("test", series(|m| m.test_accuracy.unwrap_or(f64::NAN))),
        ],
    )?;
    crate::report::line_chart(
        &plots.join("lr.png"),
        "learning rate",
        ("epoch", "lr (end of epoch)"),
        &[("lr", series(|m| m.lr))],
    )?;
    crate::report::confusion_chart(&plots.join("confusion.png"), confusion, classes)?;
    let html = render_html(
        cfg,
        history,
        summary,
        &crate::inspect::report::inspect_section(out),
    );
    crate::util::atomic_write_bytes(&RunDir::new(out).report(), html.as_bytes())
}

/// Weights, normalisation and the parameter groups with their rates.
fn transfer_html(t: &crate::transfer::TransferSummary) -> String {
    let groups: String = t
        .groups
        .iter()
        .map(|g| {
            let lr = if g.frozen {
                "frozen".to_string()
            } else {
                format!("{:.2e}", g.lr)
            };
            format!(
                "<tr><td>{}</td><td>{lr}</td><td>{}</td></tr>",
                escape(&g.name),
                crate::models::summary::thousands(g.parameters)
            )
        })
        .collect();
    format!(
        "<h2>Transfer</h2><p>weights: {} ({} tensors loaded{}); normalisation: {}; BatchNorm in \
         frozen groups {}{}</p><table><tr><th>group</th><th>learning rate</th><th>parameters</th></tr>{groups}</table>",
        escape(t.weights.as_deref().unwrap_or("none")),
        t.loaded_tensors,
        if t.replaced_head.is_empty() {
            String::new()
        } else {
            format!("; new head: {}", escape(&t.replaced_head.join(", ")))
        },
        escape(&t.normalisation),
        if t.train_bn {
            "keeps training (train_bn = true)"
        } else {
            "held in eval mode (train_bn = false)"
        },
        t.resize
            .map(|r| format!("; inputs resized to {r}x{r}"))
            .unwrap_or_default()
    )
}

fn render_html(cfg: &Config, history: &[EpochMetrics], s: &TrainSummary, inspect: &str) -> String {
    let headline = [
        (
            "model",
            format!(
                "{} ({} parameters)",
                s.model,
                crate::models::summary::thousands(s.parameters)
            ),
        ),
        (
            "data",
            format!(
                "{}: {} train, {} test images",
                s.dataset, s.train_images, s.test_images
            ),
        ),
        ("device", s.device.clone()),
        ("epochs", s.epochs.to_string()),
        ("test accuracy", format!("{:.2}%", 100.0 * s.test_accuracy)),
        ("test top-5", format!("{:.2}%", 100.0 * s.test_top5)),
        ("final train loss", format!("{:.4}", s.final_train_loss)),
        ("training time", crate::util::fmt_seconds(s.train_seconds)),
    ];
    let rows: String = headline
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{}</td></tr>", escape(v)))
        .collect();
    let per_class: String = s
        .per_class_accuracy
        .iter()
        .map(|(c, a)| format!("<tr><td>{}</td><td>{:.1}%</td></tr>", escape(c), 100.0 * a))
        .collect();
    let transfer = s.transfer.as_ref().map(transfer_html).unwrap_or_default();
    let epochs: String = history
        .iter()
        .map(|m| {
            format!(
                "<tr><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.5}</td><td>{:.1}</td><td>{:.0}</td></tr>",
                m.epoch,
                m.train_loss,
                m.test_loss.map_or("-".into(), |v| format!("{v:.4}")),
                percent_or_dash(m.train_accuracy),
                percent_or_dash(m.test_accuracy),
                m.lr,
                m.epoch_seconds,
                m.images_per_second
            )
        })
        .collect();
    let body = format!(
        r#"<table>{rows}</table>{transfer}
<h2>Curves</h2><img src="plots/loss.png"><img src="plots/accuracy.png"><img src="plots/lr.png">
<h2>Confusion matrix</h2><img src="plots/confusion.png">
<h2>Per-class accuracy</h2><table><tr><th>class</th><th>accuracy</th></tr>{per_class}</table>
<h2>Epochs</h2><table><tr><th>epoch</th><th>train loss</th><th>test loss</th><th>train acc</th><th>test acc</th><th>lr</th><th>seconds</th><th>img/s</th></tr>{epochs}</table>
{inspect}<h2>Config</h2><pre>{config}</pre>"#,
        config = escape(&cfg.to_toml()),
    );
    page(&format!("convkit run: {} on {}", s.model, s.dataset), &body)
}

/// `12.34%`, or `-` for a value that was not measured.
fn percent_or_dash(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}
