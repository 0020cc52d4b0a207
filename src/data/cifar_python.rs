//! CIFAR-10 and CIFAR-100 in the "python version" (what `torchvision.datasets.CIFAR10(root,
//! download=True)` leaves on disk): `cifar-10-batches-py/` (`data_batch_1`..`5`, `test_batch`,
//! `batches.meta`) and `cifar-100-python/` (`train`, `test`, `meta`), or their archives
//! `cifar-10-python.tar.gz` / `cifar-100-python.tar.gz`.
//!
//! Each batch is a pickle of a dict holding `data`, a uint8 numpy array `[N, 3072]` (R plane,
//! G plane, B plane, 32x32 each, as the binary version), and `labels` (CIFAR-10) or
//! `fine_labels` (CIFAR-100), a list of ints. The original files are Python 2 pickles, so keys
//! and raw bytes are Python 2 strings (read as bytes, as torchvision's `encoding='latin1'`);
//! files re-pickled by Python 3 use `str` keys. They are read with the safe pickle reader
//! ([`crate::pickle`]): the numpy arrays are read as data, nothing is imported or called.

use super::cifar::{self, CIFAR10_CLASSES, Variant};
use super::{DataError, Dataset, Result, Split};
use crate::pickle::{self, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

const PIXELS: usize = 3 * 32 * 32;
const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
];

/// Finds the folder of python batches: `dir` itself, or its `cifar-10-batches-py` /
/// `cifar-100-python` child.
pub fn find(dir: &Path) -> Option<(PathBuf, Variant)> {
    for c in [
        dir.to_path_buf(),
        dir.join("cifar-10-batches-py"),
        dir.join("cifar-100-python"),
    ] {
        if c.join("data_batch_1").is_file() && c.join("test_batch").is_file() {
            return Some((c, Variant::Cifar10));
        }
        if c.join("train").is_file() && c.join("test").is_file() && c.join("meta").is_file() {
            return Some((c, Variant::Cifar100));
        }
    }
    None
}

/// Whether a file is one of the published python-version archives (by its name).
pub fn is_archive(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.starts_with("cifar-10-python") || name.starts_with("cifar-100-python"))
        && (name.ends_with(".tar.gz") || name.ends_with(".tgz"))
}

fn wanted(name: &str) -> bool {
    CIFAR10_TRAIN.contains(&name)
        || ["test_batch", "batches.meta", "train", "test", "meta"].contains(&name)
}

/// Loads CIFAR-10/100 python batches from a folder (the batches' folder or its parent) or a
/// `.tar.gz` archive. Images come out as u8 `[N, 32, 32, 3]`, in the same order and with the
/// same class names as [`super::cifar::load`] gives for the binary version.
///
/// # Errors
/// Missing batch files, a damaged archive, a pickle that is refused or is not a CIFAR batch
/// (`data` not a uint8 `[N, 3072]` array, a label count that differs from N); every error names
/// the file.
pub fn load(path: &Path) -> Result<Dataset> {
    let (files, source) = if path.is_dir() {
        let (dir, variant) = find(path).ok_or_else(|| {
            DataError::format(
                path,
                "no CIFAR python batches (data_batch_1 + test_batch, or train + test + meta)",
            )
        })?;
        let mut files = HashMap::new();
        let names: Vec<&str> = match variant {
            Variant::Cifar10 => CIFAR10_TRAIN
                .iter()
                .copied()
                .chain(["test_batch", "batches.meta"])
                .collect(),
            Variant::Cifar100 => vec!["train", "test", "meta"],
        };
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                files.insert(
                    name.to_string(),
                    std::fs::read(&p).map_err(|e| DataError::io(&p, e))?,
                );
            }
        }
        (files, dir)
    } else {
        (cifar::read_archive(path, wanted)?, path.to_path_buf())
    };
    let variant = if files.contains_key("train") {
        Variant::Cifar100
    } else {
        Variant::Cifar10
    };
    let (train_names, test_name, meta_name): (Vec<&str>, &str, &str) = match variant {
        Variant::Cifar10 => (CIFAR10_TRAIN.to_vec(), "test_batch", "batches.meta"),
        Variant::Cifar100 => (vec!["train"], "test", "meta"),
    };
    let batch = |name: &str| -> Result<Split> {
        let bytes = files
            .get(name)
            .ok_or_else(|| DataError::format(&source, format!("missing CIFAR file {name}")))?;
        parse_batch(bytes).map_err(|p| DataError::format(&source.join(name), p))
    };
    let parts: Vec<Split> = train_names
        .iter()
        .map(|n| batch(n))
        .collect::<Result<_>>()?;
    let train = Split {
        images: Tensor::cat(&parts.iter().map(|s| &s.images).collect::<Vec<_>>(), 0),
        labels: Tensor::cat(&parts.iter().map(|s| &s.labels).collect::<Vec<_>>(), 0),
    };
    let test = batch(test_name)?;
    let classes = match files.get(meta_name) {
        Some(bytes) => class_names(bytes, variant)
            .map_err(|p| DataError::format(&source.join(meta_name), p))?,
        None => match variant {
            Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            Variant::Cifar100 => (0..100).map(|i| format!("class{i}")).collect(),
        },
    };
    let name = match variant {
        Variant::Cifar10 => "cifar10",
        Variant::Cifar100 => "cifar100",
    };
    Dataset::new(name, classes, train, test, &source)
}

fn dict_value(root: &Value, keys: &[&str]) -> std::result::Result<Value, String> {
    keys.iter()
        .find_map(|k| root.get(k))
        .ok_or_else(|| format!("the batch has no '{}' entry", keys[0]))
}

/// One batch: `{'data': uint8 [N, 3072], 'labels' | 'fine_labels': [N ints], ...}` ->
/// NHWC images and labels.
fn parse_batch(bytes: &[u8]) -> std::result::Result<Split, String> {
    let root = pickle::load(bytes).map_err(|e| e.to_string())?;
    if !matches!(root, Value::Dict(_)) {
        return Err(format!(
            "not a CIFAR batch: the pickle holds {}",
            root.describe()
        ));
    }
    let data = dict_value(&root, &["data"])?
        .ndarray()
        .map_err(|e| format!("'data': {e}"))?;
    let n = data.shape.first().copied().unwrap_or(0);
    if data.shape.iter().skip(1).product::<usize>() != PIXELS || data.shape.len() < 2 {
        return Err(format!(
            "'data' has shape {:?}, expected [N, {PIXELS}]",
            data.shape
        ));
    }
    let pixels = data.as_u8_array().map_err(|e| format!("'data': {e}"))?;
    let labels = dict_value(&root, &["fine_labels", "labels"])?
        .as_i64_list()
        .map_err(|e| format!("labels: {e}"))?;
    if labels.len() != n {
        return Err(format!("{} labels for {n} images", labels.len()));
    }
    Ok(cifar::planar_split(&pixels, &labels))
}

fn class_names(bytes: &[u8], variant: Variant) -> std::result::Result<Vec<String>, String> {
    let root = pickle::load(bytes).map_err(|e| e.to_string())?;
    let key = match variant {
        Variant::Cifar10 => "label_names",
        Variant::Cifar100 => "fine_label_names",
    };
    dict_value(&root, &[key])?
        .items()
        .ok_or_else(|| format!("'{key}' is not a list"))?
        .iter()
        .map(|v| {
            v.as_text()
                .ok_or_else(|| format!("'{key}' holds {}", v.describe()))
        })
        .collect()
}
