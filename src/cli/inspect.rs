//! `convkit inspect filters|activations|gradcam|shift`.

use crate::data::folder::load_image;
use crate::inspect::{self, picture, shift};
use crate::metrics;
use crate::train::TrainedRun;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Subcommand, Debug)]
pub enum InspectCommand {
    /// PNG grid of the first convolution's filters
    Filters {
        /// A run folder or checkpoint
        checkpoint: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Per stage: the most active feature maps for an image, output shape, receptive field
    Activations {
        checkpoint: PathBuf,
        image: PathBuf,
        /// Feature maps per stage
        #[arg(long, default_value_t = 16)]
        maps: i64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Grad-CAM heat map of the predicted (or --class) class over the image
    Gradcam {
        checkpoint: PathBuf,
        image: PathBuf,
        /// A class name the model knows (default: the predicted class)
        #[arg(long)]
        class: Option<String>,
        /// The stage whose maps are weighted (default: the last one)
        #[arg(long)]
        layer: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Equivariance error per stage and changed predictions for shifts of 1..8 pixels
    Shift {
        checkpoint: PathBuf,
        /// Data to shift (default: the run's own test images)
        #[arg(long)]
        data: Option<String>,
        /// Test images used
        #[arg(long, default_value_t = 500)]
        images: usize,
        #[arg(long, default_value_t = 8)]
        max_shift: i64,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(subcommand)]
    command: InspectCommand,
}

/// Where the pictures go: `--out`, or `inspect/` in the run folder the checkpoint belongs to,
/// in which case the run's report shows them too (see [`Pictures::finish`]).
struct Pictures {
    dir: PathBuf,
    run: Option<PathBuf>,
}

impl Pictures {
    fn new(out: Option<PathBuf>, trained: &TrainedRun) -> Result<Self> {
        let (dir, run) = match out {
            Some(dir) => (dir, None),
            // Beside the run's report, or beside a checkpoint file that has no run folder.
            None => (
                trained.output_dir().join("inspect"),
                trained.dir.as_ref().map(|d| d.root.clone()),
            ),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self { dir, run })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Adds everything in `inspect/` to the run's report.html, when there is one.
    fn finish(&self) -> Result<()> {
        if let Some(run) = &self.run
            && crate::inspect::report::refresh_inspect_section(run)?
        {
            println!("report: {}", run.join("report.html").display());
        }
        Ok(())
    }
}

/// A file-name-safe tag for an input image, so pictures of several images sit side by side.
fn image_tag(image: &Path) -> String {
    file_tag(
        image
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("image"),
    )
}

fn file_tag(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An image file as the model sees it: u8 `[1, H, W, C]` and the normalised input.
fn model_input(run: &TrainedRun, path: &Path) -> Result<(Tensor, Tensor)> {
    let mut img = load_image(path, run.image_size() as u32)?;
    if run.in_channels() == 1 {
        img = crate::augment::to_grey(&img);
    }
    let x = run.normaliser(Device::Cpu).eval_batch(&img);
    Ok((img, x))
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    crate::train::parallel::refuse_launch("convkit inspect")?;
    match a.command {
        InspectCommand::Filters { checkpoint, out } => filters(&checkpoint, out),
        InspectCommand::Activations {
            checkpoint,
            image,
            maps,
            out,
        } => activations(&checkpoint, &image, maps, out),
        InspectCommand::Gradcam {
            checkpoint,
            image,
            class,
            layer,
            out,
        } => gradcam(&checkpoint, &image, class, layer, out),
        InspectCommand::Shift {
            checkpoint,
            data,
            images,
            max_shift,
            out,
        } => shift_table(&checkpoint, data, images, max_shift, out),
    }
}

fn filters(path: &Path, out: Option<PathBuf>) -> Result<()> {
    let ck = TrainedRun::open(path)?;
    let model = ck.encoder(Device::Cpu)?;
    let (name, w) =
        inspect::first_filters(&model, ck.image_size()).context("the model has no convolution")?;
    let pictures = Pictures::new(out, &ck)?;
    let file = pictures.file("filters.png");
    let k = w.size()[2] as usize;
    picture::grid(&picture::filter_tiles(&w), (48 / k).max(1), &file)?;
    println!(
        "{} filters of {name} ({:?}): {}",
        w.size()[0],
        w.size(),
        file.display()
    );
    pictures.finish()
}

fn activations(path: &Path, image: &Path, maps: i64, out: Option<PathBuf>) -> Result<()> {
    let ck = TrainedRun::open(path)?;
    let model = ck.encoder(Device::Cpu)?;
    let (_, x) = model_input(&ck, image)?;
    let fields =
        inspect::receptive_fields(&inspect::trace(&model, ck.image_size()), &model.parts());
    let pictures = Pictures::new(out, &ck)?;
    let tag = image_tag(image);
    println!(
        "{:<12} {:<18} {:>16} {:>6}",
        "stage", "output", "receptive field", "jump"
    );
    for (stage, t) in inspect::stage_outputs(&model, &x) {
        let tiles = picture::top_maps(&t.get(0), maps);
        let h = t.size()[2] as usize;
        let file = pictures.file(&format!("activations-{tag}-{stage}.png"));
        picture::grid(&tiles, (64 / h).max(1), &file)?;
        let f = fields.iter().find(|f| f.stage == stage);
        println!(
            "{stage:<12} {:<18} {:>16} {:>6}   {}",
            format!("{:?}", t.size()),
            f.map_or("-".into(), |f| format!("{0}x{0} px", f.receptive_field)),
            f.map_or("-".into(), |f| f.jump.to_string()),
            file.display()
        );
    }
    pictures.finish()
}

fn gradcam(
    path: &Path,
    image: &Path,
    class: Option<String>,
    layer: Option<String>,
    out: Option<PathBuf>,
) -> Result<()> {
    let ck = TrainedRun::open(path)?;
    let model = ck.model(Device::Cpu)?;
    let classes = ck.classes();
    let class_index = match &class {
        Some(name) => Some(classes.iter().position(|c| c == name).with_context(|| {
            format!(
                "{}: the model has no class '{name}'; its classes: {}",
                ck.path().display(),
                classes.join(", ")
            )
        })? as i64),
        None => None,
    };
    let (img, x) = model_input(&ck, image)?;
    let stages = inspect::stage_outputs(&model, &x);
    let layer = match layer {
        Some(l) => l,
        None => stages.last().map(|(n, _)| n.clone()).context("no stages")?,
    };
    let (cam, logits) =
        inspect::grad_cam(&model, &x, &layer, class_index).map_err(anyhow::Error::msg)?;
    let probs = logits.softmax(1, Kind::Float).get(0);
    let target = class_index.unwrap_or_else(|| probs.argmax(0, false).int64_value(&[]));
    let size = ck.image_size();
    let picture = img.get(0).to_kind(Kind::Float) / 255.0;
    let picture = if picture.size()[2] == 1 {
        picture.repeat([1, 1, 3])
    } else {
        picture
    };
    let blended = picture::overlay(&picture, &inspect::upsample(&cam, size));
    let pictures = Pictures::new(out, &ck)?;
    let file = pictures.file(&format!(
        "gradcam-{}-{}.png",
        image_tag(image),
        file_tag(&classes[target as usize])
    ));
    picture::grid(&[picture, blended], (224 / size as usize).max(1), &file)?;
    let (px, py) = inspect::peak(&cam, size);
    println!(
        "Grad-CAM of '{}' ({:.1}%) at {layer}: peak at x={px}, y={py}; {}",
        classes[target as usize],
        100.0 * probs.double_value(&[target]),
        file.display()
    );
    pictures.finish()
}

fn shift_table(
    path: &Path,
    data: Option<String>,
    images: usize,
    max_shift: i64,
    out: Option<PathBuf>,
) -> Result<()> {
    let ck = TrainedRun::open(path)?;
    let model = ck.model(Device::Cpu)?;
    let ds = ck.test_data(data.as_deref(), Some(images))?;
    if ds.test.is_empty() {
        bail!("{}: no test images to shift", ds.name);
    }
    let aug = ck.normaliser(Device::Cpu);
    let x = aug.eval_batch(&ds.test.images);
    let jumps: Vec<(String, i64)> =
        inspect::receptive_fields(&inspect::trace(&model, ck.image_size()), &model.parts())
            .into_iter()
            .map(|f| (f.stage, f.jump))
            .collect();
    let rows = shift::measure(&model, &x, &jumps, max_shift);
    let pictures = Pictures::new(out, &ck)?;
    let mut header = format!("{:<20} {:>4}", "layer", "jump");
    for k in 1..=max_shift {
        header.push_str(&format!(" {:>7}", format!("k={k}")));
    }
    println!("{header}");
    for r in &rows {
        let mut line = format!("{:<20} {:>4}", r.layer, r.jump);
        for v in &r.values {
            line.push_str(&format!(" {v:>7.3}"));
        }
        println!("{line}");
    }
    metrics::write_json(&pictures.file("shift.json"), &rows)?;
    let series: Vec<(&str, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| {
            let pts = r
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, *v))
                .collect();
            (r.layer.as_str(), pts)
        })
        .collect();
    let file = pictures.file("shift.png");
    crate::report::line_chart(
        &file,
        "shift equivariance error and changed predictions",
        (
            "shift k (pixels, diagonal)",
            "relative error / fraction changed",
        ),
        &series,
    )?;
    println!(
        "{} images; relative error = ||f(shift(x)) - shift(f(x))|| / ||f(x)||, output shifted by k/jump; {}",
        ds.test.len(),
        file.display()
    );
    pictures.finish()
}
