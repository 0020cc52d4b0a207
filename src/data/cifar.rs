//! CIFAR-10 and CIFAR-100 in the official binary format, from a folder or straight from the
//! published `.tar.gz`.
//!
//! CIFAR-10 records are 1 label byte + 3072 pixel bytes (R plane, G plane, B plane, 32x32 each);
//! CIFAR-100 records carry a coarse and a fine label byte first (we use the fine label).

use super::{DataError, Dataset, Result, Split};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const PIXELS: usize = 3 * 32 * 32;
/// The largest archive entry read: CIFAR-100's train.bin is 50,000 x 3,074 bytes.
const MAX_ENTRY: u64 = 160_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn record_len(self) -> usize {
        match self {
            Variant::Cifar10 => PIXELS + 1,
            Variant::Cifar100 => PIXELS + 2,
        }
    }
    fn train_files(self) -> Vec<&'static str> {
        match self {
            Variant::Cifar10 => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            Variant::Cifar100 => vec!["train.bin"],
        }
    }
    fn test_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "test_batch.bin",
            Variant::Cifar100 => "test.bin",
        }
    }
    fn names_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "batches.meta.txt",
            Variant::Cifar100 => "fine_label_names.txt",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar10",
            Variant::Cifar100 => "cifar100",
        }
    }
}

/// Finds the folder holding CIFAR batch files (the folder itself or the archive's subfolder).
pub fn find_batches(dir: &Path) -> Option<(PathBuf, Variant)> {
    let candidates = [
        dir.to_path_buf(),
        dir.join("cifar-10-batches-bin"),
        dir.join("cifar-100-binary"),
    ];
    for c in candidates {
        if c.join("data_batch_1.bin").exists() {
            return Some((c, Variant::Cifar10));
        }
        if c.join("train.bin").exists() && c.join("test.bin").exists() {
            return Some((c, Variant::Cifar100));
        }
    }
    None
}

/// Loads CIFAR from a folder, a `.tar.gz` archive, or a single batch `.bin` (used as both splits).
pub fn load(path: &Path) -> Result<Dataset> {
    let files = if path.is_dir() {
        read_folder(path)?
    } else if path.extension().is_some_and(|e| e == "bin") {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        HashMap::from([(name, bytes)])
    } else {
        read_archive(path, |n| n.ends_with(".bin") || n.ends_with(".txt"))?
    };
    assemble(path, files)
}

fn read_folder(dir: &Path) -> Result<HashMap<String, Vec<u8>>> {
    let (batch_dir, variant) = find_batches(dir).ok_or_else(|| {
        DataError::format(dir, "no CIFAR batch files (data_batch_1.bin or train.bin)")
    })?;
    let mut files = HashMap::new();
    let mut names = variant.train_files();
    names.push(variant.test_file());
    names.push(variant.names_file());
    for name in names {
        let p = batch_dir.join(name);
        if p.exists() {
            let bytes = std::fs::read(&p).map_err(|e| DataError::io(&p, e))?;
            files.insert(name.to_string(), bytes);
        }
    }
    Ok(files)
}

/// The files of a CIFAR `.tar.gz` whose names `wanted` accepts (by file name, folders
/// dropped), each entry capped at the largest CIFAR file, and the gzip stream read to its end
/// so that its CRC and length are checked: a flipped byte in the deflate data is an error, not
/// silently different pixels. Used by the binary and the python versions.
///
/// # Errors
/// An unreadable or damaged archive, or an entry declaring more than [`MAX_ENTRY`] bytes.
pub(super) fn read_archive(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |e: std::io::Error| DataError::format(path, format!("not a readable .tar.gz: {e}"));
    let mut files = HashMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry
            .path()
            .map_err(bad)?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if !wanted(&name) || !entry.header().entry_type().is_file() {
            continue;
        }
        // The largest CIFAR file is a 50,000-record train.bin (153 MB): an entry declaring more
        // is not CIFAR, and is refused before anything is allocated for it.
        if entry.size() > MAX_ENTRY {
            return Err(DataError::format(
                path,
                format!(
                    "archive entry {name} declares {} bytes: not a CIFAR file",
                    entry.size()
                ),
            ));
        }
        let mut bytes = Vec::new();
        (&mut entry)
            .take(MAX_ENTRY)
            .read_to_end(&mut bytes)
            .map_err(bad)?;
        files.insert(name, bytes);
    }
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(bad)?;
    Ok(files)
}

fn assemble(source: &Path, files: HashMap<String, Vec<u8>>) -> Result<Dataset> {
    let single = files.len() == 1 && files.keys().all(|k| k.ends_with(".bin"));
    let variant = if files.contains_key("train.bin") {
        Variant::Cifar100
    } else {
        Variant::Cifar10
    };
    let file_error = |name: &str, problem: String| DataError::format(&source.join(name), problem);
    let parse_named = |name: &str| -> Result<Split> {
        let bytes = files
            .get(name)
            .ok_or_else(|| DataError::format(source, format!("missing CIFAR file {name}")))?;
        parse_records(bytes, variant).map_err(|p| file_error(name, p))
    };
    let (train, test) = if single {
        let (name, bytes) = files.iter().next().unwrap();
        let split = parse_records(bytes, variant).map_err(|p| file_error(name, p))?;
        let copy = Split {
            images: split.images.shallow_clone(),
            labels: split.labels.shallow_clone(),
        };
        (split, copy)
    } else {
        let parts: Vec<Split> = variant
            .train_files()
            .iter()
            .map(|n| parse_named(n))
            .collect::<Result<_>>()?;
        let train = Split {
            images: Tensor::cat(&parts.iter().map(|s| &s.images).collect::<Vec<_>>(), 0),
            labels: Tensor::cat(&parts.iter().map(|s| &s.labels).collect::<Vec<_>>(), 0),
        };
        (train, parse_named(variant.test_file())?)
    };
    let classes = class_names(source, &files, variant)?;
    Dataset::new(variant.name(), classes, train, test, source)
}

/// The class names from the archive's names file, or the standard ones when it has none.
///
/// # Errors
/// A names file that does not list exactly the variant's number of classes (10 or 100).
fn class_names(
    source: &Path,
    files: &HashMap<String, Vec<u8>>,
    variant: Variant,
) -> Result<Vec<String>> {
    let expected = match variant {
        Variant::Cifar10 => 10,
        Variant::Cifar100 => 100,
    };
    let Some(bytes) = files.get(variant.names_file()) else {
        return Ok(match variant {
            Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
            Variant::Cifar100 => (0..100).map(|i| format!("class{i}")).collect(),
        });
    };
    // Only the first lines are looked at: a names file of millions of lines is not one.
    let listed: Vec<String> = String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 16)])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .take(expected + 1)
        .collect();
    if listed.len() != expected {
        return Err(DataError::format(
            &source.join(variant.names_file()),
            format!(
                "lists {}{} class names; {} has {expected}",
                listed.len(),
                if listed.len() > expected {
                    " or more"
                } else {
                    ""
                },
                variant.name()
            ),
        ));
    }
    Ok(listed)
}

/// Parses a batch file's records into NHWC images and labels.
pub fn parse_records(bytes: &[u8], variant: Variant) -> std::result::Result<Split, String> {
    let rec = variant.record_len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(format!(
            "size {} bytes is not a whole number of {rec}-byte CIFAR records",
            bytes.len()
        ));
    }
    let n = bytes.len() / rec;
    let label_at = rec - PIXELS - 1;
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * PIXELS);
    for r in bytes.chunks_exact(rec) {
        labels.push(r[label_at] as i64);
        pixels.extend_from_slice(&r[rec - PIXELS..]);
    }
    Ok(planar_split(&pixels, &labels))
}

/// A split from CIFAR's planar pixels (per image: the R, G and B 32x32 planes) and labels;
/// images are kept as HWC. `pixels.len()` is `3072 * labels.len()` (both readers check it).
pub(super) fn planar_split(pixels: &[u8], labels: &[i64]) -> Split {
    let images = Tensor::from_slice(pixels)
        .reshape([labels.len() as i64, 3, 32, 32])
        .permute([0, 2, 3, 1])
        .contiguous();
    Split {
        images,
        labels: Tensor::from_slice(labels),
    }
}

/// Encodes images and labels as CIFAR-10 records (for tests and for writing subsets).
pub fn encode_records(images_nhwc: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * (PIXELS + 1));
    for (i, &label) in labels.iter().enumerate() {
        out.push(label);
        let img = &images_nhwc[i * PIXELS..(i + 1) * PIXELS];
        for c in 0..3 {
            out.extend((0..1024).map(|p| img[p * 3 + c]));
        }
    }
    out
}
