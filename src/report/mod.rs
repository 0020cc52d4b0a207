//! PNG charts (plotters, with an embedded DejaVu Sans so no system fonts are needed) and a
//! one-page HTML report per run.

use crate::metrics::Confusion;
use crate::metrics::EpochMetrics;
pub mod html;

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
