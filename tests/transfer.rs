//! Transfer learning on the synthetic set: pretrained weights load with a new head, frozen
//! groups stay put (and their BatchNorm follows train_bn), discriminative rates are spread as
//! fastai and timm spread them, the strategies run end to end, lr-find suggests a rate.
mod common;

use convkit::augment::Augmenter;
use convkit::config;
use convkit::config::Config;
use convkit::config::TransferConfig;
use convkit::finetune::{self, FinetuneOptions, Strategy};
use convkit::train::lr_find;
use convkit::train::{self, RunOptions};
use convkit::transfer::group_scales;
use convkit::weights::checkpoint;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn small_config(train_images: usize, epochs: usize, extra: &[&str]) -> Config {
    let mut o: Vec<String> = vec![
        format!("data.train_limit={train_images}"),
        "data.test_limit=1000".into(),
        "model.name=\"resnet20\"".into(),
        format!("train.epochs={epochs}"),
        "train.batch_size=64".into(),
        "train.device=\"cpu\"".into(),
        "optim.lr=0.1".into(),
        "schedule.kind=\"one-cycle\"".into(),
        "augment=[\"flip\"]".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &o).unwrap()
}

/// A ResNet-20 trained on 3,000 synthetic images (shared by the tests of this file).
fn pretrained() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = common::temp_dir("transfer-pretrained");
        let s = train::run(small_config(3000, 3, &[]), &out, &RunOptions::default()).unwrap();
        assert!(
            s.test_accuracy > 0.5,
            "pretraining reached {}",
            s.test_accuracy
        );
        out
    })
}

fn weights_arg() -> String {
    format!("transfer.weights=\"{}\"", pretrained().display())
}

fn model_tensors(run: &Path) -> Vec<(String, Tensor)> {
    checkpoint::read(run).unwrap().section("model")
}

fn get<'a>(t: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &t.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn frozen_groups_stay_put_and_batchnorm_follows_train_bn() {
    let before = model_tensors(pretrained());
    for train_bn in [false, true] {
        let out = common::temp_dir(&format!("transfer-freeze-{train_bn}"));
        let w = weights_arg();
        let bn = format!("transfer.train_bn={train_bn}");
        let cfg = small_config(500, 1, &[&w, "transfer.freeze=[\"stem\", \"layer1\"]", &bn]);
        let s = train::run(cfg, &out, &RunOptions::default()).unwrap();
        let after = model_tensors(&out);
        let same = |n: &str| get(&before, n).equal(get(&after, n));
        assert!(same("conv1.weight") && same("layer1.2.conv2.weight"));
        assert!(!same("layer2.0.conv1.weight") && !same("fc.weight"));
        // train_bn = false: frozen BatchNorm keeps its parameters and statistics.
        assert_eq!(same("bn1.weight"), !train_bn);
        assert_eq!(same("layer1.0.bn1.running_mean"), !train_bn);
        let t = s.transfer.unwrap();
        assert_eq!(t.train_bn, train_bn);
        let frozen: Vec<&str> = t
            .groups
            .iter()
            .filter(|g| g.frozen)
            .map(|g| g.name.as_str())
            .collect();
        assert_eq!(frozen, ["stem", "layer1"]);
    }
}

/// `finetune` keeps the groups the user froze frozen through both phases of
/// head-then-unfreeze, and refuses the flags where a strategy decides itself.
#[test]
fn finetune_honours_freeze_or_refuses_it() {
    let before = model_tensors(pretrained());
    let w = weights_arg();
    let out = common::temp_dir("transfer-finetune-freeze");
    let cfg = small_config(200, 2, &[&w, "transfer.freeze_to=2"]);
    finetune::run(cfg, Strategy::HeadThenUnfreeze, &out, &Default::default()).unwrap();
    let after = model_tensors(&out);
    let same = |n: &str| get(&before, n).equal(get(&after, n));
    assert!(same("conv1.weight") && same("layer1.2.conv2.weight"));
    assert!(!same("layer2.0.conv1.weight"));
    for strategy in [
        Strategy::Partial(1),
        Strategy::LinearProbe,
        Strategy::Scratch,
    ] {
        let cfg = small_config(200, 2, &[&w, "transfer.freeze=[\"stem\"]"]);
        let err = finetune::run(cfg, strategy, &out.join("x"), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--freeze") && err.contains(&strategy.to_string()),
            "{err}"
        );
    }
}

#[test]
fn discriminative_rates_spread_like_fastai_and_timm() {
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    let cfg = TransferConfig {
        lr_mult: 100.0,
        ..Default::default()
    };
    let s = group_scales(&cfg, 1e-3, 5).unwrap();
    assert!(
        close(&s, &[0.01, 10f64.powf(-1.5), 0.1, 10f64.powf(-0.5), 1.0]),
        "{s:?}"
    );
    let cfg = TransferConfig {
        layer_decay: Some(0.5),
        ..Default::default()
    };
    assert!(close(
        &group_scales(&cfg, 1e-3, 4).unwrap(),
        &[0.125, 0.25, 0.5, 1.0]
    ));
    let cfg = TransferConfig {
        lr_groups: Some(vec![1e-4, 1e-3]),
        ..Default::default()
    };
    assert!(close(&group_scales(&cfg, 1e-3, 2).unwrap(), &[0.1, 1.0]));
    assert!(group_scales(&cfg, 1e-3, 3).unwrap_err().contains("2 rates"));
}

#[test]
fn group_rates_reach_the_optimiser_and_bad_names_are_refused() {
    let out = common::temp_dir("transfer-rates");
    let w = weights_arg();
    let cfg = small_config(200, 1, &[&w, "transfer.lr_mult=100.0", "train.epochs=1"]);
    let t = train::Trainer::new(cfg, &out, false).unwrap();
    let groups = &t.transfer.as_ref().unwrap().groups;
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["stem", "layer1", "layer2", "layer3", "head"]);
    let scale = |n: &str| {
        t.optim
            .params
            .iter()
            .find(|p| p.name == n)
            .unwrap()
            .lr_scale
    };
    assert!((scale("conv1.weight") - 0.01).abs() < 1e-12);
    assert!((scale("fc.weight") - 1.0).abs() < 1e-12);
    let cfg = small_config(200, 1, &[&w, "transfer.freeze=[\"layer9\"]"]);
    let err = train::Trainer::new(cfg, &out, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layer9") && err.contains("stem, layer1"),
        "{err}"
    );
}

#[test]
fn a_head_size_that_does_not_match_the_data_is_an_error() {
    let out = common::temp_dir("transfer-head");
    let cfg = small_config(200, 1, &["model.classes=5"]);
    let err = train::Trainer::new(cfg, &out, false)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("5 classes") && err.contains("has 10"), "{err}");
}

#[test]
fn new_head_for_fewer_classes_and_strategies_beat_chance() {
    // Four of the ten shapes, 20 labelled images each.
    let classes = "data.classes=[\"disk\", \"square\", \"triangle\", \"ring\"]";
    let w = weights_arg();
    let extra = [
        classes,
        "data.train_per_class=20",
        "data.train_limit=100000",
        &w,
    ];
    let out = common::temp_dir("transfer-strategies");
    let mut acc = Vec::new();
    for strategy in [
        Strategy::LinearProbe,
        Strategy::HeadThenUnfreeze,
        Strategy::Scratch,
    ] {
        let cfg = small_config(0, 5, &extra);
        let dir = out.join(strategy.to_string());
        let s = finetune::run(cfg, strategy, &dir, &FinetuneOptions::default()).unwrap();
        assert_eq!(s.train_images, 80, "{strategy}");
        acc.push(s.test_accuracy);
    }
    // Chance is 25%; the pretrained body carries the shapes over.
    assert!(acc[0] > 0.6 && acc[1] > 0.6, "{acc:?}");
    // The probe's features are cached and reused: a second run reads the same file.
    let cache = out.join("linear-probe").join("features.safetensors");
    let stamp = std::fs::metadata(&cache).unwrap().modified().unwrap();
    let cfg = small_config(0, 5, &extra);
    finetune::run(
        cfg,
        Strategy::LinearProbe,
        &out.join("linear-probe"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        stamp
    );
}

#[test]
fn strategies_other_than_scratch_need_weights() {
    let out = common::temp_dir("transfer-noweights");
    let err = finetune::run(
        small_config(100, 2, &[]),
        Strategy::Full,
        &out,
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs pretrained weights"), "{err}");
    assert!("partial:x".parse::<Strategy>().is_err());
    assert_eq!("partial:2".parse::<Strategy>(), Ok(Strategy::Partial(2)));
}

#[test]
fn lr_find_sweeps_and_suggests_a_rate_inside_the_sweep() {
    let out = common::temp_dir("transfer-lrfind");
    let cfg = small_config(2000, 1, &[]);
    let spec = lr_find::SweepSpec {
        start: 1e-5,
        end: 10.0,
        steps: 60,
    };
    let r = lr_find::run(cfg, &spec, &out, false).unwrap();
    assert!(r.losses.len() > 20 && r.losses.len() <= 60);
    assert!(
        r.suggested_lr > 1e-5 && r.suggested_lr < 10.0,
        "{}",
        r.suggested_lr
    );
    // The loss falls somewhere in the sweep: the smoothed minimum is below the start.
    let min = r.smoothed.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(min < r.smoothed[0] * 0.9, "{:?}", r.smoothed);
    assert!(out.join("plots").join("lr-find.png").exists());
    assert!(out.join("lr-find.json").exists());
}

#[test]
fn resize_upsamples_batches_on_the_device() {
    let mut aug = Augmenter::new(vec![], &[0.5; 3], &[0.25; 3], Device::Cpu);
    aug.resize = Some(64);
    let images = Tensor::full([2, 32, 32, 3], 128, (Kind::Uint8, Device::Cpu));
    let x = aug.eval_batch(&images);
    assert_eq!(x.size(), [2, 3, 64, 64]);
    let v = (128.0 / 255.0 - 0.5) / 0.25;
    assert!((x.mean(Kind::Float).double_value(&[]) - v).abs() < 1e-5);
}
