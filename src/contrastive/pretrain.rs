//! `convkit supcon`: contrastive pre-training of an encoder with a projection head, monitored
//! by weighted kNN accuracy on the test set, checkpointed and resumable like `train`.

use super::{ContrastMode, ProjectionHead, knn_accuracy, normalize, supcon_loss};
use crate::augment::Augmenter;
use crate::data::loader::{self, DeviceSplit};
use crate::models::{self, Ctx, Model};
use crate::optim::Optimizer;
use crate::train::metrics::{self, EpochMetrics};
use crate::train::{self, Config, Result, RunOptions, TrainError, checkpoint, progress};
use crate::util::{fmt_seconds, mix_seed};
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainSummary {
    pub method: String,
    pub model: String,
    pub dataset: String,
    pub epochs: usize,
    pub train_images: usize,
    pub final_loss: f64,
    /// kNN test accuracy at each evaluation, in order.
    pub knn_accuracy: Vec<f64>,
    pub train_seconds: f64,
    pub wall_seconds: f64,
}

/// `f` applied to every batch of a split (evaluation input: no augmentation), concatenated.
fn over_split(
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
    f: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let index: Vec<i64> = (0..split.len() as i64).collect();
    let parts: Vec<Tensor> = index
        .chunks(batch.max(1))
        .map(|idx| {
            let (images, _) = split.batch(idx);
            tch::no_grad(|| f(&augmenter.eval_batch(&images))).to_kind(Kind::Float)
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Encoder features of a whole split, in evaluation mode, without augmentation: `[N, D]`.
pub fn encoder_features(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
) -> Tensor {
    over_split(split, augmenter, batch, |x| {
        model.net.features(x, &Ctx::eval())
    })
}

/// The global average of every stage's output (stem, layer1, ...), concatenated: `[N, sum C]`.
/// Earlier stages hold more generic features, which carry better to a distant target domain
/// (DINO's linear evaluation likewise concatenates several blocks).
pub fn stage_features(
    model: &Model,
    split: &DeviceSplit,
    augmenter: &Augmenter,
    batch: usize,
) -> Tensor {
    over_split(split, augmenter, batch, |x| {
        let ctx = Ctx::capturing();
        let _ = model.net.features(x, &ctx);
        let pooled: Vec<Tensor> = ctx
            .take_stages()
            .iter()
            .map(|(_, t)| t.mean_dim([2i64, 3].as_slice(), false, Kind::Float))
            .collect();
        Tensor::cat(&pooled, 1)
    })
}

/// `encoder_features`, L2-normalised (the kNN monitor's embedding).
pub fn embed(model: &Model, split: &DeviceSplit, augmenter: &Augmenter, batch: usize) -> Tensor {
    normalize(&encoder_features(model, split, augmenter, batch))
}

fn knn_due(epoch: usize, every: usize, last: usize) -> bool {
    epoch.is_multiple_of(every.max(1)) || epoch == last
}

/// The encoder, its projection head and the optimiser of a contrastive run.
pub struct Parts {
    pub model: Model,
    pub head: ProjectionHead,
    pub optim: Optimizer,
    pub device: Device,
}

pub fn build(cfg: &Config, classes: i64, channels: i64) -> Result<Parts> {
    let device = train::parse_device(&cfg.train.device)?;
    tch::manual_seed(mix_seed(cfg.train.seed, 0xA11CE) as i64);
    let mut model = models::build(&cfg.model.spec(classes, channels), device)?;
    let dim = model.net.classifier().in_features();
    let c = &cfg.contrastive;
    let hidden = if c.head_hidden > 0 {
        c.head_hidden
    } else {
        dim
    };
    let head = ProjectionHead::new(&model.vs.root(), dim, dim, hidden, c.head_out)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    if cfg.train.channels_last {
        model.to_channels_last();
    }
    // The classifier takes no part in pre-training: freeze it so it is neither updated nor decayed.
    let fc = &model.net.classifier().inner;
    let _ = fc.ws.set_requires_grad(false);
    if let Some(b) = &fc.bs {
        let _ = b.set_requires_grad(false);
    }
    let optim = Optimizer::new(&model.vs, &cfg.optim)?;
    Ok(Parts {
        model,
        head,
        optim,
        device,
    })
}

/// One contrastive training step: two augmented views of a u8 batch, encoder, projection head,
/// SupCon (or, without labels, NT-Xent) loss, backward and optimiser update. `convkit bench
/// --pretrain` times exactly this.
pub struct Step<'a> {
    pub model: &'a Model,
    pub head: &'a ProjectionHead,
    pub optim: &'a mut Optimizer,
    pub augmenter: &'a Augmenter,
    pub temperature: f64,
    pub mode: ContrastMode,
}

impl Step<'_> {
    /// Returns the batch's loss.
    pub fn run(
        &mut self,
        images: &Tensor,
        labels: Option<&Tensor>,
        rng: &mut StdRng,
        lr: f64,
    ) -> Result<f64> {
        let b = images.size()[0];
        let views = self.augmenter.two_views(images, rng);
        let z = self
            .head
            .forward(&self.model.net.features(&views, &Ctx::train()));
        let z = z.view([2, b, -1]).transpose(0, 1);
        let loss = supcon_loss(&z, labels, self.temperature, self.mode)
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        self.optim.zero_grad();
        loss.backward();
        self.optim.step(lr);
        Ok(loss.double_value(&[]))
    }
}

/// Pre-trains into `out`; writes metrics.jsonl, checkpoints, summary.json and plots.
pub fn run(cfg: Config, out: &Path, opts: &RunOptions) -> Result<PretrainSummary> {
    let wall = Instant::now();
    crate::util::tune_allocator();
    let _lock = crate::util::RunLock::acquire(out)?;
    let cfg = train::effective_config(cfg, out, opts)?;
    let c = cfg.contrastive.clone();
    let supervised = match c.method.as_str() {
        "supcon" => true,
        "simclr" => false,
        m => {
            return Err(TrainError::Invalid(format!(
                "unknown method '{m}' (supcon or simclr)"
            )));
        }
    };
    let mode: ContrastMode = c.contrast_mode.parse().map_err(TrainError::Invalid)?;
    if cfg.train.batch_size < 2 {
        return Err(TrainError::Invalid(format!(
            "batch size {} is too small for contrastive learning (at least 2; the paper uses 1024)",
            cfg.train.batch_size
        )));
    }
    let data = train::load_data(&cfg, 32)?;
    let Parts {
        mut model,
        head,
        mut optim,
        device,
    } = build(&cfg, data.classes.len() as i64, data.channels())?;
    let ck_path = out.join("checkpoints").join("last.safetensors");
    let (mut history, mut train_seconds) = (Vec::<EpochMetrics>::new(), 0.0);
    if opts.resume {
        let ck = checkpoint::read(&ck_path)?;
        ck.load_into(&mut model)?;
        optim
            .load_state(&ck.section("optim"))
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", ck.path.display())))?;
        history = ck.meta.history.clone();
        train_seconds = ck.meta.train_seconds;
    }
    crate::util::create_dir(&out.join("checkpoints"))?;
    train::clean_run_folder(out);
    crate::util::atomic_write_bytes(&out.join("config.toml"), cfg.to_toml().as_bytes())?;
    let augmenter = Augmenter::new(cfg.augment.clone(), &data.mean, &data.std, device);
    let plain = Augmenter::new(vec![], &data.mean, &data.std, device);
    let (train_split, test_split) = (
        DeviceSplit::new(&data.train, device),
        DeviceSplit::new(&data.test, device),
    );
    train::check_training_size(train_split.len(), cfg.train.batch_size)?;
    let t = &cfg.train;
    let spe = loader::training_steps_per_epoch(train_split.len(), t.batch_size, true);
    let mut trainer = Step {
        model: &model,
        head: &head,
        optim: &mut optim,
        augmenter: &augmenter,
        temperature: c.temperature,
        mode,
    };
    eprintln!(
        "{}: {} ({} train images, 2 views each), encoder {} -> {}-d features -> {}-d projection, temperature {}",
        c.method,
        data.name,
        train_split.len(),
        model.spec.name,
        head.dim_in,
        c.head_out,
        c.temperature
    );
    let end = opts
        .stop_after
        .map_or(t.epochs, |n| (history.len() + n).min(t.epochs));
    for epoch in history.len()..end {
        let order = loader::epoch_order(train_split.len(), t.seed, epoch);
        let batches = loader::training_batches(&order, t.batch_size, true);
        let mut rng = StdRng::seed_from_u64(mix_seed(t.seed, 1_000_000 + epoch as u64));
        let bar = progress::steps_bar(
            batches.len() as u64,
            format!("epoch {}/{}", epoch + 1, t.epochs),
            opts.progress,
        );
        let start = Instant::now();
        let (mut loss_sum, mut lr) = (0.0, cfg.optim.lr);
        for (i, idx) in batches.iter().enumerate() {
            let step = epoch * spe + i;
            lr = cfg.optim.lr * cfg.schedule.factor(step, spe * t.epochs, spe);
            let (images, labels) = train_split.batch(idx);
            let v = trainer.run(&images, supervised.then_some(&labels), &mut rng, lr)?;
            if !v.is_finite() {
                return Err(train::diverged(out, cfg.optim.lr, v, step, epoch, lr));
            }
            loss_sum += v;
            bar.set_message(format!("loss {:.3}", loss_sum / (i + 1) as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        train_seconds += secs;
        let previous = history.last().map_or(0.0, |m| m.test_accuracy);
        let knn = if knn_due(epoch + 1, c.knn_every, t.epochs) {
            let bank = embed(&model, &train_split, &plain, t.eval_batch_size);
            let query = embed(&model, &test_split, &plain, t.eval_batch_size);
            knn_accuracy(
                &query,
                &test_split.labels,
                &bank,
                &train_split.labels,
                data.classes.len() as i64,
                c.knn_k,
                c.knn_temperature,
            )
        } else {
            previous
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / batches.len().max(1) as f64,
            train_accuracy: 0.0,
            test_loss: 0.0,
            test_accuracy: knn,
            test_top5: 0.0,
            epoch_seconds: secs,
            train_seconds,
            images_per_second: (train_split.len() * 2) as f64 / secs.max(1e-9),
        };
        eprintln!(
            "epoch {:>3}/{}  {} loss {:.4}  kNN test accuracy {}  lr {:.4}  {}  {:.0} views/s",
            m.epoch,
            t.epochs,
            c.method,
            m.train_loss,
            if knn_due(epoch + 1, c.knn_every, t.epochs) {
                format!("{:5.1}%", 100.0 * knn)
            } else {
                "    -".into()
            },
            lr,
            fmt_seconds(secs),
            m.images_per_second
        );
        history.push(m);
        metrics::write_jsonl(&out.join("metrics.jsonl"), &history)?;
        let meta = checkpoint::Meta {
            format: checkpoint::FORMAT.into(),
            spec: model.spec.clone(),
            classes: data.classes.clone(),
            mean: data.mean.clone(),
            std: data.std.clone(),
            image_size: data.train.image_shape()[1],
            epoch: epoch + 1,
            history: history.clone(),
            train_seconds,
            config: cfg.to_toml(),
        };
        checkpoint::save(&ck_path, &model, &trainer.optim.state_tensors(), &meta)?;
    }
    let summary = PretrainSummary {
        method: c.method.clone(),
        model: model.spec.name.clone(),
        dataset: data.name.clone(),
        epochs: history.len(),
        train_images: train_split.len(),
        final_loss: history.last().map_or(f64::NAN, |m| m.train_loss),
        knn_accuracy: history
            .iter()
            .filter(|m| knn_due(m.epoch, c.knn_every, t.epochs))
            .map(|m| m.test_accuracy)
            .collect(),
        train_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
    };
    metrics::write_json(&out.join("summary.json"), &summary)?;
    write_plots(out, &history, &c.method)?;
    write_report(out, &summary, &cfg)?;
    eprintln!(
        "\n{} pre-training: {} epochs, final loss {:.4}, kNN accuracy {}; {} of training. Next: convkit probe {}",
        summary.method,
        summary.epochs,
        summary.final_loss,
        summary
            .knn_accuracy
            .iter()
            .map(|a| format!("{:.1}%", 100.0 * a))
            .collect::<Vec<_>>()
            .join(" -> "),
        fmt_seconds(train_seconds),
        out.display()
    );
    Ok(summary)
}

fn write_plots(out: &Path, history: &[EpochMetrics], method: &str) -> std::io::Result<()> {
    let plots = out.join("plots");
    crate::util::create_dir(&plots)?;
    let series = |f: fn(&EpochMetrics) -> f64| crate::report::epoch_series(history, f);
    crate::report::line_chart(
        &plots.join("loss.png"),
        &format!("{method} loss"),
        ("epoch", "loss"),
        &[("train", series(|m| m.train_loss))],
    )?;
    crate::report::line_chart(
        &plots.join("knn.png"),
        "kNN test accuracy",
        ("epoch", "accuracy"),
        &[("kNN", series(|m| m.test_accuracy))],
    )?;
    Ok(())
}

/// `report.html`: the loss and kNN curves and, unless `contrastive.embed_images` is 0, the
/// representation space of the test set (`embed/`: the numbers of `convkit embed` and a t-SNE map).
fn write_report(out: &Path, s: &PretrainSummary, cfg: &Config) -> Result<()> {
    let mut plots = vec!["plots/loss.png".to_string(), "plots/knn.png".to_string()];
    let mut table = crate::experiment::Table::new(&["run"]);
    if cfg.contrastive.embed_images > 0 {
        let spec = super::embed::EmbedSpec {
            images: cfg.contrastive.embed_images,
            device: cfg.train.device.clone(),
            ..Default::default()
        };
        let e = super::embed::run(&[out.to_path_buf()], &out.join("embed"), &spec)?;
        plots.extend(e.rows.iter().map(|r| format!("embed/{}", r.tsne)));
        table = super::embed::table(&e.rows);
    }
    let knn: Vec<String> = s
        .knn_accuracy
        .iter()
        .map(|a| format!("{:.1}%", 100.0 * a))
        .collect();
    let intro = format!(
        "{} pre-training of {} on {} ({} images, {} epochs, {}): final loss {:.4}; weighted kNN \
         test accuracy (k = {}) {}. {}",
        s.method,
        s.model,
        s.dataset,
        s.train_images,
        s.epochs,
        fmt_seconds(s.train_seconds),
        s.final_loss,
        cfg.contrastive.knn_k,
        knn.join(" -> "),
        super::embed::EXPLANATION
    );
    let plots: Vec<&str> = plots.iter().map(String::as_str).collect();
    crate::experiment::write_report(
        out,
        &format!("convkit {}: {}", s.method, s.model),
        &intro,
        &[&table],
        &plots,
        &[format!(
            "convkit embed {} --compare <a cross-entropy run> puts another model beside these numbers.",
            out.display()
        )],
    )?;
    Ok(())
}
