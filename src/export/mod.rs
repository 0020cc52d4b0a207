//! Taking a trained model elsewhere (`convkit export`): TorchScript traced through libtorch's
//! tracer (loadable by `torch.jit.load` and by libtorch in C++), ONNX written from the model's
//! own layers, and safetensors under torchvision's plain state-dict names; each with a JSON
//! file beside it that states what the model expects and what it returns.

pub mod onnx;
mod onnx_proto;

use crate::augment::Augmenter;
use crate::error::{Error, Result};
use crate::models::{Ctx, Model};
use crate::train::TrainedRun;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The file formats `convkit export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ONNX (opset 17), normalisation inside, dynamic batch.
    Onnx,
    /// TorchScript, normalisation inside.
    Torchscript,
    /// The state dict under torchvision's names; normalise before the model.
    Safetensors,
}

/// What an exported graph does to its input before the network: `(x - mean) / std` per
/// channel, then a bilinear resize to `resize` x `resize` (PyTorch's `align_corners = False`)
/// when set: the run's evaluation preprocessing.
#[derive(Debug, Clone)]
pub struct Preprocess {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub resize: Option<i64>,
}

impl Preprocess {
    /// The run's normalisation and `transfer.resize`.
    pub fn of(run: &TrainedRun) -> Self {
        Preprocess {
            mean: run.checkpoint.meta.mean.clone(),
            std: run.checkpoint.meta.std.clone(),
            resize: run.config.transfer.resize,
        }
    }

    /// The same computation as convkit's evaluation, on the CPU; its tensors exist before any
    /// tracing starts (the tracer would record tensors made from host data as zeros).
    fn augmenter(&self) -> Augmenter {
        let mut aug = Augmenter::new(vec![], &self.mean, &self.std, Device::Cpu);
        aug.resize = self.resize;
        aug
    }
}

/// What an exported model expects and returns, written beside it as `<file>.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sidecar {
    /// The file's format.
    pub format: Format,
    /// The exported file.
    pub file: String,
    /// The registry model (torchvision's name where it is one).
    pub model: String,
    /// The output's classes, in order.
    pub classes: Vec<String>,
    pub input: InputSpec,
    /// What the model returns: `[N, classes]` logits (softmax gives probabilities).
    pub output: String,
    /// The run or checkpoint it came from.
    pub source: String,
    /// The convkit version that wrote it.
    pub convkit: String,
}

/// The input of an exported model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputSpec {
    /// `[N, C, H, W]` with N free (-1).
    pub shape: [i64; 4],
    pub dtype: String,
    /// What the values are and how they are made from an image.
    pub values: String,
    /// Per-channel mean and standard deviation of the normalisation `(x - mean) / std`.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Whether the exported model normalises (and resizes) its input itself.
    pub normalisation_inside: bool,
    /// The side images were brought to in training (shorter side resized, centre crop).
    pub image_side: i64,
    /// A side the normalised images are upsampled to before the network (the run's
    /// `transfer.resize`): inside the graph for ONNX and TorchScript, the caller's job for
    /// safetensors, whose `shape` is then the network's input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize: Option<i64>,
}

/// Exports the run's model to `out` in `format`, and its sidecar to `<out>.json`.
///
/// # Errors
/// The run cannot be opened as a classifier (a contrastive run without a probe), the model
/// cannot be traced or written, or `out` cannot be written.
pub fn export(run: &TrainedRun, format: Format, out: &Path) -> Result<Sidecar> {
    let model = run.model(Device::Cpu)?;
    let sidecar = sidecar(run, &model, format, out);
    // An older sidecar must not describe the new file if writing either one fails.
    let json_path = sidecar_path(out);
    if json_path.exists() {
        std::fs::remove_file(&json_path).map_err(|e| crate::util::named(&json_path, e))?;
    }
    let pre = Preprocess::of(run);
    let side = run.image_size();
    match format {
        Format::Torchscript => write_torchscript_model(&model, &pre, side, out)?,
        Format::Safetensors => write_safetensors(&model, out)?,
        Format::Onnx => {
            let metadata = [
                ("classes", json(&sidecar.classes)),
                ("mean", json(&sidecar.input.mean)),
                ("std", json(&sidecar.input.std)),
                ("input", sidecar.input.values.clone()),
                ("model", sidecar.model.clone()),
            ];
            onnx::write_model(&model, &pre, side, &metadata, out)?
        }
    }
    let text = serde_json::to_vec_pretty(&sidecar).expect("a sidecar serialises");
    crate::util::atomic_write_bytes(&json_path, &text)?;
    Ok(sidecar)
}

/// Plain data (strings, numbers) as JSON text.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("strings and numbers serialise")
}

/// `<out>.json`: beside the file, named after it whole, so two formats never share one.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    out.with_file_name(name)
}

fn sidecar(run: &TrainedRun, model: &Model, format: Format, out: &Path) -> Sidecar {
    let side = run.image_size();
    let meta = &run.checkpoint.meta;
    let inside = format != Format::Safetensors;
    let resize = run.config.transfer.resize;
    // convkit decodes JPEGs with the `image` crate, whose pixels can differ from PIL's
    // (libjpeg-turbo) by a few levels; PNG and other lossless files decode identically.
    let grey = "grey = round(mean of R, G, B) for 1 channel; as 8-bit images, decoded by \
                convkit with the image crate, whose JPEG pixels can differ from PIL's by a \
                few levels";
    let (values, net_side) = if inside {
        (format!("RGB in [0, 1] ({grey}), NCHW"), side)
    } else {
        let then = resize.map_or(String::new(), |r| {
            format!(", then bilinearly resized to {r}x{r} (align_corners false)")
        });
        let values = format!("(x - mean) / std of RGB in [0, 1] ({grey}), NCHW{then}");
        (values, resize.unwrap_or(side))
    };
    Sidecar {
        format,
        file: out.display().to_string(),
        model: model.spec.name.clone(),
        classes: run.classes().to_vec(),
        input: InputSpec {
            shape: [-1, run.in_channels(), net_side, net_side],
            dtype: "float32".into(),
            values,
            mean: meta.mean.clone(),
            std: meta.std.clone(),
            normalisation_inside: inside,
            image_side: side,
            resize,
        },
        output: format!("[N, {}] logits", run.classes().len()),
        source: run.path().display().to_string(),
        convkit: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The computation every exported graph holds: `[N, C, H, W]` floats in [0, 1] preprocessed as
/// evaluation does, then the network's `[N, classes]` logits.
pub fn forward_from_unit_range(model: &Model, pre: &Preprocess, x: &Tensor) -> Tensor {
    model.forward(&pre.augmenter().network_input(x), &Ctx::eval())
}

/// Traces `model` (on the CPU) behind `pre` on `side` x `side` inputs with libtorch's tracer
/// and saves the TorchScript module, whose `forward` takes `[N, C, side, side]` floats in
/// [0, 1], atomically.
///
/// # Errors
/// Tracing or writing fails.
pub fn write_torchscript_model(
    model: &Model,
    pre: &Preprocess,
    side: i64,
    out: &Path,
) -> Result<()> {
    // Two examples, so that nothing is specialised to a batch of one.
    let x = Tensor::rand(
        [2, model.spec.in_channels, side, side],
        (Kind::Float, Device::Cpu),
    );
    let aug = pre.augmenter();
    // The tracer stores the weights as constants, which it refuses for tensors that require
    // gradients (and so does the loader of a saved module: it is saved before the flags come
    // back).
    without_gradients(model, || {
        let traced = crate::util::catch_quietly(|| {
            tch::CModule::create_by_tracing("convkit", "forward", &[x], &mut |inputs| {
                vec![model.forward(&aug.network_input(&inputs[0]), &Ctx::eval())]
            })
        });
        let module = match traced {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(tracing_failed(model, &e.to_string())),
            Err(panic) => return Err(tracing_failed(model, &panic)),
        };
        crate::util::atomic_write(out, |tmp| {
            module
                .save(tmp)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })?;
        Ok(())
    })
}

fn tracing_failed(model: &Model, why: &str) -> Error {
    let first = why.lines().next().unwrap_or(why);
    Error::Invalid(format!("tracing {} failed: {first}", model.spec.name))
}

/// Runs `f` with no variable of `model` requiring gradients, then restores each one's flag.
fn without_gradients<T>(model: &Model, f: impl FnOnce() -> T) -> T {
    let vars: Vec<(Tensor, bool)> = model
        .vs
        .variables()
        .into_values()
        .map(|t| {
            let g = t.requires_grad();
            (t, g)
        })
        .collect();
    for (t, _) in &vars {
        let _ = t.set_requires_grad(false);
    }
    let out = tch::no_grad(f);
    for (t, g) in &vars {
        let _ = t.set_requires_grad(*g);
    }
    out
}

/// The model's state dict under torchvision's names (the variables' own), with the
/// `num_batches_tracked` counters `load_state_dict` expects beside each BatchNorm (0: convkit
/// uses a fixed momentum, and PyTorch reads the counter only when `momentum` is None),
/// contiguous;
/// variables a training objective added (a projection head) are left out.
pub fn state_dict(model: &Model) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| !model.objective_owns(name))
        .map(|(name, t)| (name, t.detach().contiguous()))
        .collect();
    let counters: Vec<(String, Tensor)> = out
        .iter()
        .filter_map(|(name, _)| name.strip_suffix(".running_mean"))
        .map(|bn| (format!("{bn}.num_batches_tracked"), Tensor::from(0i64)))
        .collect();
    out.extend(counters);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes [`state_dict`] as a safetensors file, atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_safetensors(model: &Model, out: &Path) -> Result<()> {
    let tensors = state_dict(model);
    crate::util::atomic_write(out, |tmp| {
        Tensor::write_safetensors(&tensors, tmp).map_err(|e| std::io::Error::other(e.to_string()))
    })?;
    Ok(())
}
