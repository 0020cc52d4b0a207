//! Format readers against files written here in the real formats, bad input, the decode cache,
//! and downloads from a local HTTP server.

mod common;

use convkit::data::{self, DataSpec, Format, cifar, download, idx};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One `CONVKIT_DATA` folder for every test in this binary, set once before any reads it.
fn shared_data_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::temp_dir("data-data-dir");
        // SAFETY: set once, under the OnceLock, before any test reads the variable.
        unsafe { std::env::set_var("CONVKIT_DATA", &dir) };
        dir
    })
}

/// `n` deterministic 32x32 RGB images (HWC) and labels.
fn images(n: usize, classes: u8) -> (Vec<u8>, Vec<u8>) {
    let px: Vec<u8> = (0..n * 3072)
        .map(|i| ((i * 7 + i / 3072) % 251) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % classes as usize) as u8).collect();
    (px, labels)
}

fn write_cifar10_folder(dir: &Path, per_batch: usize) -> (Vec<u8>, Vec<u8>) {
    let (px, labels) = images(per_batch * 6, 10);
    let batch_dir = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batch_dir).unwrap();
    for b in 0..6 {
        let name = if b < 5 {
            format!("data_batch_{}.bin", b + 1)
        } else {
            "test_batch.bin".into()
        };
        let r = b * per_batch..(b + 1) * per_batch;
        let bytes = cifar::encode_records(&px[r.start * 3072..r.end * 3072], &labels[r]);
        std::fs::write(batch_dir.join(name), bytes).unwrap();
    }
    std::fs::write(
        batch_dir.join("batches.meta.txt"),
        cifar::CIFAR10_CLASSES.join("\n"),
    )
    .unwrap();
    (px, labels)
}

#[test]
fn cifar10_folder_round_trips_pixels_labels_and_layout() {
    let dir = common::temp_dir("data-cifar-folder");
    let (px, labels) = write_cifar10_folder(&dir, 4);
    let ds = data::load(&DataSpec::new(dir.to_str().unwrap())).unwrap();
    assert_eq!(ds.train.images.size(), vec![20, 32, 32, 3]);
    assert_eq!(ds.test.len(), 4);
    assert_eq!(ds.classes[9], "truck");
    let got = Vec::<u8>::try_from(ds.train.images.flatten(0, -1)).unwrap();
    assert_eq!(
        &got[..],
        &px[..20 * 3072],
        "HWC pixels survive the planar CIFAR encoding"
    );
    let got_labels = ds.test.labels_vec();
    assert_eq!(
        got_labels,
        labels[20..24].iter().map(|&l| l as i64).collect::<Vec<_>>()
    );
}

#[test]
fn cifar10_reads_straight_from_tar_gz() {
    let dir = common::temp_dir("data-cifar-tgz");
    let (px, _) = write_cifar10_folder(&dir, 3);
    let archive = dir.join("cifar-10-binary.tar.gz");
    let file = std::fs::File::create(&archive).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all("cifar-10-batches-bin", dir.join("cifar-10-batches-bin"))
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    let (path, format) = data::resolve(&DataSpec::new(archive.to_str().unwrap())).unwrap();
    assert_eq!(format, Format::CifarBinary);
    let ds = data::load(&DataSpec::new(path.to_str().unwrap())).unwrap();
    assert_eq!(ds.train.len(), 15);
    let first = Vec::<u8>::try_from(ds.train.images.get(0).flatten(0, -1)).unwrap();
    assert_eq!(&first[..], &px[..3072]);
}

#[test]
fn cifar100_uses_fine_labels() {
    let dir = common::temp_dir("data-cifar100");
    let mut rec = vec![3u8, 77u8];
    rec.extend(vec![9u8; 3072]);
    std::fs::write(dir.join("train.bin"), rec.repeat(2)).unwrap();
    std::fs::write(dir.join("test.bin"), &rec).unwrap();
    let ds = data::load(&DataSpec::new(dir.to_str().unwrap())).unwrap();
    assert_eq!(ds.classes.len(), 100);
    assert_eq!(ds.train.labels_vec(), vec![77, 77]);
}

#[test]
fn cifar_batch_of_wrong_size_names_the_file() {
    let dir = common::temp_dir("data-cifar-bad");
    write_cifar10_folder(&dir, 2);
    let bad = dir.join("cifar-10-batches-bin").join("data_batch_3.bin");
    std::fs::write(&bad, vec![0u8; 3073 * 2 - 100]).unwrap();
    let err = data::load(&DataSpec::new(dir.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("data_batch_3.bin"), "{err}");
    assert!(
        err.contains("not a whole number of 3073-byte CIFAR records"),
        "{err}"
    );
}

#[test]
fn label_outside_class_range_is_an_error() {
    let dir = common::temp_dir("data-cifar-label");
    write_cifar10_folder(&dir, 2);
    let (px, _) = images(2, 10);
    let bytes = cifar::encode_records(&px, &[1, 12]);
    std::fs::write(
        dir.join("cifar-10-batches-bin").join("test_batch.bin"),
        bytes,
    )
    .unwrap();
    let err = data::load(&DataSpec::new(dir.to_str().unwrap()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 12 outside the class range 0..10"),
        "{err}"
    );
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
}

fn write_idx(dir: &Path, gz: bool) {
    let (px, labels) = images(6, 10);
    let gray: Vec<u8> = px.iter().step_by(3).take(6 * 28 * 28).copied().collect();
    let files = [
        (
            "train-images-idx3-ubyte",
            idx::encode(&[4, 28, 28], &gray[..4 * 784]),
        ),
        ("train-labels-idx1-ubyte", idx::encode(&[4], &labels[..4])),
        (
            "t10k-images-idx3-ubyte",
            idx::encode(&[2, 28, 28], &gray[4 * 784..]),
        ),
        ("t10k-labels-idx1-ubyte", idx::encode(&[2], &labels[4..])),
    ];
    for (name, bytes) in files {
        if gz {
            let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(&bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn idx_reads_gzip_and_plain_files() {
    for gz in [true, false] {
        let dir = common::temp_dir(&format!("data-idx-{gz}"));
        write_idx(&dir, gz);
        let mut spec = DataSpec::new(dir.to_str().unwrap());
        spec.use_cache = false;
        let ds = data::load(&spec).unwrap();
        assert_eq!(ds.train.images.size(), vec![4, 28, 28, 1]);
        assert_eq!(ds.test.labels_vec(), vec![4, 5]);
        let rgb = ds.to_rgb();
        assert_eq!(rgb.train.images.size(), vec![4, 28, 28, 3]);
        assert_eq!(rgb.mean.len(), 3);
    }
}

#[test]
fn idx_with_wrong_magic_names_the_file() {
    let dir = common::temp_dir("data-idx-magic");
    write_idx(&dir, false);
    let path = dir.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] = 9;
    std::fs::write(&path, bytes).unwrap();
    let mut spec = DataSpec::new(dir.to_str().unwrap());
    spec.format = Some(Format::Idx);
    spec.use_cache = false;
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(
        err.contains("wrong IDX magic number 0x00000809 (expected 0x00000803)"),
        "{err}"
    );
}

#[test]
fn real_fashion_mnist_when_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.exists() {
        eprintln!(
            "skipped: apt-get install dataset-fashion-mnist provides {}",
            dir.display()
        );
        return;
    }
    let mut spec = DataSpec::new(dir.to_str().unwrap());
    spec.use_cache = false;
    let ds = data::load(&spec).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
    assert_eq!(ds.classes[9], "ankle-boot");
    assert!(
        (ds.mean[0] - 0.2860).abs() < 1e-3,
        "Fashion-MNIST mean is 0.2860, got {}",
        ds.mean[0]
    );
}

fn write_png(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
    image::RgbImage::from_pixel(w, h, image::Rgb(colour))
        .save(path)
        .unwrap();
}

fn write_folder_tree(root: &Path) {
    for split in ["train", "test"] {
        for (c, colour) in [("cat", [200, 10, 10]), ("dog", [10, 200, 10])] {
            let d = root.join(split).join(c);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..3 {
                write_png(&d.join(format!("{i}.png")), 40 + i * 10, 32, colour);
            }
        }
    }
}

#[test]
fn image_folder_resizes_and_caches() {
    let root = common::temp_dir("data-folder");
    write_folder_tree(&root);
    let cache = shared_data_dir();
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.image_size = 16;
    let ds = data::load(&spec).unwrap();
    assert_eq!(ds.classes, vec!["cat", "dog"]);
    assert_eq!(ds.train.images.size(), vec![6, 16, 16, 3]);
    let first_dog = ds.train.labels_vec().iter().position(|&l| l == 1).unwrap();
    let px = Vec::<u8>::try_from(ds.train.images.get(first_dog as i64).flatten(0, -1)).unwrap();
    assert_eq!(&px[..3], &[10, 200, 10]);
    let cache_file = data::cache::cache_file(&spec, &root).unwrap();
    assert!(cache_file.starts_with(cache) && cache_file.exists());
    let again = data::load(&spec).unwrap();
    assert!(again.train.images.equal(&ds.train.images));
    assert_eq!(again.mean, ds.mean);
}

#[test]
fn single_folder_is_split_by_val_split() {
    let root = common::temp_dir("data-folder-split");
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(c)).unwrap();
        for i in 0..10 {
            write_png(&root.join(c).join(format!("{i}.png")), 8, 8, [i * 20, 0, 0]);
        }
    }
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.use_cache = false;
    spec.val_split = 0.25;
    let ds = data::load(&spec).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (15, 5));
}

#[test]
fn corrupt_image_names_the_file() {
    let root = common::temp_dir("data-folder-corrupt");
    write_folder_tree(&root);
    let bad = root.join("train").join("dog").join("1.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let jpg = root.join("test").join("cat").join("x.jpg");
    std::fs::write(&jpg, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.use_cache = false;
    // Every broken file of the set is listed in one error.
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("1.png") && err.contains("x.jpg") && err.contains("cannot decode image"),
        "{err}"
    );
}

#[test]
fn empty_class_folder_is_an_error() {
    let root = common::temp_dir("data-folder-empty");
    write_folder_tree(&root);
    std::fs::create_dir_all(root.join("train").join("emu")).unwrap();
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.use_cache = false;
    let err = data::load(&spec).unwrap_err().to_string();
    assert!(
        err.contains("emu") && err.contains("empty class folder"),
        "{err}"
    );
}

#[test]
fn synthetic_set_is_deterministic_and_balanced() {
    let a = data::load(&DataSpec::new("synthetic")).unwrap();
    let b = data::load(&DataSpec::new("synthetic")).unwrap();
    assert!(a.train.images.equal(&b.train.images));
    assert_eq!(a.train.images.size(), vec![10_000, 32, 32, 3]);
    let counts = a.train.labels.bincount(None::<tch::Tensor>, 10);
    assert_eq!(Vec::<i64>::try_from(counts).unwrap(), vec![1000; 10]);
}

/// Serves one file once over HTTP on a local port.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    download::hex(&md5::Md5::digest(bytes))
}

#[test]
fn download_verifies_md5_and_writes_atomically() {
    let dir = common::temp_dir("data-download");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    let remote = download::Remote {
        url: common::serve_once(body.clone()),
        file_name: "cifar-10-binary.tar.gz".into(),
        checksum: download::Checksum::Md5(md5_hex(&body)),
    };
    let path = download::fetch(&remote, &dir, false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "no temporary file is left behind: {names:?}"
    );
}

#[test]
fn download_with_wrong_checksum_leaves_no_file() {
    let dir = common::temp_dir("data-download-bad");
    let remote = download::Remote {
        url: common::serve_once(b"truncated".to_vec()),
        file_name: "cifar-10-binary.tar.gz".into(),
        checksum: download::Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530".into()),
    };
    let err = download::fetch(&remote, &dir, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch: expected c32a1d4ab5d03f1284b67883e8d87530"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn offline_download_says_where_to_put_the_file() {
    let dir = common::temp_dir("data-download-offline");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let remote = download::Remote {
        url: format!("http://127.0.0.1:{port}/cifar-10-binary.tar.gz"),
        file_name: "cifar-10-binary.tar.gz".into(),
        checksum: download::Checksum::Md5("c32a1d4ab5d03f1284b67883e8d87530".into()),
    };
    let err = download::fetch(&remote, &dir, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("could not download"), "{err}");
    assert!(
        err.contains(&dir.join("cifar-10-binary.tar.gz").display().to_string()),
        "{err}"
    );
}

#[test]
fn cached_archive_put_by_hand_is_verified() {
    let dir = shared_data_dir();
    std::fs::write(dir.join("cifar-100-binary.tar.gz"), b"half a download").unwrap();
    let err = data::load(&DataSpec::new("cifar100"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cifar-100-binary.tar.gz") && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn official_cifar_checksums_are_the_published_ones() {
    let r = download::cifar_remote("cifar10").unwrap();
    assert_eq!(
        r.url,
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    );
    assert!(
        matches!(r.checksum, download::Checksum::Md5(ref m) if m == "c32a1d4ab5d03f1284b67883e8d87530")
    );
}

#[test]
fn label_noise_flips_exactly_the_share_to_other_classes() {
    let labels: Vec<i64> = (0..200).map(|i| i % 10).collect();
    let split = data::Split {
        images: tch::Tensor::zeros([200, 1, 1, 1], (tch::Kind::Uint8, tch::Device::Cpu)),
        labels: tch::Tensor::from_slice(&labels),
    };
    let noisy = split.with_label_noise(0.2, 10, 7).unwrap().labels_vec();
    let changed = labels.iter().zip(&noisy).filter(|(a, b)| a != b).count();
    assert_eq!(changed, 40, "20% of 200, each to a different class");
    assert!(noisy.iter().all(|l| (0..10).contains(l)));
    assert_eq!(
        noisy,
        split.with_label_noise(0.2, 10, 7).unwrap().labels_vec()
    );
    assert_ne!(
        noisy,
        split.with_label_noise(0.2, 10, 8).unwrap().labels_vec()
    );
    let err = split.with_label_noise(1.5, 10, 7).unwrap_err().to_string();
    assert!(err.contains("label noise 1.5"), "{err}");
}
