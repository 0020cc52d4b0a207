//! Experiments: several runs under one folder, compared in a table, a plot, `summary.json` and
//! `report.html`. Each run keeps its own run folder (checkpoints, metrics, report) inside.

pub mod residual;
pub mod supcon;
pub mod transfer;

use crate::train::Result;
use crate::config::Config;
use crate::util::{atomic_write_bytes, read_json};
use serde::Deserialize;
use std::path::Path;

/// What every experiment needs to know besides its own design: the data, the device and whether
/// to draw progress bars.
#[derive(Debug, Clone)]
pub struct Common {
    pub data: String,
    pub device: String,
    pub progress: bool,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            data: "cifar10".into(),
            device: "auto".into(),
            progress: false,
        }
    }
}

impl Common {
    /// Points a run's config at the experiment's data and device.
    pub fn apply(&self, cfg: &mut Config) {
        cfg.data.source = self.data.clone();
        cfg.data.format = None;
        cfg.train.device = self.device.clone();
    }

    /// Options for a run folder in the state `prior` found it.
    pub fn options<T>(&self, prior: &Prior<T>) -> crate::train::RunOptions {
        crate::train::RunOptions {
            progress: self.progress,
            resume: matches!(prior, Prior::Resume),
            ..Default::default()
        }
    }
}

/// A table for the report: header cells and rows of cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// A heading shown above the table in reports (none when empty).
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            title: String::new(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        }
    }

    fn html(&self) -> String {
        let cells = |row: &[String], tag: &str| -> String {
            row.iter()
                .map(|c| format!("<{tag}>{}</{tag}>", escape(c)))
                .collect()
        };
        let body: String = self
            .rows
            .iter()
            .map(|r| format!("<tr>{}</tr>", cells(r, "td")))
            .collect();
        let heading = if self.title.is_empty() {
            String::new()
        } else {
            format!("<h2>{}</h2>", escape(&self.title))
        };
        format!(
            "{heading}<table><tr>{}</tr>{body}</table>",
            cells(&self.header, "th")
        )
    }

    /// Fixed-width text for the terminal.
    pub fn text(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |r: &[String]| -> String {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
        };
        std::iter::once(line(&self.header))
            .chain(self.rows.iter().map(|r| line(r)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `out/report.html`: a title, an introduction, the tables, the plots (paths relative to
/// `out`) and closing notes.
pub fn write_report(
    out: &Path,
    title: &str,
    intro: &str,
    tables: &[&Table],
    plots: &[&str],
    notes: &[String],
) -> std::io::Result<()> {
    let images: String = plots
        .iter()
        .map(|p| format!("<img src=\"{}\">", escape(p)))
        .collect();
    let notes: String = notes
        .iter()
        .map(|n| format!("<li>{}</li>", escape(n)))
        .collect();
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}img{{max-width:640px;margin:4px}}</style>
</head><body><h1>{t}</h1><p>{intro}</p>{table}{images}<ul>{notes}</ul></body></html>"#,
        t = escape(title),
        intro = escape(intro),
        table = tables.iter().map(|t| t.html()).collect::<String>(),
    );
    atomic_write_bytes(&out.join("report.html"), html.as_bytes())
}

/// What to do with a run folder: reuse its finished result, resume its checkpoint, or start
/// afresh. Only a folder made from the same config counts (`experiment-config.toml`).
pub enum Prior<T> {
    Done(T),
    Resume,
    Fresh,
}

pub fn prior<T: for<'de> Deserialize<'de>>(dir: &Path, cfg: &Config) -> Result<Prior<T>> {
    let marker = dir.join("experiment-config.toml");
    let same = std::fs::read_to_string(&marker).is_ok_and(|t| t == cfg.to_toml());
    if !same {
        let _ = std::fs::remove_dir_all(dir);
        crate::util::create_dir(dir)?;
        crate::util::atomic_write_bytes(&marker, cfg.to_toml().as_bytes())?;
        return Ok(Prior::Fresh);
    }
    if let Some(s) = read_json(&dir.join("summary.json")) {
        return Ok(Prior::Done(s));
    }
    let ck = dir.join("checkpoints").join("last.safetensors");
    Ok(if ck.exists() {
        Prior::Resume
    } else {
        Prior::Fresh
    })
}
