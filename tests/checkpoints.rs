//! Files other tools write: training checkpoints that nest and prefix the state dict (the
//! search picks the right dict and prefix and says so), harmless Python objects beside the
//! weights, legacy (pre-1.6) `torch.save` files, and CIFAR's python-version batches. Inputs are
//! written by the pip torch and numpy (tests/fixtures/make_checkpoints.py) from a convkit
//! model's own state dict.

mod common;

use convkit::data::{self, DataSpec, Dataset};
use convkit::models::{self, ModelSpec};
use convkit::transfer::model_shapes;
use convkit::weights::{self, LoadOptions};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Tensor};

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("checkpoint-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = model();
        let mut vars: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.contiguous()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Tensor::write_safetensors(&vars, dir.join("plain.safetensors")).unwrap();
        common::python(&[common::fixture("make_checkpoints.py"), dir.clone().into()]);
        dir
    })
}

fn model() -> models::Model {
    tch::manual_seed(0);
    models::build(&ModelSpec::new("resnet20", 10), Device::Cpu).unwrap()
}

fn plain() -> Vec<(String, Tensor)> {
    weights::read(&fixtures().join("plain.safetensors")).unwrap()
}

/// Same names (num_batches_tracked aside) and bit-identical values.
fn assert_same(got: &[(String, Tensor)], want: &[(String, Tensor)]) {
    for (name, t) in want {
        let g = got
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(g.1.equal(t), "{name} differs");
    }
}

fn choose(
    file: &str,
    key: Option<&str>,
    strip: Option<&str>,
) -> weights::Result<(Vec<(String, Tensor)>, weights::Choice)> {
    let contents = weights::read_contents(&fixtures().join(file))?;
    weights::choose(&contents, &model_shapes(&model()), key, strip)
}

#[test]
fn data_parallel_checkpoint_under_net_is_found_and_loads_the_same_tensors() {
    let (tensors, choice) = choose("net_module.pth", None, None).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("net", "module.")
    );
    assert_eq!(choice.fit, choice.wanted);
    let line = choice.describe(&fixtures().join("net_module.pth"));
    assert_eq!(
        line,
        format!(
            "weights: using 'net' from net_module.pth, prefix 'module.' stripped ({0} of {0} tensors fit)",
            choice.wanted
        )
    );
    assert_same(&tensors, &plain());
    let mut m = model();
    let strict = LoadOptions {
        strict: true,
        replace_head: false,
    };
    let path = fixtures().join("net_module.pth");
    let r = weights::load_into(&path, &tensors, &mut m, strict).unwrap();
    assert!(r.is_clean());
}

#[test]
fn state_dict_beside_optimizer_and_a_tensor_metric_is_found() {
    let (tensors, choice) = choose("state_dict_opt.pth", None, None).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("state_dict", "")
    );
    assert_eq!(choice.fit, choice.wanted);
    assert_same(&tensors, &plain());
}

#[test]
fn torch_compile_prefix_is_stripped() {
    let (tensors, choice) = choose("compiled.pth", None, None).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("", "_orig_mod.")
    );
    assert!(
        choice
            .describe(Path::new("compiled.pth"))
            .contains("using the top-level tensors from compiled.pth, prefix '_orig_mod.'")
    );
    assert_same(&tensors, &plain());
}

#[test]
fn moco_query_encoder_is_chosen_and_its_projection_head_is_unexpected() {
    let (tensors, choice) = choose("moco.pth", None, None).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("state_dict", "module.encoder_q.")
    );
    // Everything but the classifier (MoCo's fc is a projection MLP).
    assert_eq!(choice.fit, choice.wanted - 2);
    // The key encoder and the queue lie outside the prefix and are left out.
    assert_eq!(choice.outside_prefix, choice.in_group - tensors.len());
    assert!(choice.outside_prefix > 0);
    assert!(tensors.iter().all(|(n, _)| !n.starts_with("module.")));
    let body: Vec<(String, Tensor)> = plain()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("fc."))
        .collect();
    assert_same(
        &tensors
            .iter()
            .filter(|(n, _)| !n.starts_with("fc."))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect::<Vec<_>>(),
        &body,
    );
    // Strict loading with a new head: the projection MLP is replaced, nothing else is off.
    let mut m = model();
    let new_head = LoadOptions {
        strict: true,
        replace_head: true,
    };
    let path = fixtures().join("moco.pth");
    let r = weights::load_into(&path, &tensors, &mut m, new_head).unwrap();
    assert_eq!(r.loaded, body.len());
    assert!(r.unexpected.is_empty() && r.missing.is_empty(), "{r:?}");
    assert!(
        r.replaced_head.iter().any(|n| n.starts_with("fc.0.weight")),
        "{r:?}"
    );
    assert!(
        r.replaced_head.iter().any(|n| n == "fc.weight new"),
        "{r:?}"
    );
}

#[test]
fn key_and_prefix_overrides() {
    let (tensors, choice) = choose("net_module.pth", Some("net"), Some("module.")).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("net", "module.")
    );
    assert_same(&tensors, &plain());
    // Take the key encoder of the MoCo file instead of the query encoder.
    let (tensors, choice) =
        choose("moco.pth", Some("state_dict"), Some("module.encoder_k.")).unwrap();
    assert_eq!(choice.prefix, "module.encoder_k.");
    assert!(tensors.iter().any(|(n, _)| n == "layer1.0.conv1.weight"));
    let err = choose("net_module.pth", Some("model"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'model' is not in the file") && err.contains("'net'"),
        "{err}"
    );
    let err = choose("net_module.pth", Some("epoch"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'epoch' is an int"), "{err}");
    let err = choose("net_module.pth", Some("net"), Some("backbone."))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--strip-prefix 'backbone.'"), "{err}");
}

#[test]
fn nothing_fits_lists_the_files_names_beside_the_models() {
    let err = choose("nothing_fits.pth", None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing_fits.pth"), "{err}");
    assert!(
        err.contains("'model' (2 tensors: foo.weight, bar.bias)"),
        "{err}"
    );
    assert!(
        err.contains("conv1.weight") || err.contains("bn1."),
        "{err}"
    );
    assert!(err.contains("--weights-key"), "{err}");
}

#[test]
fn numpy_scalars_and_namespaces_beside_the_weights_are_inert() {
    let path = fixtures().join("namespace.pth");
    let contents = weights::read_contents(&path).unwrap();
    let described: Vec<(&str, &str)> = contents
        .others
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_str()))
        .collect();
    assert!(
        described.contains(&("args", "a argparse.Namespace object")),
        "{described:?}"
    );
    assert!(
        described
            .iter()
            .any(|(k, d)| *k == "best_acc" && d.contains("multiarray.scalar")),
        "{described:?}"
    );
    let (tensors, choice) = choose("namespace.pth", None, None).unwrap();
    assert_eq!(choice.key, "state_dict");
    assert_same(&tensors, &plain());
    // Used as the state dict, the placeholder is refused by name.
    let err = choose("namespace.pth", Some("args"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused") && err.contains("argparse.Namespace"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_a_call_to_os_system_is_refused_and_never_runs() {
    let path = fixtures().join("evil_root.pth");
    for err in [
        weights::read(&path).unwrap_err().to_string(),
        weights::inspect(&path).unwrap_err().to_string(),
    ] {
        assert!(err.contains("evil_root.pth"), "{err}");
        assert!(
            err.contains("refused") && err.contains("posix.system") && err.contains("top level"),
            "{err}"
        );
    }
    assert!(!fixtures().join("pwned").exists(), "the pickle's code ran");
}

#[test]
fn numpy_scalar_reads_as_its_value() {
    // The pickle inside namespace.pth, read directly: best_acc is numpy.float64(93.1).
    let file = std::fs::File::open(fixtures().join("namespace.pth")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl"))
        .unwrap()
        .to_string();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut bytes).unwrap();
    let root = convkit::pickle::load(&bytes).unwrap();
    assert_eq!(root.get("best_acc").unwrap().as_f64(), Some(93.1));
}

#[test]
fn legacy_torch_save_files_read_like_zip_files() {
    let dir = fixtures();
    let legacy = weights::read(&dir.join("legacy.pth")).unwrap();
    let want = plain();
    assert_eq!(legacy.len(), want.len());
    assert_same(&legacy, &want);
    let (tensors, choice) = choose("legacy_wrapped.pth", None, None).unwrap();
    assert_eq!(
        (choice.key.as_str(), choice.prefix.as_str()),
        ("model", "module.")
    );
    assert_same(&tensors, &want);
    let (tensors, choice) = choose("legacy_namespace.pth", None, None).unwrap();
    assert_eq!(choice.key.as_str(), "state_dict");
    assert_same(&tensors, &want);
    let bytes = std::fs::read(dir.join("legacy.pth")).unwrap();
    for cut in [bytes.len() - 3, bytes.len() / 2, 40] {
        let path = dir.join(format!("legacy-cut-{cut}.pth"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = weights::read(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("legacy-cut-{cut}.pth")), "{err}");
        assert!(err.contains("truncated"), "{err}");
    }
}

#[test]
fn command_line_inspect_shows_key_paths_of_nested_files() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(["weights", "inspect"])
        .arg(fixtures().join("state_dict_opt.pth"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("state_dict/conv1.weight"), "{text}");
    assert!(text.contains("optimizer/state/0/momentum_buffer"), "{text}");
    assert!(text.contains("best_acc1"), "{text}");
}

fn load(path: &Path) -> Dataset {
    data::load(&DataSpec::new(path.to_str().unwrap())).unwrap()
}

fn assert_same_data(a: &Dataset, b: &Dataset) {
    assert_eq!(a.name, b.name);
    assert_eq!(a.classes, b.classes);
    for (x, y) in [(&a.train, &b.train), (&a.test, &b.test)] {
        assert_eq!(x.images.size(), y.images.size());
        assert!(x.images.equal(&y.images));
        assert_eq!(x.labels_vec(), y.labels_vec());
    }
}

#[test]
fn cifar10_python_batches_give_the_binary_versions_images() {
    let dir = fixtures();
    let binary = load(&dir.join("c10"));
    assert_eq!(binary.train.len(), 15);
    assert_eq!(binary.test.len(), 4);
    for source in [
        dir.join("c10-py2"),
        dir.join("c10-py2/cifar-10-batches-py"),
        dir.join("c10-py5"),
        dir.join("cifar-10-python.tar.gz"),
    ] {
        let path = source.to_str().unwrap();
        assert_eq!(
            data::detect_format(&source).unwrap(),
            data::Format::CifarPython,
            "{path}"
        );
        assert_same_data(&load(&source), &binary);
    }
    assert_eq!(binary.classes[9], "truck");
}

#[test]
fn cifar100_python_batches_give_the_binary_versions_images() {
    let dir = fixtures();
    let binary = load(&dir.join("c100"));
    let python = load(&dir.join("c100-py4"));
    assert_same_data(&python, &binary);
    assert_eq!(python.classes.len(), 100);
    assert_eq!(python.classes[42], "class_42");
}

#[test]
fn a_damaged_cifar_python_batch_is_an_error_naming_the_file() {
    let dir = fixtures();
    let copy = dir.join("c10-bad/cifar-10-batches-py");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(dir.join("c10-py5/cifar-10-batches-py")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let bytes = std::fs::read(copy.join("data_batch_3")).unwrap();
    std::fs::write(copy.join("data_batch_3"), &bytes[..bytes.len() / 2]).unwrap();
    let err = data::load(&DataSpec::new(dir.join("c10-bad").to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn command_line_training_finds_the_state_dict_and_takes_overrides() {
    let dir = fixtures();
    let run = |extra: &[&str], out: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
            .args([
                "train", "--model", "resnet20", "--epochs", "1", "--device", "cpu",
            ])
            .args(["--set", "train.batch_size=5", "--out"])
            .arg(dir.join(out))
            .arg("--data")
            .arg(dir.join("c10-py5"))
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let moco = dir.join("moco.pth");
    let moco = moco.to_str().unwrap();
    let (ok, err) = run(&["--weights", moco, "--strict", "false"], "run-moco");
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "weights: using 'state_dict' from moco.pth, prefix 'module.encoder_q.' stripped"
        ),
        "{err}"
    );
    let (ok, err) = run(
        &[
            "--weights",
            moco,
            "--strict",
            "false",
            "--strip-prefix",
            "module.encoder_k.",
        ],
        "run-moco-k",
    );
    assert!(
        ok && err.contains("prefix 'module.encoder_k.' stripped"),
        "{err}"
    );
    let ns = dir.join("namespace.pth");
    let (ok, err) = run(
        &["--weights", ns.to_str().unwrap(), "--weights-key", "args"],
        "run-args",
    );
    assert!(
        !ok && err.contains("refused") && err.contains("argparse.Namespace"),
        "{err}"
    );
}
