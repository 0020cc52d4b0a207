//! Colour augmentations on float NCHW images in [0, 1]: brightness, contrast, saturation, hue
//! (applied in that fixed order) and random grayscale.

use rand::{Rng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// torchvision's ColorJitter factors, applied to each image with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColourJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
    pub p: f64,
}

/// Per-image factors: multiplicative for brightness, contrast and saturation (1 = unchanged),
/// hue as a fraction of a full turn (0 = unchanged).
#[derive(Debug, Clone)]
pub struct JitterFactors {
    pub brightness: Vec<f64>,
    pub contrast: Vec<f64>,
    pub saturation: Vec<f64>,
    pub hue: Vec<f64>,
}

impl ColourJitter {
    pub fn sample(&self, b: i64, rng: &mut StdRng) -> JitterFactors {
        let mut f = JitterFactors {
            brightness: vec![],
            contrast: vec![],
            saturation: vec![],
            hue: vec![],
        };
        let factor = |amount: f64, rng: &mut StdRng, on: bool| {
            if on && amount > 0.0 {
                rng.random_range((1.0 - amount).max(0.0)..=1.0 + amount)
            } else {
                1.0
            }
        };
        for _ in 0..b {
            let on = rng.random_bool(self.p);
            f.brightness.push(factor(self.brightness, rng, on));
            f.contrast.push(factor(self.contrast, rng, on));
            f.saturation.push(factor(self.saturation, rng, on));
            let hue = if on && self.hue > 0.0 {
                rng.random_range(-self.hue..=self.hue)
            } else {
                0.0
            };
            f.hue.push(hue);
        }
        f
    }
}

/// ITU-R 601 luma, as torchvision's rgb_to_grayscale: `[B, 1, H, W]`.
pub fn to_gray(x: &Tensor) -> Tensor {
    let w = Tensor::from_slice(&[0.299f32, 0.587, 0.114])
        .to_device(x.device())
        .reshape([1, 3, 1, 1]);
    (x * w).sum_dim_intlist(1, true, Kind::Float)
}

fn per_image(v: &[f64], x: &Tensor) -> Tensor {
    Tensor::from_slice(v)
        .to_kind(Kind::Float)
        .to_device(x.device())
        .reshape([v.len() as i64, 1, 1, 1])
}

/// `f x + (1 - f) base`, clamped to [0, 1] (torchvision's `_blend`).
fn blend(x: &Tensor, base: &Tensor, f: &Tensor) -> Tensor {
    let rest: Tensor = f.ones_like() - f;
    (f * x + rest * base).clamp(0.0, 1.0)
}

/// Applies sampled jitter factors. Hue is a rotation of the chroma plane in YIQ space, a close
/// and cheap stand-in for torchvision's round trip through HSV.
pub fn apply_jitter(x: &Tensor, f: &JitterFactors) -> Tensor {
    let mut x = (x * per_image(&f.brightness, x)).clamp(0.0, 1.0);
    let mean = to_gray(&x).mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    let c = per_image(&f.contrast, &x);
    x = blend(&x, &mean, &c);
    let s = per_image(&f.saturation, &x);
    let gray = to_gray(&x);
    x = blend(&x, &gray, &s);
    if f.hue.iter().any(|h| *h != 0.0) {
        x = rotate_hue(&x, &f.hue).clamp(0.0, 1.0);
    }
    x
}

fn rotate_hue(x: &Tensor, turns: &[f64]) -> Tensor {
    const RGB2YIQ: [[f64; 3]; 3] = [
        [0.299, 0.587, 0.114],
        [0.596, -0.274, -0.322],
        [0.211, -0.523, 0.312],
    ];
    // The exact inverse, so that a zero (or full-turn) rotation is the identity.
    let yiq2rgb = inverse(&RGB2YIQ);
    let mats: Vec<f32> = turns
        .iter()
        .flat_map(|t| {
            let (sn, cs) = (t * std::f64::consts::TAU).sin_cos();
            let rot = [[1.0, 0.0, 0.0], [0.0, cs, -sn], [0.0, sn, cs]];
            let m = matmul(&yiq2rgb, &matmul(&rot, &RGB2YIQ));
            m.into_iter()
                .flatten()
                .map(|v| v as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let m = Tensor::from_slice(&mats)
        .reshape([turns.len() as i64, 3, 3])
        .to_device(x.device());
    Tensor::einsum("bij,bjhw->bihw", &[&m, x], None::<i64>)
}

fn inverse(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let cof = |r: usize, c: usize| {
        let (r1, r2, c1, c2) = ((r + 1) % 3, (r + 2) % 3, (c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det: f64 = (0..3).map(|c| m[0][c] * cof(0, c)).sum();
    std::array::from_fn(|i| std::array::from_fn(|j| cof(j, i) / det))
}

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// Replaces the images whose mask is true by their grayscale version (3 equal channels).
pub fn apply_grayscale(x: &Tensor, mask: &[bool]) -> Tensor {
    if !mask.iter().any(|m| *m) {
        return x.shallow_clone();
    }
    let m = Tensor::from_slice(mask)
        .to_device(x.device())
        .reshape([mask.len() as i64, 1, 1, 1]);
    x.where_self(&m.logical_not(), &to_gray(x).expand_as(x))
}
