//! Broken and hostile input (issue "Broken and hostile input"): readers validate what a file
//! declares before trusting it, and every error names the file or the setting.
mod common;

use convkit::config;
use convkit::data::{self, DataSpec, idx};
use convkit::train::{self, RunOptions};
use convkit::weights::checkpoint;
use std::io::Write;
use tch::Tensor;

/// A tiny run's config: 64 synthetic images, an 8/8-wide cnn, batch 32, on the CPU.
fn tiny_run(epochs: usize) -> convkit::config::Config {
    let settings: Vec<String> = [
        "data.source=\"synthetic\"",
        "data.train_limit=64",
        "data.test_limit=32",
        "model.name=\"cnn\"",
        "model.widths=[8, 8]",
        "train.batch_size=32",
        "train.device=\"cpu\"",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("train.epochs={epochs}")])
    .collect();
    config::load(None, &settings).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_header(dims: &[u32]) -> Vec<u8> {
    idx::encode(dims, &[])
}

#[test]
fn idx_headers_that_overflow_or_are_zero_are_refused() {
    let dir = common::temp_dir("hostile-idx");
    let magic = 0x0000_0803;
    for (name, dims) in [
        ("overflow", vec![u32::MAX, u32::MAX, u32::MAX]),
        ("zero", vec![0, 28, 28]),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, idx_header(&dims)).unwrap();
        let err = idx::read_idx(&p, magic).unwrap_err().to_string();
        assert!(
            err.contains(name) && err.contains("each must be positive"),
            "{err}"
        );
    }
}

#[test]
fn an_idx_header_declaring_more_than_its_file_can_hold_is_refused_at_once() {
    let dir = common::temp_dir("hostile-idx-declared");
    // 4,194,304 images of 28x28 (3.3 GB) declared by a tiny file, plain and gzipped.
    let header = idx_header(&[4_194_304, 28, 28]);
    let plain = dir.join("plain");
    std::fs::write(&plain, &header).unwrap();
    let gz = dir.join("zeros.gz");
    std::fs::write(&gz, gzip(&header)).unwrap();
    for p in [plain, gz] {
        let err = idx::read_idx(&p, 0x0000_0803).unwrap_err().to_string();
        assert!(err.contains("more than a file of this size"), "{err}");
    }
}

#[test]
fn a_gzip_bomb_is_inflated_only_as_far_as_the_header_says() {
    let dir = common::temp_dir("hostile-gz");
    // 2 images of 28x28 declared, 200 MB of zeros behind them: refused after 1,569 bytes.
    let mut raw = idx_header(&[2, 28, 28]);
    raw.resize(raw.len() + 200_000_000, 0);
    let p = dir.join("bomb.gz");
    std::fs::write(&p, gzip(&raw)).unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 1_000_000);
    let err = idx::read_idx(&p, 0x0000_0803).unwrap_err().to_string();
    assert!(
        err.contains("bomb.gz") && err.contains("promises 1568 data bytes") && err.contains("more"),
        "{err}"
    );
    // A flipped byte inside the deflate stream: the CRC is checked.
    let mut good = idx_header(&[2, 28, 28]);
    good.extend((0..1568).map(|i| (i * 31 % 251) as u8));
    let mut gz = gzip(&good);
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    let q = dir.join("flipped.gz");
    std::fs::write(&q, &gz).unwrap();
    let err = idx::read_idx(&q, 0x0000_0803).unwrap_err().to_string();
    assert!(err.contains("flipped.gz"), "{err}");
}

#[test]
fn a_cifar_archive_with_a_flipped_byte_is_refused() {
    let dir = common::temp_dir("hostile-cifar");
    let batch = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batch).unwrap();
    let labels: Vec<u8> = (0..4).collect();
    let px: Vec<u8> = (0..4 * 3072).map(|i| (i * 13 % 251) as u8).collect();
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let records = data::cifar::encode_records(&px, &labels);
        std::fs::write(batch.join(name), records).unwrap();
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_dir_all("cifar-10-batches-bin", &batch).unwrap();
    let mut gz = gzip(&tar.into_inner().unwrap());
    let archive = dir.join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, &gz).unwrap();
    assert!(data::load(&DataSpec::new(archive.to_str().unwrap())).is_ok());
    let mid = gz.len() / 2;
    gz[mid] ^= 0x01;
    std::fs::write(&archive, &gz).unwrap();
    let err = data::load(&DataSpec::new(archive.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cifar-10-binary.tar.gz"), "{err}");
}

/// A real checkpoint of a tiny run, then copies whose metadata is damaged one field at a time.
#[test]
fn damaged_checkpoint_metadata_is_refused_naming_the_file() {
    let out = common::temp_dir("hostile-ck");
    train::run(tiny_run(1), &out, &RunOptions::default()).unwrap();
    let ck = out.join("checkpoints/last.safetensors");
    let tensors = Tensor::read_safetensors(&ck).unwrap();
    let meta_of = |t: &[(String, Tensor)]| -> serde_json::Value {
        let m = &t.iter().find(|(n, _)| n == "meta").unwrap().1;
        serde_json::from_slice(&Vec::<u8>::try_from(m).unwrap()).unwrap()
    };
    let meta = meta_of(&tensors);
    let cases: [(&str, &str, serde_json::Value); 8] = [
        ("classes0", "/spec/classes", serde_json::json!(0)),
        (
            "classes1e12",
            "/spec/classes",
            serde_json::json!(1_000_000_000_000i64),
        ),
        ("widths", "/spec/widths", serde_json::json!([-8, 16])),
        ("channels", "/spec/in_channels", serde_json::json!(-1)),
        ("size", "/image_size", serde_json::json!(0)),
        ("std", "/std", serde_json::json!([0.0, 0.5, 0.5])),
        ("names", "/classes", serde_json::json!(["a", "b"])),
        ("twice", "/classes/1", serde_json::json!("disk")),
    ];
    for (label, pointer, value) in cases {
        let mut m = meta.clone();
        *m.pointer_mut(pointer).unwrap() = value;
        let bytes = serde_json::to_vec(&m).unwrap();
        let mut damaged: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| n != "meta")
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        damaged.push(("meta".into(), Tensor::from_slice(&bytes)));
        let path = out.join(format!("damaged-{label}.safetensors"));
        Tensor::write_safetensors(&damaged, &path).unwrap();
        let err = checkpoint::read(&path).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("damaged-{label}"))
                && err.contains("damaged checkpoint metadata"),
            "{label}: {err}"
        );
        // The command line says it in one line, without a panic.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
            .args(["predict", path.to_str().unwrap(), "x.png"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{label}: {text}");
        assert!(
            text.starts_with("error: ") && !text.contains("panicked"),
            "{text}"
        );
    }
    // NaN weights (training never writes them) are a damaged file, not NaN predictions.
    let nan: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| match n == "model.fc.weight" {
            true => (n.clone(), t.full_like(f64::NAN)),
            false => (n.clone(), t.shallow_clone()),
        })
        .collect();
    let path = out.join("damaged-nan.safetensors");
    Tensor::write_safetensors(&nan, &path).unwrap();
    let err = checkpoint::read(&path).map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("model.fc.weight holds non-finite values"),
        "{err}"
    );
    // An image size the network cannot take (two 2x2 poolings of a 1x1 image) is found when
    // the model is built, before any image is predicted.
    let mut m = meta.clone();
    *m.pointer_mut("/image_size").unwrap() = serde_json::json!(1);
    let mut small: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != "meta")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    small.push((
        "meta".into(),
        Tensor::from_slice(&serde_json::to_vec(&m).unwrap()),
    ));
    let path = out.join("damaged-size1.safetensors");
    Tensor::write_safetensors(&small, &path).unwrap();
    let img = out.join("x.png");
    image::RgbImage::new(4, 4).save(&img).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args([
            "predict",
            "--device",
            "cpu",
            path.to_str().unwrap(),
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("too small") && !text.contains("panicked"),
        "{text}"
    );
}

#[test]
fn image_size_and_widths_out_of_range_name_the_setting() {
    let mut spec = DataSpec::new("synthetic");
    spec.image_size = 100_000;
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(err.contains("image size 100000"), "{err}");
    // A spec from elsewhere (a checkpoint's metadata) is checked when the model is built.
    let mut spec = config::load(None, &["model.name=\"cnn\"".into()])
        .unwrap()
        .model
        .spec(10, 3);
    spec.widths = Some(vec![0, 16]);
    let err = convkit::models::build(&spec, tch::Device::Cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.widths [0, 16]"), "{err}");
}

#[test]
fn empty_splits_are_refused() {
    for (setting, expect) in [
        ("data.train_limit=0", "training split holds 0"),
        ("data.train_per_class=0", "training split holds 0"),
        ("data.test_limit=0", "test split holds no images"),
    ] {
        let overrides: Vec<String> = vec![
            "data.source=\"synthetic\"".into(),
            "model.name=\"cnn\"".into(),
            "train.device=\"cpu\"".into(),
            setting.into(),
        ];
        let cfg = config::load(None, &overrides).unwrap();
        let out = common::temp_dir("hostile-empty");
        let err = train::run(cfg, &out, &RunOptions::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{setting}: {err}");
    }
}

#[test]
fn eval_of_a_pth_file_says_what_it_takes() {
    let dir = common::temp_dir("hostile-pth-eval");
    let p = dir.join("resnet.pth");
    std::fs::write(&p, b"PK\x03\x04 a zip archive").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(["eval", p.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("resnet.pth")
            && text.contains("not a convkit checkpoint")
            && text.contains("--weights"),
        "{text}"
    );
}

/// A process id no process has now (for temporary files of a killed writer).
fn dead_pid() -> u32 {
    (4_000_000..4_100_000)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

#[test]
fn a_killed_runs_temporary_files_are_cleaned_and_plots_are_whole() {
    let out = common::temp_dir("hostile-stale");
    let pid = dead_pid();
    let stale = [
        out.join(format!("checkpoints/.last.safetensors.{pid}.tmp")),
        out.join(format!("plots/.loss.{pid}.tmp.png")),
    ];
    for f in &stale {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b"half").unwrap();
    }
    // A live writer's file (this process) is left alone.
    let live = out.join(format!(".notes.{}.tmp.txt", std::process::id()));
    std::fs::write(&live, b"mine").unwrap();
    train::run(tiny_run(1), &out, &RunOptions::default()).unwrap();
    for f in &stale {
        assert!(!f.exists(), "{} is still there", f.display());
    }
    assert!(live.exists());
    for plot in ["loss", "accuracy", "confusion"] {
        let p = out.join(format!("plots/{plot}.png"));
        assert!(
            image::open(&p).is_ok(),
            "{} is not a whole PNG",
            p.display()
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_second_writer_is_refused_and_a_stale_lock_taken_over() {
    let out = common::temp_dir("hostile-lock");
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    std::fs::write(out.join(".lock"), holder.id().to_string()).unwrap();
    let cfg = tiny_run(1);
    let err = train::run(cfg.clone(), &out, &RunOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("in use by process {}", holder.id())) && err.contains("--out"),
        "{err}"
    );
    assert!(
        !out.join("config.toml").exists(),
        "the second writer wrote nothing"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    train::run(cfg, &out, &RunOptions::default()).unwrap();
    assert!(!out.join(".lock").exists(), "the lock is freed on exit");
}

#[test]
fn resume_applies_its_settings_or_refuses_them() {
    let out = common::temp_dir("hostile-resume");
    let cfg = tiny_run(1);
    train::run(cfg.clone(), &out, &RunOptions::default()).unwrap();
    // A finished 1-epoch run extended to 2 epochs at another rate: both applied and recorded.
    let more = RunOptions {
        resume: true,
        resume_settings: vec!["train.epochs=2".into(), "optim.lr=0.005".into()],
        ..Default::default()
    };
    let s = train::run(cfg.clone(), &out, &more).unwrap();
    assert_eq!(s.epochs, 2);
    let saved: convkit::config::Config =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).unwrap()).unwrap();
    assert_eq!((saved.train.epochs, saved.optim.lr), (2, 0.005));
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    // What would make it another run is refused, naming the setting.
    for setting in [
        "model.name=\"resnet20\"",
        "train.batch_size=16",
        "augment=[]",
    ] {
        let bad = RunOptions {
            resume: true,
            resume_settings: vec![setting.into()],
            ..Default::default()
        };
        let err = train::run(cfg.clone(), &out, &bad)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        let key = setting.split('=').next().unwrap();
        assert!(
            err.contains(&format!("`{key}` cannot change when resuming")),
            "{err}"
        );
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(["train", "--resume", "--config", "quickstart", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--config cannot be given with --resume"),
        "{err}"
    );
}

#[test]
fn a_run_folder_that_cannot_be_made_is_named_once() {
    let dir = common::temp_dir("hostile-fs");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args([
            "train",
            "--data",
            "synthetic",
            "--model",
            "cnn",
            "--epochs",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&out.display().to_string()), "{err}");
    assert_eq!(err.matches("os error 20").count(), 1, "{err}");
}

#[test]
fn config_values_out_of_range_name_the_field_and_the_file() {
    for (setting, expect) in [
        ("train.batch_size=0", "train.batch_size = 0"),
        ("train.label_smoothing=5", "train.label_smoothing = 5"),
        ("augment=[\"rrc:0.9-0.1\"]", "scale 0.9-0.1"),
        ("augment=[\"gray:5\"]", "probability 5"),
        ("transfer.resize=0", "transfer.resize = Some(0)"),
        ("transfer.resize=100000", "transfer.resize = Some(100000)"),
        ("train.threads=1000000", "train.threads = 1000000"),
        ("optim.lr=-1", "optim.lr = -1"),
        ("model.widths=[0, 16]", "model.widths [0, 16]"),
        ("model.widths=[-8, 16]", "model.widths [-8, 16]"),
        ("model.widths=[8,8,8,8,8,8,8,8,8,8,8,8]", "1 to 8 widths"),
    ] {
        let err = config::load(Some("quickstart"), &[setting.to_string()])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expect) && err.contains("recipe quickstart"),
            "{setting}: {err}"
        );
    }
    let dir = common::temp_dir("hostile-config");
    let file = dir.join("mine.toml");
    std::fs::write(&file, "[train]\nepochs = 0\n").unwrap();
    let err = config::load(Some(file.to_str().unwrap()), &[])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mine.toml") && err.contains("train.epochs = 0"),
        "{err}"
    );
}

#[test]
fn a_zero_stride_tensor_cannot_become_gigabytes() {
    let dir = common::temp_dir("hostile-stride");
    let file = dir.join("expanded.pth");
    let script = format!(
        "import torch; torch.save({{'w': torch.zeros(1).expand(32768, 65536), \
         'b': torch.ones(3).expand(2, 3)}}, r'{}')",
        file.display()
    );
    common::python(&["-c", &script]);
    assert!(std::fs::metadata(&file).unwrap().len() < 4096);
    let err = convkit::weights::read(&file)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expanded.pth") && err.contains("would repeat its storage"),
        "{err}"
    );
}

#[test]
fn a_damaged_decode_cache_is_decoded_again() {
    let root = common::temp_dir("hostile-cache-src");
    for (split, n) in [("train", 3), ("test", 2)] {
        for c in ["a", "b"] {
            let d = root.join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                image::RgbImage::from_pixel(8, 8, image::Rgb([i * 40, 9, 9]))
                    .save(d.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.image_size = 8;
    let good = data::load(&spec).unwrap();
    let file = data::cache::cache_file(&spec, &root).unwrap();
    let tensors = Tensor::read_safetensors(&file).unwrap();
    let damage = |name: &str, value: Tensor| {
        let damaged: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| match n == name {
                true => (n.clone(), value.shallow_clone()),
                false => (n.clone(), t.shallow_clone()),
            })
            .collect();
        Tensor::write_safetensors(&damaged, &file).unwrap();
    };
    for (name, value) in [
        ("train_labels", Tensor::from_slice(&[0i64, 1, 7, 0, 1, 1])),
        ("train_labels", Tensor::from_slice(&[0i64, 1])),
        (
            "train_images",
            Tensor::zeros([6, 8, 8], (tch::Kind::Uint8, tch::Device::Cpu)),
        ),
    ] {
        damage(name, value);
        assert!(data::cache::read(&file).is_err(), "{name} damage passed");
        let again = data::load(&spec).unwrap();
        assert!(again.train.labels.equal(&good.train.labels));
        assert!(again.train.images.equal(&good.train.images));
        assert!(
            data::cache::read(&file).is_ok(),
            "the cache is written again"
        );
    }
}

#[test]
fn damaged_optimiser_state_on_resume_is_an_error_naming_the_checkpoint() {
    let out = common::temp_dir("hostile-steps");
    let cfg = tiny_run(2);
    let first = RunOptions {
        stop_after: Some(1),
        ..Default::default()
    };
    train::run(cfg.clone(), &out, &first).unwrap();
    let ck = out.join("checkpoints/last.safetensors");
    let damaged: Vec<(String, Tensor)> = Tensor::read_safetensors(&ck)
        .unwrap()
        .into_iter()
        .map(|(n, t)| match n == "optim.__steps" {
            true => (n, Tensor::from(3i64)),
            false => (n, t),
        })
        .collect();
    Tensor::write_safetensors(&damaged, &ck).unwrap();
    let resume = RunOptions {
        resume: true,
        ..Default::default()
    };
    let err = train::run(cfg, &out, &resume)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("last.safetensors") && err.contains("__steps is a Int64 tensor of shape []"),
        "{err}"
    );
}

/// A PNG whose header declares `w` x `h` pixels (the data is an 8x8 image's).
fn png_declaring(path: &std::path::Path, w: u32, h: u32) {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    // IHDR: length (4) + "IHDR" (4) at offset 8; width and height follow, then the CRC.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn image_folders_with_traps_end_in_clean_errors_or_are_read() {
    let root = common::temp_dir("hostile-images");
    for split in ["train", "test"] {
        for c in ["a", "b"] {
            let d = root.join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]))
                .save(d.join("0.png"))
                .unwrap();
        }
    }
    // A FIFO named like an image: skipped, never opened (opening would block).
    let fifo = root.join("train/a/pipe.png");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // A class folder whose name is not UTF-8 is still opened.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"c\xff");
        for split in ["train", "test"] {
            let d = root.join(split).join(odd);
            std::fs::create_dir_all(&d).unwrap();
            image::RgbImage::from_pixel(8, 8, image::Rgb([7, 7, 7]))
                .save(d.join("0.png"))
                .unwrap();
        }
    }
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.image_size = 8;
    spec.use_cache = false;
    let ds = data::load(&spec).unwrap();
    assert_eq!(ds.classes, vec!["a", "b", "c\u{fffd}"]);
    assert!(
        ds.notes.iter().any(|n| n.contains("1 special files")),
        "{:?}",
        ds.notes
    );
    // A header declaring 100000 x 100000 pixels is refused before anything is allocated.
    png_declaring(&root.join("train/b/huge.png"), 100_000, 100_000);
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("huge.png") && err.contains("100000x100000"),
        "{err}"
    );
}

#[test]
fn idx_splits_of_different_image_sizes_are_refused() {
    let dir = common::temp_dir("hostile-idx-sizes");
    let files = [
        ("train-images-idx3-ubyte", idx::encode(&[2, 1, 1], &[1, 2])),
        ("train-labels-idx1-ubyte", idx::encode(&[2], &[0, 1])),
        (
            "t10k-images-idx3-ubyte",
            idx::encode(&[1, 28, 28], &[0; 784]),
        ),
        ("t10k-labels-idx1-ubyte", idx::encode(&[1], &[1])),
    ];
    for (name, mut bytes) in files {
        if name.contains("images") {
            bytes[3] = 3;
        } else {
            bytes[3] = 1;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let mut spec = DataSpec::new(dir.to_str().unwrap());
    spec.use_cache = false;
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("training images are [1, 1, 1]") && err.contains("[1, 28, 28]"),
        "{err}"
    );
}

#[test]
fn a_deflate_bomb_inside_a_pth_is_refused() {
    let dir = common::temp_dir("hostile-deflate");
    let file = dir.join("bomb.pth");
    let script = format!(
        "import io, torch, zipfile\n\
         buf = io.BytesIO(); torch.save({{'w': torch.zeros(10)}}, buf)\n\
         zin = zipfile.ZipFile(buf)\n\
         with zipfile.ZipFile(r'{}', 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   for i in zin.infolist():\n\
         \x20       d = zin.read(i.filename)\n\
         \x20       z.writestr(i.filename, bytes(150_000_000) if i.filename.endswith('data/0') else d)\n",
        file.display()
    );
    common::python(&["-c", &script]);
    assert!(std::fs::metadata(&file).unwrap().len() < 1_000_000);
    let err = convkit::weights::read(&file)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bomb.pth") && err.contains("inflates from"),
        "{err}"
    );
}

#[test]
fn more_bad_settings_and_data_are_named() {
    for (setting, expect) in [
        ("schedule.gamma=nan", "schedule.gamma = NaN"),
        ("schedule.div=0", "schedule.div = 0"),
        ("schedule.pct_start=2", "schedule.pct_start = 2"),
        ("optim.eps=0", "optim.eps = 0"),
        ("contrastive.temperature=0", "contrastive.temperature = 0"),
        ("train.epochs=4000000000", "train.epochs = 4000000000"),
    ] {
        let err = config::load(None, &[setting.to_string()])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{setting}: {err}");
    }
    let err = config::load(None, &["train.batch_size=-1".to_string()])
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    // A single-class data set cannot train a classifier.
    let cfg = config::load(
        None,
        &[
            "data.classes=[\"disk\"]".into(),
            "model.name=\"cnn\"".into(),
            "train.device=\"cpu\"".into(),
        ],
    )
    .unwrap();
    let err = train::run(
        cfg,
        &common::temp_dir("hostile-one-class"),
        &RunOptions::default(),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("a classifier needs at least 2"), "{err}");
}

/// Settings whose values are a fixed set are checked when the config is read: a misspelt one
/// names the setting and lists the allowed values, and the data-parallel timeout is bounded.
#[test]
fn misspelt_choices_and_a_zero_timeout_are_refused_by_name() {
    let err = |setting: &str| {
        config::load(None, &[setting.to_string()])
            .unwrap_err()
            .to_string()
    };
    let e = err("optim.name=\"sgdd\"");
    assert!(e.contains("optim.name") && e.contains("adamw"), "{e}");
    let e = err("schedule.anneal=\"cosin\"");
    assert!(e.contains("schedule.anneal") && e.contains("linear"), "{e}");
    let e = err("data.format=\"imagez\"");
    assert!(e.contains("data.format") && e.contains("folder"), "{e}");
    let e = err("transfer.normalise=\"foo\"");
    assert!(
        e.contains("transfer.normalise") && e.contains("imagenet"),
        "{e}"
    );
    let e = err("dist.backend=\"mpi\"");
    assert!(e.contains("dist.backend") && e.contains("gloo"), "{e}");
    let e = err("dist.timeout_s=0");
    assert!(e.contains("dist.timeout_s = 0"), "{e}");
    assert!(e.contains("command line"), "the origin is named: {e}");
}
