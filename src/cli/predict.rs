//! `convkit eval` and `convkit predict`.

use crate::config::Config;
use crate::data::Split;
use crate::data::folder::{self, load_image};
use crate::data::loader::DeviceSplit;
use crate::metrics;
use crate::train;
use crate::train::TrainedRun;
use crate::train::evaluate::predict_logits;
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use tch::Kind;

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
    /// Image files (jpg, png)
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Serialize)]
struct Prediction {
    image: String,
    top: Vec<(String, f64)>,
}

pub fn predict(a: PredictArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit predict")?;
    let device = train::parse_device(&a.device)?;
    let ck = TrainedRun::open(&a.checkpoint)?;
    let model = ck.model(device)?;
    let aug = ck.normaliser(device);
    let size = ck.image_size() as u32;
    let channels = ck.in_channels();
    let mut out = Vec::new();
    for path in &a.images {
        let mut img = load_image(path, size)?;
        if channels == 1 {
            img = img
                .to_kind(Kind::Float)
                .mean_dim(3, true, Kind::Float)
                .round()
                .to_kind(Kind::Uint8);
        }
        let logits = predict_logits(
            &model,
            &aug.eval_batch(&img.to_device(device)),
            Default::default(),
            false,
        );
        let probs = logits.softmax(1, Kind::Float).squeeze_dim(0);
        let k = a.top_k.min(ck.classes().len()) as i64;
        let (p, i) = probs.topk(k, 0, true, true);
        let p = Vec::<f64>::try_from(p.to_kind(Kind::Double).to_device(tch::Device::Cpu))?;
        let i = Vec::<i64>::try_from(i.to_device(tch::Device::Cpu))?;
        let top = i
            .iter()
            .zip(p)
            .map(|(&c, p)| (ck.classes()[c as usize].clone(), p))
            .collect();
        out.push(Prediction {
            image: path.display().to_string(),
            top,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for p in &out {
            let items: Vec<String> = p
                .top
                .iter()
                .map(|(c, v)| format!("{c} {:.1}%", 100.0 * v))
                .collect();
            println!("{}: {}", p.image, items.join(", "));
        }
    }
    Ok(())
}
