//! Checkpoints: one safetensors file holding the model's variables (`model.<key>`), the
//! optimiser state (`optim.<key>`) and JSON metadata (`meta`), written atomically so a kill at any
//! moment leaves the previous checkpoint intact.

use super::RunDir;
use crate::metrics::EpochMetrics;
use crate::models::{self, Model, ModelSpec};
use crate::util::{atomic_write, bytes_tensor, tensor_bytes};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub const FORMAT: &str = "convkit-checkpoint-v1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {problem}")]
    Bad { path: PathBuf, problem: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn bad(path: &Path, problem: impl Into<String>) -> CheckpointError {
    CheckpointError::Bad {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// What a checkpoint says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: String,
    pub spec: ModelSpec,
    pub classes: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub image_size: i64,
    /// Epochs completed.
    pub epoch: usize,
    pub history: Vec<EpochMetrics>,
    pub train_seconds: f64,
    /// The run's effective config (TOML).
    pub config: String,
}

/// Writes model, optimiser state and metadata to `path` atomically.
pub fn save(
    path: &Path,
    model: &Model,
    optim: &[(String, Tensor)],
    meta: &Meta,
) -> Result<(), CheckpointError> {
    let mut tensors: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(k, v)| {
            (
                format!("model.{k}"),
                v.detach().to_device(Device::Cpu).contiguous(),
            )
        })
        .collect();
    tensors.extend(
        optim
            .iter()
            .map(|(k, v)| (format!("optim.{k}"), v.contiguous())),
    );
    let json = serde_json::to_vec(meta).expect("meta serialises");
    tensors.push(("meta".into(), bytes_tensor(&json)));
    atomic_write(path, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(|e| bad(path, e.to_string()))
    })
}

/// What a weights file from another tool is, from its first bytes (`None`: maybe a checkpoint).
fn foreign_weights(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut head = [0u8; 9];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    // A safetensors header (u64 length, then '{') may also start with 0x80.
    match head {
        [.., b'{'] => None,
        [b'P', b'K', ..] => Some("a torch.save .pth archive"),
        [0x80, 2..=5, ..] => Some("a pickle (a torch.save file from before PyTorch 1.6?)"),
        _ => None,
    }
}

/// Every floating-point tensor of the model and optimiser sections is finite: training stops
/// at a non-finite loss before it writes one, so NaN weights mean a damaged file, whose
/// predictions would be NaN.
fn check_finite(tensors: &[(String, Tensor)]) -> Result<(), String> {
    for (name, t) in tensors {
        let float = t.is_floating_point();
        if float && name != "meta" && t.isfinite().all().int64_value(&[]) == 0 {
            return Err(format!("tensor {name} holds non-finite values"));
        }
    }
    Ok(())
}

/// Checks everything later code trusts in a checkpoint's metadata: the model spec, one class
/// name per output, mean and std of one value per input channel (std positive), an image size
/// a decoder can make.
fn check_meta(m: &Meta) -> Result<(), String> {
    m.spec.validate()?;
    let mut names: Vec<&String> = m.classes.iter().collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("class '{}' is named twice", w[0]));
    }
    if m.classes.len() as i64 != m.spec.classes {
        return Err(format!(
            "{} class names for a model with {} outputs",
            m.classes.len(),
            m.spec.classes
        ));
    }
    let channels = m.spec.in_channels as usize;
    if m.mean.len() != channels || m.std.len() != channels {
        return Err(format!(
            "mean/std of {}/{} values for {channels} input channels",
            m.mean.len(),
            m.std.len()
        ));
    }
    if m.mean.iter().any(|v| !v.is_finite()) || m.std.iter().any(|v| !(*v > 0.0 && v.is_finite())) {
        return Err(format!(
            "mean {:?} / std {:?}: must be finite, std above 0",
            m.mean, m.std
        ));
    }
    let max = crate::data::MAX_IMAGE_SIZE as i64;
    if !(1..=max).contains(&m.image_size) {
        return Err(format!("image size {}: must be 1 to {max}", m.image_size));
    }
    Ok(())
}

/// A loaded checkpoint file.
pub struct Loaded {
    pub path: PathBuf,
    pub meta: Meta,
    pub tensors: Vec<(String, Tensor)>,
}

/// Reads a convkit checkpoint: a file, or a run folder's latest ([`RunDir::checkpoint`]).
///
/// # Errors
/// No such file, another tool's weights file (named, with where to use it instead), not a
/// readable safetensors file, no or damaged metadata, or non-finite tensors.
pub fn read(path: &Path) -> Result<Loaded, CheckpointError> {
    let path = RunDir::resolve_checkpoint(path);
    if !path.exists() {
        return Err(bad(&path, "no such checkpoint"));
    }
    if let Some(kind) = foreign_weights(&path) {
        return Err(bad(
            &path,
            format!(
                "this is {kind}, not a convkit checkpoint: eval, predict, probe and inspect take a \
                 convkit run folder or checkpoint; to start from these weights, pass them to \
                 `convkit train` or `convkit finetune` with --weights"
            ),
        ));
    }
    let tensors = Tensor::read_safetensors(&path).map_err(|e| {
        // tch's message repeats the path; the error names it once.
        let text = e.to_string().replace(&format!(" {}:", path.display()), ":");
        bad(
            &path,
            format!("not a readable safetensors checkpoint: {text}"),
        )
    })?;
    let meta_t = tensors
        .iter()
        .find(|(n, _)| n == "meta")
        .ok_or_else(|| bad(&path, "not a convkit checkpoint (no 'meta' entry)"))?;
    let meta: Meta = serde_json::from_slice(&tensor_bytes(&meta_t.1))
        .map_err(|e| bad(&path, format!("unreadable checkpoint metadata: {e}")))?;
    if meta.format != FORMAT {
        return Err(bad(
            &path,
            format!("checkpoint format '{}' is not {FORMAT}", meta.format),
        ));
    }
    check_meta(&meta).map_err(|p| bad(&path, format!("damaged checkpoint metadata: {p}")))?;
    check_finite(&tensors).map_err(|p| bad(&path, format!("damaged checkpoint: {p}")))?;
    Ok(Loaded {
        path,
        meta,
        tensors,
    })
}

impl Loaded {
    /// Entries under `prefix.`, with the prefix removed.
    pub fn section(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(&p)
                    .map(|k| (k.to_string(), t.shallow_clone()))
            })
            .collect()
    }

    /// Builds the checkpoint's own model and loads its weights.
    pub fn build_model(&self, device: Device) -> Result<Model, CheckpointError> {
        let mut model =
            models::build(&self.meta.spec, device).map_err(|e| bad(&self.path, e.to_string()))?;
        self.load_into(&mut model)?;
        model
            .check_input_size(self.meta.image_size)
            .map_err(|e| bad(&self.path, format!("damaged checkpoint metadata: {e}")))?;
        Ok(model)
    }

    /// Copies the weights into `model`, which must have the same architecture: every key present
    /// with the same shape, and no extra keys.
    pub fn load_into(&self, model: &mut Model) -> Result<(), CheckpointError> {
        if self.meta.spec.name != model.spec.name {
            return Err(bad(
                &self.path,
                format!(
                    "checkpoint of a '{}' model cannot be loaded into a '{}' model",
                    self.meta.spec.name, model.spec.name
                ),
            ));
        }
        copy_weights(&self.path, &self.section("model"), model)
    }
}

/// Copies named tensors into a model's variables, checking names and shapes like PyTorch's
/// strict `load_state_dict`.
pub fn copy_weights(
    path: &Path,
    weights: &[(String, Tensor)],
    model: &mut Model,
) -> Result<(), CheckpointError> {
    let opts = crate::weights::LoadOptions {
        strict: true,
        replace_head: false,
    };
    crate::weights::load_into(path, weights, model, opts)
        .map(|_| ())
        .map_err(|e| {
            bad(
                path,
                e.to_string()
                    .trim_start_matches(&format!("{}: ", path.display())),
            )
        })
}

/// The checkpoint's network without its projection head (a cross-entropy checkpoint has none).
pub fn encoder(ck: &Loaded, device: Device) -> Result<Model, CheckpointError> {
    let mut model =
        models::build(&ck.meta.spec, device).map_err(|e| bad(&ck.path, e.to_string()))?;
    let weights: Vec<(String, Tensor)> = ck
        .section("model")
        .into_iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .collect();
    copy_weights(&ck.path, &weights, &mut model)?;
    Ok(model)
}

/// Whether the checkpoint was written by contrastive pre-training (it carries a projection head).
pub fn has_projection_head(ck: &Loaded) -> bool {
    ck.section("model")
        .iter()
        .any(|(n, _)| n.starts_with("head."))
}
