//! Pictures for the inspection tools: grids of filters and feature maps, and a heat map over an
//! image, written as PNG.

use image::{Rgb, RgbImage};
use std::path::Path;
use tch::{Kind, Tensor};

/// Min-max normalises a tensor to [0, 1] (a constant tensor becomes 0.5).
pub fn min_max(t: &Tensor) -> Tensor {
    let t = t.to_kind(Kind::Float);
    let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
    if hi > lo {
        (t - lo) / (hi - lo)
    } else {
        t.zeros_like() + 0.5
    }
}

/// `[H, W, 3]` values in [0, 1] -> pixels.
fn to_rgb(t: &Tensor) -> (usize, usize, Vec<u8>) {
    let s = t.size();
    let bytes = (t.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous()
        .flatten(0, -1);
    (
        s[0] as usize,
        s[1] as usize,
        Vec::<u8>::try_from(&bytes).unwrap_or_default(),
    )
}

/// Lays out tiles (`[h, w, 3]` in [0, 1], all the same size) in a grid, each scaled up `scale`
/// times (nearest neighbour) with a 2-pixel white gap.
pub fn grid(tiles: &[Tensor], scale: usize, path: &Path) -> image::ImageResult<()> {
    let n = tiles.len().max(1);
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (th, tw) = tiles
        .first()
        .map(|t| (t.size()[0] as usize, t.size()[1] as usize))
        .unwrap_or((1, 1));
    let (cell_h, cell_w) = (th * scale + 2, tw * scale + 2);
    let mut img = RgbImage::from_pixel(
        (cols * cell_w) as u32,
        (rows * cell_h) as u32,
        Rgb([255; 3]),
    );
    for (i, tile) in tiles.iter().enumerate() {
        let (h, w, px) = to_rgb(tile);
        let (oy, ox) = ((i / cols) * cell_h + 1, (i % cols) * cell_w + 1);
        for y in 0..h * scale {
            for x in 0..w * scale {
                let p = ((y / scale) * w + x / scale) * 3;
                img.put_pixel(
                    (ox + x) as u32,
                    (oy + y) as u32,
                    Rgb([px[p], px[p + 1], px[p + 2]]),
                );
            }
        }
    }
    img.save(path)
}

/// Filters `[O, C, k, k]` as tiles: each min-max normalised on its own, RGB when C = 3, else
/// the mean over channels in gray.
pub fn filter_tiles(w: &Tensor) -> Vec<Tensor> {
    (0..w.size()[0])
        .map(|o| {
            let f = w.get(o);
            let f = if f.size()[0] == 3 {
                f
            } else {
                f.mean_dim(0, true, Kind::Float).repeat([3, 1, 1])
            };
            min_max(&f).permute([1, 2, 0])
        })
        .collect()
}

/// The `n` most active maps of `[C, h, w]` (largest mean), each min-max normalised, gray.
pub fn top_maps(maps: &Tensor, n: i64) -> Vec<Tensor> {
    let means = maps.mean_dim([1i64, 2].as_slice(), false, Kind::Float);
    let k = n.min(maps.size()[0]);
    let (_, idx) = means.topk(k, 0, true, true);
    Vec::<i64>::try_from(&idx)
        .unwrap_or_default()
        .into_iter()
        .map(|c| min_max(&maps.get(c)).unsqueeze(-1).repeat([1, 1, 3]))
        .collect()
}

/// A jet-like colour for v in [0, 1]: blue -> cyan -> yellow -> red.
fn heat(v: &Tensor) -> Tensor {
    let r = (v * 2.0 - 0.5).clamp(0.0, 1.0);
    let g = (Tensor::ones_like(v) - (v * 2.0 - 1.0).abs() * 1.5 + 0.5).clamp(0.0, 1.0);
    let b = (Tensor::ones_like(v) * 1.5 - v * 2.0).clamp(0.0, 1.0);
    Tensor::stack(&[r, g, b], -1)
}

/// The image `[H, W, 3]` in [0, 1] with a heat map `[H, W]` in [0, 1] blended over it.
pub fn overlay(image: &Tensor, cam: &Tensor) -> Tensor {
    image * 0.55 + heat(cam) * 0.45
}
