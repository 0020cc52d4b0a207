//! Image folders, found as torchvision's `ImageFolder` finds them and checked more strictly:
//! `root/train/<class>/...` + `root/test/<class>/...` (`val/`, `valid/` or `validation/` also
//! serve as the test split), or one `root/<class>/...` tree split by `val_split`.
//!
//! Every file under a class folder, in sub-folders too (links followed, each real folder once),
//! whose extension is one of torchvision's `IMG_EXTENSIONS` (any letter case) is an image of
//! that class; hidden files and folders (`.DS_Store`, `._photo.png`, `.ipynb_checkpoints/`) and
//! other files are skipped and counted by kind, so nothing disappears without a word. Images are
//! decoded in parallel, turned upright by their EXIF orientation (as Pillow's
//! `ImageOps.exif_transpose`), resized (shorter side) and centre-cropped to a square. A file
//! that does not decode completely (a JPEG cut off before its end) is an error; every broken
//! file of the set is listed in one error, or skipped with a warning when `skip_broken` is set.

use super::{DataError, Dataset, Result, Split};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// torchvision's `IMG_EXTENSIONS`, compared in lower case.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];
/// Folders that hold the test split when there is no `test/` (ImageNet-style layouts).
const TEST_FOLDERS: [&str; 4] = ["test", "val", "valid", "validation"];
/// Fixed so that the train/test split and the subset order never depend on the run's seed.
const SPLIT_SEED: u64 = 0x5eed;
/// The largest image decoded, in pixels (600 MB as RGB); a header declaring more is refused
/// before anything is allocated.
const MAX_PIXELS: u64 = 200_000_000;
/// Broken files named in one error or warning; the rest are counted.
const LISTED_BROKEN: usize = 20;

/// How to read an image folder.
#[derive(Debug, Clone, Copy)]
pub struct FolderSpec {
    /// Side of the square every image is resized and centre-cropped to, in pixels.
    pub size: u32,
    /// Share of a single class tree held out for testing, in (0, 1).
    pub val_split: f64,
    /// Leave out files that do not decode (with a warning listing them) instead of failing.
    pub skip_broken: bool,
}

/// Whether a path names an image by its extension (case-insensitive).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Files passed over while listing a folder, counted by kind (`.txt`, `hidden`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped(pub BTreeMap<String, usize>);

impl Skipped {
    fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_insert(0) += 1;
    }
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
    /// `skipped 4 files that are not images: 2 .txt, 1 hidden file, 1 hidden folder`, or
    /// nothing when nothing was skipped.
    pub fn describe(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let kinds: Vec<String> = self.0.iter().map(|(k, n)| format!("{n} {k}")).collect();
        Some(format!(
            "skipped {} entries that are not images: {}",
            self.total(),
            kinds.join(", ")
        ))
    }
}

/// The kind a skipped file is counted under: its extension, lower-cased.
fn file_kind(path: &Path) -> String {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) => format!(".{}", e.to_ascii_lowercase()),
        None => "files without extension".into(),
    }
}

fn is_hidden(path: &Path) -> bool {
    // Bytes, not str: a name that is not UTF-8 can still start with a dot.
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'))
}

/// The non-hidden entries of a folder, sorted, with whether each is a folder (links followed;
/// a link that leads nowhere is counted as skipped).
fn entries(dir: &Path, skipped: &mut Skipped) -> Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let meta = std::fs::metadata(&path);
        if is_hidden(&path) {
            // Hidden links that lead nowhere (editors' `.#file` locks) are hidden files too.
            let is_dir = meta.is_ok_and(|m| m.is_dir());
            skipped.add(if is_dir {
                "hidden folders"
            } else {
                "hidden files"
            });
            continue;
        }
        let Ok(meta) = meta else {
            skipped.add("broken links");
            continue;
        };
        if !meta.is_dir() && !meta.is_file() {
            skipped.add("special files (pipes, devices, sockets)");
            continue;
        }
        out.push((path, meta.is_dir()));
    }
    out.sort();
    Ok(out)
}

/// Every image file under `dir`, in sub-folders too, sorted. Links are followed and each real
/// folder is read once, so a link back to a parent cannot loop.
pub fn walk_images(dir: &Path, skipped: &mut Skipped) -> Result<Vec<PathBuf>> {
    walk_images_upto(dir, skipped, usize::MAX)
}

/// [`walk_images`], stopping once `most` images are found (format detection needs one).
fn walk_images_upto(dir: &Path, skipped: &mut Skipped, most: usize) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut images = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        if images.len() >= most {
            break;
        }
        let real = d.canonicalize().map_err(|e| DataError::io(&d, e))?;
        if !seen.insert(real) {
            skipped.add("repeated folders (links)");
            continue;
        }
        for (path, is_dir) in entries(&d, skipped)? {
            if is_dir {
                pending.push(path);
            } else if is_image(&path) {
                images.push(path);
            } else {
                skipped.add(file_kind(&path));
            }
        }
    }
    images.sort();
    Ok(images)
}

/// Sorted names of the (non-hidden) class folders of `dir`; loose files there are skipped.
/// Folder names stay `OsString` until shown: a name that is not UTF-8 must still be opened.
fn class_dirs(dir: &Path, skipped: &mut Skipped) -> Result<Vec<OsString>> {
    let mut classes = Vec::new();
    for (path, is_dir) in entries(dir, skipped)? {
        match is_dir {
            true => classes.push(path.file_name().unwrap_or_default().to_os_string()),
            false => skipped.add(file_kind(&path)),
        }
    }
    if classes.is_empty() {
        return Err(DataError::format(dir, "holds no class folders"));
    }
    Ok(classes)
}

/// Class names as shown and stored (a name that is not UTF-8 shows its bytes replaced).
fn names(classes: &[OsString]) -> Vec<String> {
    classes
        .iter()
        .map(|c| c.to_string_lossy().to_string())
        .collect()
}

/// The images of each listed class under `dir` (label = position in `classes`). A class folder
/// that is absent is allowed only when `may_lack` (a test split without some class).
fn list_images(
    dir: &Path,
    classes: &[OsString],
    may_lack: bool,
    skipped: &mut Skipped,
) -> Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if may_lack && !class_dir.exists() {
            continue;
        }
        let mut here = Skipped::default();
        let files = walk_images(&class_dir, &mut here)?;
        if files.is_empty() {
            let seen = here
                .describe()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            return Err(DataError::format(
                &class_dir,
                format!(
                    "empty class folder: no images with a known extension (.{}){seen}",
                    IMAGE_EXTENSIONS.join(", .")
                ),
            ));
        }
        for (k, n) in here.0 {
            *skipped.0.entry(k).or_insert(0) += n;
        }
        out.extend(files.into_iter().map(|p| (p, label as i64)));
    }
    Ok(out)
}

/// The folder holding the test split next to `train/`: the first of `test/`, `val/`,
/// `valid/`, `validation/` that holds class folders (Kaggle-style roots often have an
/// unlabelled `test/` of loose images beside a labelled `val/`).
fn test_folder(root: &Path) -> Option<PathBuf> {
    let has_classes = |p: &Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().is_dir() && !is_hidden(&e.path()))
    };
    TEST_FOLDERS
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir() && has_classes(p))
}

/// The classes and the files of both splits, before decoding.
struct Listing {
    classes: Vec<String>,
    train: Vec<(PathBuf, i64)>,
    test: Vec<(PathBuf, i64)>,
    skipped: Skipped,
    /// What the layout made the reader decide, for the user.
    notes: Vec<String>,
}

fn list_train_test(root: &Path, test_dir: &Path) -> Result<Listing> {
    let mut skipped = Skipped::default();
    let train_dir = root.join("train");
    let classes = class_dirs(&train_dir, &mut skipped)?;
    let test_classes = class_dirs(test_dir, &mut skipped)?;
    if let Some(extra) = test_classes.iter().find(|c| !classes.contains(c)) {
        let path = test_dir.join(extra);
        let extra = extra.to_string_lossy();
        return Err(DataError::format(
            &path,
            format!(
                "class '{extra}' has test images but no folder under {}; train and test must \
                 name the same classes (train has: {})",
                train_dir.display(),
                names(&classes).join(", ")
            ),
        ));
    }
    let train = list_images(&train_dir, &classes, false, &mut skipped)?;
    let test = list_images(test_dir, &classes, true, &mut skipped)?;
    Ok(Listing {
        classes: names(&classes),
        train,
        test,
        skipped,
        notes: Vec::new(),
    })
}

fn list_held_out(root: &Path, val_split: f64) -> Result<Listing> {
    if root.join("train").is_dir() && root.join("test").is_dir() {
        return Err(DataError::format(
            &root.join("test"),
            "holds no class folders (unlabelled images?), and there is no val/ folder of \
             class folders beside it; put the test images in test/<class>/ folders, or hold out \
             a share of the training images with `--data <root>/train --val-split 0.1`",
        ));
    }
    if root.join("train").is_dir() {
        return Err(DataError::format(
            root,
            format!(
                "has a train/ folder but no test/ (or val/) folder beside it; add \
                 test/<class>/ folders, or hold out a share of the training images with \
                 `--data {} --val-split 0.1`",
                root.join("train").display()
            ),
        ));
    }
    if !(val_split > 0.0 && val_split < 1.0) {
        return Err(DataError::format(
            root,
            format!("no train/ and test/ folders, and --val-split {val_split} is not in (0, 1)"),
        ));
    }
    let mut skipped = Skipped::default();
    let classes = class_dirs(root, &mut skipped)?;
    let mut all = list_images(root, &classes, false, &mut skipped)?;
    let n_test = ((all.len() as f64) * val_split).round() as usize;
    all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED));
    let test = all.split_off(all.len() - n_test);
    Ok(Listing {
        classes: names(&classes),
        train: all,
        test,
        skipped,
        notes: Vec::new(),
    })
}

/// Lists a folder's classes and images (no decoding); also what `data info` reports.
fn list(root: &Path, val_split: f64) -> Result<Listing> {
    match (root.join("train").is_dir(), test_folder(root)) {
        (true, Some(test)) => {
            let mut listing = list_train_test(root, &test)?;
            if test != root.join("test") && root.join("test").is_dir() {
                listing.notes.push(format!(
                    "test/ holds no class folders (unlabelled images?); {} is the test split",
                    test.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
            Ok(listing)
        }
        _ => list_held_out(root, val_split),
    }
}

/// Whether `dir` holds at least one image in some non-hidden sub-folder (how format detection
/// tells an image folder from other folders).
pub fn holds_class_images(dir: &Path) -> bool {
    let mut skipped = Skipped::default();
    let Ok(subdirs) = entries(dir, &mut skipped) else {
        return false;
    };
    subdirs
        .iter()
        .filter(|(_, is_dir)| *is_dir)
        .any(|(d, _)| walk_images_upto(d, &mut skipped, 1).is_ok_and(|f| !f.is_empty()))
}

pub fn load(root: &Path, spec: &FolderSpec) -> Result<Dataset> {
    let Listing {
        classes,
        train,
        test,
        skipped,
        notes: layout_notes,
    } = list(root, spec.val_split)?;
    // Both splits in a fixed shuffled order, so that --train-limit / test_limit subsets hold
    // every class instead of the first classes' folders.
    let (mut train, mut test) = (train, test);
    train.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED + 1));
    test.shuffle(&mut rand::rngs::StdRng::seed_from_u64(SPLIT_SEED + 2));
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "folder".into());
    let mut notes: Vec<String> = skipped.describe().into_iter().collect();
    notes.extend(layout_notes);
    let mut broken = Vec::new();
    let (train, resized_train) = decode_all(&train, spec.size, &mut broken);
    let (test, resized_test) = decode_all(&test, spec.size, &mut broken);
    notes.extend(resize_note(resized_train + resized_test, spec.size));
    notes.extend(check_broken(root, &broken, spec.skip_broken)?);
    let mut ds = Dataset::new(&name, classes, train, test, root)?;
    ds.notes = notes;
    Ok(ds)
}

/// Every image of a single class tree `root/<class>/...`, decoded as one split (for scoring a
/// trained model on a folder of labelled images: nothing is held out, nothing trained on).
/// Returns the class names, the images and what was skipped.
///
/// # Errors
/// As [`load`]; broken files are listed, or left out with `skip_broken`.
pub fn load_all(root: &Path, spec: &FolderSpec) -> Result<(Vec<String>, Split, Vec<String>)> {
    if !(1..=super::MAX_IMAGE_SIZE).contains(&spec.size) {
        return Err(DataError::format(
            root,
            format!(
                "image size {} is not 1 to {}",
                spec.size,
                super::MAX_IMAGE_SIZE
            ),
        ));
    }
    let mut skipped = Skipped::default();
    let classes = class_dirs(root, &mut skipped)?;
    let files = list_images(root, &classes, false, &mut skipped)?;
    let mut broken = Vec::new();
    let (split, resized) = decode_all(&files, spec.size, &mut broken);
    let mut notes: Vec<String> = skipped.describe().into_iter().collect();
    notes.extend(resize_note(resized, spec.size));
    notes.extend(check_broken(root, &broken, spec.skip_broken)?);
    Ok((names(&classes), split, notes))
}

/// Whether `root` is one class tree (no train/ folder): evaluation then scores all of it.
pub fn is_single_tree(root: &Path) -> bool {
    root.is_dir() && !root.join("train").is_dir() && holds_class_images(root)
}

/// Nothing when no file is broken; with `skip_broken`, a note listing the files left out.
///
/// # Errors
/// Broken files without `skip_broken`: one error listing them all (the first 20 named).
fn check_broken(root: &Path, broken: &[DataError], skip_broken: bool) -> Result<Option<String>> {
    if broken.is_empty() {
        return Ok(None);
    }
    let listed = list_broken(broken);
    if !skip_broken {
        return Err(DataError::format(
            root,
            format!(
                "{} images do not decode (pass --set data.skip_broken=true, or --skip-broken \
                 to `data info`, to leave them out):\n{listed}",
                broken.len()
            ),
        ));
    }
    Ok(Some(format!(
        "left out {} broken images (data.skip_broken):\n{listed}",
        broken.len()
    )))
}

/// The first broken files with their errors, one per line, and how many more there are.
fn list_broken(broken: &[DataError]) -> String {
    let mut lines: Vec<String> = broken
        .iter()
        .take(LISTED_BROKEN)
        .map(|e| format!("  {e}"))
        .collect();
    if broken.len() > LISTED_BROKEN {
        lines.push(format!("  ... and {} more", broken.len() - LISTED_BROKEN));
    }
    lines.join("\n")
}

/// Decodes every file in parallel; the files that fail are left out and their errors appended
/// to `broken`. Also returns how many images were not already `size` x `size`.
fn decode_all(files: &[(PathBuf, i64)], size: u32, broken: &mut Vec<DataError>) -> (Split, usize) {
    let pixels = (size * size * 3) as usize;
    let mut buf = vec![0u8; files.len() * pixels];
    let results: Vec<Result<bool>> = buf
        .par_chunks_mut(pixels)
        .zip(files.par_iter())
        .map(|(out, (path, _))| decode_resized(path, size, out))
        .collect();
    let mut keep = Vec::with_capacity(files.len());
    let mut labels = Vec::with_capacity(files.len());
    let mut resized = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(changed) => {
                keep.push(i as i64);
                labels.push(files[i].1);
                resized += usize::from(changed);
            }
            Err(e) => broken.push(e),
        }
    }
    let n = files.len() as i64;
    let mut images = Tensor::from_slice(&buf).reshape([n, size as i64, size as i64, 3]);
    if keep.len() < files.len() {
        images = images.index_select(0, &Tensor::from_slice(&keep));
    }
    let split = Split {
        images,
        labels: Tensor::from_slice(&labels),
    };
    (split, resized)
}

/// Says that images were resized, so a 24-pixel data set is not taken for a 32-pixel one.
fn resize_note(resized: usize, size: u32) -> Option<String> {
    (resized > 0).then(|| {
        format!(
            "{resized} images were resized (shorter side) and centre-cropped to {size}x{size} \
             (data.image_size, --set data.image_size=N)"
        )
    })
}

/// Decodes one image file into `out` (HWC RGB, `size` x `size`), upright by its EXIF
/// orientation.
///
/// # Errors
/// The file cannot be read, is not an image the decoders know, or is cut off before its end.
pub fn decode_into(path: &Path, size: u32, out: &mut [u8]) -> Result<()> {
    decode_resized(path, size, out).map(|_| ())
}

/// [`decode_into`], returning whether the image had to be resized or cropped.
fn decode_resized(path: &Path, size: u32, out: &mut [u8]) -> Result<bool> {
    let img = decode_upright(path)?;
    let changed = (img.width(), img.height()) != (size, size);
    let rgb = fit_square(img, size).to_rgb8();
    out.copy_from_slice(rgb.as_raw());
    Ok(changed)
}

/// Decodes an image file whole and applies its EXIF orientation (Pillow's
/// `ImageOps.exif_transpose`): a photo taken sideways comes out upright.
///
/// # Errors
/// Unreadable, undecodable, or truncated (a JPEG must reach its end-of-image marker, as
/// Pillow's decoder requires).
pub fn decode_upright(path: &Path) -> Result<image::DynamicImage> {
    use image::ImageDecoder;
    // A FIFO or device named like an image would block or never end.
    let meta = std::fs::metadata(path).map_err(|e| DataError::io(path, e))?;
    if !meta.is_file() {
        return Err(DataError::format(path, "not a regular file"));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bad = |e: image::ImageError| DataError::format(path, format!("cannot decode image: {e}"));
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(DataError::format(
            path,
            "cannot decode image: the JPEG data ends before its end-of-image marker \
             (the file is truncated)",
        ));
    }
    let mut decoder = reader.into_decoder().map_err(bad)?;
    // The size a header declares is checked before anything is allocated for it.
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DataError::format(
            path,
            format!(
                "the image declares {w}x{h} pixels, more than convkit decodes ({} megapixels)",
                MAX_PIXELS / 1_000_000
            ),
        ));
    }
    let orientation = decoder.orientation().map_err(bad)?;
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Whether a JPEG's marker structure runs through to its end-of-image marker (EOI): segments
/// are skipped by their lengths and entropy-coded data is scanned for the next marker, so an
/// EOI inside an embedded EXIF thumbnail does not count. A file cut off anywhere fails.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    loop {
        // Extraneous bytes before a marker are skipped (as libjpeg's next_marker does), and a
        // marker may be preceded by any number of 0xFF fill bytes.
        while i < b.len() && b[i] != 0xFF {
            i += 1;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
        else {
            return false;
        };
        i += len;
        if i > b.len() {
            return false;
        }
        if marker == 0xDA {
            // Entropy-coded data: runs until a marker that is neither a stuffed 0xFF00 nor a
            // restart marker.
            loop {
                match b.get(i..i + 2) {
                    None => return false,
                    Some([0xFF, 0x00]) | Some([0xFF, 0xD0..=0xD7]) => i += 2,
                    Some([0xFF, 0xFF]) | Some([0xFF, _]) => break,
                    Some(_) => i += 1,
                }
            }
        }
    }
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
