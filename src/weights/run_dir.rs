//! The layout of a run folder, in one place:
//!
//! ```text
//! <run>/config.toml                   the effective config (resume reads it back)
//! <run>/metrics.jsonl                 one line per epoch
//! <run>/checkpoints/last.safetensors  model, optimiser state and metadata
//! <run>/summary.json, report.html, plots/, inspect/
//! ```

use std::path::{Path, PathBuf};

/// A run folder's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// The run folder a checkpoint file lies in (`<run>/checkpoints/<file>`), if it does.
    pub fn of_checkpoint(checkpoint: &Path) -> Option<Self> {
        let dir = checkpoint.parent()?;
        if dir.file_name()? != "checkpoints" {
            return None;
        }
        Some(RunDir::new(dir.parent()?))
    }

    /// A checkpoint file as given, or a run folder's latest checkpoint.
    pub fn resolve_checkpoint(path: &Path) -> PathBuf {
        if path.is_dir() {
            RunDir::new(path).checkpoint()
        } else {
            path.to_path_buf()
        }
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The latest checkpoint, which `--resume` continues from.
    pub fn checkpoint(&self) -> PathBuf {
        self.checkpoints().join("last.safetensors")
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn report(&self) -> PathBuf {
        self.root.join("report.html")
    }

    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// The folder's name, for labels and file names (`run` when it has none).
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("run")
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_knows_its_run_folder() {
        let run = RunDir::new("/tmp/runs/a");
        assert_eq!(
            run.checkpoint(),
            Path::new("/tmp/runs/a/checkpoints/last.safetensors")
        );
        assert_eq!(RunDir::of_checkpoint(&run.checkpoint()), Some(run.clone()));
        assert_eq!(
            RunDir::of_checkpoint(Path::new("/tmp/model.safetensors")),
            None
        );
        assert_eq!(run.name(), "a");
    }
}
