//! Real users' image folders and data layouts (issue "Real users' files"): which files are
//! images, EXIF orientation, truncated JPEGs, train/test class agreement, evaluation on other
//! data by class name, format detection, torchvision's MNIST layout, tiny training sets.
mod common;

use convkit::config;
use convkit::data::{self, DataSpec, Format, folder, idx};
use convkit::train::{self, RunOptions};
use std::path::Path;
use std::process::Command;

fn write_rgb(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(colour))
        .save(path)
        .unwrap();
}

fn spec(root: &Path) -> DataSpec {
    let mut spec = DataSpec::new(root.to_str().unwrap());
    spec.use_cache = false;
    spec.image_size = 8;
    spec
}

/// Counts of each label in a split.
fn counts(labels: &[i64], classes: usize) -> Vec<usize> {
    (0..classes as i64)
        .map(|c| labels.iter().filter(|&&l| l == c).count())
        .collect()
}

/// A photo-like 64x64 JPEG (gradients and texture, so its entropy-coded data is long).
fn photo_jpeg(path: &Path) {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        let t = ((x * 7 + y * 13) % 31) as u8;
        image::Rgb([
            (x * 4) as u8 ^ t,
            (y * 4) as u8,
            ((x + y) * 2) as u8 ^ (t * 3),
        ])
    });
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

#[test]
fn extensions_any_case_subfolders_and_hidden_files() {
    let root = common::temp_dir("folders-kinds");
    for split in ["train", "test"] {
        let cat = root.join(split).join("cat");
        for i in 0..3 {
            write_rgb(&cat.join(format!("c{i}.Jpg")), 8, 8, [200, 0, 0]);
            write_rgb(&cat.join(format!("b{i}.bmp")), 8, 8, [200, 0, 0]);
        }
        for i in 0..2 {
            write_rgb(
                &cat.join("batch2").join(format!("p{i}.png")),
                8,
                8,
                [200, 0, 0],
            );
        }
        // A macOS companion file, Finder's metadata, a notebook's checkpoints and a note.
        std::fs::write(cat.join("._a.png"), b"\x00\x05\x16\x07 resource fork").unwrap();
        std::fs::write(cat.join(".DS_Store"), b"Bud1").unwrap();
        write_rgb(
            &cat.join(".ipynb_checkpoints").join("x.png"),
            8,
            8,
            [0, 0, 0],
        );
        std::fs::write(cat.join("notes.txt"), b"cats").unwrap();
        write_rgb(
            &root.join(split).join("dog").join("d.PNG"),
            8,
            8,
            [0, 200, 0],
        );
        write_rgb(
            &root.join(split).join("dog").join("e.ppm"),
            8,
            8,
            [0, 200, 0],
        );
        for name in ["f.TIF", "g.webp"] {
            write_rgb(&root.join(split).join("dog").join(name), 8, 8, [0, 200, 0]);
        }
        let gray = image::GrayImage::from_pixel(8, 8, image::Luma([90]));
        gray.save(root.join(split).join("dog").join("h.pgm"))
            .unwrap();
    }
    // A link back to the class folder itself must not loop.
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        root.join("train").join("cat"),
        root.join("train").join("cat").join("batch2").join("again"),
    )
    .unwrap();
    // An editor's lock file: a hidden link that leads nowhere.
    #[cfg(unix)]
    std::os::unix::fs::symlink("nowhere", root.join("train/dog/.#lock")).unwrap();
    let mut zero = spec(&root);
    zero.image_size = 0;
    let err = data::load(&zero).unwrap_err().to_string();
    assert!(err.contains("image size 0"), "{err}");
    let ds = data::load(&spec(&root)).unwrap();
    assert_eq!(ds.classes, vec!["cat", "dog"]);
    assert_eq!(counts(&ds.train.labels_vec(), 2), vec![8, 5]);
    assert_eq!(counts(&ds.test.labels_vec(), 2), vec![8, 5]);
    let notes = ds.notes.join("\n");
    // Per split: ._a.png and .DS_Store (hidden files), .ipynb_checkpoints, notes.txt; and
    // the lock link.
    assert!(
        notes.contains("5 hidden files")
            && notes.contains("2 hidden folders")
            && notes.contains("2 .txt")
            && notes.contains("1 repeated folders"),
        "{notes}"
    );
}

/// Pillow's `ImageOps.exif_transpose` is the reference: the test generator writes a 60x40
/// JPEG with EXIF orientation 6 (red top rows) and Pillow's upright decode of it as a PNG.
#[test]
fn exif_orientation_turns_photos_upright_as_pillow_does() {
    let dir = common::temp_dir("folders-exif");
    common::python(&[common::fixture("make_exif.py"), dir.clone().into()]);
    let ours = folder::decode_upright(&dir.join("sideways.jpg"))
        .unwrap()
        .to_rgb8();
    let pillow = image::open(dir.join("pillow_upright.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(ours.dimensions(), (40, 60));
    assert_eq!(pillow.dimensions(), (40, 60));
    // The red edge is on the right: the right column red, the left one not.
    let px = |x: u32, y: u32| ours.get_pixel(x, y).0;
    assert!(
        px(39, 30)[0] > 200 && px(39, 30)[1] < 60,
        "{:?}",
        px(39, 30)
    );
    assert!(px(0, 30)[0] < 100, "{:?}", px(0, 30));
    // Same pixels as Pillow's, up to the two JPEG decoders' rounding.
    let diff: f64 = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / ours.as_raw().len() as f64;
    assert!(diff < 2.0, "mean absolute difference {diff}");
}

#[test]
fn truncated_jpegs_are_errors_all_listed_or_skipped() {
    let root = common::temp_dir("folders-truncated");
    for split in ["train", "test"] {
        for c in ["a", "b"] {
            for i in 0..3 {
                photo_jpeg(&root.join(split).join(c).join(format!("{i}.jpg")));
            }
        }
    }
    let whole = root.join("train/a/0.jpg");
    let bytes = std::fs::read(&whole).unwrap();
    assert!(folder::jpeg_is_complete(&bytes));
    // Stray bytes between two segments, which libjpeg and Pillow skip, are no truncation.
    let mut stray = bytes[..2].to_vec();
    stray.extend_from_slice(&[0x00, 0x17]);
    stray.extend_from_slice(&bytes[2..]);
    assert!(folder::jpeg_is_complete(&stray));
    let mut cut = Vec::new();
    for name in ["train/a/1.jpg", "train/b/2.jpg", "test/b/0.jpg"] {
        let p = root.join(name);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() * 4 / 10]).unwrap();
        assert!(folder::decode_upright(&p).is_err(), "{name} decoded");
        cut.push(p);
    }
    let err = data::load(&spec(&root)).unwrap_err().to_string();
    assert!(err.contains("3 images do not decode"), "{err}");
    for p in &cut {
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
    assert!(
        err.contains("truncated") && err.contains("data.skip_broken"),
        "{err}"
    );
    let mut skip = spec(&root);
    skip.skip_broken = true;
    let ds = data::load(&skip).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (4, 5));
    assert_eq!(counts(&ds.train.labels_vec(), 2), vec![2, 2]);
    assert!(
        ds.notes
            .iter()
            .any(|n| n.contains("left out 3 broken images"))
    );
}

#[test]
fn test_classes_must_exist_in_train_and_test_folder_is_required() {
    let root = common::temp_dir("folders-classes");
    for (split, classes) in [("train", ["cat", "dog"]), ("test", ["cat", "owl"])] {
        for c in classes {
            write_rgb(&root.join(split).join(c).join("0.png"), 8, 8, [1, 2, 3]);
        }
    }
    let err = data::load(&spec(&root)).unwrap_err().to_string();
    assert!(
        err.contains("owl") && err.contains("no folder under") && err.contains("cat, dog"),
        "{err}"
    );
    // A test split without some training class is fine; val/ serves as the test split, also
    // beside an unlabelled test/ of loose images (as Kaggle leaves them).
    std::fs::remove_dir_all(root.join("test/owl")).unwrap();
    std::fs::rename(root.join("test"), root.join("val")).unwrap();
    write_rgb(&root.join("test/unlabelled.png"), 8, 8, [1, 2, 3]);
    let ds = data::load(&spec(&root)).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (2, 1));
    assert!(
        ds.notes.iter().any(|n| n.contains("val is the test split")),
        "{:?}",
        ds.notes
    );
    // test/ of loose images and no val/: said so.
    std::fs::rename(root.join("val"), root.join("elsewhere")).unwrap();
    let err = data::load(&spec(&root)).unwrap_err().to_string();
    assert!(err.contains("holds no class folders (unlabelled"), "{err}");
    std::fs::rename(root.join("elsewhere"), root.join("val")).unwrap();
    // train/ without any test folder: one sentence suggesting --val-split.
    std::fs::remove_dir_all(root.join("val")).unwrap();
    std::fs::remove_dir_all(root.join("test")).unwrap();
    let err = data::load(&spec(&root)).unwrap_err().to_string();
    assert!(
        err.contains("no test/") && err.contains("--val-split") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn format_detection_says_what_it_saw() {
    let root = common::temp_dir("folders-detect");
    std::fs::create_dir_all(root.join("cifar-10-batches-py")).unwrap();
    std::fs::write(root.join("cifar-10-batches-py/data_batch_1"), b"x").unwrap();
    std::fs::write(root.join("cifar-10-batches-py/readme.html"), b"x").unwrap();
    let err = data::detect_format(&root).unwrap_err().to_string();
    assert!(
        err.contains("1 folder (cifar-10-batches-py)")
            && err.contains("no images")
            && err.contains("Accepted layouts"),
        "{err}"
    );
    let empty = common::temp_dir("folders-detect-empty");
    let err = data::detect_format(&empty).unwrap_err().to_string();
    assert!(err.contains("the folder is empty"), "{err}");
    write_rgb(&root.join("images/cat/0.png"), 8, 8, [0, 0, 0]);
    assert_eq!(data::detect_format(&root).unwrap(), Format::Folder);
}

fn write_idx_set(dir: &Path, dotted: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let name = |stem: &str, kind: &str| match dotted {
        true => format!("{stem}.{kind}"),
        false => format!("{stem}-{kind}"),
    };
    let pixels: Vec<u8> = (0..4 * 28 * 28).map(|i| (i % 251) as u8).collect();
    for (stem, n) in [("train", 4u32), ("t10k", 2)] {
        let img = idx::encode(&[n, 28, 28], &pixels[..(n * 784) as usize]);
        std::fs::write(dir.join(name(&format!("{stem}-images"), "idx3-ubyte")), img).unwrap();
        let labels: Vec<u8> = (0..n as u8).collect();
        let lab = idx::encode(&[n], &labels);
        std::fs::write(dir.join(name(&format!("{stem}-labels"), "idx1-ubyte")), lab).unwrap();
    }
}

#[test]
fn mnist_as_torchvision_stores_it_and_dotted_names() {
    let root = common::temp_dir("folders-mnist");
    write_idx_set(&root.join("FashionMNIST/raw"), false);
    assert_eq!(data::detect_format(&root).unwrap(), Format::Idx);
    let ds = data::load(&spec(&root)).unwrap();
    assert_eq!(
        (ds.name.as_str(), ds.train.len(), ds.test.len()),
        ("fashion-mnist", 4, 2)
    );
    assert_eq!(ds.train.labels_vec(), vec![0, 1, 2, 3]);
    // Both of torchvision's roots in one folder: which one is meant is not guessed.
    write_idx_set(&root.join("MNIST/raw"), false);
    let err = data::load(&spec(&root)).unwrap_err().to_string();
    assert!(err.contains("both FashionMNIST/raw and MNIST/raw"), "{err}");
    let dotted = common::temp_dir("folders-mnist-dotted");
    write_idx_set(&dotted.join("MNIST/raw"), true);
    let ds = data::load(&spec(&dotted)).unwrap();
    assert_eq!((ds.name.as_str(), ds.test.len()), ("mnist", 2));
    let px = Vec::<u8>::try_from(ds.train.images.get(1).flatten(0, -1)).unwrap();
    assert_eq!(px[0], (784 % 251) as u8);
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args(args)
        .env("CONVKIT_DATA", common::temp_dir("folders-cache"))
        .output()
        .unwrap()
}

/// Solid colours per class, so a small CNN learns them perfectly.
fn colour_folder(root: &Path, classes: &[(&str, [u8; 3])], per_class: u32) {
    for split in ["train", "test"] {
        for (c, colour) in classes {
            for i in 0..per_class {
                let shade = colour.map(|v| v.saturating_sub((i * 3) as u8));
                write_rgb(
                    &root.join(split).join(c).join(format!("{i}.png")),
                    8,
                    8,
                    shade,
                );
            }
        }
    }
}

#[test]
fn eval_on_other_data_matches_classes_by_name() {
    let train_root = common::temp_dir("folders-eval-train");
    let (cat, dog, fox, owl) = ([220, 20, 20], [20, 220, 20], [20, 20, 220], [220, 220, 20]);
    colour_folder(&train_root, &[("cat", cat), ("dog", dog), ("fox", fox)], 20);
    let out = common::temp_dir("folders-eval-run");
    let overrides: Vec<String> = [
        format!("data.source=\"{}\"", train_root.display()),
        "data.image_size=8".into(),
        "model.name=\"cnn\"".into(),
        "train.epochs=4".into(),
        "train.batch_size=10".into(),
        "train.device=\"cpu\"".into(),
        "optim.lr=0.05".into(),
        "augment=[]".into(),
    ]
    .into();
    let s = train::run(
        config::load(None, &overrides).unwrap(),
        &out,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(s.test_accuracy, 1.0);
    // dog and fox only, in another order on disk: scored under the right names.
    let subset = common::temp_dir("folders-eval-subset");
    colour_folder(&subset, &[("dog", dog), ("fox", fox)], 5);
    let o = cli(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        subset.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("test accuracy 100.00%"), "{text}");
    assert!(
        text.contains("dog") && text.contains("fox") && !text.contains("cat"),
        "{text}"
    );
    // One class tree without train/: every image is scored.
    let flat = common::temp_dir("folders-eval-flat");
    for (c, colour) in [("fox", fox), ("dog", dog)] {
        for i in 0..4 {
            write_rgb(&flat.join(c).join(format!("{i}.jpg")), 8, 8, colour);
        }
    }
    let o = cli(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        flat.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("100.00%") && text.contains("(8 images)"),
        "{text}"
    );
    // A class the model does not know is an error naming it.
    let other = common::temp_dir("folders-eval-other");
    colour_folder(&other, &[("dog", dog), ("fox", fox), ("owl", owl)], 5);
    let o = cli(&[
        "eval",
        out.to_str().unwrap(),
        "--data",
        other.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("'owl'") && err.contains("cat, dog, fox"),
        "{err}"
    );
}

fn tiny_config(extra: &[&str]) -> convkit::config::Config {
    let mut o: Vec<String> = vec![
        "data.source=\"synthetic\"".into(),
        "data.test_limit=40".into(),
        "model.name=\"resnet18\"".into(),
        "model.stem=\"imagenet\"".into(),
        "train.epochs=1".into(),
        "train.batch_size=8".into(),
        "train.drop_last=false".into(),
        "train.device=\"cpu\"".into(),
        "augment=[]".into(),
    ];
    o.extend(extra.iter().map(|s| s.to_string()));
    config::load(None, &o).unwrap()
}

#[test]
fn a_last_batch_of_one_is_dropped_and_batchnorm_stays_finite() {
    let out = common::temp_dir("folders-bn");
    let s = train::run(
        tiny_config(&["data.train_limit=17"]),
        &out,
        &RunOptions::default(),
    )
    .unwrap();
    assert!(s.test_loss.is_finite(), "{}", s.test_loss);
    let ck = convkit::weights::checkpoint::read(&out).unwrap();
    let running: Vec<(String, tch::Tensor)> = ck
        .section("model")
        .into_iter()
        .filter(|(n, _)| n.contains("running_"))
        .collect();
    assert!(running.len() >= 40);
    for (n, t) in &running {
        assert!(
            t.isfinite().all().int64_value(&[]) == 1,
            "{n} holds a non-finite value"
        );
    }
    let err = train::run(
        tiny_config(&["data.train_limit=1"]),
        &common::temp_dir("folders-bn-one"),
        &RunOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("holds 1 image") && err.contains("train_limit"),
        "{err}"
    );
}

#[test]
fn lr_find_cycles_through_small_data() {
    let out = common::temp_dir("folders-lrfind");
    let mut cfg = tiny_config(&["data.train_limit=20", "model.name=\"cnn\""]);
    cfg.train.batch_size = 128;
    let spec = convkit::train::lr_find::SweepSpec {
        start: 1e-5,
        end: 1e-2,
        steps: 30,
    };
    let r = convkit::train::lr_find::run(cfg, &spec, &out, false).unwrap();
    assert_eq!(r.losses.len(), 30);
    assert!(r.suggested_lr > 1e-5, "{}", r.suggested_lr);
}

#[test]
fn defaults_fit_the_data_and_the_run_records_them() {
    use convkit::augment::{Aug, policy_for};
    let crop = |pad| Aug::Crop {
        pad,
        reflect: false,
    };
    assert_eq!(policy_for(true, 28, "mnist").0, vec![crop(2)]);
    assert_eq!(
        policy_for(true, 28, "fashion-mnist").0,
        vec![crop(2), Aug::Flip]
    );
    assert_eq!(policy_for(false, 32, "cifar10").0, vec![crop(4), Aug::Flip]);
    assert_eq!(policy_for(false, 64, "pets").0, vec![crop(8), Aug::Flip]);
    assert!(matches!(
        policy_for(false, 224, "pets").0[0],
        Aug::ResizedCrop { .. }
    ));
    // Digits at 224 px (resized for ImageNet weights) or repeated to RGB stay unflipped.
    assert_eq!(policy_for(true, 224, "digits").0, vec![crop(16)]);
    let gray_rgb = tch::Tensor::from_slice(&[7u8, 7, 7, 200, 200, 200]).reshape([1, 1, 2, 3]);
    let colour = tch::Tensor::from_slice(&[7u8, 7, 8, 200, 200, 200]).reshape([1, 1, 2, 3]);
    assert!(convkit::augment::is_grayscale(&gray_rgb));
    assert!(!convkit::augment::is_grayscale(&colour));
    // No recipe, digits: no flip, written into the run's config.toml.
    let root = common::temp_dir("folders-defaults");
    write_idx_set(&root.join("MNIST/raw"), false);
    let run = common::temp_dir("folders-defaults-run");
    let o = Command::new(env!("CARGO_BIN_EXE_convkit"))
        .args([
            "train", "--model", "cnn", "--epochs", "1", "--device", "cpu", "--data",
        ])
        .arg(&root)
        .arg("--out")
        .arg(&run)
        .env("CONVKIT_DATA", common::temp_dir("folders-defaults-cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("recipe: defaults")
            && err.contains("augment crop:2 (from the data: grayscale"),
        "{err}"
    );
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("augment = [\"crop:2\"]"), "{saved}");
    // A recipe's own augmentation is kept.
    let cfg = config::load(Some("cifar10-fast-cpu"), &[]).unwrap();
    assert!(!cfg.provenance.augment_from_data);
}
