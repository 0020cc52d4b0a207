//! Fuzz test of every reader: seeded mutations (flipped, inserted and deleted bytes,
//! truncations, 32-bit fields set to 0 / 2^31-1 / 2^32-1) of a small valid file of each format.
//!
//! Readers that are pure Rust (pickle, IDX, recipe TOML, the JPEG end check) run in this process
//! under proptest, which shrinks a failing input to a minimal one. Readers that reach libtorch
//! (`.pth`, safetensors, convkit checkpoints, CIFAR, decode caches, images) run in a child
//! process, this test binary re-run on a batch of mutated files, so that an abort is caught and
//! names its file. Every input must end in Ok or a clean error: no panic, no abort, under
//! 10 s, and under 2 GiB of resident memory.
mod common;

use convkit::config;
use convkit::data::{self, DataSpec, idx};
use convkit::train::{self, RunOptions};
use convkit::weights::checkpoint;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CASES: u32 = 300;
const MEMORY_LIMIT_KB: u64 = 2 * 1024 * 1024;
const TIME_LIMIT: Duration = Duration::from_secs(10);
/// How the child reports a file done: `<MARK> <milliseconds> <peak KiB>`.
const MARK: &str = "convkit-fuzz-done";

/// One change to a file's bytes; positions wrap around the file's length.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Set32(usize, u32),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let field = prop_oneof![Just(0u32), Just(0x7fff_ffff), Just(u32::MAX), any::<u32>()];
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), field).prop_map(|(i, v)| Edit::Set32(i, v)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match *e {
            Edit::Flip(i, x) if !b.is_empty() => b[i % n] ^= x,
            Edit::Insert(i, x) => b.insert(i % (b.len() + 1), x),
            Edit::Delete(i) if !b.is_empty() => {
                b.remove(i % n);
            }
            Edit::Truncate(i) => b.truncate(i % n),
            Edit::Set32(i, v) if b.len() >= 4 => {
                let at = i % (b.len() - 3);
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

fn runner(seed: u8) -> TestRunner {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
    )
}

/// Peak resident memory of this process so far, in KiB (VmHWM).
fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `read` on mutations of `seed` in this process; proptest shrinks any failure.
fn fuzz_in_process(name: &str, seed: &[u8], read: impl Fn(&[u8])) {
    let mut r = runner(name.len() as u8);
    let result = r.run(&edits(), |e| {
        let bytes = apply(seed, &e);
        let start = Instant::now();
        read(&bytes);
        prop_assert!(
            start.elapsed() < TIME_LIMIT,
            "{name}: took {:?}",
            start.elapsed()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    assert!(
        peak_kb() < MEMORY_LIMIT_KB,
        "{name}: peak {} KiB",
        peak_kb()
    );
}

#[test]
fn pure_rust_readers_survive_mutations() {
    let dir = common::temp_dir("fuzz-inproc");
    // A pickle as torch.save writes one: a dict of a list, memo references, numbers, strings.
    let pickle: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G?\xf0\x00\x00\x00\x00\x00\x00h\x01eX\x01\x00\x00\x00bq\x03h\x02u.";
    assert!(convkit::pickle::load(pickle).is_ok());
    fuzz_in_process("pickle", pickle, |b| {
        let _ = convkit::pickle::load(b);
    });
    let mut idx_file = idx::encode(&[3, 4, 4], &[7; 48]);
    idx_file[2] = 0x08;
    let path = dir.join("images-idx3-ubyte");
    fuzz_in_process("idx", &idx_file, |b| {
        std::fs::write(&path, b).unwrap();
        let _ = idx::read_idx(&path, 0x0000_0803);
    });
    let recipe = config::recipe_text("quickstart").unwrap().1;
    let toml_path = dir.join("recipe.toml");
    fuzz_in_process("recipe toml", recipe.as_bytes(), |b| {
        std::fs::write(&toml_path, b).unwrap();
        let _ = config::load(Some(toml_path.to_str().unwrap()), &[]);
    });
    let jpeg = std::fs::read(write_jpeg(&dir)).unwrap();
    fuzz_in_process("jpeg end check", &jpeg, |b| {
        let _ = data::folder::jpeg_is_complete(b);
    });
}

fn write_jpeg(dir: &Path) -> PathBuf {
    let p = dir.join("seed.jpg");
    image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 99]))
        .save(&p)
        .unwrap();
    p
}

/// The valid files the child-process readers start from: (reader, file name, bytes).
fn seeds(dir: &Path) -> Vec<(&'static str, String, Vec<u8>)> {
    let run = dir.join("run");
    let overrides: Vec<String> = [
        "data.source=\"synthetic\"",
        "data.train_limit=32",
        "data.test_limit=16",
        "model.name=\"cnn\"",
        "model.widths=[4, 4]",
        "train.epochs=1",
        "train.batch_size=16",
        "train.device=\"cpu\"",
        "augment=[]",
    ]
    .map(String::from)
    .into();
    train::run(
        config::load(None, &overrides).unwrap(),
        &run,
        &RunOptions::default(),
    )
    .unwrap();
    let ck = std::fs::read(run.join("checkpoints/last.safetensors")).unwrap();
    let pth = dir.join("small.pth");
    let legacy = dir.join("legacy.pth");
    let script = format!(
        "import torch; sd = {{'conv.weight': torch.randn(2, 1, 3, 3), 'fc.bias': torch.zeros(3)}}; \
         torch.save({{'state_dict': sd, 'epoch': 3}}, r'{}'); \
         torch.save(sd, r'{}', _use_new_zipfile_serialization=False)",
        pth.display(),
        legacy.display()
    );
    common::python(&["-c", &script]);
    let labels = [0u8, 1, 2];
    let px: Vec<u8> = (0..3 * 3072).map(|i| (i % 251) as u8).collect();
    let cifar = data::cifar::encode_records(&px, &labels);
    let mut tar = tar::Builder::new(Vec::new());
    for name in ["data_batch_1.bin", "test_batch.bin"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(cifar.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), &cifar[..])
            .unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let folder = dir.join("folder");
    for (split, c) in [("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")] {
        let d = folder.join(split).join(c);
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
            .save(d.join("0.png"))
            .unwrap();
    }
    let mut spec = DataSpec::new(folder.to_str().unwrap());
    spec.image_size = 8;
    data::load(&spec).unwrap();
    let cache = std::fs::read(data::cache::cache_file(&spec, &folder).unwrap()).unwrap();
    let png = {
        let p = dir.join("seed.png");
        image::RgbImage::from_pixel(8, 8, image::Rgb([5, 6, 7]))
            .save(&p)
            .unwrap();
        std::fs::read(p).unwrap()
    };
    vec![
        ("checkpoint", "last.safetensors".into(), ck),
        ("weights", "small.pth".into(), std::fs::read(&pth).unwrap()),
        (
            "weights",
            "legacy.pth".into(),
            std::fs::read(&legacy).unwrap(),
        ),
        (
            "cifar",
            "cifar-10-binary.tar.gz".into(),
            gz.finish().unwrap(),
        ),
        ("cifar", "data_batch_1.bin".into(), cifar),
        ("cache", "cache.safetensors".into(), cache),
        ("image", "seed.png".into(), png),
        (
            "image",
            "seed.jpg".into(),
            std::fs::read(write_jpeg(dir)).unwrap(),
        ),
    ]
}

/// Reads one file with a reader that may reach libtorch (in the child process).
fn read_with(reader: &str, path: &Path) {
    match reader {
        "checkpoint" => {
            if let Ok(ck) = checkpoint::read(path)
                && let Ok(mut model) = ck.build_model(tch::Device::Cpu)
            {
                let _ = ck.load_into(&mut model);
            }
        }
        "weights" => {
            let _ = convkit::weights::read_contents(path);
        }
        "cifar" => {
            let _ = data::cifar::load(path);
        }
        "cache" => {
            let _ = data::cache::read(path);
        }
        "image" => {
            let mut out = vec![0u8; 8 * 8 * 3];
            let _ = data::folder::decode_into(path, 8, &mut out);
        }
        other => panic!("unknown reader {other}"),
    }
}

/// Not a test of its own: the child process of `libtorch_readers_survive_mutations`, which
/// runs this test binary with CONVKIT_FUZZ_DIR set. Reads the listed files in order and
/// reports each one done, with the peak memory so far.
#[test]
fn fuzz_child_process() {
    let Ok(list) = std::env::var("CONVKIT_FUZZ_LIST") else {
        return;
    };
    let mut out = std::io::stdout();
    for line in std::fs::read_to_string(list).unwrap().lines() {
        let (reader, path) = line.split_once(' ').unwrap();
        let start = Instant::now();
        read_with(reader, Path::new(path));
        let ms = start.elapsed().as_millis();
        // On a line of its own: the test harness may have started one ("test ... ").
        writeln!(out, "\n{MARK} {ms} {}", peak_kb()).unwrap();
        out.flush().unwrap();
    }
}

/// Runs the child on `files` from `from`; returns how many it finished, and its stderr when it
/// did not exit cleanly.
fn run_child(
    list: &Path,
    files: &[String],
    from: usize,
) -> (usize, Vec<(u128, u64)>, Option<String>) {
    std::fs::write(list, files[from..].join("\n")).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fuzz_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("CONVKIT_FUZZ_LIST", list)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A watchdog ends a child that hangs.
    let limit = TIME_LIMIT * 4 + Duration::from_millis(50) * (files.len() - from) as u32;
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    });
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let done: Vec<(u128, u64)> = stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let mut w = l.strip_prefix(MARK)?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    let output = child.wait_with_output().unwrap();
    drop(watchdog);
    let failed = (!output.status.success() || done.len() < files.len() - from)
        .then(|| String::from_utf8_lossy(&output.stderr).to_string());
    (done.len(), done, failed)
}

#[test]
fn libtorch_readers_survive_mutations() {
    let dir = common::temp_dir("fuzz-child");
    let mut files = Vec::new();
    for (k, (reader, name, seed)) in seeds(&dir).into_iter().enumerate() {
        let mut r = runner(k as u8 + 100);
        let sub = dir.join(format!("m{k}"));
        for i in 0..CASES {
            let e = edits().new_tree(&mut r).unwrap().current();
            let case = sub.join(i.to_string());
            std::fs::create_dir_all(&case).unwrap();
            let path = case.join(&name);
            std::fs::write(&path, apply(&seed, &e)).unwrap();
            files.push(format!("{reader} {}", path.display()));
        }
    }
    let list = dir.join("list.txt");
    let (mut from, mut problems, mut read) = (0, Vec::new(), 0);
    while from < files.len() {
        let (n, done, failed) = run_child(&list, &files, from);
        read += n;
        for (i, (ms, kb)) in done.iter().enumerate() {
            if *ms > TIME_LIMIT.as_millis() || *kb > MEMORY_LIMIT_KB {
                problems.push(format!("{}: {ms} ms, peak {kb} KiB", files[from + i]));
            }
        }
        if let Some(stderr) = failed {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            problems.push(format!("{}: the reader died: {tail}", files[from + n]));
            from += n + 1;
        } else {
            from = files.len();
        }
    }
    assert!(
        problems.is_empty(),
        "{} inputs failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(read, files.len(), "every mutated file was read");
    assert_eq!(files.len(), 8 * CASES as usize);
}
