//! `convkit embed`: what training did to the representation space. For each run (a contrastive
//! encoder, and a cross-entropy model with the same backbone beside it), the encoder's test-set
//! embeddings are measured (alignment, uniformity, intra/inter-class cosine, silhouette, see
//! [`crate::analysis::embedding`]) and drawn as a 2-D t-SNE scatter coloured by class.

use super::normalize;
use crate::analysis::embedding::{self, SpaceMetrics, TsneSpec};
use crate::augment::Augmenter;
use crate::data::loader::DeviceSplit;
use crate::error::{Error, Result};
use crate::metrics;
use crate::report::html::Table;
use crate::train::{self, TrainedRun};
use crate::util::mix_seed;
use rand::{SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

#[derive(Debug, Clone)]
pub struct EmbedSpec {
    /// Test images embedded (the first N of the split's fixed shuffled order).
    pub images: usize,
    pub tsne: TsneSpec,
    pub device: String,
    pub seed: u64,
}

impl Default for EmbedSpec {
    fn default() -> Self {
        EmbedSpec {
            images: 1000,
            tsne: TsneSpec::default(),
            device: "auto".into(),
            seed: 0,
        }
    }
}

/// One model's representation space.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceRow {
    /// A short name: the run folder's name.
    pub name: String,
    /// `supcon`, `simclr` or `cross-entropy`.
    pub training: String,
    pub checkpoint: String,
    pub images: usize,
    pub feature_dim: i64,
    #[serde(flatten)]
    pub metrics: SpaceMetrics,
    /// The t-SNE scatter, relative to the output folder.
    pub tsne: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedSummary {
    pub rows: Vec<SpaceRow>,
}

/// The test images `[N, H, W, C]` u8 and labels of a run's own data set.
fn test_images(run: &TrainedRun, images: usize) -> Result<crate::data::Split> {
    let data = run.test_data(None, Some(images))?;
    if data.test.len() < 4 {
        return Err(Error::Invalid(format!(
            "{}: {} test images; the embedding needs at least 4",
            run.path().display(),
            data.test.len()
        )));
    }
    Ok(data.test)
}

/// Measures one checkpoint and draws its t-SNE map into `out`.
pub fn measure(run: &Path, out: &Path, spec: &EmbedSpec) -> Result<SpaceRow> {
    let device = train::parse_device(&spec.device)?;
    let ck = TrainedRun::open(run)?;
    let model = ck.encoder(device)?;
    let test = test_images(&ck, spec.images)?;
    let split = DeviceSplit::new(&test, device);
    let plain = ck.normaliser(device);
    let z = normalize(&crate::models::features::encoder_features(
        &model, &split, &plain, 500,
    ));
    // Positive pairs for alignment: two views under SupCon's policy, the same draws for every
    // model, so the numbers of two runs compare.
    let policy = crate::config::load(Some("cifar10-supcon"), &[])
        .map_err(|e| Error::Invalid(e.to_string()))?
        .augment;
    let views = Augmenter::new(
        policy,
        &ck.checkpoint.meta.mean,
        &ck.checkpoint.meta.std,
        device,
    );
    let mut rng = StdRng::seed_from_u64(mix_seed(spec.seed, 0xE3BED));
    let (a, b) = two_view_embeddings(&model, &split, &views, &mut rng);
    let labels = split.labels.shallow_clone();
    let classes = ck.classes().len() as i64;
    let (intra, inter) = embedding::class_cosines(&z, &labels);
    let metrics = SpaceMetrics {
        alignment: embedding::alignment(&a, &b),
        uniformity: embedding::uniformity(&z),
        intra_class_cosine: intra,
        inter_class_cosine: inter,
        silhouette: embedding::silhouette(&z, &labels, classes),
    };
    let name = ck.name();
    let training = if ck.is_contrastive() {
        ck.config.contrastive.method.to_string()
    } else {
        "cross-entropy".into()
    };
    let map = embedding::tsne(&z.to_device(Device::Cpu), &spec.tsne);
    let file = format!("tsne-{name}.png");
    crate::util::create_dir(out)?;
    let points: Vec<f64> = Vec::try_from(map.to_kind(tch::Kind::Double).flatten(0, -1))?;
    let points: Vec<(f64, f64)> = points.chunks(2).map(|p| (p[0], p[1])).collect();
    let label_list: Vec<i64> = Vec::try_from(labels.to_device(Device::Cpu))?;
    crate::report::scatter_chart(
        &out.join(&file),
        &format!("t-SNE of {name} ({training}), {} test images", test.len()),
        &points,
        &label_list,
        ck.classes(),
    )
    .map_err(std::io::Error::from)?;
    Ok(SpaceRow {
        name,
        training,
        checkpoint: ck.path().display().to_string(),
        images: test.len(),
        feature_dim: z.size()[1],
        metrics,
        tsne: file,
    })
}

/// L2-normalised encoder embeddings of two augmented views of every image of `split`.
fn two_view_embeddings(
    model: &crate::models::Model,
    split: &DeviceSplit,
    views: &Augmenter,
    rng: &mut StdRng,
) -> (Tensor, Tensor) {
    let index: Vec<i64> = (0..split.len() as i64).collect();
    let (mut first, mut second) = (vec![], vec![]);
    for idx in index.chunks(500) {
        let (images, _) = split.batch(idx);
        let both = tch::no_grad(|| {
            model
                .net
                .features(&views.two_views(&images, rng), &crate::models::Ctx::eval())
        });
        let halves = both.chunk(2, 0);
        first.push(normalize(&halves[0]));
        second.push(normalize(&halves[1]));
    }
    (Tensor::cat(&first, 0), Tensor::cat(&second, 0))
}

/// The side-by-side table of several rows.
pub fn table(rows: &[SpaceRow]) -> Table {
    let mut t = Table::new(&[
        "run",
        "training",
        "alignment",
        "uniformity",
        "intra-class cos",
        "inter-class cos",
        "silhouette",
    ]);
    for r in rows {
        let m = &r.metrics;
        t.rows.push(vec![
            r.name.clone(),
            r.training.clone(),
            format!("{:.3}", m.alignment),
            format!("{:.3}", m.uniformity),
            format!("{:.3}", m.intra_class_cosine),
            format!("{:.3}", m.inter_class_cosine),
            format!("{:.3}", m.silhouette),
        ]);
    }
    t
}

pub const EXPLANATION: &str = "Encoder embeddings of test images, L2-normalised. Alignment: mean \
squared distance between two augmented views of an image (lower: invariant to the augmentations). \
Uniformity: log of the mean exp(-2 d^2) over pairs of images (lower: spread over the sphere). \
Intra-/inter-class cosine: mean similarity of images of the same / of different classes. \
Silhouette: how much closer an image sits to its own class than to the nearest other (-1..1).";

/// Measures every run in `runs` into `out`: `embedding.json`, one `tsne-<run>.png` each, and
/// `report.html` with the table side by side.
pub fn run(runs: &[PathBuf], out: &Path, spec: &EmbedSpec) -> Result<EmbedSummary> {
    let rows = runs
        .iter()
        .map(|r| measure(r, out, spec))
        .collect::<Result<Vec<_>>>()?;
    let summary = EmbedSummary { rows };
    metrics::write_json(&out.join("embedding.json"), &summary)?;
    let plots: Vec<&str> = summary.rows.iter().map(|r| r.tsne.as_str()).collect();
    crate::report::html::write_report(
        out,
        "convkit embed: the representation space",
        EXPLANATION,
        &[&table(&summary.rows)],
        &plots,
        &[],
    )?;
    Ok(summary)
}
