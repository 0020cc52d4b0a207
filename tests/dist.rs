//! Data-parallel training over PyTorch's c10d (Gloo on this CPU): each test starts its ranks as
//! child processes of this test binary (the same test, with the launch environment torchrun
//! would set), so every rank runs real rendezvous and collectives.
mod common;

use convkit::dist::{Launch, ProcessGroup};
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
    ProcessGroup::init(&launch, Duration::from_secs(60)).unwrap()
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
    };
    let start = std::time::Instant::now();
    let err = match ProcessGroup::init(&launch, Duration::from_secs(3)) {
        Ok(_) => panic!("a rendezvous without rank 0 cannot succeed"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{err}");
}
