//! The SupCon loss against an independent plain-loop f64 implementation and against values
//! PyTorch computes with the reference formula (tests/fixtures/make_supcon.py).

use convkit::contrastive::{ContrastMode, ContrastiveError, supcon_loss};
use tch::{Device, Kind, Tensor};

/// L_out written as loops over anchors and positives, in f64.
fn plain_loop(f: &[Vec<Vec<f64>>], labels: Option<&[i64]>, t: f64, mode: ContrastMode) -> f64 {
    let (b, v) = (f.len(), f[0].len());
    let sample = |k: usize| &f[k % b][k / b];
    let label = |k: usize| labels.map_or((k % b) as i64, |l| l[k % b]);
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, c)| a * c).sum::<f64>();
    let anchors = if mode == ContrastMode::All { b * v } else { b };
    let (mut total, mut counted) = (0.0, 0);
    for i in 0..anchors {
        let others: Vec<usize> = (0..b * v).filter(|&a| a != i).collect();
        let denom: f64 = others
            .iter()
            .map(|&a| (dot(sample(i), sample(a)) / t).exp())
            .sum();
        let pos: Vec<usize> = others
            .iter()
            .copied()
            .filter(|&p| label(p) == label(i))
            .collect();
        if pos.is_empty() {
            continue;
        }
        let mean: f64 = pos
            .iter()
            .map(|&p| (dot(sample(i), sample(p)) / t).exp().ln() - denom.ln())
            .sum::<f64>()
            / pos.len() as f64;
        total += -mean;
        counted += 1;
    }
    total / counted as f64
}

fn to_tensor(f: &[Vec<Vec<f64>>]) -> Tensor {
    let flat: Vec<f64> = f.iter().flatten().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([f.len() as i64, f[0].len() as i64, f[0][0].len() as i64])
}

fn random_features(seed: i64, b: i64, v: i64, d: i64) -> Vec<Vec<Vec<f64>>> {
    tch::manual_seed(seed);
    let x = Tensor::randn([b, v, d], (Kind::Double, Device::Cpu));
    let x = &x / x.norm_scalaropt_dim(2, [2i64].as_slice(), true);
    Vec::<Vec<Vec<f64>>>::try_from(x).unwrap()
}

#[test]
fn matches_the_plain_loop_in_both_modes() {
    let f = random_features(0, 12, 2, 8);
    let labels = [0i64, 1, 2, 0, 1, 2, 3, 3, 0, 5, 1, 2];
    for mode in [ContrastMode::All, ContrastMode::One] {
        for t in [0.07, 0.1, 1.0] {
            let got = supcon_loss(&to_tensor(&f), Some(&Tensor::from_slice(&labels)), t, mode)
                .unwrap()
                .double_value(&[]);
            let want = plain_loop(&f, Some(&labels), t, mode);
            assert!(
                (got - want).abs() <= 1e-9 * want.abs(),
                "{mode:?} t={t}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn simclr_is_supcon_with_one_class_per_image() {
    let f = random_features(1, 6, 2, 4);
    let x = to_tensor(&f);
    let simclr = supcon_loss(&x, None, 0.5, ContrastMode::All)
        .unwrap()
        .double_value(&[]);
    let own = supcon_loss(
        &x,
        Some(&Tensor::arange(6, (Kind::Int64, Device::Cpu))),
        0.5,
        ContrastMode::All,
    )
    .unwrap();
    assert!((simclr - own.double_value(&[])).abs() < 1e-12);
    assert!((simclr - plain_loop(&f, None, 0.5, ContrastMode::All)).abs() < 1e-9);
}

#[test]
fn matches_pytorch_reference_values() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/supcon.json"
    ))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let f: Vec<Vec<Vec<f64>>> = serde_json::from_value(case["features"].clone()).unwrap();
        let labels: Option<Vec<i64>> = serde_json::from_value(case["labels"].clone()).unwrap();
        let mode = case["mode"].as_str().unwrap().parse().unwrap();
        let t = case["temperature"].as_f64().unwrap();
        let want = case["loss"].as_f64().unwrap();
        // In float32, as training computes it.
        let x = to_tensor(&f).to_kind(Kind::Float);
        let l = labels.as_ref().map(|l| Tensor::from_slice(l));
        let got = supcon_loss(&x, l.as_ref(), t, mode)
            .unwrap()
            .double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs(),
            "{case:?}: {got} vs {want}"
        );
    }
}

#[test]
fn gradients_are_finite_with_large_logits() {
    let x = to_tensor(&random_features(2, 8, 2, 16))
        .to_kind(Kind::Float)
        .set_requires_grad(true);
    let loss = supcon_loss(
        &x,
        Some(&Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2, 3, 3])),
        0.01,
        ContrastMode::All,
    )
    .unwrap();
    loss.backward();
    assert!(loss.double_value(&[]).is_finite());
    assert!(x.grad().isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn bad_input_is_a_clear_error() {
    let one = to_tensor(&random_features(3, 1, 1, 4));
    assert_eq!(
        supcon_loss(&one, None, 0.1, ContrastMode::All).unwrap_err(),
        ContrastiveError::TooSmall(1)
    );
    let three = to_tensor(&random_features(3, 3, 1, 4));
    let distinct = Tensor::from_slice(&[0i64, 1, 2]);
    assert_eq!(
        supcon_loss(&three, Some(&distinct), 0.1, ContrastMode::All).unwrap_err(),
        ContrastiveError::NoPositives
    );
    assert_eq!(
        supcon_loss(&three, None, 0.0, ContrastMode::All).unwrap_err(),
        ContrastiveError::Temperature(0.0)
    );
    let err = supcon_loss(
        &three,
        Some(&Tensor::from_slice(&[0i64, 1])),
        0.1,
        ContrastMode::All,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "2 labels for a batch of 3 images");
    assert!(matches!(
        supcon_loss(&three.squeeze_dim(1), None, 0.1, ContrastMode::All),
        Err(ContrastiveError::Shape(_))
    ));
    let two_views = to_tensor(&random_features(3, 3, 2, 4));
    assert!(
        supcon_loss(&two_views, Some(&distinct), 0.1, ContrastMode::All).is_ok(),
        "the other view is a positive"
    );
}

#[test]
fn knn_votes_with_similarity_weights() {
    use convkit::contrastive::{knn_accuracy, knn_predict};
    // Bank: two class-0 points near (1, 0), one class-1 point exactly at (0, 1).
    let bank = Tensor::from_slice(&[1.0f32, 0.0, 0.8, 0.6, 0.0, 1.0]).reshape([3, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 1]);
    let query = Tensor::from_slice(&[0.6f32, 0.8, 0.0, 1.0]).reshape([2, 2]);
    // Query 1 (0.6, 0.8): similarities 0.6, 0.96 (class 0), 0.8 (class 1). With k = 3 and t = 0.1:
    // class 0 scores exp(6) + exp(9.6), class 1 exp(8): class 0. With k = 1: only 0.96, class 0.
    // Query 2 (0, 1): similarities 0, 0.6, 1.0: class 1 exp(10) > exp(0) + exp(6).
    let pred = Vec::<i64>::try_from(knn_predict(&query, &bank, &labels, 2, 3, 0.1)).unwrap();
    assert_eq!(pred, vec![0, 1]);
    // With a large temperature the votes become counts: 2 class-0 neighbours win for both.
    let pred = Vec::<i64>::try_from(knn_predict(&query, &bank, &labels, 2, 3, 100.0)).unwrap();
    assert_eq!(pred, vec![0, 0]);
    assert_eq!(
        knn_accuracy(
            &query,
            &Tensor::from_slice(&[0i64, 1]),
            &bank,
            &labels,
            2,
            3,
            0.1
        ),
        1.0
    );
}

#[test]
fn projection_head_normalises_and_checks_dimensions() {
    use convkit::contrastive::ProjectionHead;
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let head = ProjectionHead::new(&vs.root(), 64, 64, 64, 128).unwrap();
    let z = head.forward(&Tensor::randn([5, 64], (Kind::Float, Device::Cpu)));
    assert_eq!(z.size(), vec![5, 128]);
    let norms = Vec::<f64>::try_from(
        z.norm_scalaropt_dim(2, [1i64].as_slice(), false)
            .to_kind(Kind::Double),
    )
    .unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
    assert!(
        vs.variables().contains_key("head.0.weight") && vs.variables().contains_key("head.2.bias")
    );
    let err = ProjectionHead::new(&vs.root(), 512, 2048, 2048, 128).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the projection head expects 2048-d features but the encoder gives 512-d"
    );
}

#[test]
fn optimising_free_embeddings_clusters_the_classes() {
    use convkit::contrastive::normalize;
    let vs = tch::nn::VarStore::new(Device::Cpu);
    tch::manual_seed(0);
    let w = vs.root().randn("w", &[16, 2, 8], 0.0, 1.0);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]);
    let mut opt = convkit::optim::Optimizer::new(
        &vs,
        &convkit::optim::OptimConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let loss_of =
        |w: &Tensor| supcon_loss(&normalize(w), Some(&labels), 0.1, ContrastMode::All).unwrap();
    let first = loss_of(&w).double_value(&[]);
    for _ in 0..200 {
        let loss = loss_of(&w);
        opt.zero_grad();
        loss.backward();
        opt.step(0.5);
    }
    let last = loss_of(&w).double_value(&[]);
    // 32 samples, 7 positives each: collapse gives ln 31 = 3.43; perfect clusters about ln 7 = 1.95.
    assert!(last < 2.1, "loss {first} -> {last}");
}

fn supcon_config(epochs: usize, batch: usize) -> convkit::train::Config {
    let overrides = [
        "data.source=\"synthetic\"".to_string(),
        "data.train_limit=3000".into(),
        "data.test_limit=1000".into(),
        "model.name=\"cnn\"".into(),
        "model.widths=[16, 32, 64]".into(),
        format!("train.epochs={epochs}"),
        format!("train.batch_size={batch}"),
        "train.device=\"cpu\"".into(),
        "optim.lr=0.05".into(),
        "schedule.kind=\"constant\"".into(),
        // The synthetic classes are shapes: crops that cut the shape out carry no class signal.
        "augment=[\"flip\"]".into(),
        "contrastive.knn_k=50".into(),
    ];
    convkit::train::config::load(Some("cifar10-supcon"), &overrides).unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("convkit-supcon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn supcon_pretraining_improves_knn_and_the_probe_learns() {
    use convkit::contrastive::{pretrain, probe};
    let out = temp_dir("pretrain");
    let s = pretrain::run(supcon_config(3, 64), &out, &Default::default()).unwrap();
    assert_eq!(s.knn_accuracy.len(), 3);
    assert!(
        s.knn_accuracy[2] > s.knn_accuracy[0] + 0.05,
        "kNN accuracy rises: {:?}",
        s.knn_accuracy
    );
    assert!(
        s.final_loss < (127f64).ln() - 0.3,
        "below the collapsed value ln(2B-1): {}",
        s.final_loss
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["knn_accuracy"].as_array().unwrap().len(), 3);
    let spec = probe::ProbeSpec {
        device: "cpu".into(),
        ..Default::default()
    };
    let p = probe::run(&out, &out.join("probe"), &spec).unwrap();
    assert!(
        p.test_accuracy > 0.4,
        "linear probe on 10 classes: {}",
        p.test_accuracy
    );
    assert!(
        out.join("probe/probe-features.safetensors").exists(),
        "features are cached"
    );
}

#[test]
fn supcon_resumes_exactly_and_refuses_batch_one() {
    use convkit::contrastive::pretrain;
    use convkit::train::RunOptions;
    let (a, b) = (temp_dir("straight"), temp_dir("resumed"));
    let straight = pretrain::run(supcon_config(2, 128), &a, &RunOptions::default()).unwrap();
    pretrain::run(
        supcon_config(2, 128),
        &b,
        &RunOptions {
            stop_after: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let resumed = pretrain::run(
        supcon_config(2, 128),
        &b,
        &RunOptions {
            resume: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(straight.knn_accuracy, resumed.knn_accuracy);
    assert_eq!(straight.final_loss, resumed.final_loss);
    let err = pretrain::run(
        supcon_config(1, 1),
        &temp_dir("one"),
        &RunOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("batch size 1 is too small"), "{err}");
}
