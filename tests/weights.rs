//! Pretrained-weight files: torchvision-layout `.pth` and `.safetensors` files that the
//! pip-installed torch writes (tests/fixtures/make_resnet.py) load into convkit's ResNets and
//! give the same eval-mode logits; bad files fail clearly; a malicious pickle never runs.

mod common;

use convkit::data::download::{self, Checksum, Remote};
use convkit::models::{self, Ctx, ModelSpec, Stem};
use convkit::weights::{self, LoadOptions};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Tensor};

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One fixed folder under target/, rewritten by every run (no leftovers in /tmp).
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weights-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        common::python(&[common::fixture("make_resnet.py"), dir.clone().into()]);
        dir
    })
}

fn strict() -> LoadOptions {
    LoadOptions {
        strict: true,
        replace_head: false,
    }
}

fn imagenet_model(name: &str, classes: i64) -> models::Model {
    let mut spec = ModelSpec::new(name, classes);
    spec.stem = Some(Stem::Imagenet);
    models::build(&spec, Device::Cpu).unwrap()
}

/// max |ours - theirs| / max |theirs|
fn relative_error(ours: &Tensor, theirs: &Tensor) -> f64 {
    let diff = (ours - theirs).abs().max().double_value(&[]);
    diff / theirs.abs().max().double_value(&[])
}

fn parity(name: &str, file: &str) {
    let dir = fixtures();
    let mut model = imagenet_model(name, 1000);
    let w = weights::read(&dir.join(file)).unwrap();
    let report = weights::load_into(&dir.join(file), &w, &mut model, strict()).unwrap();
    assert!(report.is_clean());
    let io = weights::read(&dir.join(format!("{name}-io.pth"))).unwrap();
    let logits = tch::no_grad(|| model.forward(&common::entry(&io, "input"), &Ctx::eval()));
    let expected = common::entry(&io, "logits");
    assert_eq!(logits.size(), vec![2, 1000]);
    let err = relative_error(&logits, &expected);
    assert!(err < 1e-4, "{name} from {file}: relative error {err}");
}

#[test]
fn resnet18_logits_match_torch_from_pth() {
    parity("resnet18", "resnet18.pth");
}

#[test]
fn resnet50_logits_match_torch_from_pth() {
    parity("resnet50", "resnet50.pth");
}

#[test]
fn resnet18_logits_match_torch_from_safetensors() {
    parity("resnet18", "resnet18.safetensors");
}

#[test]
fn pth_reader_keeps_dtypes_shapes_and_values() {
    let dir = fixtures();
    let w = weights::read(&dir.join("resnet18.pth")).unwrap();
    // 62 weights/BN tensors + 20 num_batches_tracked, as torchvision's resnet18 state dict.
    assert_eq!(w.len(), 122);
    let nbt = common::entry(&w, "bn1.num_batches_tracked");
    assert_eq!(nbt.kind(), tch::Kind::Int64);
    assert_eq!(nbt.int64_value(&[]), 7);
    assert_eq!(
        common::entry(&w, "layer2.0.downsample.0.weight").size(),
        vec![128, 64, 1, 1]
    );
    let st = weights::read(&dir.join("resnet18.safetensors")).unwrap();
    let a = common::entry(&w, "layer4.1.conv2.weight");
    assert!(a.equal(&common::entry(&st, "layer4.1.conv2.weight")));
    let info = weights::inspect(&dir.join("resnet18.pth")).unwrap();
    let fc = info.iter().find(|i| i.name == "fc.weight").unwrap();
    assert_eq!(
        (fc.shape.clone(), fc.dtype.as_str()),
        (vec![1000, 512], "float")
    );
}

#[test]
fn malicious_pickle_is_refused_and_never_runs() {
    let dir = fixtures();
    let err = weights::read(&dir.join("evil.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("evil.pth"), "{err}");
    assert!(err.contains("refused") && err.contains("system"), "{err}");
    assert!(weights::inspect(&dir.join("evil.pth")).is_err());
    assert!(!dir.join("pwned").exists(), "the pickle's code ran");
}

#[test]
fn truncated_files_fail_with_the_file_name() {
    let dir = fixtures();
    for file in ["resnet18.pth", "resnet18.safetensors"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let cut = dir.join(format!("cut-{file}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = weights::read(&cut).unwrap_err().to_string();
        assert!(err.contains(&format!("cut-{file}")), "{err}");
        assert!(err.contains("truncated"), "{err}");
    }
    let junk = dir.join("junk.pth");
    std::fs::write(&junk, b"hello, world").unwrap();
    let err = weights::read(&junk).unwrap_err().to_string();
    assert!(err.contains("not a weights file"), "{err}");
}

#[test]
fn weights_of_another_architecture_are_listed_not_loaded() {
    let dir = fixtures();
    let path = dir.join("resnet50.pth");
    let w = weights::read(&path).unwrap();
    let mut model = imagenet_model("resnet18", 1000);
    let err = weights::load_into(&path, &w, &mut model, strict())
        .unwrap_err()
        .to_string();
    assert!(err.contains("resnet18 architecture"), "{err}");
    assert!(
        err.contains("unexpected: ") && err.contains("wrong shape: "),
        "{err}"
    );
    // Non-strict loading takes what fits and reports the rest.
    let relaxed = LoadOptions {
        strict: false,
        replace_head: false,
    };
    let r = weights::load_into(&path, &w, &mut model, relaxed).unwrap();
    assert!(r.loaded > 0 && !r.unexpected.is_empty() && !r.wrong_shape.is_empty());
}

#[test]
fn a_new_head_replaces_the_classifier_and_keeps_the_body() {
    let dir = fixtures();
    let path = dir.join("resnet18.pth");
    let w = weights::read(&path).unwrap();
    let mut model = imagenet_model("resnet18", 4);
    let opts = LoadOptions {
        strict: true,
        replace_head: true,
    };
    let r = weights::load_into(&path, &w, &mut model, opts).unwrap();
    assert_eq!(r.replaced_head.len(), 2, "{:?}", r.replaced_head);
    let vars = model.vs.variables();
    assert!(vars["conv1.weight"].equal(&common::entry(&w, "conv1.weight")));
    assert_eq!(vars["fc.weight"].size(), vec![4, 512]);
    // Without replace_head the same file is an error that names the head.
    let mut model = imagenet_model("resnet18", 4);
    let err = weights::load_into(&path, &w, &mut model, strict())
        .unwrap_err()
        .to_string();
    assert!(err.contains("fc.weight is [1000, 512]"), "{err}");
}

#[test]
fn official_weights_are_named_with_their_sha256_prefix() {
    let r = weights::remote("resnet50").unwrap();
    assert_eq!(
        r.url,
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    );
    assert!(matches!(r.checksum, Checksum::Sha256Prefix(ref h) if h == "0676ba61"));
    assert!(weights::remote("resnet51").is_none());
    let err = weights::resolve("resnet51", false).unwrap_err().to_string();
    assert!(
        err.contains("resnet51") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn downloaded_weights_are_verified_then_read() {
    let dir = fixtures();
    let body = std::fs::read(dir.join("resnet18.pth")).unwrap();
    let hash = download::hex(&sha2::Sha256::digest(&body));
    let good = Remote {
        url: common::serve_once(body.clone()),
        file_name: format!("resnet18-{}.pth", &hash[..8]),
        checksum: Checksum::Sha256Prefix(hash[..8].to_string()),
    };
    let into = dir.join("download");
    let path = download::fetch(&good, &into, false).unwrap();
    assert_eq!(weights::read(&path).unwrap().len(), 122);
    let bad = Remote {
        url: common::serve_once(body),
        file_name: "resnet18-00000000.pth".into(),
        checksum: Checksum::Sha256Prefix("00000000".into()),
    };
    let err = download::fetch(&bad, &into, false).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!into.join("resnet18-00000000.pth").exists());
}

#[test]
fn command_line_inspect_lists_tensors_and_refuses_a_malicious_pickle() {
    let dir = fixtures();
    let run = |file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
            .args(["weights", "inspect"])
            .arg(dir.join(file))
            .output()
            .unwrap()
    };
    let ok = run("resnet18.pth");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success());
    assert!(
        text.contains("layer4.1.bn2.running_var") && text.contains("122 tensors"),
        "{text}"
    );
    let evil = run("evil.pth");
    let err = String::from_utf8_lossy(&evil.stderr);
    assert!(!evil.status.success());
    assert!(
        err.contains("refused") && err.contains("posix.system"),
        "{err}"
    );
    assert!(!dir.join("pwned").exists(), "the pickle's code ran");
}

/// convkit's table of torchvision weight sets is torchvision 0.26.0's enums, member for member:
/// files, parameter counts, published accuracy, preprocessing and DEFAULTs.
#[test]
fn pretrained_table_is_torchvisions_weight_enums() {
    use convkit::weights::torchvision::{IMAGENET_MEAN, IMAGENET_STD, PRETRAINED};
    let mut models: Vec<&str> = PRETRAINED.iter().map(|p| p.model).collect();
    models.dedup();
    let out =
        std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
            .arg(common::fixture("dump_weights.py"))
            .args(&models)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs.len(), PRETRAINED.len(), "every enum member, no more");
    for (t, ours) in theirs.iter().zip(&PRETRAINED) {
        let what = ours.torchvision;
        assert_eq!(t["torchvision"], what);
        assert_eq!(t["model"], ours.model, "{what}");
        assert_eq!(t["file"], ours.file, "{what}");
        assert_eq!(t["parameters"], ours.parameters, "{what}");
        assert_eq!(t["top1"].as_f64(), Some(ours.top1), "{what}");
        assert_eq!(t["top5"].as_f64(), Some(ours.top5), "{what}");
        assert_eq!(t["resize"], ours.preprocess.resize, "{what}");
        assert_eq!(t["crop"], ours.preprocess.crop, "{what}");
        let interpolation = serde_json::to_value(ours.preprocess.interpolation).unwrap();
        assert_eq!(t["interpolation"], interpolation, "{what}");
        assert_eq!(t["mean"], serde_json::json!(IMAGENET_MEAN), "{what}");
        assert_eq!(t["std"], serde_json::json!(IMAGENET_STD), "{what}");
        assert_eq!(t["default"], ours.default, "{what}");
        let m = imagenet_model(ours.model, 3);
        assert_eq!(m.net.classifier().name, ours.classifier, "{what}");
    }
}

#[test]
fn weights_are_found_by_convkit_or_torchvision_name() {
    use convkit::weights::torchvision::find;
    assert_eq!(find("resnet50-v2").unwrap().file, "resnet50-11ad3fa6.pth");
    let by_enum = find("ResNet50_Weights.IMAGENET1K_V1").unwrap();
    assert_eq!(by_enum.name, "resnet50");
    assert_eq!(
        find("ResNet50_Weights.DEFAULT").unwrap().name,
        "resnet50-v2"
    );
    assert_eq!(
        find("EfficientNet_B3_Weights.DEFAULT")
            .unwrap()
            .preprocess
            .crop,
        300
    );
    assert!(find("ResNet50_Weights.IMAGENET1K_V3").is_none());
    let r = weights::remote("efficientnet_b0").unwrap();
    assert!(matches!(r.checksum, Checksum::Sha256Prefix(ref h) if h == "7f5810bc"));
}

/// timm names its ResNets as torchvision does, but not its other families: such a file is
/// refused with a message saying so, not a bare list of unknown names.
#[test]
fn timm_names_of_other_families_are_refused_with_the_reason() {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("timm-efficientnet_b0.safetensors");
    let t = |shape: &[i64]| Tensor::zeros(shape, (tch::Kind::Float, Device::Cpu));
    let timm = [
        ("conv_stem.weight", t(&[32, 3, 3, 3])),
        ("bn1.weight", t(&[32])),
        ("blocks.0.0.conv_dw.weight", t(&[32, 1, 3, 3])),
        ("conv_head.weight", t(&[1280, 320, 1, 1])),
        ("classifier.weight", t(&[1000, 1280])),
    ];
    Tensor::write_safetensors(&timm, &file).unwrap();
    let mut model = imagenet_model("efficientnet_b0", 1000);
    let w = weights::read(&file).unwrap();
    let err = weights::load_into(&file, &w, &mut model, strict())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("timm's names") && err.contains("efficientnet_b0"),
        "{err}"
    );
}
