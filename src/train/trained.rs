//! A run reopened from its folder or checkpoint file: the checkpoint, the config it trained
//! with, its model, normalisation and class names. Everything that looks at a finished run
//! (eval, predict, inspect, embed, probe) opens it here.

use super::load_data;
use crate::augment::Augmenter;
use crate::config::Config;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::weights::RunDir;
use crate::weights::checkpoint::{self, Loaded};
use std::path::Path;
use tch::Device;

/// A trained run.
pub struct TrainedRun {
    /// The run folder, when the checkpoint lies in one (`<run>/checkpoints/`).
    pub dir: Option<RunDir>,
    pub checkpoint: Loaded,
    /// The config the run trained with (the checkpoint's copy).
    pub config: Config,
}

impl TrainedRun {
    /// Opens a run folder (its latest checkpoint) or a checkpoint file.
    ///
    /// # Errors
    /// No readable convkit checkpoint there, or its config does not parse.
    pub fn open(path: &Path) -> Result<Self> {
        let checkpoint = checkpoint::read(path)?;
        let config: Config = toml::from_str(&checkpoint.meta.config).map_err(|e| {
            Error::Invalid(format!(
                "{}: the stored config: {e}",
                checkpoint.path.display()
            ))
        })?;
        Ok(TrainedRun {
            dir: RunDir::of_checkpoint(&checkpoint.path),
            checkpoint,
            config,
        })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.checkpoint.path
    }

    /// The run folder's name (or the checkpoint file's), for labels and file names.
    pub fn name(&self) -> String {
        self.dir
            .clone()
            .unwrap_or_else(|| RunDir::new(self.path()))
            .name()
    }

    /// Class names, in the order of the classifier's outputs.
    pub fn classes(&self) -> &[String] {
        &self.checkpoint.meta.classes
    }

    /// The square side (pixels) the run's images were trained at.
    pub fn image_size(&self) -> i64 {
        self.checkpoint.meta.image_size
    }

    /// Input channels of the network (1 for grayscale data).
    pub fn in_channels(&self) -> i64 {
        self.checkpoint.meta.spec.in_channels
    }

    /// The whole network with its weights, checked against the run's image size.
    ///
    /// # Errors
    /// The checkpoint's weights do not fit its own network (a damaged file).
    pub fn model(&self, device: Device) -> Result<Model> {
        if self.is_contrastive() {
            return Err(Error::Invalid(format!(
                "{}: a contrastive pre-training run has an encoder but no trained classifier; \
                 give it a classifier with `convkit probe {}` (linear, frozen encoder) or \
                 `convkit probe {} --finetune` (end to end), then use that run",
                self.path().display(),
                self.output_dir().display(),
                self.output_dir().display()
            )));
        }
        Ok(self.checkpoint.build_model(device)?)
    }

    /// The network without a contrastive run's projection head.
    ///
    /// # Errors
    /// As [`TrainedRun::model`].
    pub fn encoder(&self, device: Device) -> Result<Model> {
        Ok(checkpoint::encoder(&self.checkpoint, device)?)
    }

    /// Whether contrastive pre-training wrote the run (it carries a projection head).
    pub fn is_contrastive(&self) -> bool {
        checkpoint::has_projection_head(&self.checkpoint)
    }

    /// Turns u8 images `[N, H, W, C]` into the network's input as evaluation does: normalised
    /// with the run's statistics and, when the run trained with `transfer.resize`, upsampled to
    /// that side.
    pub fn normaliser(&self, device: Device) -> Augmenter {
        let m = &self.checkpoint.meta;
        let mut aug = Augmenter::new(vec![], &m.mean, &m.std, device);
        aug.resize = self.config.transfer.resize;
        aug
    }

    /// Where outputs about this run go by default: its run folder, or the folder of a
    /// checkpoint file that lies outside one.
    pub fn output_dir(&self) -> std::path::PathBuf {
        match &self.dir {
            Some(d) => d.root.clone(),
            None => self
                .path()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        }
    }

    /// The run's config with `source` as its data (format detected again), for evaluation on
    /// other data.
    pub fn config_with_data(&self, source: Option<&str>) -> Config {
        let mut cfg = self.config.clone();
        if let Some(s) = source {
            cfg.data.source = s.to_string();
            cfg.data.format = None;
        }
        cfg
    }

    /// The test split of the run's data (or of `source`), at most `limit` images, at the run's
    /// image size; the training split is cut to one image, as only the test images are used.
    ///
    /// # Errors
    /// The data cannot be loaded.
    pub fn test_data(&self, source: Option<&str>, limit: Option<usize>) -> Result<Dataset> {
        let mut cfg = self.config_with_data(source);
        cfg.data.train_limit = Some(1);
        cfg.data.test_limit = limit;
        load_data(&cfg, self.image_size())
    }
}
