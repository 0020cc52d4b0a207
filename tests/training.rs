//! Real training on small budgets: learning, exact resume, divergence handling, checkpoints,
//! the command line, and a subset of the JPEG CIFAR-10 copy.
mod common;

use convkit::config;
use convkit::config::Config;
use convkit::metrics;
use convkit::models::{self, ModelSpec};
use convkit::train::{self, RunOptions};
use convkit::weights::checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small, quick config on the synthetic set.
fn small_config(train_images: usize, epochs: usize) -> Config {
    let overrides = [
        format!("data.train_limit={train_images}"),
        "data.test_limit=1000".into(),
        "model.name=\"cnn\"".into(),
        "model.widths=[16, 32, 64]".into(),
        format!("train.epochs={epochs}"),
        "train.batch_size=64".into(),
        "train.device=\"cpu\"".into(),
        "optim.lr=0.05".into(),
        "schedule.kind=\"one-cycle\"".into(),
        "augment=[\"crop:2:reflect\", \"flip\"]".into(),
    ];
    config::load(None, &overrides).unwrap()
}

#[test]
fn synthetic_training_learns_and_writes_a_report() {
    let out = common::temp_dir("train-learn");
    let s = train::run(small_config(3000, 3), &out, &RunOptions::default()).unwrap();
    let history = metrics::read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(history.len(), 3);
    assert!(
        history[2].train_loss < history[0].train_loss * 0.8,
        "loss falls: {history:?}"
    );
    assert!(
        s.test_accuracy > 0.5,
        "10 balanced classes, chance is 0.1; got {}",
        s.test_accuracy
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["epochs"], 3);
    assert!(summary["train_seconds"].as_f64().unwrap() > 0.0);
    for f in [
        "report.html",
        "config.toml",
        "plots/loss.png",
        "plots/accuracy.png",
        "plots/lr.png",
        "plots/confusion.png",
    ] {
        assert!(out.join(f).exists(), "{f} is written");
    }
    let saved: Config =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!(
        saved,
        small_config(3000, 3),
        "the effective config repeats the run"
    );
}

#[test]
fn resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let (a, b) = (
        common::temp_dir("train-straight"),
        common::temp_dir("train-resumed"),
    );
    let straight = train::run(small_config(1000, 2), &a, &RunOptions::default()).unwrap();
    let first = RunOptions {
        stop_after: Some(1),
        ..Default::default()
    };
    train::run(small_config(1000, 2), &b, &first).unwrap();
    assert_eq!(
        metrics::read_jsonl(&b.join("metrics.jsonl")).unwrap().len(),
        1
    );
    let resumed = train::run(
        Config::default(),
        &b,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (ha, hb) = (
        metrics::read_jsonl(&a.join("metrics.jsonl")).unwrap(),
        metrics::read_jsonl(&b.join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(hb.len(), 2);
    for (x, y) in ha.iter().zip(&hb) {
        assert_eq!(
            (x.train_loss, x.test_loss, x.test_accuracy, x.lr),
            (y.train_loss, y.test_loss, y.test_accuracy, y.lr)
        );
    }
    assert_eq!(straight.test_accuracy, resumed.test_accuracy);
}

#[test]
fn diverging_loss_stops_with_advice_and_keeps_the_checkpoint() {
    let out = common::temp_dir("train-nan");
    train::run(
        small_config(500, 2),
        &out,
        &RunOptions {
            stop_after: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let ck = out.join("checkpoints").join("last.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let cfg_path = out.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("lr = 0.05", "lr = 1e30");
    std::fs::write(&cfg_path, text).unwrap();
    let err = train::run(
        Config::default(),
        &out,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("training diverged") && err.contains("at step"),
        "{err}"
    );
    assert!(err.contains("lower learning rate"), "{err}");
    assert!(err.contains(&ck.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the last good checkpoint is untouched"
    );
}

#[test]
fn checkpoint_of_another_architecture_is_refused() {
    let out = common::temp_dir("train-arch");
    train::run(small_config(300, 1), &out, &RunOptions::default()).unwrap();
    let loaded = checkpoint::read(&out).unwrap();
    let mut other = models::build(&ModelSpec::new("resnet20", 10), tch::Device::Cpu).unwrap();
    let err = loaded.load_into(&mut other).unwrap_err().to_string();
    assert!(
        err.contains("last.safetensors")
            && err.contains("'cnn' model cannot be loaded into a 'resnet20'"),
        "{err}"
    );
    let err = checkpoint::copy_weights(
        Path::new("w.safetensors"),
        &loaded.section("model"),
        &mut other,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("w.safetensors")
            && err.contains("missing: bn1.bias")
            && err.contains("unexpected: features.0.bn.bias"),
        "{err}"
    );
    let junk = out.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let err = checkpoint::read(&junk).err().unwrap().to_string();
    assert!(err.contains("junk.safetensors"), "{err}");
}

fn convkit(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `convkit predict` over a folder: sub-folders walked, a broken file listed in its row and not
/// fatal, the same probabilities whatever the batch size, CSV rows in the JSON's order.
fn predict_over_a_folder(run: &str, out: &Path) {
    let dir = out.join("to-label");
    std::fs::create_dir_all(dir.join("more")).unwrap();
    for (i, rgb) in [[220u8, 30, 30], [30, 200, 40], [20, 20, 230]]
        .iter()
        .enumerate()
    {
        let name = if i == 2 {
            "more/c.png"
        } else {
            ["a.png", "b.jpg"][i]
        };
        image::RgbImage::from_fn(36, 28, |x, y| {
            image::Rgb([rgb[0], rgb[1].wrapping_add((x * y) as u8), rgb[2]])
        })
        .save(dir.join(name))
        .unwrap();
    }
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg").unwrap();
    std::fs::write(dir.join("notes.txt"), b"skipped").unwrap();
    let dir_s = dir.to_str().unwrap();
    let json = |batch: &str| {
        let (ok, stdout, err) = convkit(&["predict", run, dir_s, "--json", "--batch", batch]);
        assert!(ok, "{err}");
        assert!(
            err.contains("1 unreadable") && err.contains("broken.jpg"),
            "{err}"
        );
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout).unwrap()
    };
    let one = json("1");
    let all = json("64");
    let names: Vec<&str> = one.iter().map(|r| r["image"].as_str().unwrap()).collect();
    let expected: Vec<String> = ["a.png", "b.jpg", "broken.jpg", "more/c.png"]
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect();
    assert_eq!(names, expected);
    assert!(one[2]["error"].as_str().unwrap().contains("cannot decode"));
    for (a, b) in one.iter().zip(&all).filter(|(a, _)| a["top"].is_array()) {
        for (x, y) in a["top"]
            .as_array()
            .unwrap()
            .iter()
            .zip(b["top"].as_array().unwrap())
        {
            assert_eq!(x[0], y[0]);
            assert!((x[1].as_f64().unwrap() - y[1].as_f64().unwrap()).abs() < 1e-5);
        }
    }
    let csv = out.join("labels.csv");
    let (ok, _, err) = convkit(&[
        "predict",
        run,
        dir_s,
        "--top",
        "2",
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "image,class_1,probability_1,class_2,probability_2,error"
    );
    assert_eq!(lines.len(), 5);
    let first: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(first[0], expected[0]);
    assert_eq!(first[1], all[0]["top"][0][0].as_str().unwrap());
    assert!(
        lines[3].starts_with(&format!("{},,,,,", expected[2])),
        "{}",
        lines[3]
    );
}

/// `convkit export --format onnx` of a trained run, run by onnxruntime on image files as its
/// sidecar describes (RGB / 255, normalisation inside), gives `convkit predict`'s
/// probabilities.
fn exported_onnx_predicts_like_convkit(run: &str, out: &Path) {
    let onnx = out.join("model.onnx");
    let (ok, stdout, err) = convkit(&[
        "export",
        run,
        "--format",
        "onnx",
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(ok && stdout.contains("normalised inside"), "{err}");
    let images: Vec<String> = (0..3)
        .map(|i| {
            let p = out.join(format!("square{i}.png"));
            image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([(x * 8) as u8, (y * 8) as u8, (i * 90) as u8])
            })
            .save(&p)
            .unwrap();
            p.display().to_string()
        })
        .collect();
    let mut args = vec!["predict", run, "--json", "--top", "10"];
    args.extend(images.iter().map(String::as_str));
    let (ok, stdout, err) = convkit(&args);
    assert!(ok, "{err}");
    let ours: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx_predict.py");
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let o = Command::new(py)
        .arg(script)
        .arg(&onnx)
        .args(&images)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<Vec<f64>> = serde_json::from_slice(&o.stdout).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.onnx.json")).unwrap()).unwrap();
    let classes: Vec<&str> = meta["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for (row, probs) in ours.iter().zip(&theirs) {
        for pair in row["top"].as_array().unwrap() {
            let c = classes.iter().position(|n| *n == pair[0]).unwrap();
            let p = pair[1].as_f64().unwrap();
            assert!(
                (p - probs[c]).abs() < 1e-4,
                "{}: {p} vs {}",
                pair[0],
                probs[c]
            );
        }
    }
}

/// Bad settings and paths of `predict`, `export` and `summary` end in one error line that
/// names them, never a panic.
fn bad_predict_export_and_summary_input_is_named(run: &str, out: &Path) {
    let img = out.join("red.png");
    let img_s = img.to_str().unwrap();
    let empty = out.join("no-images");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"text").unwrap();
    let under_a_file = img.join("model.onnx");
    let cases: [(&[&str], &str); 6] = [
        (&["predict", run, img_s, "--batch", "0"], "--batch"),
        (&["predict", run, img_s, "--batch", "5000"], "--batch"),
        (&["predict", run, empty.to_str().unwrap()], "no images"),
        (
            &[
                "export",
                run,
                "--format",
                "onnx",
                "--out",
                under_a_file.to_str().unwrap(),
            ],
            "red.png",
        ),
        (
            &["summary", "convnext_tiny", "--input", "3x16x16"],
            "too small",
        ),
        (
            &["summary", "resnet18", "--input", "3x5000x5000"],
            "--input",
        ),
    ];
    for (args, named) in cases {
        let (ok, _, err) = convkit(args);
        assert!(!ok && err.contains(named), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn command_line_train_eval_predict_summary() {
    let out = common::temp_dir("train-cli");
    let run = out.join("run");
    let run_s = run.to_str().unwrap();
    let (ok, _, err) = convkit(&[
        "train",
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--train-limit",
        "500",
        "--device",
        "cpu",
        "--set",
        "data.test_limit=200",
        "--set",
        "model.widths=[8, 16]",
        "--out",
        run_s,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("summary") && err.contains("test accuracy"),
        "{err}"
    );
    let (ok, stdout, err) = convkit(&["eval", run_s, "--out", out.join("eval").to_str().unwrap()]);
    assert!(ok && stdout.contains("test accuracy"), "{err}");
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/summary.json")).unwrap()).unwrap();
    assert!(eval["test_accuracy"].as_f64().unwrap() > 0.0);
    let img = out.join("red.png");
    image::RgbImage::from_pixel(50, 40, image::Rgb([220, 30, 30]))
        .save(&img)
        .unwrap();
    let (ok, stdout, err) = convkit(&[
        "predict",
        run_s,
        img.to_str().unwrap(),
        "--json",
        "--top-k",
        "3",
    ]);
    assert!(ok, "{err}");
    let preds: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let top = preds[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let total: f64 = top.iter().map(|p| p[1].as_f64().unwrap()).sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-6);
    let bad = out.join("bad.jpg");
    std::fs::write(&bad, b"garbage").unwrap();
    let (ok, _, err) = convkit(&["predict", run_s, bad.to_str().unwrap()]);
    assert!(
        !ok && err.contains("bad.jpg") && err.contains("cannot decode"),
        "{err}"
    );
    predict_over_a_folder(run_s, &out);
    exported_onnx_predicts_like_convkit(run_s, &out);
    bad_predict_export_and_summary_input_is_named(run_s, &out);
    let (ok, stdout, _) = convkit(&["summary", "resnet18", "--classes", "1000"]);
    assert!(ok && stdout.contains("parameters: 11,689,512"), "{stdout}");
    let (ok, _, err) = convkit(&["train", "--config", "no-such-recipe"]);
    assert!(
        !ok && err.contains("no-such-recipe") && err.contains("cifar10-fast-cpu"),
        "{err}"
    );
    let recipe = [
        "bench",
        "--recipe",
        "cifar10-airbench-cpu",
        "--data",
        "synthetic",
    ];
    let (ok, _, err) = convkit(&[&recipe[..], &["--runs", "0"]].concat());
    assert!(!ok && err.contains("--runs 0"), "{err}");
    let (ok, _, err) = convkit(&[&recipe[..], &["--target", "80"]].concat());
    assert!(
        !ok && err.contains("--target 80") && err.contains("0.8"),
        "{err}"
    );
    let (ok, _, err) = convkit(&[
        "train",
        "--data",
        "synthetic",
        "--model",
        "resnet20",
        "--set",
        "model.whiten_init=true",
        "--out",
        common::temp_dir("no-whiten").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("model.whiten_init") && err.contains("resnet20 has no `whiten`"),
        "{err}"
    );
}

/// The JPEG CIFAR-10 copy: `$CONVKIT_CIFAR10_JPEG`, else ../shared/data/cifar10-jpeg.
fn jpeg_copy() -> Option<PathBuf> {
    let p = std::env::var_os("CONVKIT_CIFAR10_JPEG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpeg")
        });
    p.join("train").is_dir().then_some(p)
}

#[test]
fn cifar10_jpeg_subset_clears_the_floor() {
    let Some(data) = jpeg_copy() else {
        eprintln!(
            "SKIPPED: the JPEG CIFAR-10 copy is not at ../shared/data/cifar10-jpeg (set CONVKIT_CIFAR10_JPEG)"
        );
        return;
    };
    let cache = common::temp_dir("train-jpeg-cache");
    // SAFETY of set_var: the only test in this binary that reads CONVKIT_DATA's value.
    unsafe { std::env::set_var("CONVKIT_DATA", &cache) };
    let overrides = [
        format!(
            "data.source={}",
            toml::Value::String(data.display().to_string())
        ),
        "data.train_limit=5000".into(),
        "data.test_limit=2000".into(),
        "train.epochs=5".into(),
        "train.batch_size=128".into(),
        "train.device=\"cpu\"".into(),
    ];
    let cfg = config::load(Some("cifar10-fast-cpu"), &overrides).unwrap();
    let out = common::temp_dir("train-jpeg");
    let s = train::run(cfg, &out, &RunOptions::default()).unwrap();
    assert_eq!((s.train_images, s.test_images), (5000, 2000));
    let classes_seen = s
        .per_class_accuracy
        .iter()
        .filter(|(_, a)| *a > 0.0)
        .count();
    assert_eq!(
        classes_seen, 10,
        "the test subset holds every class: {:?}",
        s.per_class_accuracy
    );
    assert!(
        s.test_accuracy >= FLOOR,
        "5,000 JPEG CIFAR-10 images, 5 epochs: {} < {FLOOR}",
        s.test_accuracy
    );
}

/// Measured 2026-11-27 on the 2-core AMD EPYC: see bench/RESULTS.md.
const FLOOR: f64 = 0.55;

/// airbench's pieces switched on in a run: the whitening layer is the data's patch whitening and
/// stays frozen, BatchNorm scales stay at 1 while shifts get 64x the rate, alternating flip,
/// lookahead and translation TTA run, and the model still learns.
#[test]
fn airbench_pieces_train_together() {
    let out = common::temp_dir("train-airbench");
    let mut cfg = small_config(1000, 2);
    cfg.model.name = "airnet".into();
    cfg.model.widths = Some(vec![16, 32, 32]);
    cfg.model.whiten_init = true;
    cfg.model.dirac_init = true;
    cfg.optim.lookahead_every = 5;
    cfg.model.bn_scale_frozen = true;
    cfg.optim.bn_bias_lr_mult = 64.0;
    cfg.train.tta_flip = true;
    cfg.train.tta_translate = true;
    let model = models::build(&cfg.model.spec(10, 3), tch::Device::Cpu).unwrap();
    let optim = train::batchnorm_options(&cfg, &model).unwrap();
    let scale = |name: &str| {
        optim
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.lr_scale)
    };
    assert_eq!(scale("groups.0.bn1.bias"), Some(64.0));
    assert_eq!(scale("groups.0.conv1.weight"), Some(1.0));
    assert_eq!(
        scale("groups.0.bn1.weight"),
        None,
        "frozen scales are not optimised"
    );
    cfg.augment = vec![
        "crop:2:reflect".parse().unwrap(),
        "altflip".parse().unwrap(),
    ];
    let data = train::load_data(&cfg, 32).unwrap();
    let s = train::run(cfg, &out, &RunOptions::default()).unwrap();
    assert!(
        s.test_accuracy > 0.3,
        "airnet with airbench pieces: {}",
        s.test_accuracy
    );
    let ck = checkpoint::read(&out).unwrap();
    let w = ck
        .section("model")
        .into_iter()
        .find(|(n, _)| n == "whiten.weight")
        .unwrap()
        .1;
    let aug = convkit::augment::Augmenter::new(vec![], &data.mean, &data.std, tch::Device::Cpu);
    let want = convkit::models::init::patch_whitening(&aug.eval_batch(&data.train.images), 2, 5e-4);
    assert!(
        (&w - &want).abs().max().double_value(&[]) < 1e-4,
        "the whitening layer is the data's whitening, unchanged by training"
    );
    assert!(
        ck.section("optim")
            .iter()
            .any(|(n, _)| n.starts_with("lookahead."))
    );
    for (name, t) in ck.section("model") {
        if name.contains(".bn") && name.ends_with(".weight") {
            assert!(t.eq(1.0).all().int64_value(&[]) == 1, "{name} stays at 1");
        }
    }
}

/// The shipped airbench recipe, shrunk to seconds on the synthetic set: its pieces load and
/// train together, the whitening bias learns for `whiten_bias_epochs` epochs only, and
/// `convkit bench --recipe`'s timed runs report accuracy, seconds and the time to a target.
#[test]
fn airbench_recipe_trains_and_its_runs_are_timed() {
    let sets = [
        "data.source=\"synthetic\"",
        "data.train_limit=1024",
        "data.test_limit=500",
        "model.widths=[16, 32, 32]",
        "train.epochs=3",
        "train.batch_size=128",
        "train.eval_every=1",
        "train.device=\"cpu\"",
        "model.whiten_bias_epochs=1",
        // Lookahead pulls every tensor toward its average, the frozen bias included.
        "optim.lookahead_every=0",
    ]
    .map(String::from);
    let cfg = config::load(Some("cifar10-airbench"), &sets).unwrap();
    assert!(cfg.optim.decoupled_decay && cfg.optim.decay_1d && cfg.model.whiten_init);
    let out = common::temp_dir("airbench-recipe");
    let mut trainer = train::Trainer::new(cfg.clone(), &out, false).unwrap();
    let bias = |t: &train::Trainer| t.model.vs.variables()["whiten.bias"].copy();
    let start = bias(&trainer);
    let once = RunOptions {
        stop_after: Some(1),
        ..Default::default()
    };
    trainer.fit(&once).unwrap();
    let after_one = bias(&trainer);
    assert!(!after_one.equal(&start), "the bias trains in epoch 1");
    trainer.fit(&RunOptions::default()).unwrap();
    assert!(bias(&trainer).equal(&after_one), "and is frozen after it");

    let runs = convkit::bench::recipe_runs(&cfg, (0, 2), 0.0, &out.join("bench"), false).unwrap();
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r.epochs.len(), 3, "evaluated after every epoch");
        let trained = r.epochs[2].1;
        assert!(r.seconds > trained, "set-up and evaluation are timed too");
        assert_eq!(
            r.time_to_target,
            Some(r.epochs[0].1),
            "target 0 is met at once"
        );
        assert!(r.accuracy > 0.3, "seed {}: {}", r.seed, r.accuracy);
        assert!(
            out.join(format!("bench/run-{}/metrics.jsonl", r.seed))
                .exists()
        );
    }
    let seeds: Vec<u64> = runs.iter().map(|r| r.seed).collect();
    assert_eq!(seeds, vec![0, 1]);
}
