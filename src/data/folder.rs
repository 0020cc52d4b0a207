//! Image folders: `root/train/<class>/*.{jpg,png}` + `root/test/<class>/...`, or one
//! `root/<class>/...` tree split by `val_split`. Decoded in parallel, resized (shorter side) and
//! centre-cropped to a square.

use super::{DataError, Dataset, Result, Split};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tch::Tensor;

const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "JPG", "JPEG", "PNG"];
/// Fixed so that the train/test split and the subset order never depend on the run's seed.
const SPLIT_SEED: u64 = 0x5eed;

pub fn load(root: &Path, size: u32, val_split: f64) -> Result<Dataset> {
    let (train_dir, test_dir) = (root.join("train"), root.join("test"));
    let (classes, train_files, test_files) = if train_dir.is_dir() && test_dir.is_dir() {
        let classes = class_dirs(&train_dir)?;
        let train = list_images(&train_dir, &classes)?;
        let test = list_images(&test_dir, &classes)?;
        (classes, train, test)
    } else {
        if !(0.0..1.0).contains(&val_split) || val_split == 0.0 {
            return Err(DataError::format(
                root,
                format!(
                    "no train/ and test/ folders, and --val-split {val_split} is not in (0, 1)"
                ),
            ));
        }
        let classes = class_dirs(root)?;
        let all = list_images(root, &classes)?;
        let n_test = ((all.len() as f64) * val_split).round() as usize;
        let mut all = all;
        all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED));
        let test = all.split_off(all.len() - n_test);
        (classes, all, test)
    };
    // Both splits in a fixed shuffled order, so that --train-limit / test_limit subsets hold
    // every class instead of the first classes' folders.
    let (mut train_files, mut test_files) = (train_files, test_files);
    train_files.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED + 1));
    test_files.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED + 2));
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "folder".into());
    let train = decode_all(&train_files, size)?;
    let test = decode_all(&test_files, size)?;
    Dataset::new(&name, classes, train, test, root)
}

/// Sorted class folder names; every class folder must hold at least one image.
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::format(dir, "holds no class folders"));
    }
    Ok(classes)
}

fn list_images(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(|e| DataError::io(&class_dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e))
            })
            .collect();
        if files.is_empty() {
            return Err(DataError::format(
                &class_dir,
                "empty class folder: no .jpg/.jpeg/.png images",
            ));
        }
        files.sort();
        out.extend(files.into_iter().map(|p| (p, label as i64)));
    }
    Ok(out)
}

fn decode_all(files: &[(PathBuf, i64)], size: u32) -> Result<Split> {
    let pixels = (size * size * 3) as usize;
    let mut buf = vec![0u8; files.len() * pixels];
    buf.par_chunks_mut(pixels)
        .zip(files.par_iter())
        .try_for_each(|(out, (path, _))| decode_into(path, size, out))?;
    let labels: Vec<i64> = files.iter().map(|(_, l)| *l).collect();
    Ok(Split {
        images: Tensor::from_slice(&buf).reshape([files.len() as i64, size as i64, size as i64, 3]),
        labels: Tensor::from_slice(&labels),
    })
}

/// Decodes one image file into `out` (HWC RGB, `size` x `size`).
pub fn decode_into(path: &Path, size: u32, out: &mut [u8]) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::format(path, format!("cannot decode image: {e}")))?;
    let rgb = fit_square(img, size).to_rgb8();
    out.copy_from_slice(rgb.as_raw());
    Ok(())
}

/// Resizes the shorter side to `size` and centre-crops the longer one (torchvision's
/// Resize + CenterCrop); an image already `size` x `size` is left untouched.
pub fn fit_square(img: image::DynamicImage, size: u32) -> image::DynamicImage {
    let (w, h) = (img.width(), img.height());
    if w == size && h == size {
        return img;
    }
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) = (
        ((w as f64 * scale).round() as u32).max(size),
        ((h as f64 * scale).round() as u32).max(size),
    );
    let resized = img.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
    resized.crop_imm((nw - size) / 2, (nh - size) / 2, size, size)
}

/// Loads one image file as a u8 `[1, size, size, 3]` tensor (for `predict` and `inspect`).
pub fn load_image(path: &Path, size: u32) -> Result<Tensor> {
    let mut buf = vec![0u8; (size * size * 3) as usize];
    decode_into(path, size, &mut buf)?;
    Ok(Tensor::from_slice(&buf).reshape([1, size as i64, size as i64, 3]))
}
