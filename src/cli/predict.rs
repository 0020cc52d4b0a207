//! `convkit eval` and `convkit predict`.

use crate::config::Config;
use crate::data::Split;
use crate::data::folder;
use crate::data::loader::DeviceSplit;
use crate::metrics;
use crate::predict;
use crate::train;
use crate::train::TrainedRun;
use crate::util::progress;
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A run folder or a checkpoint file
    run: PathBuf,
    /// Evaluate on this data instead of the run's own
    #[arg(long)]
    data: Option<String>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Write summary.json here
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Serialize)]
struct EvalSummary {
    checkpoint: String,
    dataset: String,
    test_images: usize,
    test_accuracy: f64,
    test_top5: f64,
    test_loss: f64,
    per_class_accuracy: Vec<(String, f64)>,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit eval")?;
    let device = train::parse_device(&a.device)?;
    let ck = TrainedRun::open(&a.run)?;
    let model = ck.model(device)?;
    let mut cfg = ck.config_with_data(a.data.as_deref());
    cfg.data.train_limit = Some(1);
    let (name, classes, test_split) = eval_data(&cfg, ck.image_size())?;
    // Other data may hold the model's classes in another order, or only some of them.
    let map = crate::data::class_map(&classes, ck.classes()).with_context(|| {
        format!(
            "{}: cannot evaluate on {}",
            ck.path().display(),
            cfg.data.source
        )
    })?;
    let present: Vec<bool> = (0..ck.classes().len() as i64)
        .map(|c| map.contains(&c))
        .collect();
    let test_split = test_split.relabel(&map);
    let aug = ck.normaliser(device);
    let test = DeviceSplit::new(&test_split, device);
    let r = train::evaluate(
        &model,
        &test,
        &aug,
        cfg.train.eval_batch_size,
        crate::train::evaluate::Tta::of(&cfg.train),
        false,
    );
    println!(
        "test accuracy {:.2}%  top-5 {:.2}%  loss {:.4}  ({} images)",
        100.0 * r.accuracy,
        100.0 * r.top5,
        r.loss,
        test.len()
    );
    let per_class: Vec<(String, f64)> = ck
        .classes()
        .iter()
        .cloned()
        .zip(r.confusion.per_class_accuracy())
        .zip(&present)
        .filter_map(|(row, here)| here.then_some(row))
        .collect();
    for (c, acc) in &per_class {
        println!("  {c:<16} {:.1}%", 100.0 * acc);
    }
    if let Some(out) = a.out {
        crate::util::create_dir(&out)?;
        let s = EvalSummary {
            checkpoint: ck.path().display().to_string(),
            dataset: name,
            test_images: test.len(),
            test_accuracy: r.accuracy,
            test_top5: r.top5,
            test_loss: r.loss,
            per_class_accuracy: per_class,
        };
        metrics::write_json(&out.join("summary.json"), &s)?;
        metrics::write_json(&out.join("confusion.json"), &r.confusion)?;
    }
    Ok(())
}

/// The data `eval` scores: a folder of class folders without train/ is scored whole; any other
/// source by its test split. Returns the data's name, its class names and the images.
fn eval_data(cfg: &Config, image_size: i64) -> Result<(String, Vec<String>, Split)> {
    let path = std::path::Path::new(&cfg.data.source);
    if cfg.data.format.is_none() && folder::is_single_tree(path) {
        let spec = folder::FolderSpec {
            size: cfg.data.image_size.unwrap_or(image_size as u32),
            val_split: 0.0,
            skip_broken: cfg.data.skip_broken,
        };
        let (classes, split, notes) = folder::load_all(path, &spec)?;
        for note in notes {
            eprintln!("data: {note}");
        }
        return Ok((cfg.data.source.clone(), classes, split));
    }
    let data = train::load_data(cfg, image_size)?;
    for note in &data.notes {
        eprintln!("data: {note}");
    }
    Ok((data.name.clone(), data.classes.clone(), data.test.share()))
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A run folder or a checkpoint file
    checkpoint: PathBuf,
    /// Image files and folders (walked with their sub-folders, like the data loader)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Classes reported per image, most probable first
    #[arg(long, visible_alias = "top-k", default_value_t = 3)]
    top: usize,
    /// Images per forward pass
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Also write one row per image to this CSV file (image, class_1, probability_1, ..., error)
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Print JSON (one object per image: image, top [[class, probability], ...] or error)
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn predict(a: PredictArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit predict")?;
    if !(1..=predict::MAX_BATCH).contains(&a.batch) || a.top == 0 {
        anyhow::bail!(
            "--batch must be 1 to {} and --top at least 1",
            predict::MAX_BATCH
        );
    }
    let csv_dir = a.csv.as_deref().and_then(std::path::Path::parent);
    if let Some(dir) = csv_dir.filter(|d| !d.as_os_str().is_empty()) {
        // Found before the images are classified, not after.
        crate::util::create_dir(dir)
            .with_context(|| format!("--csv {}", a.csv.as_ref().unwrap().display()))?;
    }
    let device = train::parse_device(&a.device)?;
    let run = TrainedRun::open(&a.checkpoint)?;
    let predictor = predict::Predictor::new(&run, device)?;
    let inputs = predict::collect_inputs(&a.images)?;
    if let Some(note) = inputs.skipped.describe() {
        eprintln!("predict: {note}");
    }
    let n = inputs.files.len();
    let bar = progress::steps_bar(n as u64, "predict".into(), progress::wanted());
    let start = Instant::now();
    let opts = predict::Options {
        batch: a.batch,
        top_k: a.top,
    };
    let rows = predictor.predict(&inputs.files, opts, |done| bar.inc(done as u64));
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let failed: Vec<&predict::Prediction> = rows.iter().filter(|r| r.error.is_some()).collect();
    if failed.len() == n {
        anyhow::bail!(
            "none of the {n} images could be read; the first: {}: {}",
            failed[0].image,
            failed[0].error.as_deref().unwrap_or("")
        );
    }
    if let Some(path) = &a.csv {
        let k = a.top.min(run.classes().len());
        if let Err(e) = predict::write_csv(path, &rows, k) {
            // The predictions are not lost: they go to the terminal instead.
            print_rows(&rows);
            anyhow::bail!(
                "writing {}: {e} (the predictions are printed above)",
                path.display()
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if a.csv.is_none() {
        print_rows(&rows);
    }
    for r in &failed {
        eprintln!(
            "unreadable: {}: {}",
            r.image,
            r.error.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "predict: {} classified in {} ({:.1} images/s){}{}",
        crate::util::plural(n - failed.len(), "image"),
        crate::util::fmt_seconds(seconds),
        n as f64 / seconds.max(1e-9),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} unreadable, listed above", failed.len())
        },
        a.csv
            .as_ref()
            .map(|p| format!("; {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn print_rows(rows: &[predict::Prediction]) {
    for p in rows {
        if let Some(top) = &p.top {
            let items: Vec<String> = top
                .iter()
                .map(|(c, v)| format!("{c} {:.1}%", 100.0 * v))
                .collect();
            println!("{}: {}", p.image, items.join(", "));
        }
    }
}
