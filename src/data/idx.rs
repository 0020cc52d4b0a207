//! MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte[.gz]` and friends), gzip or not.

use super::{DataError, Dataset, Result, Split};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const FASHION_CLASSES: [&str; 10] = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
];

/// The four files of an IDX data set: train images, train labels, test images, test labels.
pub struct IdxFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

/// Finds the four IDX files in `dir` or where torchvision keeps them under a root
/// (`MNIST/raw/`, `FashionMNIST/raw/`, `raw/`), under the standard names (`-idx3-ubyte`) or the
/// dotted ones some mirrors use (`.idx3-ubyte`), gzipped or not.
///
/// # Errors
/// None of those places holds all four files; the error names the first missing one.
pub fn find_files(dir: &Path) -> Result<IdxFiles> {
    let places = [
        dir.to_path_buf(),
        dir.join("raw"),
        dir.join("FashionMNIST").join("raw"),
        dir.join("MNIST").join("raw"),
    ];
    if ambiguous(dir) {
        return Err(DataError::format(
            dir,
            "holds both FashionMNIST/raw and MNIST/raw; point --data at the one to use",
        ));
    }
    let mut first_error = None;
    for place in places.iter().filter(|p| p.is_dir()) {
        match find_in(place) {
            Ok(files) => return Ok(files),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| DataError::format(dir, "no IDX files here")))
}

/// Whether `dir` holds both of torchvision's roots, so that which one is meant cannot be told.
pub fn ambiguous(dir: &Path) -> bool {
    ["FashionMNIST", "MNIST"]
        .iter()
        .all(|n| find_in(&dir.join(n).join("raw")).is_ok())
}

fn find_in(dir: &Path) -> Result<IdxFiles> {
    let find = |prefix: &str, kind: &str| {
        [format!("{prefix}-{kind}"), format!("{prefix}.{kind}")]
            .into_iter()
            .flat_map(|n| [n.clone(), format!("{n}.gz")])
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| DataError::format(dir, format!("missing IDX file {prefix}-{kind}[.gz]")))
    };
    Ok(IdxFiles {
        train_images: find("train-images", "idx3-ubyte")?,
        train_labels: find("train-labels", "idx1-ubyte")?,
        test_images: find("t10k-images", "idx3-ubyte")?,
        test_labels: find("t10k-labels", "idx1-ubyte")?,
    })
}

pub fn load(dir: &Path) -> Result<Dataset> {
    let f = find_files(dir)?;
    let train = read_split(&f.train_images, &f.train_labels)?;
    let test = read_split(&f.test_images, &f.test_labels)?;
    // torchvision's FashionMNIST/raw, Debian's /usr/share/datasets/fashion-mnist.
    let fashion = f
        .train_images
        .to_string_lossy()
        .to_lowercase()
        .contains("fashion");
    let classes: Vec<String> = if fashion {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|d| d.to_string()).collect()
    };
    let name = if fashion { "fashion-mnist" } else { "mnist" };
    Dataset::new(name, classes, train, test, dir)
}

fn read_split(images: &Path, labels: &Path) -> Result<Split> {
    let (dims, pixels) = read_idx(images, IMAGES_MAGIC)?;
    let (ldims, label_bytes) = read_idx(labels, LABELS_MAGIC)?;
    if ldims[0] != dims[0] {
        return Err(DataError::format(
            labels,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                dims[0],
                images.display()
            ),
        ));
    }
    let labels: Vec<i64> = label_bytes.iter().map(|&l| l as i64).collect();
    Ok(Split {
        images: Tensor::from_slice(&pixels).reshape([dims[0], dims[1], dims[2], 1]),
        labels: Tensor::from_slice(&labels),
    })
}

/// Reads an IDX file of u8 data, gzipped or not, checking the magic number, that every
/// dimension is positive and that the data is exactly what the header promises.
///
/// The header is read first and a gzip stream is inflated only up to the size it declares
/// (plus one byte to detect excess), then read to its end so that its CRC and length are
/// checked: a small `.gz` of zeros cannot inflate into gigabytes.
///
/// # Errors
/// Unreadable file, damaged gzip stream, wrong magic, a zero dimension or one whose product
/// overflows, or a data size that differs from the header's; each names the file.
pub fn read_idx(path: &Path, magic: u32) -> Result<(Vec<i64>, Vec<u8>)> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut file = std::io::BufReader::new(file);
    let head = file.fill_buf().map_err(|e| DataError::io(path, e))?;
    let gz = head.starts_with(&[0x1f, 0x8b]);
    let on_disk = std::fs::metadata(path).map_or(0, |m| m.len());
    // What a file may hold: its own length, or for gzip (MNIST's compress 2-5x) 100 times it.
    let most = match gz {
        true => on_disk.saturating_mul(MAX_GZIP_RATIO).max(MIN_DECLARED),
        false => on_disk,
    };
    let reader: Box<dyn Read> = match gz {
        true => Box::new(flate2::read::GzDecoder::new(file)),
        false => Box::new(file),
    };
    read_idx_from(reader, path, magic, most)
}

/// How many times its compressed size a gzipped IDX file may declare.
const MAX_GZIP_RATIO: u64 = 100;
/// Declared sizes up to this are accepted from any gzip (a tiny test set of zeros).
const MIN_DECLARED: u64 = 16 << 20;

fn read_idx_from(
    mut r: impl Read,
    path: &Path,
    magic: u32,
    most: u64,
) -> Result<(Vec<i64>, Vec<u8>)> {
    let damaged = |e: std::io::Error| DataError::format(path, format!("bad IDX data: {e}"));
    let mut word = [0u8; 4];
    r.read_exact(&mut word)
        .map_err(|_| DataError::format(path, "too short for an IDX header"))?;
    let found = u32::from_be_bytes(word);
    if found != magic {
        return Err(DataError::format(
            path,
            format!("wrong IDX magic number 0x{found:08x} (expected 0x{magic:08x})"),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        r.read_exact(&mut word)
            .map_err(|_| DataError::format(path, "truncated IDX header"))?;
        dims.push(u32::from_be_bytes(word) as i64);
    }
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .filter(|_| dims.iter().all(|&d| d > 0));
    let Some(expected) = expected.filter(|&n| i64::try_from(n).is_ok()) else {
        return Err(DataError::format(
            path,
            format!(
                "IDX header declares dimensions {dims:?}: each must be positive and their product representable"
            ),
        ));
    };
    if expected as u64 > most {
        return Err(DataError::format(
            path,
            format!(
                "IDX header declares {dims:?} ({expected} bytes), more than a file of this size \
                 can hold (at most {most} bytes): refused"
            ),
        ));
    }
    let mut data = Vec::new();
    // One byte more than promised tells a longer file from an exact one.
    (&mut r)
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(damaged)?;
    if data.len() != expected {
        let held = if data.len() > expected {
            "more".to_string()
        } else {
            data.len().to_string()
        };
        return Err(DataError::format(
            path,
            format!("header promises {expected} data bytes ({dims:?}) but the file holds {held}"),
        ));
    }
    // The rest of the stream is empty; reading it verifies a gzip stream's CRC and length.
    r.read_to_end(&mut Vec::new()).map_err(damaged)?;
    Ok((dims, data))
}

/// Encodes u8 data as an IDX file (for tests and tools).
pub fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
