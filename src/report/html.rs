//! The HTML of every report convkit writes: one page shell, one style, tables, escaping.

use crate::util::atomic_write_bytes;
use std::path::Path;

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
img{max-width:640px;margin:4px}figure{display:inline-block;margin:4px}pre{background:#f6f6f6;padding:1em}";

/// A whole page: `title` (escaped here) as the title and first heading, then `body` (HTML).
pub fn page(title: &str, body: &str) -> String {
    let t = escape(title);
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style>\
         </head><body><h1>{t}</h1>{body}</body></html>"
    )
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

    /// The table as HTML, with its title as a heading.
    pub fn html(&self) -> String {
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

/// Text made safe inside HTML elements and attributes.
pub fn escape(s: &str) -> String {
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
    let body = format!(
        "<p>{}</p>{}{images}<ul>{notes}</ul>",
        escape(intro),
        tables.iter().map(|t| t.html()).collect::<String>(),
    );
    let html = page(title, &body);
    atomic_write_bytes(&out.join("report.html"), html.as_bytes())
}
