//! Exports checked in a second runtime: every registry model written as ONNX (run by
//! onnxruntime), TorchScript (run by `torch.jit.load` in the pip torch and loaded by libtorch
//! in C++ through tch) and, for torchvision's
//! models, safetensors (loaded strictly into torchvision's own model), each compared with
//! convkit's logits on the same batch (tests/fixtures/run_exports.py).

mod common;

use convkit::export::{self, Preprocess};
use convkit::models::{self, InputStats, ModelSpec, REGISTRY};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// BatchNorm statistics away from 0 and 1, so that evaluation mode is not the identity.
fn randomise_bn(model: &models::Model) {
    tch::no_grad(|| {
        for (name, mut t) in model.vs.variables() {
            if name.ends_with("running_mean") {
                t.copy_(&(Tensor::randn_like(&t) * 0.1));
            } else if name.ends_with("running_var") {
                t.copy_(&(Tensor::rand_like(&t) * 0.5 + 0.75));
            }
        }
    });
}

fn relative_error(got: &Tensor, expected: &Tensor) -> f64 {
    (got - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[])
}

/// Exports `model` in every format that applies, runs the other runtimes on a batch of three
/// (the exports were traced with two, so the batch must be free) and compares.
fn check(dir: &Path, model: &models::Model, pre: &Preprocess, side: i64, torchvision: bool) {
    let name = model.spec.name.as_str();
    let file = |ext: &str| dir.join(format!("{name}{ext}"));
    export::onnx::write_model(model, pre, side, &[], &file(".onnx")).unwrap();
    export::write_torchscript_model(model, pre, side, &file(".pt")).unwrap();
    if torchvision {
        export::write_safetensors(model, &file(".safetensors")).unwrap();
        let meta = serde_json::json!({
            "model": name,
            "classes": (0..model.spec.classes).map(|i| i.to_string()).collect::<Vec<_>>(),
            "input": {"mean": pre.mean, "std": pre.std},
        });
        std::fs::write(file(".safetensors.json"), meta.to_string()).unwrap();
    }
    let x = Tensor::rand(
        [3, model.spec.in_channels, side, side],
        (Kind::Float, Device::Cpu),
    );
    Tensor::write_safetensors(&[("input", &x)], file("-input.safetensors")).unwrap();
    let expected = tch::no_grad(|| export::forward_from_unit_range(model, pre, &x));
    // libtorch in C++ (tch's CModule) loads the TorchScript file too.
    let module = tch::CModule::load(file(".pt")).unwrap();
    let from_cpp = tch::no_grad(|| module.forward_ts(&[&x])).unwrap();
    let err = relative_error(&from_cpp, &expected);
    assert!(err < 1e-5, "{name} in libtorch C++: relative error {err}");
    let args = [common::fixture("run_exports.py"), dir.into(), name.into()];
    common::python(&args);
    let out = convkit::weights::read(&file("-out.safetensors")).unwrap();
    let runtimes: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    let mut wanted = vec!["onnx", "torchscript"];
    if torchvision {
        wanted.push("torchvision");
    }
    for runtime in wanted {
        assert!(runtimes.contains(&runtime), "{name}: {runtime} did not run");
        let got = common::entry(&out, runtime);
        assert_eq!(got.size(), expected.size(), "{name} in {runtime}");
        let err = relative_error(&got, &expected);
        assert!(err < 1e-4, "{name} in {runtime}: relative error {err}");
    }
    for ext in [
        ".onnx",
        ".pt",
        ".safetensors",
        ".safetensors.json",
        "-input.safetensors",
        "-out.safetensors",
    ] {
        let _ = std::fs::remove_file(file(ext));
    }
}

fn preprocess(resize: Option<i64>) -> Preprocess {
    Preprocess {
        mean: vec![0.5, 0.45, 0.4],
        std: vec![0.25, 0.2, 0.22],
        resize,
    }
}

#[test]
fn every_registry_model_runs_the_same_in_onnxruntime_torchscript_and_torchvision() {
    let dir = common::temp_dir("exports");
    for (i, e) in REGISTRY.iter().enumerate() {
        tch::manual_seed(i as i64);
        let model = models::build(&ModelSpec::new(e.name, 10), Device::Cpu).unwrap();
        randomise_bn(&model);
        let torchvision = e.normalisation == InputStats::Imagenet;
        check(&dir, &model, &preprocess(None), 64, torchvision);
    }
}

/// A run trained with `transfer.resize` upsamples inside the exported graph, bilinearly as
/// PyTorch does (`align_corners = False`).
#[test]
fn the_runs_resize_is_inside_the_exported_graph() {
    let dir = common::temp_dir("exports-resize");
    let model = models::build(&ModelSpec::new("resnet20", 10), Device::Cpu).unwrap();
    randomise_bn(&model);
    check(&dir, &model, &preprocess(Some(40)), 24, false);
}
