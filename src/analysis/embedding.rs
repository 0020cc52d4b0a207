//! Measures of a representation space and a 2-D map of it: alignment and uniformity (Wang and
//! Isola 2020), mean intra- and inter-class cosine similarity, the silhouette score, and exact
//! t-SNE (van der Maaten and Hinton 2008). Everything works on `[N, D]` float tensors; callers
//! L2-normalise first where the definition asks for points on the sphere.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The numbers `convkit embed` reports for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpaceMetrics {
    /// E ||f(x) - f(x+)||^2 over two augmented views of each image (lower: views agree).
    pub alignment: f64,
    /// log E exp(-2 ||f(x) - f(y)||^2) over distinct images (lower: spread over the sphere).
    pub uniformity: f64,
    /// Mean cosine similarity of distinct images of the same class.
    pub intra_class_cosine: f64,
    /// Mean cosine similarity of images of different classes.
    pub inter_class_cosine: f64,
    /// Mean silhouette (Euclidean distance on the unit sphere), -1..1.
    pub silhouette: f64,
}

/// `||z_i - z_j||^2` for all pairs, `[N, N]`, clamped at 0 against rounding.
pub fn pairwise_sq_distances(z: &Tensor) -> Tensor {
    let sq = z.square().sum_dim_intlist(1, true, Kind::Double);
    let gram = z
        .to_kind(Kind::Double)
        .matmul(&z.to_kind(Kind::Double).tr());
    (&sq + sq.tr() - gram * 2.0).clamp_min(0.0)
}

fn off_diagonal(n: i64, device: tch::Device) -> Tensor {
    Tensor::eye(n, (Kind::Bool, device)).logical_not()
}

/// Mean squared distance between matching rows of `z1` and `z2` (Wang and Isola's alignment
/// with alpha = 2).
pub fn alignment(z1: &Tensor, z2: &Tensor) -> f64 {
    (z1 - z2)
        .to_kind(Kind::Double)
        .square()
        .sum_dim_intlist(1, false, Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// Wang and Isola's uniformity with t = 2, as a log-mean-exp over distinct pairs.
pub fn uniformity(z: &Tensor) -> f64 {
    let n = z.size()[0];
    let logits = pairwise_sq_distances(z) * -2.0;
    let masked = logits.masked_fill(
        &off_diagonal(n, z.device()).logical_not(),
        f64::NEG_INFINITY,
    );
    let lse = masked.flatten(0, -1).logsumexp([0i64].as_slice(), false);
    lse.double_value(&[]) - ((n * (n - 1)) as f64).ln()
}

/// (intra, inter): mean cosine similarity over distinct same-class pairs and over
/// different-class pairs. NaN where a kind of pair does not exist.
pub fn class_cosines(z: &Tensor, labels: &Tensor) -> (f64, f64) {
    let zn = crate::models::features::normalize(&z.to_kind(Kind::Double));
    let sim = zn.matmul(&zn.tr());
    let y = labels.to_device(z.device());
    let same = y.unsqueeze(1).eq_tensor(&y.unsqueeze(0));
    let intra = same.logical_and(&off_diagonal(z.size()[0], z.device()));
    let inter = same.logical_not();
    let mean = |mask: &Tensor| {
        let count = mask.sum(Kind::Double).double_value(&[]);
        (&sim * mask).sum(Kind::Double).double_value(&[]) / count
    };
    (mean(&intra), mean(&inter))
}

/// Mean silhouette s(i) = (b - a) / max(a, b), with a the mean distance to the other members of
/// i's class and b the smallest mean distance to another class (scikit-learn's definition: 0 for
/// a point alone in its class).
pub fn silhouette(z: &Tensor, labels: &Tensor, classes: i64) -> f64 {
    let dist = pairwise_sq_distances(z).sqrt();
    let y = labels.to_device(z.device()).to_kind(Kind::Int64);
    let onehot = y.one_hot(classes).to_kind(Kind::Double);
    let sums = dist.matmul(&onehot); // [N, K]: summed distance to each class
    let counts = onehot.sum_dim_intlist(0, false, Kind::Double); // [K]
    let own = onehot.to_kind(Kind::Bool);
    let own_count = counts.index_select(0, &y);
    let a = (&sums * &onehot).sum_dim_intlist(1, false, Kind::Double)
        / (&own_count - 1.0).clamp_min(1.0);
    let means = &sums / counts.clamp_min(1.0).unsqueeze(0);
    let absent = counts.eq(0.0).unsqueeze(0);
    let b = means
        .masked_fill(&own.logical_or(&absent), f64::INFINITY)
        .amin([1i64].as_slice(), false);
    let s = (&b - &a) / a.maximum(&b).clamp_min(1e-12);
    let s = s.masked_fill(&own_count.le(1.0), 0.0);
    s.mean(Kind::Double).double_value(&[])
}

/// Settings of [`tsne`]; the defaults are the original paper's and scikit-learn's.
#[derive(Debug, Clone)]
pub struct TsneSpec {
    pub perplexity: f64,
    pub iterations: usize,
    /// Iterations at the start with P multiplied by `exaggeration` (clusters form first).
    pub exaggeration_iterations: usize,
    pub exaggeration: f64,
}

impl Default for TsneSpec {
    fn default() -> Self {
        TsneSpec {
            perplexity: 30.0,
            iterations: 750,
            exaggeration_iterations: 250,
            exaggeration: 12.0,
        }
    }
}

/// Row-wise conditional probabilities p(j|i) `[N, N]` whose entropy is ln(perplexity): each
/// row's Gaussian precision found by bisection on its logarithm, all rows at once.
pub fn conditional_p(sq_dist: &Tensor, perplexity: f64) -> Tensor {
    let n = sq_dist.size()[0];
    let device = sq_dist.device();
    let target = perplexity.min((n - 1) as f64).ln();
    let diag = Tensor::eye(n, (Kind::Bool, device));
    // Shifting each row by its smallest off-diagonal distance changes no probability and
    // keeps exp() away from underflow.
    let d = sq_dist.masked_fill(&diag, f64::INFINITY);
    let d = &d - d.amin([1i64].as_slice(), true);
    let (mut lo, mut hi) = (
        Tensor::full([n, 1], -30.0, (Kind::Double, device)),
        Tensor::full([n, 1], 30.0, (Kind::Double, device)),
    );
    let mut p = Tensor::zeros([n, n], (Kind::Double, device));
    for _ in 0..64 {
        let log_beta = (&lo + &hi) / 2.0;
        let beta = log_beta.exp();
        let w = (-(&d * &beta)).exp().masked_fill(&diag, 0.0);
        let z = w.sum_dim_intlist(1, true, Kind::Double);
        let dw = (&d.masked_fill(&diag, 0.0) * &w).sum_dim_intlist(1, true, Kind::Double);
        let entropy = z.log() + &beta * dw / &z;
        // Too much entropy means too wide a Gaussian: raise the precision.
        let wider = entropy.gt_tensor(&Tensor::from(target));
        lo = log_beta.where_self(&wider, &lo);
        hi = hi.where_self(&wider, &log_beta);
        p = w / z;
    }
    p
}

/// A 2-D t-SNE map of `x` `[N, D]` (N >= 4), deterministic: initialised from the first two
/// principal components (scaled to standard deviation 1e-4), then gradient descent with
/// momentum and per-coordinate gains, as in the reference implementation.
pub fn tsne(x: &Tensor, spec: &TsneSpec) -> Tensor {
    let x = x.to_kind(Kind::Double);
    let n = x.size()[0];
    let cond = conditional_p(&pairwise_sq_distances(&x), spec.perplexity);
    let p = ((&cond + cond.tr()) / (2.0 * n as f64)).clamp_min(1e-12);
    let mut y = pca_2d(&x);
    let mut update = y.zeros_like();
    let mut gains = y.ones_like();
    let lr = (n as f64 / spec.exaggeration).max(50.0);
    let diag = Tensor::eye(n, (Kind::Bool, x.device()));
    for it in 0..spec.iterations {
        let early = it < spec.exaggeration_iterations;
        let (exaggeration, momentum) = if early {
            (spec.exaggeration, 0.5)
        } else {
            (1.0, 0.8)
        };
        let num = (pairwise_sq_distances(&y) + 1.0)
            .reciprocal()
            .masked_fill(&diag, 0.0);
        let q = (&num / num.sum(Kind::Double)).clamp_min(1e-12);
        let pq = (&p * exaggeration - q) * &num;
        let grad = (pq.sum_dim_intlist(1, true, Kind::Double) * &y - pq.matmul(&y)) * 4.0;
        let same_sign = grad.sign().eq_tensor(&update.sign());
        gains = ((&gains * 0.8).where_self(&same_sign, &(&gains + 0.2))).clamp_min(0.01);
        update = &update * momentum - &gains * &grad * lr;
        y = &y + &update;
        y = &y - y.mean_dim([0i64].as_slice(), true, Kind::Double);
    }
    y.to_kind(Kind::Float)
}

/// The first two principal-component scores, scaled to standard deviation 1e-4.
fn pca_2d(x: &Tensor) -> Tensor {
    let centred = x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
    let (u, s, _) = centred.svd(true, true);
    let scores = u.narrow(1, 0, 2) * s.narrow(0, 0, 2).unsqueeze(0);
    let sd = scores.std(true).double_value(&[]).max(1e-12);
    scores * (1e-4 / sd)
}
