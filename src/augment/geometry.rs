//! Geometric augmentations: translation (crop with padding) and flips, folded into one gather
//! of row and column indices; random-resized-crop through an affine sampling grid.

use rand::{Rng, rngs::StdRng};
use tch::{Device, Kind, Tensor};

/// Each image's translation and mirroring, as device tensors of length B so that a whole
/// epoch's draws can be uploaded once and sliced per step (no host-to-device copy, and so no
/// device synchronisation, inside the step loop).
///
/// Output pixel (i, j) of image b reads input (i + dy[b], j' + dx[b]) with j' = W-1-j when
/// flip[b], else j; out-of-range reads are reflected (`reflect`) or zero.
#[derive(Debug)]
pub struct Shifts {
    pub dy: Tensor,
    pub dx: Tensor,
    pub flip: Tensor,
    pub reflect: bool,
}

impl Shifts {
    /// From host values (one per image).
    pub fn new(dy: &[i64], dx: &[i64], flip: &[bool], reflect: bool, device: Device) -> Self {
        let flip: Vec<i64> = flip.iter().map(|&f| f as i64).collect();
        let t = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        Shifts {
            dy: t(dy),
            dx: t(dx),
            flip: t(&flip).gt(0),
            reflect,
        }
    }

    /// Images `start..start + len`.
    pub fn narrow(&self, start: i64, len: i64) -> Shifts {
        Shifts {
            dy: self.dy.narrow(0, start, len),
            dx: self.dx.narrow(0, start, len),
            flip: self.flip.narrow(0, start, len),
            reflect: self.reflect,
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

/// `reflect_index` (or -1 outside when not reflecting) on a device tensor of indices, plus one:
/// the index into the image padded with a one-pixel zero border.
fn padded_source(v: &Tensor, n: i64, reflect: bool) -> Tensor {
    if reflect {
        if n == 1 {
            return v.ones_like();
        }
        let period = 2 * (n - 1);
        let m = v.remainder(period);
        m.where_self(&m.lt(n), &(-&m + period)) + 1
    } else {
        let inside = v.ge(0).logical_and(&v.lt(n));
        (v + 1).where_self(&inside, &v.zeros_like())
    }
}

/// Applies `shifts` to u8 or float NHWC images with one advanced-indexing gather, computed on
/// the images' device.
pub fn shift_flip_gather(images: &Tensor, shifts: &Shifts) -> Tensor {
    let s = images.size();
    let (b, h, w) = (s[0], s[1], s[2]);
    let opts = (Kind::Int64, images.device());
    let rows = Tensor::arange(h, opts).unsqueeze(0) + shifts.dy.unsqueeze(1);
    let j = Tensor::arange(w, opts).unsqueeze(0);
    let mirrored = -&j + (w - 1);
    let cols = mirrored.where_self(&shifts.flip.unsqueeze(1), &j) + shifts.dx.unsqueeze(1);
    let rows = padded_source(&rows, h, shifts.reflect).reshape([b, h, 1]);
    let cols = padded_source(&cols, w, shifts.reflect).reshape([b, 1, w]);
    let padded = images.constant_pad_nd([0, 0, 1, 1, 1, 1]);
    let bidx = Tensor::arange(b, opts).reshape([b, 1, 1]);
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
