//! Data-parallel training over PyTorch's c10d (Gloo on this CPU): each test starts its ranks as
//! child processes of this test binary (the same test, with the launch environment torchrun
//! would set), so every rank runs real rendezvous and collectives.
mod common;

use convkit::dist::{Backend, Launch, ProcessGroup};
use std::process::{Command, Output};
use std::time::Duration;
use tch::{Kind, Tensor};

/// Set in the children: which rank this process is.
const CHILD: &str = "CONVKIT_DIST_TEST_CHILD";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `test` (this binary's test of that name) as `world` ranks; returns their outputs, rank
/// order. `extra` adds environment variables to every rank.
fn spawn_ranks(test: &str, world: usize, extra: &[(&str, &str)]) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args([test, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("OMP_NUM_THREADS", "1");
            for (k, v) in extra {
                c.env(k, v);
            }
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn in_child() -> bool {
    std::env::var(CHILD).is_ok()
}

fn group() -> ProcessGroup {
    tch::set_num_threads(1);
    let launch = Launch::from_env().unwrap().expect("a launch environment");
    ProcessGroup::init(&launch, Duration::from_secs(60), Backend::Gloo).unwrap()
}

fn assert_ranks_succeeded(outputs: &[Output]) {
    for (rank, o) in outputs.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {rank} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn collectives_across_two_processes() {
    if in_child() {
        let g = group();
        let r = g.rank as f64;
        let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
        g.all_reduce_sum(&mut t).unwrap();
        assert_eq!(Vec::<f64>::try_from(&t).unwrap(), [3.0, 30.0]);
        let mut b = Tensor::from_slice(&[r, r]).to_kind(Kind::Float);
        g.broadcast(&mut b, 1).unwrap();
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [1.0, 1.0]);
        let gathered = g
            .all_gather(&Tensor::from_slice(&[r as i64, 7]).reshape([1, 2]))
            .unwrap();
        assert_eq!(gathered.size(), [2, 2]);
        assert_eq!(
            Vec::<i64>::try_from(gathered.flatten(0, -1)).unwrap(),
            [0, 7, 1, 7]
        );
        // A model's variables come out of a hash map in another order in every process: the
        // broadcast matches them by name.
        let named = |names: [&str; 3]| -> Vec<(String, Tensor)> {
            names
                .iter()
                .map(|n| {
                    let size = if *n == "w" { 3 } else { 2 };
                    let base = if *n == "w" { 10.0 } else { 1.0 };
                    (
                        n.to_string(),
                        Tensor::full([size], base + r, (Kind::Float, tch::Device::Cpu)),
                    )
                })
                .collect()
        };
        let vars = if g.rank == 0 {
            named(["w", "b", "c"])
        } else {
            named(["c", "w", "b"])
        };
        g.broadcast_from_main(&vars).unwrap();
        for (n, t) in &vars {
            let want = if n == "w" { 10.0 } else { 1.0 };
            assert!(
                Vec::<f32>::try_from(t).unwrap().iter().all(|v| *v == want),
                "{n} on rank {}: {t}",
                g.rank
            );
        }
        g.barrier().unwrap();
        return;
    }
    let outputs = spawn_ranks("collectives_across_two_processes", 2, &[]);
    assert_ranks_succeeded(&outputs);
}

#[test]
fn a_rendezvous_nobody_joins_names_the_address_and_times_out() {
    if in_child() {
        return;
    }
    let port = free_port();
    let launch = Launch {
        rank: 1,
        world: 2,
        local_rank: 1,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        agent_store: false,
        source: "test",
        restart: 0,
    };
    let start = std::time::Instant::now();
    let err = match ProcessGroup::init(&launch, Duration::from_secs(3), Backend::Gloo) {
        Ok(_) => panic!("a rendezvous without rank 0 cannot succeed"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{err}");
}

/// A small network without BatchNorm, the same on every rank (seeded), and its data.
fn mlp() -> (tch::nn::VarStore, tch::nn::Sequential) {
    use tch::nn;
    tch::manual_seed(7);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let p = vs.root();
    let net = nn::seq()
        .add(nn::linear(&p / "l1", 6, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(&p / "l2", 16, 3, Default::default()));
    (vs, net)
}

fn optimiser(vs: &tch::nn::VarStore) -> convkit::optim::Optimizer {
    let cfg = convkit::optim::OptimConfig {
        lr: 0.1,
        ..Default::default()
    };
    convkit::optim::Optimizer::new(vs, &cfg).unwrap()
}

/// 20 SGD steps on batch `step` of 32 deterministic samples, or on this rank's half of it.
fn train_steps(part: Option<&ProcessGroup>) -> Vec<f32> {
    use tch::nn::Module;
    let (vs, net) = mlp();
    let mut optim = optimiser(&vs);
    for step in 0..20 {
        tch::manual_seed(100 + step);
        let x = Tensor::randn([32, 6], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::randint(3, [32], (Kind::Int64, tch::Device::Cpu));
        let (x, y) = match part {
            Some(g) => (
                x.narrow(0, 16 * g.rank as i64, 16),
                y.narrow(0, 16 * g.rank as i64, 16),
            ),
            None => (x, y),
        };
        let loss = net.forward(&x).cross_entropy_for_logits(&y);
        convkit::train::objective::optimise(&mut optim, &loss, 0.1, part).unwrap();
    }
    let mut names: Vec<_> = vs.variables().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names
        .iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .collect()
}

/// DDP's promise: 2 ranks x batch 16 with averaged gradients end where 1 process x batch 32
/// ends, and the ranks end bit-identical.
#[test]
fn two_ranks_of_half_batches_train_like_one_process() {
    if in_child() {
        let g = group();
        let parallel = train_steps(Some(&g));
        let single = train_steps(None);
        let worst = parallel
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
        let mine = Tensor::from_slice(&parallel).reshape([1, -1]);
        let both = g.all_gather(&mine).unwrap();
        assert!(both.get(0).equal(&both.get(1)), "the ranks differ");
        return;
    }
    assert_ranks_succeeded(&spawn_ranks(
        "two_ranks_of_half_batches_train_like_one_process",
        2,
        &[],
    ));
}

/// Each rank evaluates its part of the test split and the parts add up to one process's
/// numbers: the same accuracy, top-5 and confusion matrix exactly, the loss to float32
/// rounding.
#[test]
fn sharded_evaluation_equals_one_process() {
    if in_child() {
        use convkit::augment::Augmenter;
        use convkit::data::loader::DeviceSplit;
        use convkit::train::{evaluate, evaluate::Tta, objective::Evaluation, parallel};
        let g = group();
        tch::manual_seed(3);
        let model = convkit::models::build(
            &convkit::models::ModelSpec::new("cnn", 10),
            tch::Device::Cpu,
        )
        .unwrap();
        let images = Tensor::randint(256, [37, 32, 32, 3], (Kind::Uint8, tch::Device::Cpu));
        let labels = Tensor::randint(10, [37], (Kind::Int64, tch::Device::Cpu));
        let aug = Augmenter::new(vec![], &[0.5; 3], &[0.25; 3], tch::Device::Cpu);
        let whole = DeviceSplit {
            images: images.shallow_clone(),
            labels: labels.shallow_clone(),
        };
        let one = evaluate(&model, &whole, &aug, 8, Tta::default(), false);
        let part = convkit::dist::eval_shard(37, g.rank, g.world);
        let index = Tensor::from_slice(&part);
        let (images, labels) = whole.batch_at(&index);
        let mine = evaluate(
            &model,
            &DeviceSplit { images, labels },
            &aug,
            8,
            Tta::default(),
            false,
        );
        let added = parallel::add_up(
            Evaluation {
                detail: Some(mine),
                ..Default::default()
            },
            &g,
        )
        .unwrap();
        let d = added.detail.unwrap();
        assert_eq!(d.confusion, one.confusion);
        assert_eq!((d.accuracy, d.top5), (one.accuracy, one.top5));
        // Batch losses are float32 sums, grouped differently in the parts.
        assert!(
            (d.loss - one.loss).abs() < 1e-5 * one.loss.abs().max(1.0),
            "{} vs {}",
            d.loss,
            one.loss
        );
        return;
    }
    assert_ranks_succeeded(&spawn_ranks(
        "sharded_evaluation_equals_one_process",
        2,
        &[],
    ));
}

/// SupCon over 2 ranks with gathered projections equals the one-process loss on the
/// concatenated batch, and so does the gradient that reaches each rank's own projections.
#[test]
fn supcon_over_two_ranks_equals_the_loss_of_the_whole_batch() {
    if in_child() {
        use convkit::contrastive::objective::Contrastive;
        let g = group();
        let cfg = convkit::config::Config::default();
        let objective = Contrastive::new(&cfg).unwrap();
        tch::manual_seed(11);
        let z = convkit::contrastive::normalize(&Tensor::randn(
            [16, 2, 8],
            (Kind::Float, tch::Device::Cpu),
        ));
        let labels = Tensor::randint(3, [16], (Kind::Int64, tch::Device::Cpu));
        let whole = z.detach().set_requires_grad(true);
        let one = objective.loss_of(&whole, &labels).unwrap();
        one.backward();
        let r = 8 * g.rank as i64;
        let mine = z.narrow(0, r, 8).detach().set_requires_grad(true);
        let global = objective
            .global_loss(&mine, &labels.narrow(0, r, 8), &g)
            .unwrap();
        global.backward();
        let (a, b) = (global.double_value(&[]), one.double_value(&[]));
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        let diff = (mine.grad() - whole.grad().narrow(0, r, 8)).abs().max();
        assert!(diff.double_value(&[]) < 1e-6, "gradients differ by {diff}");
        return;
    }
    assert_ranks_succeeded(&spawn_ranks(
        "supcon_over_two_ranks_equals_the_loss_of_the_whole_batch",
        2,
        &[],
    ));
}

/// A rank that dies makes the other stop with an error that says so, within the timeout,
/// instead of hanging.
#[test]
fn a_dead_rank_stops_the_other_with_a_clear_error() {
    if in_child() {
        let g = group();
        if g.rank == 1 {
            // Dies without a word, as a killed process does.
            std::process::exit(9);
        }
        let start = std::time::Instant::now();
        let mut t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
        let err = g.all_reduce_sum(&mut t).unwrap_err().to_string();
        assert!(err.contains("all-reduce failed on rank 0 of 2"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(60), "{err}");
        println!("rank 0 stopped: {err}");
        return;
    }
    let outputs = spawn_ranks("a_dead_rank_stops_the_other_with_a_clear_error", 2, &[]);
    assert!(
        outputs[0].status.success(),
        "rank 0:\n{}\n{}",
        String::from_utf8_lossy(&outputs[0].stdout),
        String::from_utf8_lossy(&outputs[0].stderr)
    );
    assert_eq!(outputs[1].status.code(), Some(9));
}

/// The launch path users take: torchrun from the project's venv starting two convkit processes
/// on this machine; rank 0 alone writes the run folder.
#[test]
fn torchrun_launches_a_data_parallel_training_run() {
    if in_child() {
        return;
    }
    let torchrun = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/torchrun");
    if !torchrun.exists() {
        eprintln!(
            "skipped: no {} (scripts/setup.sh installs it)",
            torchrun.display()
        );
        return;
    }
    let out = common::temp_dir("dist-torchrun");
    let port = free_port().to_string();
    let o = Command::new(&torchrun)
        .args([
            "--no-python",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
        ])
        .arg(env!("CARGO_BIN_EXE_convkit"))
        .args([
            "train",
            "--data",
            "synthetic",
            "--device",
            "cpu",
            "--model",
            "cnn",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--set",
            "data.train_limit=512",
            "--set",
            "data.test_limit=200",
            "--set",
            "model.widths=[8, 16]",
            "--set",
            "train.threads=1",
            "--out",
        ])
        .arg(&out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    assert!(log.contains("data-parallel: 2 rank(s)"), "{log}");
    assert_eq!(
        log.matches("epoch   2/2").count(),
        1,
        "rank 0 alone logs: {log}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["ranks"], 2);
    assert_eq!(summary["test_images"], 200);
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
}

/// 10 SGD steps of a BatchNorm network (`cnn`) on 32 deterministic images, or on this rank's
/// half of them with synchronised BatchNorm; returns every variable (running statistics
/// included), flattened in name order.
fn train_cnn(part: Option<&std::rc::Rc<ProcessGroup>>) -> Vec<f32> {
    use convkit::models::{Ctx, ModelSpec, build, layers::BnSync};
    tch::manual_seed(5);
    let model = build(&ModelSpec::new("cnn", 10), tch::Device::Cpu).unwrap();
    let mut optim = optimiser(&model.vs);
    let sync = part.map(|g| {
        let g = std::rc::Rc::clone(g);
        std::rc::Rc::new(BnSync {
            reduce: Box::new(move |t| {
                g.all_reduce_sum_differentiable(t)
                    .map_err(|e| e.to_string())
            }),
            error: Default::default(),
        })
    });
    // Ten steps: the statistics are float32 sums taken in another order than libtorch's
    // BatchNorm kernel takes them, and SGD amplifies that rounding a little every step.
    for step in 0..10 {
        tch::manual_seed(200 + step);
        let x = Tensor::randn([32, 3, 16, 16], (Kind::Float, tch::Device::Cpu));
        let y = Tensor::randint(10, [32], (Kind::Int64, tch::Device::Cpu));
        let (x, y) = match part {
            Some(g) => (
                x.narrow(0, 16 * g.rank as i64, 16),
                y.narrow(0, 16 * g.rank as i64, 16),
            ),
            None => (x, y),
        };
        let ctx = Ctx::train().with_bn_sync(sync.clone());
        let loss = model.forward(&x, &ctx).cross_entropy_for_logits(&y);
        convkit::train::objective::optimise(&mut optim, &loss, 0.1, part.map(|g| g.as_ref()))
            .unwrap();
    }
    let mut vars: Vec<_> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap())
        .collect()
}

/// Synchronised BatchNorm: 2 ranks x 16 images train a BatchNorm network exactly as one process
/// on all 32 (statistics of the global batch forward, their gradients summed backward), and
/// the ranks stay identical.
#[test]
fn synchronised_batchnorm_trains_like_one_process() {
    if in_child() {
        let g = std::rc::Rc::new(group());
        let parallel = train_cnn(Some(&g));
        let single = train_cnn(None);
        let worst = parallel
            .iter()
            .zip(&single)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "largest relative difference {worst}");
        let mine = Tensor::from_slice(&parallel).reshape([1, -1]);
        let both = g.all_gather(&mine).unwrap();
        assert!(both.get(0).equal(&both.get(1)), "the ranks differ");
        return;
    }
    assert_ranks_succeeded(&spawn_ranks(
        "synchronised_batchnorm_trains_like_one_process",
        2,
        &[],
    ));
}
