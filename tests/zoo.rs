//! torchvision's classification zoo in convkit: every registered torchvision model is built by
//! name with torchvision's state-dict keys, loads a state dict that torchvision 0.26.0 itself
//! made (tests/fixtures/make_zoo.py: random weights, randomised BatchNorm statistics) from both
//! a `.pth` and a `.safetensors` file, gives torchvision's eval-mode logits, and counts
//! torchvision's parameters (which `convkit summary NAME --classes 1000` prints).

mod common;

use convkit::models::{self, Ctx, ModelSpec};
use convkit::weights::{self, LoadOptions};
use std::path::Path;

/// The torchvision models convkit builds beyond the ResNet-18/34/50 of tests/weights.rs.
const ZOO: [&str; 15] = [
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg16_bn",
    "mobilenet_v2",
    "densenet121",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b3",
    "efficientnet_v2_s",
    "regnet_y_800mf",
    "convnext_tiny",
    "convnext_small",
];

/// Makes one model's fixtures (a model at a time: all of them in both formats would take
/// several GB).
fn make_fixtures(dir: &Path, name: &str) {
    let args = [common::fixture("make_zoo.py"), dir.into(), name.into()];
    common::python(&args);
}

fn relative_error(got: &tch::Tensor, expected: &tch::Tensor) -> f64 {
    (got - expected).abs().max().double_value(&[]) / expected.abs().max().double_value(&[])
}

fn check(dir: &Path, name: &str) {
    let mut model = models::build(&ModelSpec::new(name, 1000), tch::Device::Cpu).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(
        model.parameter_count(),
        meta["parameters"].as_i64().unwrap(),
        "{name}: parameters"
    );
    let io = weights::read(&dir.join(format!("{name}-io.pth"))).unwrap();
    let expected = common::entry(&io, "logits");
    for ext in ["safetensors", "pth"] {
        let file = dir.join(format!("{name}.{ext}"));
        let w = weights::read(&file).unwrap();
        let strict = LoadOptions {
            strict: true,
            replace_head: false,
        };
        let report = weights::load_into(&file, &w, &mut model, strict).unwrap();
        assert!(report.is_clean(), "{name}: {}", report.problems());
        let logits = tch::no_grad(|| model.forward(&common::entry(&io, "input"), &Ctx::eval()));
        let err = relative_error(&logits, &expected);
        assert!(err < 1e-4, "{name} from {ext}: relative error {err}");
        // The next file must do the work itself.
        tch::no_grad(|| {
            for (_, mut v) in model.vs.variables() {
                let _ = v.zero_();
            }
        });
    }
}

#[test]
fn every_zoo_model_matches_torchvision() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zoo-fixtures");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ZOO {
        make_fixtures(&dir, name);
        check(&dir, name);
        for suffix in [".pth", ".safetensors", "-io.pth", ".json"] {
            std::fs::remove_file(dir.join(format!("{name}{suffix}"))).unwrap();
        }
    }
}

/// `convkit summary` prints torchvision's count for a family that is neither ResNet nor plain.
#[test]
fn summary_prints_torchvision_parameter_count() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(["summary", "convnext_tiny", "--classes", "1000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("parameters: 28,589,128"), "{text}");
}
