//! Data sets: every source (CIFAR binary, image folders, IDX, synthetic) becomes the same
//! in-memory form, u8 images `[N, H, W, C]` plus i64 labels and class names, decoded once and
//! cached on disk.

pub mod cache;
pub mod cifar;
pub mod cifar_python;
pub mod download;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod synthetic;

use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Everything that can go wrong while reading data; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // Not a `#[source]`: the text already holds the io error, and a chained source would print
    // it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("{0}")]
    Other(String),
}

impl From<std::io::Error> for DataError {
    fn from(e: std::io::Error) -> Self {
        DataError::Other(e.to_string())
    }
}

impl DataError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
    pub fn format(path: &Path, problem: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// One split of a data set, kept on the host as u8 so that a whole CIFAR fits in 180 MB.
#[derive(Debug)]
pub struct Split {
    /// u8 `[N, H, W, C]`.
    pub images: Tensor,
    /// i64 `[N]`, each in `0..classes.len()`.
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> usize {
        self.images.size()[0] as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[C, H, W]` of one image.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[3], s[1], s[2]]
    }
    /// The same tensors, shared (nothing is copied).
    pub fn share(&self) -> Split {
        Split {
            images: self.images.shallow_clone(),
            labels: self.labels.shallow_clone(),
        }
    }
    /// The first `n` images (or all of them): deterministic subsets for quick runs.
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len()) as i64;
        Split {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
        }
    }
    /// The images whose index is listed.
    pub fn select(&self, index: &[i64]) -> Split {
        let idx = Tensor::from_slice(index);
        Split {
            images: self.images.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
        }
    }
    pub fn labels_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.labels).unwrap_or_default()
    }
    /// The images of the listed classes, relabelled `0..keep.len()` in the order given.
    pub fn keep_classes(&self, keep: &[i64]) -> Split {
        let labels = self.labels_vec();
        let (index, new): (Vec<i64>, Vec<i64>) = labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let pos = keep.iter().position(|k| k == l)?;
                Some((i as i64, pos as i64))
            })
            .unzip();
        Split {
            images: self.images.index_select(0, &Tensor::from_slice(&index)),
            labels: Tensor::from_slice(&new),
        }
    }
    /// The same images with `round(fraction * N)` labels, chosen at random, replaced by a
    /// different class drawn uniformly (symmetric label noise, reproducible from `seed`).
    pub fn with_label_noise(&self, fraction: f64, classes: i64, seed: u64) -> Result<Split> {
        if !(0.0..=1.0).contains(&fraction) || classes < 2 {
            return Err(DataError::Other(format!(
                "label noise {fraction} must be within 0..1 and needs at least 2 classes (have {classes})"
            )));
        }
        use rand::{Rng, SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut labels = self.labels_vec();
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(&mut rng);
        let flips = (fraction * labels.len() as f64).round() as usize;
        for &i in &order[..flips] {
            labels[i] = (labels[i] + rng.random_range(1..classes)) % classes;
        }
        Ok(Split {
            images: self.images.shallow_clone(),
            labels: Tensor::from_slice(&labels),
        })
    }
    /// The same images with every label `l` replaced by `map[l]` (another class numbering).
    pub fn relabel(&self, map: &[i64]) -> Split {
        Split {
            images: self.images.shallow_clone(),
            labels: Tensor::from_slice(map).index_select(0, &self.labels),
        }
    }
    /// The first `n` images of every class (in the split's fixed order): small labelled budgets.
    pub fn per_class(&self, n: usize) -> Split {
        let mut seen = std::collections::HashMap::new();
        let index: Vec<i64> = self
            .labels_vec()
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let c = seen.entry(**l).or_insert(0usize);
                *c += 1;
                *c <= n
            })
            .map(|(i, _)| i as i64)
            .collect();
        self.select(&index)
    }
}

/// A data set with train and test splits, class names and normalisation statistics.
#[derive(Debug)]
pub struct Dataset {
    pub name: String,
    pub classes: Vec<String>,
    pub train: Split,
    pub test: Split,
    /// Per-channel mean and std of the training images, in [0, 1] units.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// What the reader passed over or changed (skipped files, broken images left out), for the
    /// start of a run and `data info` to print: nothing disappears without a word.
    pub notes: Vec<String>,
}

impl Dataset {
    /// The same data set, its tensors shared (nothing is copied).
    pub fn share(&self) -> Dataset {
        Dataset {
            name: self.name.clone(),
            classes: self.classes.clone(),
            train: self.train.share(),
            test: self.test.share(),
            mean: self.mean.clone(),
            std: self.std.clone(),
            notes: self.notes.clone(),
        }
    }
    /// Builds a data set, checking labels and computing the channel statistics.
    pub fn new(
        name: &str,
        classes: Vec<String>,
        train: Split,
        test: Split,
        source: &Path,
    ) -> Result<Self> {
        for (split, what) in [(&train, "train"), (&test, "test")] {
            check_labels(split, classes.len(), source, what)?;
        }
        if train.is_empty() {
            return Err(DataError::format(
                source,
                "the training split holds no images",
            ));
        }
        if !test.is_empty() && test.image_shape() != train.image_shape() {
            return Err(DataError::format(
                source,
                format!(
                    "training images are {:?} (channels, height, width) but test images {:?}",
                    train.image_shape(),
                    test.image_shape()
                ),
            ));
        }
        let (mean, std) = channel_stats(&train.images);
        Ok(Dataset {
            name: name.to_string(),
            classes,
            train,
            test,
            mean,
            std,
            notes: Vec::new(),
        })
    }

    pub fn channels(&self) -> i64 {
        self.train.image_shape()[0]
    }

    /// Repeats a grayscale set to 3 channels (for models with an RGB stem).
    pub fn to_rgb(mut self) -> Self {
        if self.channels() == 1 {
            self.train.images = self.train.images.repeat([1, 1, 1, 3]);
            self.test.images = self.test.images.repeat([1, 1, 1, 3]);
            self.mean = vec![self.mean[0]; 3];
            self.std = vec![self.std[0]; 3];
        }
        self
    }

    /// Keeps only the named classes (in the order given), relabelled from 0.
    pub fn keep_classes(mut self, names: &[String]) -> Result<Self> {
        let mut keep = Vec::new();
        for n in names {
            let i = self.classes.iter().position(|c| c == n).ok_or_else(|| {
                DataError::Other(format!(
                    "data set {} has no class '{n}'; its classes: {}",
                    self.name,
                    self.classes.join(", ")
                ))
            })?;
            keep.push(i as i64);
        }
        self.train = self.train.keep_classes(&keep);
        self.test = self.test.keep_classes(&keep);
        self.classes = names.to_vec();
        Ok(self)
    }

    /// Keeps the first `n` training images (the order is already shuffled per source).
    pub fn limit_train(mut self, n: Option<usize>) -> Self {
        if let Some(n) = n {
            self.train = self.train.take(n);
        }
        self
    }
}

/// For each of the data's classes, the index of the class of the same name among a model's
/// classes: evaluating a model on other data matches classes by name, never by position.
///
/// # Errors
/// A data class the model does not know, named with the model's classes.
pub fn class_map(data_classes: &[String], model_classes: &[String]) -> Result<Vec<i64>> {
    data_classes
        .iter()
        .map(|c| {
            model_classes
                .iter()
                .position(|m| m == c)
                .map(|i| i as i64)
                .ok_or_else(|| {
                    DataError::Other(format!(
                        "the data has a class '{c}' that the model does not know (the model's \
                         classes: {})",
                        model_classes.join(", ")
                    ))
                })
        })
        .collect()
}

fn check_labels(split: &Split, classes: usize, source: &Path, what: &str) -> Result<()> {
    if split.is_empty() {
        return Ok(());
    }
    let max = split.labels.max().int64_value(&[]);
    let min = split.labels.min().int64_value(&[]);
    if min < 0 || max >= classes as i64 {
        return Err(DataError::format(
            source,
            format!(
                "{what} split has label {} outside the class range 0..{}",
                if min < 0 { min } else { max },
                classes
            ),
        ));
    }
    Ok(())
}

/// Per-channel mean and standard deviation of u8 NHWC images, in [0, 1] units.
pub fn channel_stats(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let c = images.size()[3];
    if images.numel() > STATS_AT_ONCE {
        return channel_stats_chunked(images);
    }
    let flat = images.reshape([-1, c]).to_kind(Kind::Double) / 255.0;
    let mean = Vec::<f64>::try_from(flat.mean_dim(0, false, Kind::Double)).unwrap_or_default();
    let std = Vec::<f64>::try_from(flat.std_dim(0, false, false)).unwrap_or_default();
    (mean, std)
}

/// Values whose statistics are computed in one f64 tensor (1 GiB); larger sets go in chunks,
/// so that memory stays in proportion to the u8 images themselves.
const STATS_AT_ONCE: usize = 1 << 27;

/// [`channel_stats`] from per-chunk sums and sums of squares (f64), for very large sets.
fn channel_stats_chunked(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let s = images.size();
    let c = s[3] as usize;
    let per_image = (s[1] * s[2] * s[3]).max(1);
    let chunk = (STATS_AT_ONCE as i64 / per_image).max(1);
    let (mut sum, mut sq) = (vec![0.0f64; c], vec![0.0f64; c]);
    let mut from = 0;
    while from < s[0] {
        let len = chunk.min(s[0] - from);
        let flat = images
            .narrow(0, from, len)
            .reshape([-1, c as i64])
            .to_kind(Kind::Double)
            / 255.0;
        let add = |acc: &mut [f64], t: Tensor| {
            let v = Vec::<f64>::try_from(t).unwrap_or_default();
            acc.iter_mut().zip(v).for_each(|(a, x)| *a += x);
        };
        add(&mut sum, flat.sum_dim_intlist(0, false, Kind::Double));
        add(
            &mut sq,
            flat.square().sum_dim_intlist(0, false, Kind::Double),
        );
        from += len;
    }
    let n = (images.numel() / c) as f64;
    let mean: Vec<f64> = sum.iter().map(|x| x / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

/// Which reader a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// CIFAR-10/100 binary version (`data_batch_*.bin`, `train.bin`).
    #[serde(alias = "cifar", alias = "cifar10", alias = "cifar100")]
    CifarBinary,
    /// CIFAR-10/100 python version (pickled batches).
    CifarPython,
    /// Image folders, one folder per class (torchvision's `ImageFolder`).
    #[serde(alias = "images")]
    Folder,
    /// IDX files (MNIST, Fashion-MNIST).
    #[serde(alias = "mnist")]
    Idx,
    Synthetic,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cifar" | "cifar-binary" | "cifar10" | "cifar100" => Ok(Format::CifarBinary),
            "cifar-python" => Ok(Format::CifarPython),
            "folder" | "images" => Ok(Format::Folder),
            "idx" | "mnist" => Ok(Format::Idx),
            "synthetic" => Ok(Format::Synthetic),
            other => Err(format!(
                "unknown data format '{other}' (expected cifar-binary, cifar-python, folder, idx or synthetic)"
            )),
        }
    }
}

/// How to read a data source.
#[derive(Debug, Clone)]
pub struct DataSpec {
    /// A path, or `synthetic`, or `cifar10` / `cifar100` (looked up in the data cache).
    pub source: String,
    pub format: Option<Format>,
    /// Side of the square images folders are resized and centre-cropped to.
    pub image_size: u32,
    /// For a single image folder without train/test: fraction held out for testing.
    pub val_split: f64,
    /// Use the on-disk decode cache (folders and IDX).
    pub use_cache: bool,
    /// Image folders: leave out files that do not decode (listed in a warning) instead of
    /// failing.
    pub skip_broken: bool,
}

impl DataSpec {
    pub fn new(source: &str) -> Self {
        DataSpec {
            source: source.to_string(),
            format: None,
            image_size: 32,
            val_split: 0.1,
            use_cache: true,
            skip_broken: false,
        }
    }
}

/// The folder for downloads and decode caches: `$CONVKIT_DATA`, else the user's cache directory.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONVKIT_DATA") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("convkit")
}

/// Resolves a data source to a path and a format.
pub fn resolve(spec: &DataSpec) -> Result<(PathBuf, Format)> {
    if spec.source == "synthetic" {
        return Ok((PathBuf::from("synthetic"), Format::Synthetic));
    }
    let path = match spec.source.as_str() {
        "cifar10" | "cifar100" => {
            let archive = download::cached_archive(&spec.source).ok_or_else(|| {
                DataError::Other(format!(
                    "{} is not in the data cache {}; run `convkit data download {}`",
                    spec.source,
                    data_dir().display(),
                    spec.source
                ))
            })?;
            // A file put there by hand is checked against the published checksum.
            let remote = download::cifar_remote(&spec.source).expect("known name");
            download::verify(&archive, &remote.checksum)?;
            archive
        }
        other => PathBuf::from(other),
    };
    if !path.exists() {
        return Err(DataError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let format = match spec.format {
        Some(f) => f,
        None => detect_format(&path)?,
    };
    Ok((path, format))
}

/// Guesses the format from the file names a source holds.
pub fn detect_format(path: &Path) -> Result<Format> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if path.is_file() {
        if cifar_python::is_archive(path) {
            return Ok(Format::CifarPython);
        }
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".bin") {
            return Ok(Format::CifarBinary);
        }
        return Err(DataError::format(
            path,
            "cannot tell the data format of this file (expected a CIFAR .tar.gz or .bin); pass --format",
        ));
    }
    if cifar::find_batches(path).is_some() {
        return Ok(Format::CifarBinary);
    }
    if cifar_python::find(path).is_some() {
        return Ok(Format::CifarPython);
    }
    if idx::find_files(path).is_ok() || idx::ambiguous(path) {
        return Ok(Format::Idx);
    }
    if folder::holds_class_images(path) {
        return Ok(Format::Folder);
    }
    Err(DataError::format(
        path,
        format!(
            "not a data set convkit can read: found {}.\nAccepted layouts: an image folder \
             (train/<class>/*.jpg and test/<class>/..., or <class>/*.jpg with --val-split), \
             CIFAR-10/100 binary (cifar-10-batches-bin/, cifar-100-binary/ or their .tar.gz), \
             CIFAR-10/100 python (cifar-10-batches-py/, cifar-100-python/ or their .tar.gz), \
             MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] ..., also under \
             MNIST/raw/ or FashionMNIST/raw/); pass --format to choose one",
            describe_contents(path)
        ),
    ))
}

use crate::util::plural;

/// What a folder holds, for an error: `2 folders (a, b) holding 5 .gz files, 1 .txt file`.
fn describe_contents(dir: &Path) -> String {
    let mut folders = Vec::new();
    let mut files = folder::Skipped::default();
    let mut count = |p: &Path| {
        let kind = p
            .extension()
            .map(|e| format!(".{} files", e.to_string_lossy().to_lowercase()))
            .unwrap_or_else(|| "files without extension".into());
        *files.0.entry(kind).or_insert(0) += 1;
    };
    // Files up to three levels down (root/train/cat/x.csv), at most 100,000 entries: enough to
    // say what is there without walking a whole disk.
    let mut pending = vec![(dir.to_path_buf(), 0)];
    let mut budget = 100_000usize;
    while let Some((d, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            budget = budget.saturating_sub(1);
            let p = entry.path();
            match p.is_dir() {
                true if depth == 0 => {
                    folders.push(entry.file_name().to_string_lossy().to_string());
                    pending.push((p, 1));
                }
                true if depth < 2 && budget > 0 => pending.push((p, depth + 1)),
                true => {}
                false => count(&p),
            }
        }
    }
    folders.sort();
    let shown: Vec<&str> = folders.iter().take(5).map(String::as_str).collect();
    let kinds: Vec<String> = files.0.iter().map(|(k, n)| format!("{n} {k}")).collect();
    match (folders.is_empty(), kinds.is_empty()) {
        (true, true) => "nothing (the folder is empty)".into(),
        (true, false) => kinds.join(", "),
        (false, _) => format!(
            "{} ({}{}) and no images in them; files: {}",
            plural(folders.len(), "folder"),
            shown.join(", "),
            if folders.len() > 5 { ", ..." } else { "" },
            if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(", ")
            }
        ),
    }
}

/// The largest square side image folders are decoded to: 4096 px is 48 MiB per RGB image.
pub const MAX_IMAGE_SIZE: u32 = 4096;

/// Loads a data set from any supported source.
///
/// # Errors
/// An image size outside 1..=[`MAX_IMAGE_SIZE`], a source that cannot be found or read, or a
/// reader's error (each names its file).
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    if !(1..=MAX_IMAGE_SIZE).contains(&spec.image_size) {
        return Err(DataError::Other(format!(
            "image size {} (data.image_size, --set data.image_size=N): must be 1 to {MAX_IMAGE_SIZE} pixels",
            spec.image_size
        )));
    }
    let (path, format) = resolve(spec)?;
    match format {
        Format::Synthetic => Ok(synthetic::generate(&synthetic::SyntheticSpec::default())),
        Format::CifarBinary => cifar::load(&path),
        Format::CifarPython => cifar_python::load(&path),
        Format::Idx => cache::cached(spec, &path, || idx::load(&path)),
        Format::Folder => cache::cached(spec, &path, || {
            let folder_spec = folder::FolderSpec {
                size: spec.image_size,
                val_split: spec.val_split,
                skip_broken: spec.skip_broken,
            };
            folder::load(&path, &folder_spec)
        }),
    }
}
