//! Geometric augmentations: translation (crop with padding) and flips, folded into one gather
//! of row and column indices; random-resized-crop through an affine sampling grid.

use rand::{Rng, rngs::StdRng};
use tch::{Kind, Tensor};

/// Per-image source rows and columns: output pixel (i, j) of image b comes from
/// (rows[b][i], cols[b][j]) of the input, or is zero where the index is -1 (zero padding).
#[derive(Debug, Clone)]
pub struct CropPlan {
    pub rows: Vec<Vec<i64>>,
    pub cols: Vec<Vec<i64>>,
}

impl CropPlan {
    pub fn identity(b: i64, h: i64, w: i64) -> Self {
        CropPlan {
            rows: (0..b).map(|_| (0..h).collect()).collect(),
            cols: (0..b).map(|_| (0..w).collect()).collect(),
        }
    }

    /// Shifts image `b` by (dy, dx) pixels: output (i, j) reads input (i + dy, j + dx), where
    /// out-of-range reads are reflected or become zero.
    pub fn translate(&mut self, b: usize, dy: i64, dx: i64, reflect: bool) {
        let h = self.rows[b].len() as i64;
        let w = self.cols[b].len() as i64;
        let map = |from: i64, shift: i64, n: i64| -> i64 {
            let v = from + shift;
            if from == -1 {
                -1
            } else if reflect {
                reflect_index(v, n)
            } else if (0..n).contains(&v) {
                v
            } else {
                -1
            }
        };
        self.rows[b] = self.rows[b].iter().map(|&r| map(r, dy, h)).collect();
        self.cols[b] = self.cols[b].iter().map(|&c| map(c, dx, w)).collect();
    }

    pub fn flip(&mut self, b: usize) {
        self.cols[b].reverse();
    }

    /// torchvision's RandomCrop(size, padding=pad): an offset uniform in [-pad, pad] per axis.
    pub fn random_translate(&mut self, pad: i64, reflect: bool, rng: &mut StdRng) {
        for b in 0..self.rows.len() {
            let dy = rng.random_range(-pad..=pad);
            let dx = rng.random_range(-pad..=pad);
            self.translate(b, dy, dx, reflect);
        }
    }

    pub fn random_flip(&mut self, p: f64, rng: &mut StdRng) {
        for b in 0..self.rows.len() {
            if rng.random_bool(p) {
                self.flip(b);
            }
        }
    }
}

/// Reflection without repeating the edge (PyTorch's "reflect" padding): -1 -> 1, n -> n-2.
pub fn reflect_index(v: i64, n: i64) -> i64 {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = v.rem_euclid(period);
    if m < n { m } else { period - m }
}

/// Applies a plan to u8 or float NHWC images with one advanced-indexing gather.
pub fn crop_flip_gather(images: &Tensor, plan: &CropPlan) -> Tensor {
    let s = images.size();
    let (b, h, w) = (s[0], s[1], s[2]);
    let dev = images.device();
    // Shift every index by one into a tensor padded with a zero border, so -1 reads zero.
    let padded = images.constant_pad_nd([0, 0, 1, 1, 1, 1]);
    let flat = |v: &Vec<Vec<i64>>| -> Vec<i64> { v.iter().flatten().map(|x| x + 1).collect() };
    let rows = Tensor::from_slice(&flat(&plan.rows))
        .to_device(dev)
        .reshape([b, h, 1]);
    let cols = Tensor::from_slice(&flat(&plan.cols))
        .to_device(dev)
        .reshape([b, 1, w]);
    let bidx = Tensor::arange(b, (Kind::Int64, dev)).reshape([b, 1, 1]);
    padded.index(&[Some(bidx), Some(rows), Some(cols)])
}

/// A crop box in pixels: top row, left column, height, width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResizedCropBox {
    pub top: f64,
    pub left: f64,
    pub height: f64,
    pub width: f64,
}

/// torchvision's RandomResizedCrop.get_params: ten tries at a random area and log-uniform aspect
/// ratio, then a centre crop clamped to the allowed ratios.
pub fn sample_resized_crop(
    h: i64,
    w: i64,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut StdRng,
) -> ResizedCropBox {
    let area = (h * w) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let cw = (target * aspect).sqrt().round() as i64;
        let ch = (target / aspect).sqrt().round() as i64;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.random_range(0..=h - ch) as f64;
            let left = rng.random_range(0..=w - cw) as f64;
            return ResizedCropBox {
                top,
                left,
                height: ch as f64,
                width: cw as f64,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 {
        (w as f64, (w as f64 / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((h as f64 * ratio.1).round(), h as f64)
    } else {
        (w as f64, h as f64)
    };
    ResizedCropBox {
        top: ((h as f64 - ch) / 2.0).floor(),
        left: ((w as f64 - cw) / 2.0).floor(),
        height: ch,
        width: cw,
    }
}

/// Resamples each image's box to the full image size, bilinearly (float NCHW).
pub fn resized_crop(x: &Tensor, boxes: &[ResizedCropBox]) -> Tensor {
    let s = x.size();
    let (b, h, w) = (s[0], s[2], s[3]);
    let (hf, wf) = (h as f64, w as f64);
    // Normalised coordinates (align_corners = false): output u in [-1, 1] spans the box edges.
    let theta: Vec<f32> = boxes
        .iter()
        .flat_map(|bx| {
            let (sx, sy) = (bx.width / wf, bx.height / hf);
            let tx = (2.0 * bx.left + bx.width) / wf - 1.0;
            let ty = (2.0 * bx.top + bx.height) / hf - 1.0;
            [sx as f32, 0.0, tx as f32, 0.0, sy as f32, ty as f32]
        })
        .collect();
    let theta = Tensor::from_slice(&theta)
        .reshape([b, 2, 3])
        .to_device(x.device());
    let grid = Tensor::affine_grid_generator(&theta, [b, s[1], h, w], false);
    // interpolation 0 = bilinear, padding 1 = border.
    x.contiguous().grid_sampler(&grid, 0, 1, false)
}
