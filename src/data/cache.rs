//! On-disk cache of decoded data sets, keyed by the source's file list (path, size, mtime) and
//! the decode settings, so a second run skips decoding and starts in seconds.

use super::{DataError, DataSpec, Dataset, Result, Split};
use crate::util::{atomic_write, bytes_tensor, fnv1a, tensor_bytes};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Returns the cached decode of `source` if it is current, else runs `decode` and caches it.
pub fn cached<F>(spec: &DataSpec, source: &Path, decode: F) -> Result<Dataset>
where
    F: FnOnce() -> Result<Dataset>,
{
    if !spec.use_cache {
        return decode();
    }
    let file = cache_file(spec, source)?;
    if file.exists() {
        match read(&file) {
            Ok(ds) => return Ok(ds),
            Err(e) => eprintln!("warning: {e}; decoding the data again"),
        }
    }
    let ds = decode()?;
    if let Err(e) = write(&file, &ds) {
        eprintln!(
            "warning: could not write the decode cache {}: {e}",
            file.display()
        );
    }
    Ok(ds)
}

/// The cache file for a source: `<data dir>/decoded/<name>-<key>.safetensors`.
pub fn cache_file(spec: &DataSpec, source: &Path) -> Result<PathBuf> {
    let mut listing = format!(
        "v3 {} {} {} ",
        spec.image_size, spec.val_split, spec.skip_broken
    );
    append_listing(source, &mut listing)?;
    let key = fnv1a(listing.as_bytes());
    let name = source
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "data".into());
    Ok(super::data_dir()
        .join("decoded")
        .join(format!("{name}-{key:016x}.safetensors")))
}

/// Appends `path|size|mtime` of every file under `path` (links followed, each real folder once,
/// so a link back to a parent cannot loop).
fn append_listing(path: &Path, out: &mut String) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(p) = pending.pop() {
        let meta = std::fs::metadata(&p).map_err(|e| DataError::io(&p, e))?;
        if !meta.is_dir() {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            out.push_str(&format!("{}|{}|{}\n", p.display(), meta.len(), mtime));
            continue;
        }
        if !seen.insert(p.canonicalize().map_err(|e| DataError::io(&p, e))?) {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
            .map_err(|e| DataError::io(&p, e))?
            .flatten()
            .map(|e| e.path())
            // A link that leads nowhere is no data (the folder reader counts it as skipped).
            .filter(|e| e.exists())
            .collect();
        // Reversed so that popping visits them in sorted order.
        entries.sort_by(|a, b| b.cmp(a));
        pending.extend(entries);
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    name: String,
    classes: Vec<String>,
    mean: Vec<f64>,
    std: Vec<f64>,
    #[serde(default)]
    notes: Vec<String>,
}

pub fn write(file: &Path, ds: &Dataset) -> Result<()> {
    let meta = CacheMeta {
        name: ds.name.clone(),
        classes: ds.classes.clone(),
        mean: ds.mean.clone(),
        std: ds.std.clone(),
        notes: ds.notes.clone(),
    };
    let meta = bytes_tensor(&serde_json::to_vec(&meta).expect("metadata serialises"));
    let tensors = [
        ("meta", &meta),
        ("train_images", &ds.train.images),
        ("train_labels", &ds.train.labels),
        ("test_images", &ds.test.images),
        ("test_labels", &ds.test.labels),
    ];
    atomic_write(file, |tmp| {
        Tensor::write_safetensors(&tensors, tmp)
            .map_err(|e| DataError::format(file, format!("cannot write cache: {e}")))
    })
}

pub fn read(file: &Path) -> Result<Dataset> {
    let tensors = Tensor::read_safetensors(file)
        .map_err(|e| DataError::format(file, format!("cannot read cache: {e}")))?;
    let get = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| DataError::format(file, format!("cache lacks tensor '{name}'")))
    };
    let meta: CacheMeta = serde_json::from_slice(&tensor_bytes(&get("meta")?))
        .map_err(|e| DataError::format(file, format!("bad cache metadata: {e}")))?;
    let ds = Dataset {
        name: meta.name,
        classes: meta.classes,
        train: Split {
            images: get("train_images")?,
            labels: get("train_labels")?,
        },
        test: Split {
            images: get("test_images")?,
            labels: get("test_labels")?,
        },
        mean: meta.mean,
        std: meta.std,
        notes: meta.notes,
    };
    check(&ds).map_err(|p| DataError::format(file, format!("damaged cache: {p}")))?;
    Ok(ds)
}

/// Everything later code trusts in a cached data set: u8 images `[N, H, W, C]` with 1 or 3
/// channels and the same size in both splits, one i64 label per image inside the class range,
/// at least one class and training image, one mean and std per channel.
fn check(ds: &Dataset) -> std::result::Result<(), String> {
    use tch::Kind;
    let train = ds.train.images.size();
    if ds.classes.is_empty() || ds.train.is_empty() {
        return Err("no classes or no training images".into());
    }
    for (what, split) in [("train", &ds.train), ("test", &ds.test)] {
        let s = split.images.size();
        let l = split.labels.size();
        let shape_ok = s.len() == 4 && s[1..] == train[1..] && matches!(s[3], 1 | 3);
        if !shape_ok || split.images.kind() != Kind::Uint8 {
            return Err(format!(
                "{what} images of shape {s:?} ({:?})",
                split.images.kind()
            ));
        }
        if l != [s[0]] || split.labels.kind() != Kind::Int64 {
            return Err(format!(
                "{} {what} labels for {} images",
                l.first().unwrap_or(&0),
                s[0]
            ));
        }
        if !split.is_empty() {
            let (lo, hi) = (
                split.labels.min().int64_value(&[]),
                split.labels.max().int64_value(&[]),
            );
            if lo < 0 || hi >= ds.classes.len() as i64 {
                return Err(format!(
                    "{what} label {} outside 0..{}",
                    if lo < 0 { lo } else { hi },
                    ds.classes.len()
                ));
            }
        }
    }
    let c = train[3] as usize;
    if ds.mean.len() != c || ds.std.len() != c {
        return Err(format!(
            "mean/std of {}/{} values for {c} channels",
            ds.mean.len(),
            ds.std.len()
        ));
    }
    Ok(())
}
