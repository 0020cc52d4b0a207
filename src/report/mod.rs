//! PNG charts (plotters, with an embedded DejaVu Sans so no system fonts are needed) and a
//! one-page HTML report per run.

use crate::metrics::Confusion;
use crate::metrics::EpochMetrics;
use crate::train::TrainSummary;
use crate::config::Config;
use plotters::prelude::*;
use std::path::Path;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: std::sync::Once = std::sync::Once::new();

fn ensure_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

#[derive(Debug, thiserror::Error)]
#[error("chart {path}: {problem}")]
pub struct ChartError {
    pub path: String,
    pub problem: String,
}

impl From<ChartError> for std::io::Error {
    fn from(e: ChartError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Draws into a temporary sibling (keeping the `.png` extension the encoder goes by) and
/// renames it over `path`: a kill while plotting never leaves an empty or half-drawn picture.
fn atomic_png(
    path: &Path,
    draw: impl FnOnce(&Path) -> Result<(), ChartError>,
) -> Result<(), ChartError> {
    crate::util::atomic_write(path, draw)
}

impl From<std::io::Error> for ChartError {
    fn from(e: std::io::Error) -> Self {
        ChartError {
            path: String::new(),
            problem: e.to_string(),
        }
    }
}

fn chart_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> ChartError + '_ {
    move |e| ChartError {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// Ten well-separated colours (matplotlib's tab10), for line series and class scatters.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A line chart of named (x, y) series, written atomically.
pub fn line_chart(
    path: &Path,
    title: &str,
    labels: (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    atomic_png(path, |tmp| {
        draw_line_chart(path, tmp, title, labels, series)
    })
}

fn draw_line_chart(
    path: &Path,
    tmp: &Path,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    ensure_font();
    let err = chart_err(path);
    let pts = series
        .iter()
        .flat_map(|(_, s)| s.iter())
        .filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = BitMapBackend::new(tmp, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let mut chart = builder
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(&err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(&err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// A 2-D scatter of `points`, one colour per class of `labels`, with a legend; written
/// atomically.
pub fn scatter_chart(
    path: &Path,
    title: &str,
    points: &[(f64, f64)],
    labels: &[i64],
    classes: &[String],
) -> Result<(), ChartError> {
    atomic_png(path, |tmp| {
        draw_scatter_chart(path, tmp, title, points, labels, classes)
    })
}

fn draw_scatter_chart(
    path: &Path,
    tmp: &Path,
    title: &str,
    points: &[(f64, f64)],
    labels: &[i64],
    classes: &[String],
) -> Result<(), ChartError> {
    ensure_font();
    let err = chart_err(path);
    let bounds = |axis: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = points
            .iter()
            .map(axis)
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        let pad = ((hi - lo) * 0.05).max(1e-6);
        (lo - pad)..(hi + pad)
    };
    let root = BitMapBackend::new(tmp, (720, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .build_cartesian_2d(bounds(|p| p.0), bounds(|p| p.1))
        .map_err(&err)?;
    for (k, name) in classes.iter().enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        let members = points
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l == k as i64)
            .map(|(&p, _)| Circle::new(p, 3, c.filled()));
        chart
            .draw_series(members)
            .map_err(&err)?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(&err)?;
    root.present().map_err(&err)?;
    Ok(())
}

/// A confusion-matrix heatmap: rows are true classes, columns predictions, colour the row share;
/// written atomically.
pub fn confusion_chart(
    path: &Path,
    confusion: &Confusion,
    classes: &[String],
) -> Result<(), ChartError> {
    atomic_png(path, |tmp| {
        draw_confusion_chart(path, tmp, confusion, classes)
    })
}

fn draw_confusion_chart(
    path: &Path,
    tmp: &Path,
    confusion: &Confusion,
    classes: &[String],
) -> Result<(), ChartError> {
    ensure_font();
    let err = chart_err(path);
    let k = classes.len().max(1);
    let cell = (560 / k).clamp(8, 48) as i32;
    let (left, top) = (130, 60);
    let size = (
        left as u32 + cell as u32 * k as u32 + 20,
        top as u32 + cell as u32 * k as u32 + 110,
    );
    let root = BitMapBackend::new(tmp, size).into_drawing_area();
    root.fill(&WHITE).map_err(&err)?;
    let font = ("sans-serif", 13).into_font();
    root.draw(&Text::new(
        "confusion matrix (rows: true class, columns: predicted)",
        (10, 15),
        ("sans-serif", 18),
    ))
    .map_err(&err)?;
    for (i, row) in confusion.counts.iter().enumerate() {
        let total: i64 = row.iter().sum::<i64>().max(1);
        for (j, &count) in row.iter().enumerate() {
            let share = count as f64 / total as f64;
            let shade = (255.0 * (1.0 - share)) as u8;
            let (x, y) = (left + j as i32 * cell, top + i as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                RGBColor(shade, shade, 255).filled(),
            ))
            .map_err(&err)?;
            if cell >= 28 {
                let colour = if share > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    count.to_string(),
                    (x + 3, y + cell / 3),
                    font.clone().color(&colour),
                ))
                .map_err(&err)?;
            }
        }
        let name = classes.get(i).map(String::as_str).unwrap_or("?");
        root.draw(&Text::new(
            name.to_string(),
            (5, top + i as i32 * cell + cell / 3),
            font.clone(),
        ))
        .map_err(&err)?;
    }
    for (j, name) in classes.iter().enumerate() {
        let pos = (left + j as i32 * cell + cell / 3, top + k as i32 * cell + 6);
        let style = font.clone().transform(FontTransform::Rotate90);
        root.draw(&Text::new(name.clone(), pos, style))
            .map_err(&err)?;
    }
    root.present().map_err(&err)?;
    Ok(())
}

/// (epoch, value) points of one metric, for line charts.
/// Epochs without a value (test metrics of epochs that were not evaluated) are left out.
pub fn epoch_series(history: &[EpochMetrics], f: fn(&EpochMetrics) -> f64) -> Vec<(f64, f64)> {
    history
        .iter()
        .map(|m| (m.epoch as f64, f(m)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// Writes `plots/{loss,accuracy,lr,confusion}.png` and `report.html` into a run folder.
pub fn run_report(
    out: &Path,
    cfg: &Config,
    history: &[EpochMetrics],
    summary: &TrainSummary,
    confusion: &Confusion,
    classes: &[String],
) -> std::io::Result<()> {
    let plots = out.join("plots");
    crate::util::create_dir(&plots)?;
    let series = |f: fn(&EpochMetrics) -> f64| epoch_series(history, f);
    line_chart(
        &plots.join("loss.png"),
        "loss",
        ("epoch", "cross-entropy"),
        &[
            ("train", series(|m| m.train_loss)),
            ("test", series(|m| m.test_loss.unwrap_or(f64::NAN))),
        ],
    )?;
    line_chart(
        &plots.join("accuracy.png"),
        "accuracy",
        ("epoch", "accuracy"),
        &[
            ("train", series(|m| m.train_accuracy.unwrap_or(f64::NAN))),
            ("test", series(|m| m.test_accuracy.unwrap_or(f64::NAN))),
        ],
    )?;
    line_chart(
        &plots.join("lr.png"),
        "learning rate",
        ("epoch", "lr (end of epoch)"),
        &[("lr", series(|m| m.lr))],
    )?;
    confusion_chart(&plots.join("confusion.png"), confusion, classes)?;
    let html = render_html(cfg, history, summary, &inspect_section(out));
    crate::util::atomic_write_bytes(&out.join("report.html"), html.as_bytes())
}

const INSPECT_START: &str = "<!--inspect-->";
const INSPECT_END: &str = "<!--/inspect-->";

/// The report's "Inspection" block: every picture `convkit inspect` left in `<run>/inspect/`,
/// grouped by command, and the shift table when one was measured. Empty when there are none.
pub fn inspect_section(run: &Path) -> String {
    let dir = run.join("inspect");
    // In the order they were made (a network's stages come out stem first), names to break ties.
    let mut dated: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let modified = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, e.file_name().into_string().ok()?))
        })
        .filter(|(_, n)| n.ends_with(".png"))
        .collect();
    dated.sort();
    let pictures: Vec<String> = dated.into_iter().map(|(_, n)| n).collect();
    let shift = shift_table_html(&dir.join("shift.json"));
    if pictures.is_empty() && shift.is_empty() {
        return format!("{INSPECT_START}{INSPECT_END}");
    }
    let kinds = [
        ("filters", "First-layer filters"),
        ("activations", "Most active feature maps per stage"),
        ("gradcam", "Grad-CAM (image, heat map of the class)"),
        ("shift", "Shift equivariance"),
    ];
    let mut html = String::from("<h2>Inspection</h2>");
    for (prefix, title) in kinds {
        let imgs: String = pictures
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| {
                format!(
                    "<figure><img src=\"inspect/{0}\"><figcaption>{0}</figcaption></figure>",
                    escape(n)
                )
            })
            .collect();
        if !imgs.is_empty() {
            html.push_str(&format!("<h3>{title}</h3>{imgs}"));
        }
        if prefix == "shift" {
            html.push_str(&shift);
        }
    }
    format!("{INSPECT_START}{html}{INSPECT_END}")
}

/// `shift.json` as a table: one row per stage, one column per shift.
fn shift_table_html(path: &Path) -> String {
    let Some(rows) = crate::util::read_json::<Vec<crate::inspect::shift::ShiftRow>>(path) else {
        return String::new();
    };
    let shifts = rows.first().map_or(0, |r| r.values.len());
    let head: String = (1..=shifts).map(|k| format!("<th>k={k}</th>")).collect();
    let body: String = rows
        .iter()
        .map(|r| {
            let cells: String = r
                .values
                .iter()
                .map(|v| format!("<td>{v:.3}</td>"))
                .collect();
            format!(
                "<tr><td>{}</td><td>{}</td>{cells}</tr>",
                escape(&r.layer),
                r.jump
            )
        })
        .collect();
    format!("<table><tr><th>layer</th><th>jump</th>{head}</tr>{body}</table>")
}

/// Replaces the inspection block of `<run>/report.html` with what `<run>/inspect/` holds now.
/// Returns false when the run has no report (a checkpoint outside a run folder).
pub fn refresh_inspect_section(run: &Path) -> std::io::Result<bool> {
    let path = run.join("report.html");
    let Ok(html) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let section = inspect_section(run);
    let updated = match (html.find(INSPECT_START), html.find(INSPECT_END)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &html[..a], &html[b + INSPECT_END.len()..])
        }
        // A report written before the block existed: put it before the config.
        _ => match html.find("<h2>Config</h2>") {
            Some(at) => format!("{}{section}{}", &html[..at], &html[at..]),
            None => return Ok(false),
        },
    };
    crate::util::atomic_write_bytes(&path, updated.as_bytes())?;
    Ok(true)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>convkit run: {model}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}img{{max-width:540px;margin:4px}}figure{{display:inline-block;margin:4px}}pre{{background:#f6f6f6;padding:1em}}</style>
</head><body><h1>convkit run: {model} on {data}</h1>
<table>{rows}</table>{transfer}
<h2>Curves</h2><img src="plots/loss.png"><img src="plots/accuracy.png"><img src="plots/lr.png">
<h2>Confusion matrix</h2><img src="plots/confusion.png">
<h2>Per-class accuracy</h2><table><tr><th>class</th><th>accuracy</th></tr>{per_class}</table>
<h2>Epochs</h2><table><tr><th>epoch</th><th>train loss</th><th>test loss</th><th>train acc</th><th>test acc</th><th>lr</th><th>seconds</th><th>img/s</th></tr>{epochs}</table>
{inspect}<h2>Config</h2><pre>{config}</pre></body></html>"#,
        model = escape(&s.model),
        data = escape(&s.dataset),
        config = escape(&cfg.to_toml()),
    )
}

/// `12.34%`, or `-` for a value that was not measured.
fn percent_or_dash(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}
