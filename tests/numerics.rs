//! Exact values: augmentation geometry, colour ops, schedules, optimiser steps, the
//! label-smoothed loss, confusion matrices, and model shapes and parameter counts.

use convkit::augment::{self, Aug, Augmenter, ResizedCropBox, Shifts};
use convkit::metrics::{Confusion, topk_correct};
use convkit::models::{self, Ctx, ModelSpec, Stem, summary};
use convkit::optim::schedule::Anneal;
use convkit::optim::{OptimConfig, Optimizer, OptimizerKind, Schedule, ScheduleKind};
use rand::SeedableRng;
use tch::{Device, Kind, Reduction, Tensor, nn};

fn vec2(t: &Tensor) -> Vec<Vec<f64>> {
    Vec::<Vec<f64>>::try_from(t.to_kind(Kind::Double)).unwrap()
}

/// One 4x4 single-channel image with values 1..=16 (row-major), NHWC u8.
fn ramp_image() -> Tensor {
    Tensor::arange_start(1, 17, (Kind::Uint8, Device::Cpu)).reshape([1, 4, 4, 1])
}

#[test]
fn reflect_index_matches_pytorch_reflect_padding() {
    let got: Vec<i64> = (-3..7).map(|v| augment::reflect_index(v, 4)).collect();
    assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
}

#[test]
fn translate_with_zero_padding_moves_pixels_exactly() {
    // Image 0: shifted (1, -1); image 1: mirrored, then read one column to the right.
    let shifts = Shifts::new(&[1, 0], &[-1, 1], &[false, true], false, Device::Cpu);
    let out = augment::shift_flip_gather(&ramp_image().repeat([2, 1, 1, 1]), &shifts).squeeze();
    // out(i, j) = in(i + 1, j - 1), zero outside.
    let expected = [[0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15], [0, 0, 0, 0]];
    assert_eq!(
        Vec::<Vec<i64>>::try_from(out.get(0).to_kind(Kind::Int64)).unwrap(),
        expected.map(|r| r.to_vec()).to_vec()
    );
    // out(i, j) = in(i, 3 - j + 1): column 4 is outside.
    let expected = [[0, 4, 3, 2], [0, 8, 7, 6], [0, 12, 11, 10], [0, 16, 15, 14]];
    assert_eq!(
        Vec::<Vec<i64>>::try_from(out.get(1).to_kind(Kind::Int64)).unwrap(),
        expected.map(|r| r.to_vec()).to_vec()
    );
}

#[test]
fn translate_with_reflection_and_flip() {
    let shifts = Shifts::new(&[-2], &[0], &[true], true, Device::Cpu);
    let out = augment::shift_flip_gather(&ramp_image(), &shifts).squeeze();
    // rows read -2, -1, 0, 1 -> reflected 2, 1, 0, 1; columns reversed.
    let expected = [[12, 11, 10, 9], [8, 7, 6, 5], [4, 3, 2, 1], [8, 7, 6, 5]];
    assert_eq!(
        Vec::<Vec<i64>>::try_from(out.to_kind(Kind::Int64)).unwrap(),
        expected.map(|r| r.to_vec()).to_vec()
    );
    // Far shifts reflect like PyTorch's padding (reflect_index), also on the device path.
    let far = Shifts::new(&[5], &[-6], &[false], true, Device::Cpu);
    let out = augment::shift_flip_gather(&ramp_image(), &far).squeeze();
    let (r, c) = (augment::reflect_index(5, 4), augment::reflect_index(-6, 4));
    assert_eq!(out.int64_value(&[0, 0]), 4 * r + c + 1);
}

#[test]
fn cutout_zeroes_a_clipped_square() {
    let x = Tensor::ones([2, 1, 4, 4], (Kind::Float, Device::Cpu));
    let out = augment::cutout(&x, &[(0, 0), (2, 2)], 2);
    // size 2 centred at (r, c) covers rows r-1..=r, columns c-1..=c.
    assert_eq!(
        vec2(&out.get(0).squeeze()),
        vec![
            vec![0.0, 1.0, 1.0, 1.0],
            vec![1.0; 4],
            vec![1.0; 4],
            vec![1.0; 4]
        ]
    );
    assert_eq!(out.get(1).sum(Kind::Float).double_value(&[]), 12.0);
}

#[test]
fn resized_crop_of_the_whole_image_is_the_identity() {
    let x = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let whole = ResizedCropBox {
        top: 0.0,
        left: 0.0,
        height: 8.0,
        width: 8.0,
    };
    let out = augment::resized_crop(&x, &[whole]);
    assert!(out.allclose(&x, 1e-6, 1e-6, false));
}

#[test]
fn resized_crop_samples_bilinearly_at_pixel_centres() {
    // A horizontal ramp (value = column) and the left half scaled up 2x: output column j reads
    // input x = (j + 0.5) / 2 - 0.5, clamped at the border.
    let ramp = Tensor::arange(4, (Kind::Float, Device::Cpu))
        .reshape([1, 1, 1, 4])
        .expand([1, 1, 4, 4], false);
    let bx = ResizedCropBox {
        top: 0.0,
        left: 0.0,
        height: 4.0,
        width: 2.0,
    };
    let out = augment::resized_crop(&ramp.contiguous(), &[bx]);
    let row = vec2(&out.get(0).get(0))[0].clone();
    for (got, want) in row.iter().zip([0.0, 0.25, 0.75, 1.25]) {
        assert!((got - want).abs() < 1e-6, "{row:?}");
    }
}

#[test]
fn resized_crop_boxes_respect_scale_and_ratio() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..200 {
        let b = augment::sample_resized_crop(32, 32, (0.2, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        let area = b.height * b.width / 1024.0;
        assert!(
            b.top >= 0.0 && b.left >= 0.0 && b.top + b.height <= 32.0 && b.left + b.width <= 32.0
        );
        assert!((0.17..=1.0).contains(&area), "area share {area}");
    }
}

#[test]
fn grayscale_and_brightness_exact() {
    let x = Tensor::from_slice(&[0.2f32, 0.4, 0.6]).reshape([1, 3, 1, 1]);
    let g = augment::apply_grayscale(&x, &[true]);
    let want = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6;
    for c in 0..3 {
        assert!((g.double_value(&[0, c, 0, 0]) - want).abs() < 1e-6);
    }
    let f = augment::ColourJitter {
        brightness: 0.0,
        contrast: 0.0,
        saturation: 0.0,
        hue: 0.0,
        p: 1.0,
    };
    let mut factors = f.sample(1, &mut rand::rngs::StdRng::seed_from_u64(0));
    factors.brightness = vec![2.0];
    let b = augment::apply_jitter(&x, &factors);
    assert_eq!(
        Vec::<f32>::try_from(b.flatten(0, -1)).unwrap(),
        vec![0.4, 0.8, 1.0]
    );
    factors.brightness = vec![1.0];
    factors.hue = vec![1.0];
    let full_turn = augment::apply_jitter(&x, &factors);
    assert!(
        full_turn.allclose(&x, 1e-4, 1e-4, false),
        "a full hue turn is the identity"
    );
}

#[test]
fn augmenter_is_reproducible_from_the_seed() {
    let images = Tensor::randint(256, [8, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    let augs: Vec<Aug> = [
        "crop:4:reflect",
        "flip",
        "rrc:0.2-1.0",
        "jitter:0.4,0.4,0.4,0.1:0.8",
        "gray:0.2",
        "cutout:8",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let a = Augmenter::new(augs, &[0.5; 3], &[0.25; 3], Device::Cpu);
    let run = |seed| a.train_batch(&images, &mut rand::rngs::StdRng::seed_from_u64(seed));
    assert!(run(7).equal(&run(7)));
    assert!(!run(7).equal(&run(8)));
    assert_eq!(run(7).size(), vec![8, 3, 32, 32]);
    let plain = a.eval_batch(&images);
    let px = images.int64_value(&[0, 0, 0, 0]) as f64 / 255.0;
    assert!((plain.double_value(&[0, 0, 0, 0]) - (px - 0.5) / 0.25).abs() < 1e-6);
}

#[test]
fn two_views_differ_and_stack_view_major() {
    let images = Tensor::randint(256, [4, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    let a = Augmenter::new(
        augment::contrastive_policy(),
        &[0.5; 3],
        &[0.25; 3],
        Device::Cpu,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let views = a.two_views(&images, &mut rng);
    assert_eq!(views.size(), vec![8, 3, 32, 32]);
    assert!(
        !views.narrow(0, 0, 4).equal(&views.narrow(0, 4, 4)),
        "the views are augmented independently"
    );
    let mut again = rand::rngs::StdRng::seed_from_u64(1);
    assert!(
        views
            .narrow(0, 0, 4)
            .equal(&a.train_batch(&images, &mut again)),
        "view 1 comes first"
    );
}

#[test]
fn augmentation_strings_round_trip() {
    for s in [
        "crop:4",
        "crop:2:reflect",
        "flip",
        "cutout:8",
        "rrc:0.2-1",
        "jitter:0.4,0.4,0.4,0.1:0.8",
        "gray:0.2",
    ] {
        let a: Aug = s.parse().unwrap();
        assert_eq!(a.to_string().parse::<Aug>().unwrap(), a);
    }
    assert!(
        "blur"
            .parse::<Aug>()
            .unwrap_err()
            .contains("unknown augmentation 'blur'")
    );
}

fn schedule(kind: ScheduleKind) -> Schedule {
    Schedule {
        kind,
        ..Default::default()
    }
}

#[test]
fn schedule_values_at_given_steps() {
    let mut cos = schedule(ScheduleKind::Cosine);
    cos.warmup_epochs = 1.0;
    // 10 steps per epoch, 110 steps: warm-up 1/10..1, then half a cosine over 100 steps.
    assert!((cos.factor(0, 110, 10) - 0.1).abs() < 1e-12);
    assert!((cos.factor(9, 110, 10) - 1.0).abs() < 1e-12);
    assert!((cos.factor(60, 110, 10) - 0.5).abs() < 1e-12);
    let mut step = schedule(ScheduleKind::Step);
    step.milestones = vec![2.0, 3.0];
    assert_eq!(
        [
            step.factor(19, 40, 10),
            step.factor(20, 40, 10),
            step.factor(35, 40, 10)
        ],
        [1.0, 0.1, 0.1f64.powi(2)]
    );
    let mut one = schedule(ScheduleKind::OneCycle);
    one.anneal = Anneal::Linear;
    (one.div, one.final_div, one.pct_start) = (10.0, 100.0, 0.25);
    assert!((one.factor(0, 100, 10) - 0.1).abs() < 1e-12);
    assert!((one.factor(25, 100, 10) - 1.0).abs() < 1e-12);
    assert!((one.factor(50, 100, 10) - (1.0 + (0.01 - 1.0) / 3.0)).abs() < 1e-12);
    one.anneal = Anneal::Cos;
    assert!(
        (one.factor(25 + 75 / 2, 100, 10)
            - (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * 37.0 / 75.0).cos())))
        .abs()
            < 1e-12
    );
    let lin = schedule(ScheduleKind::Linear);
    assert!((lin.factor(50, 100, 10) - 0.5).abs() < 1e-12);
}

#[test]
fn sgd_momentum_steps_match_hand_computation() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[2], nn::Init::Const(1.0));
    let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let cfg = OptimConfig {
        lr: 0.1,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vs, &cfg).unwrap();
    let (mut pw, mut pb, mut bw, mut bb) = ([1.0f64; 4], 1.0f64, [0.0f64; 4], 0.0f64);
    for _ in 0..3 {
        let loss = (&w * &c).sum(Kind::Float) + b.sum(Kind::Float) * 2.0;
        opt.zero_grad();
        loss.backward();
        opt.step(0.1);
        for i in 0..4 {
            let g = (i + 1) as f64 + 0.01 * pw[i];
            bw[i] = 0.9 * bw[i] + g;
            pw[i] -= 0.1 * bw[i];
        }
        bb = 0.9 * bb + 2.0; // 1-D parameters get no weight decay
        pb -= 0.1 * bb;
    }
    let got = Vec::<f64>::try_from(w.flatten(0, -1).to_kind(Kind::Double)).unwrap();
    for i in 0..4 {
        assert!((got[i] - pw[i]).abs() < 1e-6, "{got:?} vs {pw:?}");
    }
    assert!((b.double_value(&[0]) - pb).abs() < 1e-6);
}

#[test]
fn decoupled_decay_shrinks_every_parameter_by_the_same_amount_per_step() {
    // airbench's form: the decay per step is `sched * wd` whatever the base rate and each
    // parameter's rate scale, and with `decay_1d` the 1-D shift decays too.
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2, 2], nn::Init::Const(1.0));
    let b = vs.root().var("b", &[2], nn::Init::Const(1.0));
    let cfg = OptimConfig {
        lr: 0.5,
        momentum: 0.5,
        nesterov: false,
        weight_decay: 0.01,
        decoupled_decay: true,
        decay_1d: true,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vs, &cfg).unwrap();
    opt.params
        .iter_mut()
        .find(|p| p.name == "b")
        .unwrap()
        .lr_scale = 4.0;
    // Zero gradients: only the decay moves the weights (the loss is constant in them).
    let (mut pw, mut pb, mut bw, mut bb) = (1.0f64, 1.0f64, 0.0f64, 0.0f64);
    for sched in [1.0, 0.5] {
        let loss = (&w * 0.0).sum(Kind::Float) + (&b * 0.0).sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step(0.5 * sched);
        // w: lr 0.5 sched, coefficient 0.01 / 0.5; b: lr 2 sched, coefficient 0.01 / 2.
        bw = 0.5 * bw + 0.02 * pw;
        pw -= 0.5 * sched * bw;
        bb = 0.5 * bb + 0.005 * pb;
        pb -= 2.0 * sched * bb;
    }
    // First step: both shrink by exactly 0.01 (= sched * wd), rate scale or not.
    assert!((pw - pb).abs() < 1e-12);
    assert!((w.double_value(&[0, 0]) - pw).abs() < 1e-7, "{pw}");
    assert!((b.double_value(&[0]) - pb).abs() < 1e-7, "{pb}");
    // Hand values: 1 - 0.01 = 0.99; then buf 0.5 * 0.02 + 0.02 * 0.99 = 0.0298, times 0.25.
    assert!((pw - 0.98255).abs() < 1e-12, "{pw}");
}

#[test]
fn lars_scales_weight_steps_by_the_trust_ratio() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[2, 2], nn::Init::Const(2.0));
    let b = vs.root().var("b", &[2], nn::Init::Const(1.0));
    let z = vs.root().var("z", &[1, 2], nn::Init::Const(0.0));
    let c = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 4.0]).reshape([2, 2]);
    let cfg = OptimConfig {
        name: OptimizerKind::Lars,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        trust: 0.001,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vs, &cfg).unwrap();
    let loss = (&w * &c).sum(Kind::Float) + b.sum(Kind::Float) * 2.0 + (&z * 5.0).sum(Kind::Float);
    loss.backward();
    opt.step(0.5);
    // ||w|| = 4, ||g|| = 5: ratio 0.001 * 4 / 5 = 8e-4, so w -= 0.5 * 8e-4 * g.
    let want = [2.0 - 0.5 * 8e-4 * 3.0, 2.0, 2.0, 2.0 - 0.5 * 8e-4 * 4.0];
    let got = Vec::<f64>::try_from(w.flatten(0, -1).to_kind(Kind::Double)).unwrap();
    for i in 0..4 {
        assert!((got[i] - want[i]).abs() < 1e-7, "{got:?} vs {want:?}");
    }
    // 1-D parameters take the plain step; a zero weight keeps ratio 1 instead of freezing.
    assert!((b.double_value(&[0]) - (1.0 - 0.5 * 2.0)).abs() < 1e-6);
    assert!((z.double_value(&[0, 0]) + 0.5 * 5.0).abs() < 1e-6);
}

#[test]
fn adamw_first_step_moves_by_lr() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[1, 1], nn::Init::Const(1.0));
    let cfg = OptimConfig {
        name: OptimizerKind::Adamw,
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vs, &cfg).unwrap();
    let loss = (&w * 3.0).sum(Kind::Float);
    loss.backward();
    opt.step(0.01);
    // Decoupled decay 1 * (1 - 0.01 * 0.1), then the bias-corrected step of exactly lr.
    let want = 1.0 * (1.0 - 0.001) - 0.01 * 3.0 / (3.0 + 1e-8);
    assert!((w.double_value(&[0, 0]) - want).abs() < 1e-6);
}

#[test]
fn label_smoothed_cross_entropy_matches_hand_computation() {
    let logits = Tensor::from_slice(&[2.0f32, 1.0, 0.0]).reshape([1, 3]);
    let target = Tensor::from_slice(&[0i64]);
    let got = logits
        .cross_entropy_loss(&target, None::<Tensor>, Reduction::Mean, -100, 0.2)
        .double_value(&[]);
    let lse = (2f64.exp() + 1f64.exp() + 1.0).ln();
    let logp = [2.0 - lse, 1.0 - lse, -lse];
    let want = -(0.8 * logp[0]) - 0.2 / 3.0 * logp.iter().sum::<f64>();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}

#[test]
fn confusion_matrix_and_topk_exact() {
    let mut c = Confusion::new(3);
    c.add(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2]);
    assert_eq!(c.counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
    assert!((c.accuracy() - 4.0 / 6.0).abs() < 1e-12);
    assert_eq!(c.per_class_accuracy(), vec![0.5, 1.0, 2.0 / 3.0]);
    let logits = Tensor::from_slice(&[0.1f32, 0.5, 0.4, 0.9, 0.05, 0.05]).reshape([2, 3]);
    let labels = Tensor::from_slice(&[2i64, 2]);
    assert_eq!(topk_correct(&logits, &labels, 1), 0);
    assert_eq!(topk_correct(&logits, &labels, 2), 1);
}

#[test]
fn resnet18_matches_torchvision_count_names_and_shape() {
    let model = models::build(&ModelSpec::new("resnet18", 1000), Device::Cpu).unwrap();
    assert_eq!(model.parameter_count(), 11_689_512);
    let vars = model.vs.variables();
    for key in [
        "conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
        "fc.bias",
    ] {
        assert!(vars.contains_key(key), "missing {key}");
    }
    assert_eq!(vars["conv1.weight"].size(), vec![64, 3, 7, 7]);
    let y = tch::no_grad(|| {
        model.forward(
            &Tensor::zeros([2, 3, 64, 64], (Kind::Float, Device::Cpu)),
            &Ctx::eval(),
        )
    });
    assert_eq!(y.size(), vec![2, 1000]);
}

#[test]
fn resnet50_and_cifar_resnets_parameter_counts() {
    let count = |name: &str, k: i64| {
        models::build(&ModelSpec::new(name, k), Device::Cpu)
            .unwrap()
            .parameter_count()
    };
    assert_eq!(count("resnet50", 1000), 25_557_032);
    assert_eq!(count("resnet34", 1000), 21_797_672);
    assert_eq!(count("resnet20", 10), 269_722);
    assert_eq!(count("resnet56", 10), 853_018);
    assert_eq!(
        count("plain20", 10),
        269_722,
        "option-A shortcuts add no parameters"
    );
}

#[test]
fn cifar_stem_keeps_32px_resolution() {
    let mut spec = ModelSpec::new("resnet18", 10);
    spec.stem = Some(Stem::Cifar);
    let model = models::build(&spec, Device::Cpu).unwrap();
    assert_eq!(
        model.vs.variables()["conv1.weight"].size(),
        vec![64, 3, 3, 3]
    );
    let s = summary::summarise(&model, [3, 32, 32]);
    let layer4 = s
        .layers
        .iter()
        .rev()
        .find(|l| l.name.starts_with("layer4") && l.kind == "conv")
        .unwrap();
    assert_eq!(layer4.output, vec![1, 512, 4, 4]);
}

#[test]
fn summary_counts_dense_equivalents_and_flops() {
    let model = models::build(&ModelSpec::new("resnet20", 10), Device::Cpu).unwrap();
    let s = summary::summarise(&model, [3, 32, 32]);
    let conv1 = &s.layers[0];
    assert_eq!((conv1.name.as_str(), conv1.params), ("conv1", 432));
    // A dense layer from 3x32x32 inputs to 16x32x32 outputs: 3072 * 16384 weights + 16384 biases.
    assert_eq!(conv1.dense_params, Some(50_348_032));
    assert_eq!(conv1.flops, 2 * 16 * 32 * 32 * 27);
    let text = s.render("resnet20");
    assert!(text.contains("parameters: 269,722"), "{text}");
    assert!(
        models::build(&ModelSpec::new("resnet19", 10), Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("unknown model 'resnet19'")
    );
}

#[test]
fn patch_whitening_decorrelates_patches() {
    use convkit::models::init::patch_whitening;
    tch::manual_seed(5);
    // Correlated channels: the second and third are mixtures of the first plus noise.
    let base = Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu));
    let x = Tensor::cat(
        &[
            base.shallow_clone(),
            &base * 0.8 + Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.3,
            &base * -0.5 + Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu)) * 0.6,
        ],
        1,
    );
    let eps = 5e-4;
    let w = patch_whitening(&x, 2, eps);
    assert_eq!(w.size(), [24, 3, 2, 2]);
    // The negated half mirrors the first.
    assert!(
        (w.narrow(0, 12, 12) + w.narrow(0, 0, 12))
            .abs()
            .max()
            .double_value(&[])
            < 1e-7
    );
    // Outputs of the first 12 filters: second moment diag(lambda / (lambda + eps)) ~ identity.
    let y = x.to_kind(Kind::Double).conv2d(
        &w.narrow(0, 0, 12).to_kind(Kind::Double),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    );
    let flat = y.permute([0, 2, 3, 1]).reshape([-1, 12]);
    let m = flat.tr().matmul(&flat) / flat.size()[0] as f64;
    let off = (&m - m.diag(0).diag_embed(0, -2, -1))
        .abs()
        .max()
        .double_value(&[]);
    let diag = Vec::<f64>::try_from(m.diag(0)).unwrap();
    assert!(off < 1e-6, "off-diagonal second moment {off}");
    assert!(diag.iter().all(|d| (0.9..=1.0).contains(d)), "{diag:?}");
}

#[test]
fn dirac_filters_pass_their_input_through() {
    use convkit::models::init::dirac_first_filters;
    tch::manual_seed(6);
    let mut w = Tensor::randn([6, 4, 3, 3], (Kind::Float, Device::Cpu));
    let rest = w.narrow(0, 4, 2).copy();
    dirac_first_filters(&mut w);
    let x = Tensor::randn([2, 4, 5, 5], (Kind::Float, Device::Cpu));
    let y = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert!((y.narrow(1, 0, 4) - &x).abs().max().double_value(&[]) < 1e-6);
    assert!(
        w.narrow(0, 4, 2).equal(&rest),
        "filters beyond C_in keep their values"
    );
}

#[test]
fn alternating_flip_complements_each_image_every_other_epoch() {
    let mut aug = Augmenter::new(vec![Aug::AltFlip], &[0.0], &[1.0], Device::Cpu);
    aug.seed = 11;
    let index: Vec<i64> = (0..64).collect();
    let first: Vec<bool> = index.iter().map(|&i| aug.alternating_flip(i)).collect();
    let flipped = first.iter().filter(|f| **f).count();
    assert!(
        (20..=44).contains(&flipped),
        "about half flipped in epoch 0: {flipped}"
    );
    aug.epoch = 1;
    assert!(
        index
            .iter()
            .all(|&i| aug.alternating_flip(i) != first[i as usize])
    );
    aug.epoch = 2;
    assert!(
        index
            .iter()
            .all(|&i| aug.alternating_flip(i) == first[i as usize])
    );
    // Applied to a batch: the mirrored images are exactly the ones the rule says.
    let img = ramp_image().repeat([4, 1, 1, 1]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let out = aug.train_batch_indexed(&img, Some(&[0, 1, 2, 3]), &mut rng);
    let plain = augment::to_float_nchw(&img);
    for b in 0..4i64 {
        let same = out.get(b).allclose(&plain.get(b), 1e-6, 1e-6, false);
        assert_eq!(!same, aug.alternating_flip(b), "image {b}");
    }
    assert_eq!("altflip".parse::<Aug>().unwrap(), Aug::AltFlip);
}

#[test]
fn lookahead_follows_the_ema_schedule() {
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().var("w", &[1], nn::Init::Const(0.0));
    let cfg = OptimConfig {
        momentum: 0.0,
        weight_decay: 0.0,
        lookahead_every: 2,
        lookahead_decay: 0.5,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&vs, &cfg).unwrap();
    // Gradient 1 every step, lr 1: the weight falls by 1 per step between lookahead updates.
    let (mut fast, mut slow) = (0.0f64, 0.0f64);
    for step in 1..=4i64 {
        let loss = w.sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step(1.0);
        fast -= 1.0;
        opt.lookahead.as_mut().unwrap().after_step(opt.steps, 4);
        if step % 2 == 0 {
            let decay = 0.25 * (step as f64 / 4.0).powi(3);
            slow = decay * slow + (1.0 - decay) * fast;
            fast = slow;
        }
        assert!((w.double_value(&[0]) - fast).abs() < 1e-6, "step {step}");
    }
    // Steps 2 and 4: decay 0.25/8 then 0.25, so w = -1.9375 then 0.25 w + 0.75 (w - 2).
    assert!((fast - (-3.4375)).abs() < 1e-9, "{fast}");
    let state = opt.state_tensors();
    assert!(state.iter().any(|(n, _)| n == "lookahead.w"));
}

#[test]
fn translation_tta_weights_shifted_views_by_hand() {
    use convkit::train::evaluate::{Tta, predict_logits};
    tch::manual_seed(8);
    let model = models::build(&ModelSpec::new("cnn", 10), Device::Cpu).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let f = |t: &Tensor| predict_logits(&model, t, Tta::default(), false);
    // One pixel down-right with the top row / left column reflected (row 1 / column 1), and
    // one pixel up-left with the bottom row / right column reflected (row 30 / column 30).
    let shift = |t: &Tensor, dim: i64, down: bool| {
        if down {
            Tensor::cat(&[t.narrow(dim, 1, 1), t.narrow(dim, 0, 31)], dim)
        } else {
            Tensor::cat(&[t.narrow(dim, 1, 31), t.narrow(dim, 30, 1)], dim)
        }
    };
    let dr = shift(&shift(&x, 2, true), 3, true);
    let ul = shift(&shift(&x, 2, false), 3, false);
    let mirror = |t: &Tensor| (f(t) + f(&t.flip([3]))) / 2.0;
    let want = mirror(&x) * 0.5 + mirror(&dr) * 0.25 + mirror(&ul) * 0.25;
    let tta = Tta {
        flip: true,
        translate: true,
    };
    let got = predict_logits(&model, &x, tta, false);
    assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    let only_flip = predict_logits(
        &model,
        &x,
        Tta {
            flip: true,
            translate: false,
        },
        false,
    );
    assert!((only_flip - mirror(&x)).abs().max().double_value(&[]) < 1e-6);
}
