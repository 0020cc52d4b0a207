//! Progress bars with rate and ETA; hidden when not wanted (tests, pipes).

use indicatif::{ProgressBar, ProgressStyle};

pub fn steps_bar(len: u64, prefix: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

pub fn bytes_bar(total: Option<u64>, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

/// Whether to draw bars: only on a terminal, unless `CONVKIT_PROGRESS=0`.
pub fn wanted() -> bool {
    use std::io::IsTerminal;
    std::env::var("CONVKIT_PROGRESS").map_or_else(|_| std::io::stderr().is_terminal(), |v| v != "0")
}
