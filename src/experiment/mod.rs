//! Experiments: several runs under one folder, compared in a table, a plot, `summary.json` and
//! `report.html`. Each run keeps its own run folder (checkpoints, metrics, report) inside.

pub mod residual;
pub mod supcon;
pub mod transfer;

use crate::config::Config;
use crate::error::Result;
pub use crate::report::html::{Table, write_report};
use crate::util::read_json;
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
    let run = crate::weights::RunDir::new(dir);
    if let Some(s) = read_json(&run.summary()) {
        return Ok(Prior::Done(s));
    }
    let ck = run.checkpoint();
    Ok(if ck.exists() {
        Prior::Resume
    } else {
        Prior::Fresh
    })
}
