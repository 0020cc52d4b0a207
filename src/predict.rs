//! Prediction over image files and whole folders (`convkit predict`): folders are walked as the
//! data loader walks them (sub-folders, any-case extensions, hidden files skipped), images are
//! decoded in parallel a batch at a time and classified in batches on the chosen device;
//! a file that does not decode is reported in its row, never fatal.

use crate::augment::Augmenter;
use crate::data::folder::{self, Skipped};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::train::TrainedRun;
use crate::train::evaluate::predict_logits;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The images named on a command line: files as given, folders walked.
#[derive(Debug, Default)]
pub struct Inputs {
    pub files: Vec<PathBuf>,
    /// What the folder walk passed over (non-image files, hidden files, ...), by kind.
    pub skipped: Skipped,
}

/// Lists the images of `args`, each a file or a folder (walked recursively, sorted).
///
/// # Errors
/// A path that does not exist or cannot be read, or no image at all.
pub fn collect_inputs(args: &[PathBuf]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for path in args {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            inputs
                .files
                .extend(folder::walk_images(path, &mut inputs.skipped)?);
        } else {
            inputs.files.push(path.clone());
        }
    }
    if inputs.files.is_empty() {
        let names: Vec<String> = args.iter().map(|p| p.display().to_string()).collect();
        let seen = inputs.skipped.describe().unwrap_or_default();
        return Err(Error::Invalid(format!(
            "no images (jpg, png, ...) in {} {seen}",
            names.join(", ")
        )));
    }
    Ok(inputs)
}

/// One image's result: its `top` classes with probabilities, best first, or the `error` that
/// kept it from being read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prediction {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<(String, f64)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The most images decoded and classified at once: a batch of 4,096 images at 224 px holds
/// 600 MB of pixels before the network's activations.
pub const MAX_BATCH: usize = 4096;

/// How to predict: images per forward pass (at most [`MAX_BATCH`]) and classes reported per
/// image.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub batch: usize,
    pub top_k: usize,
}

/// A trained network ready to classify image files on `device`.
pub struct Predictor<'a> {
    run: &'a TrainedRun,
    model: Model,
    /// The run's evaluation normalisation (and resize), made once.
    normaliser: Augmenter,
    device: Device,
}

impl<'a> Predictor<'a> {
    /// The run's classifier on `device`.
    ///
    /// # Errors
    /// The run's model cannot be built or its weights loaded.
    pub fn new(run: &'a TrainedRun, device: Device) -> Result<Self> {
        let model = run.model(device)?;
        let normaliser = run.normaliser(device);
        Ok(Predictor {
            run,
            model,
            normaliser,
            device,
        })
    }

    /// Classifies `files` in batches of `opts.batch`, calling `done(n)` after each batch of
    /// `n` files; results in the order of `files`.
    pub fn predict(
        &self,
        files: &[PathBuf],
        opts: Options,
        mut done: impl FnMut(usize),
    ) -> Vec<Prediction> {
        let mut out = Vec::with_capacity(files.len());
        for chunk in files.chunks(opts.batch.clamp(1, MAX_BATCH)) {
            out.extend(self.predict_batch(chunk, opts.top_k));
            done(chunk.len());
        }
        out
    }

    /// Decodes `files` in parallel (shorter side resized to the run's input side, centre
    /// crop), classifies those that decoded in one forward pass, and keeps each failure as its
    /// row's error.
    fn predict_batch(&self, files: &[PathBuf], top_k: usize) -> Vec<Prediction> {
        let size = self.run.image_size() as u32;
        let pixels = (size * size * 3) as usize;
        let mut buf = vec![0u8; files.len() * pixels];
        let decoded: Vec<std::result::Result<(), String>> = buf
            .par_chunks_mut(pixels)
            .zip(files.par_iter())
            .map(|(out, path)| folder::decode_into(path, size, out).map_err(|e| reason(path, e)))
            .collect();
        let ok: Vec<i64> = (0..files.len() as i64)
            .filter(|&i| decoded[i as usize].is_ok())
            .collect();
        let mut tops = if ok.is_empty() {
            Vec::new()
        } else {
            let side = size as i64;
            let all = Tensor::from_slice(&buf).reshape([files.len() as i64, side, side, 3]);
            self.top_classes(&all.index_select(0, &Tensor::from_slice(&ok)), top_k)
        }
        .into_iter();
        files
            .iter()
            .zip(decoded)
            .map(|(path, d)| Prediction {
                image: path.display().to_string(),
                top: d
                    .is_ok()
                    .then(|| tops.next().expect("one result per decoded image")),
                error: d.err(),
            })
            .collect()
    }

    /// The `k` most probable classes of each u8 image `[N, H, W, 3]`.
    fn top_classes(&self, images: &Tensor, k: usize) -> Vec<Vec<(String, f64)>> {
        let images = if self.run.in_channels() == 1 {
            crate::augment::to_grey(images)
        } else {
            images.shallow_clone()
        };
        let x = self.normaliser.eval_batch(&images.to_device(self.device));
        let logits = predict_logits(&self.model, &x, Default::default(), false);
        let classes = self.run.classes();
        let k = k.clamp(1, classes.len()) as i64;
        let (p, i) = logits.softmax(1, Kind::Float).topk(k, 1, true, true);
        let p = Vec::<f64>::try_from(
            p.to_kind(Kind::Double)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )
        .expect("probabilities are doubles");
        let i = Vec::<i64>::try_from(i.to_device(Device::Cpu).flatten(0, -1))
            .expect("indices are longs");
        i.chunks(k as usize)
            .zip(p.chunks(k as usize))
            .map(|(ci, pi)| {
                ci.iter()
                    .zip(pi)
                    .map(|(&c, &p)| (classes[c as usize].clone(), p))
                    .collect()
            })
            .collect()
    }
}

/// Why a file could not be read, without the file name the row already holds.
fn reason(path: &Path, e: crate::data::DataError) -> String {
    let text = e.to_string();
    let name = format!("{}: ", path.display());
    text.strip_prefix(&name).unwrap_or(&text).to_string()
}

/// Writes predictions as CSV: `image,class_1,probability_1,...,class_k,probability_k,error`,
/// one row per image (RFC 4180 quoting), atomically.
///
/// # Errors
/// The file cannot be written.
pub fn write_csv(path: &Path, rows: &[Prediction], k: usize) -> std::io::Result<()> {
    let mut text = String::from("image");
    for i in 1..=k {
        text.push_str(&format!(",class_{i},probability_{i}"));
    }
    text.push_str(",error\n");
    for row in rows {
        text.push_str(&csv_field(&row.image));
        let top = row.top.as_deref().unwrap_or(&[]);
        for i in 0..k {
            match top.get(i) {
                Some((c, p)) => text.push_str(&format!(",{},{p:.6}", csv_field(c))),
                None => text.push_str(",,"),
            }
        }
        text.push(',');
        text.push_str(&csv_field(row.error.as_deref().unwrap_or("")));
        text.push('\n');
    }
    crate::util::atomic_write_bytes(path, text.as_bytes())
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_quotes_and_leaves_missing_classes_empty() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        let dir = std::env::temp_dir().join(format!("convkit-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.csv");
        let rows = [
            Prediction {
                image: "x/cat,1.jpg".into(),
                top: Some(vec![("cat".into(), 0.75), ("dog".into(), 0.25)]),
                error: None,
            },
            Prediction {
                image: "x/bad.jpg".into(),
                top: None,
                error: Some("not an image".into()),
            },
        ];
        write_csv(&path, &rows, 2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "image,class_1,probability_1,class_2,probability_2,error\n\
             \"x/cat,1.jpg\",cat,0.750000,dog,0.250000,\n\
             x/bad.jpg,,,,,not an image\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
