//! The "Inspection" block of a run's report.html: every picture `convkit inspect` left in
//! `<run>/inspect/`, and the shift-equivariance table.

use crate::report::html::escape;
use std::path::Path;

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
    let Some(rows) = crate::util::read_json::<Vec<super::shift::ShiftRow>>(path) else {
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
