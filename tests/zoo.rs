//! torchvision's classification zoo in convkit: every registered torchvision model is built by
//! name with torchvision's state-dict keys, loads a state dict that torchvision 0.26.0 itself
//! made (tests/fixtures/make_zoo.py: random weights, randomised BatchNorm statistics), gives
//! torchvision's eval-mode logits, and counts torchvision's parameters.

mod common;

use convkit::models::{self, Ctx, ModelSpec};
use convkit::weights::{self, LoadOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::Device;

/// The torchvision models convkit builds beyond the ResNet-18/34/50 of tests/weights.rs.
const ZOO: [&str; 9] = [
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg16_bn",
    "mobilenet_v2",
    "densenet121",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
];

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zoo-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<std::ffi::OsString> =
            vec![common::fixture("make_zoo.py"), dir.clone().into()];
        args.extend(ZOO.iter().map(|n| n.into()));
        common::python(&args);
        dir
    })
}

#[test]
fn every_zoo_model_matches_torchvision() {
    let dir = fixtures();
    let counts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("counts.json")).unwrap()).unwrap();
    for name in ZOO {
        let mut model = models::build(&ModelSpec::new(name, 1000), Device::Cpu).unwrap();
        assert_eq!(
            model.parameter_count(),
            counts[name].as_i64().unwrap(),
            "{name}: parameters"
        );
        let file = ["safetensors", "pth"]
            .iter()
            .map(|ext| dir.join(format!("{name}.{ext}")))
            .find(|p| p.exists())
            .unwrap();
        let w = weights::read(&file).unwrap();
        let strict = LoadOptions {
            strict: true,
            replace_head: false,
        };
        let report = weights::load_into(&file, &w, &mut model, strict).unwrap();
        assert!(report.is_clean(), "{name}: {}", report.problems());
        let io = weights::read(&dir.join(format!("{name}-io.pth"))).unwrap();
        let logits = tch::no_grad(|| model.forward(&common::entry(&io, "input"), &Ctx::eval()));
        let expected = common::entry(&io, "logits");
        let err = (&logits - &expected).abs().max().double_value(&[])
            / expected.abs().max().double_value(&[]);
        assert!(
            err < 1e-4,
            "{name} from {}: relative error {err}",
            file.display()
        );
    }
}
