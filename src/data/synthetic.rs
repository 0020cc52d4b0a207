//! A built-in data set that needs no files: 32x32 RGB images of 10 shape classes drawn at random
//! positions, sizes and colours over textured backgrounds. Each object's box is known, which lets
//! tests check where a model looks.

use super::{Dataset, Split};
use crate::util::mix_seed;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use std::path::Path;
use tch::Tensor;

pub const CLASSES: [&str; 10] = [
    "disk", "square", "triangle", "plus", "ring", "hbar", "vbar", "diamond", "cross", "frame",
];
const SIZE: usize = 32;

#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub train: usize,
    pub test: usize,
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            train: 10_000,
            test: 2_000,
            seed: 17,
        }
    }
}

/// One drawn image (HWC RGB), its class and the object's box `[x0, y0, x1, y1]` (inclusive).
pub struct Drawn {
    pub pixels: Vec<u8>,
    pub label: i64,
    pub bbox: [i64; 4],
}

pub fn generate(spec: &SyntheticSpec) -> Dataset {
    let train = draw_split(spec.train, mix_seed(spec.seed, 1));
    let test = draw_split(spec.test, mix_seed(spec.seed, 2));
    let classes = CLASSES.iter().map(|s| s.to_string()).collect();
    Dataset::new(
        "synthetic",
        classes,
        to_split(&train),
        to_split(&test),
        Path::new("synthetic"),
    )
    .expect("synthetic labels are in range")
}

/// Draws `n` images, classes cycling so that every class is equally frequent.
pub fn draw_split(n: usize, seed: u64) -> Vec<Drawn> {
    (0..n)
        .into_par_iter()
        .map(|i| {
            draw(
                (i % CLASSES.len()) as i64,
                &mut StdRng::seed_from_u64(mix_seed(seed, i as u64)),
            )
        })
        .collect()
}

pub fn to_split(drawn: &[Drawn]) -> Split {
    let pixels: Vec<u8> = drawn
        .iter()
        .flat_map(|d| d.pixels.iter().copied())
        .collect();
    let labels: Vec<i64> = drawn.iter().map(|d| d.label).collect();
    Split {
        images: Tensor::from_slice(&pixels).reshape([drawn.len() as i64, 32, 32, 3]),
        labels: Tensor::from_slice(&labels),
    }
}

fn random_colour(rng: &mut StdRng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

/// Draws one image of class `label`.
pub fn draw(label: i64, rng: &mut StdRng) -> Drawn {
    let bg_a = random_colour(rng);
    let bg_b = random_colour(rng);
    // The object's colour is pushed away from the background's so that it stays visible.
    let fg: [f32; 3] = std::array::from_fn(|c| {
        let mid = (bg_a[c] + bg_b[c]) / 2.0;
        if mid > 0.5 {
            rng.random_range(0.0..0.35)
        } else {
            rng.random_range(0.65..1.0)
        }
    });
    let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
    let freq: f32 = rng.random_range(0.3..1.2);
    let radius: f32 = rng.random_range(5.0..9.0);
    let cx: f32 = rng.random_range(radius..SIZE as f32 - radius);
    let cy: f32 = rng.random_range(radius..SIZE as f32 - radius);
    let mut pixels = vec![0u8; SIZE * SIZE * 3];
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (xf, yf) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = ((xf * angle.cos() + yf * angle.sin()) * freq).sin() * 0.5 + 0.5;
            let noise: f32 = rng.random_range(-0.06..0.06);
            let inside = inside_shape(label, (xf - cx) / radius, (yf - cy) / radius);
            for c in 0..3 {
                let v = if inside {
                    fg[c] + noise
                } else {
                    bg_a[c] * t + bg_b[c] * (1.0 - t) + noise
                };
                pixels[(y * SIZE + x) * 3 + c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    let bbox = [
        (cx - radius).floor() as i64,
        (cy - radius).floor() as i64,
        (cx + radius).ceil() as i64,
        (cy + radius).ceil() as i64,
    ];
    Drawn {
        pixels,
        label,
        bbox,
    }
}

/// Whether the point (u, v), in units of the object's radius from its centre, is inside.
fn inside_shape(label: i64, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    let r = (u * u + v * v).sqrt();
    match label {
        0 => r <= 1.0,
        1 => au <= 0.8 && av <= 0.8,
        2 => (-0.8..=0.8).contains(&v) && au <= (v + 0.8) * 0.56,
        3 => (au <= 0.25 && av <= 0.9) || (av <= 0.25 && au <= 0.9),
        4 => (0.55..=1.0).contains(&r),
        5 => au <= 0.95 && av <= 0.3,
        6 => av <= 0.95 && au <= 0.3,
        7 => au + av <= 1.0,
        8 => ((u - v).abs() <= 0.35 || (u + v).abs() <= 0.35) && au <= 0.9 && av <= 0.9,
        _ => (0.55..=0.9).contains(&au.max(av)),
    }
}
