//! Taking a trained model elsewhere (`convkit export`): TorchScript traced through libtorch's
//! tracer (loadable by `torch.jit.load` and by libtorch in C++), ONNX written from the model's
//! own layers, and safetensors under torchvision's plain state-dict names; each with a JSON
//! file beside it that states what the model expects and what it returns.

pub mod onnx;
mod onnx_proto;

use crate::error::{Error, Result};
use crate::models::{Ctx, Model};
use crate::train::TrainedRun;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The file formats `convkit export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ONNX (opset 17), normalisation inside, dynamic batch.
    Onnx,
    /// TorchScript, normalisation inside.
    Torchscript,
    /// The state dict under torchvision's names; normalise before the model.
    Safetensors,
}

/// What an exported model expects and returns, written beside it as `<file>.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sidecar {
    pub format: Format,
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
    pub convkit: String,
}

/// The input of an exported model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputSpec {
    /// `[N, C, H, W]` with N free.
    pub shape: [i64; 4],
    pub dtype: String,
    /// What the pixel values are.
    pub values: String,
    /// Per-channel mean and standard deviation of the normalisation `(x - mean) / std`.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Whether the exported model normalises (and resizes) its input itself.
    pub normalisation_inside: bool,
    /// A side the model upsamples its input to inside (the run's `transfer.resize`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resized_inside_to: Option<i64>,
    /// How images were brought to H x W in training: shorter side resized, centre crop.
    pub preprocessing: String,
}

/// Exports the run's model to `out` in `format`, and its sidecar to `<out>.json`.
///
/// # Errors
/// The run cannot be opened as a classifier (a contrastive run without a probe), the model
/// cannot be traced or written, or `out` cannot be written.
pub fn export(run: &TrainedRun, format: Format, out: &Path) -> Result<Sidecar> {
    let model = run.model(Device::Cpu)?;
    let sidecar = sidecar(run, &model, format, out);
    match format {
        Format::Torchscript => write_torchscript(run, &model, out)?,
        Format::Safetensors => write_safetensors(&model, out)?,
        Format::Onnx => write_onnx(run, &model, &sidecar, out)?,
    }
    let json = serde_json::to_vec_pretty(&sidecar).expect("a sidecar serialises");
    crate::util::atomic_write_bytes(&sidecar_path(out), &json)?;
    Ok(sidecar)
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
    Sidecar {
        format,
        file: out.display().to_string(),
        model: model.spec.name.clone(),
        classes: run.classes().to_vec(),
        input: InputSpec {
            shape: [-1, run.in_channels(), side, side],
            dtype: "float32".into(),
            values: if inside {
                "RGB (grey for 1 channel) in [0, 1], NCHW".into()
            } else {
                "(x - mean) / std of RGB in [0, 1], NCHW".into()
            },
            mean: meta.mean.clone(),
            std: meta.std.clone(),
            normalisation_inside: inside,
            resized_inside_to: resize.filter(|_| inside),
            preprocessing: format!(
                "shorter side resized to {side} (bilinear), centre crop {side}x{side}"
            ),
        },
        output: format!("[N, {}] logits", run.classes().len()),
        source: run.path().display().to_string(),
        convkit: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The computation every exported graph holds: `[N, C, H, W]` floats in [0, 1] normalised
/// (and resized, if the run trained so) as evaluation does, then the network's logits.
pub fn forward_from_unit_range(model: &Model, pre: &onnx::Preprocess, x: &Tensor) -> Tensor {
    let (mean, std) = statistics(pre);
    normalised_forward(model, pre, (&mean, &std), x)
}

/// The normalisation's mean and standard deviation as `[1, C, 1, 1]` tensors.
fn statistics(pre: &onnx::Preprocess) -> (Tensor, Tensor) {
    let c = pre.mean.len() as i64;
    let stat = |v: &[f64]| {
        Tensor::from_slice(v)
            .to_kind(Kind::Float)
            .reshape([1, c, 1, 1])
    };
    (stat(&pre.mean), stat(&pre.std))
}

/// [`forward_from_unit_range`] with the statistics made beforehand (the tracer records
/// tensors made from host data as zeros of their shape, so they must exist before it starts).
fn normalised_forward(
    model: &Model,
    pre: &onnx::Preprocess,
    (mean, std): (&Tensor, &Tensor),
    x: &Tensor,
) -> Tensor {
    let mut y = (x - mean) / std;
    if let Some(s) = pre.resize {
        y = y.upsample_bilinear2d([s, s], false, None::<f64>, None::<f64>);
    }
    model.forward(&y, &Ctx::eval())
}

fn write_torchscript(run: &TrainedRun, model: &Model, out: &Path) -> Result<()> {
    write_torchscript_model(model, &preprocess(run), run.image_size(), out)
}

/// Traces `model` behind `pre` on `side` x `side` inputs with libtorch's tracer and saves the
/// TorchScript module (its `forward` takes `[N, C, side, side]` floats in [0, 1]) atomically.
///
/// # Errors
/// Tracing or writing fails.
pub fn write_torchscript_model(
    model: &Model,
    pre: &onnx::Preprocess,
    side: i64,
    out: &Path,
) -> Result<()> {
    // Two examples, so that nothing is specialised to a batch of one.
    let x = Tensor::rand(
        [2, model.spec.in_channels, side, side],
        (Kind::Float, Device::Cpu),
    );
    let (mean, std) = statistics(pre);
    // The tracer stores the weights as constants, which it refuses for tensors that require
    // gradients (and so does the loader of a saved module: it is saved before the flags come
    // back); it reports libtorch errors as panics, turned into an error here.
    without_gradients(model, || {
        let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tch::CModule::create_by_tracing("convkit", "forward", &[x], &mut |inputs| {
                vec![normalised_forward(model, pre, (&mean, &std), &inputs[0])]
            })
        }));
        let module = match traced {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(tracing_failed(model, &e.to_string())),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "libtorch error".into());
                return Err(tracing_failed(model, &text));
            }
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
/// `num_batches_tracked` counters `load_state_dict` expects beside each BatchNorm, contiguous;
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
        .map(|bn| {
            let zero = Tensor::from(0i64);
            (format!("{bn}.num_batches_tracked"), zero)
        })
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

/// What a run's exported graph does before the network: the run's normalisation and resize.
pub fn preprocess(run: &TrainedRun) -> onnx::Preprocess {
    onnx::Preprocess {
        mean: run.checkpoint.meta.mean.clone(),
        std: run.checkpoint.meta.std.clone(),
        resize: run.config.transfer.resize,
    }
}

fn write_onnx(run: &TrainedRun, model: &Model, sidecar: &Sidecar, out: &Path) -> Result<()> {
    let metadata = [
        (
            "classes",
            serde_json::to_string(&sidecar.classes).expect("strings"),
        ),
        (
            "mean",
            serde_json::to_string(&sidecar.input.mean).expect("numbers"),
        ),
        (
            "std",
            serde_json::to_string(&sidecar.input.std).expect("numbers"),
        ),
        ("input", sidecar.input.values.clone()),
        ("model", sidecar.model.clone()),
    ];
    onnx::write_model(model, &preprocess(run), run.image_size(), &metadata, out)
}
