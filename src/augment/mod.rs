//! Augmentation on whole batches of tensors. Every random choice is drawn on the host from a
//! seeded generator and then applied with tensor ops on whatever device holds the batch, so CPU
//! and GPU runs see identical augmentations and a seed reproduces them.
//!
//! Order of application (fixed, whatever order the recipe lists them in): geometry (crop, flip,
//! random-resized-crop), colour (jitter, grayscale), normalisation, cutout (so cut-out pixels
//! equal the data set's mean colour).

mod colour;
mod geometry;

pub use colour::{ColourJitter, apply_grayscale, apply_jitter, to_gray};
pub use geometry::{
    ResizedCropBox, Shifts, reflect_index, resized_crop, sample_resized_crop, shift_flip_gather,
};

use rand::{Rng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// One augmentation, written in recipes as a short string (see `FromStr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Aug {
    /// Random translation: pad by `pad` (zeros or reflection) and crop back to size.
    Crop {
        pad: i64,
        reflect: bool,
    },
    /// Horizontal flip with probability 0.5.
    Flip,
    /// airbench's alternating flip: each image's flip is random (per image, fixed by the seed)
    /// in even epochs and its complement in odd ones, so every pair of epochs sees both
    /// orientations exactly once. Needs the images' data-set indices; random flip without them.
    AltFlip,
    /// One square of side `size` set to the mean colour (DeVries and Taylor 2017).
    Cutout {
        size: i64,
    },
    /// torchvision's RandomResizedCrop back to the input size.
    ResizedCrop {
        scale: (f64, f64),
        ratio: (f64, f64),
    },
    Jitter(ColourJitter),
    Grayscale {
        p: f64,
    },
}

/// The augmentation a run gets when no recipe chooses one, from what the data is:
///
/// - grayscale images (MNIST, handwriting, symbols; also when repeated to 3 channels): a
///   translation by 1/14 of the side (2 px at 28) and no flip, since a mirrored digit is
///   another shape; Fashion-MNIST adds the flip (a mirrored garment is the same garment);
/// - colour images up to 64 pixels (CIFAR-like photos): the CIFAR policy, a translation by an
///   eighth of the side (4 px at 32) and a horizontal flip (He et al. 2016);
/// - larger colour images: torchvision's ImageNet policy, random-resized crop and flip.
///
/// `side` is the image side the model sees, in pixels; `name` is the data set's. Returns the
/// list and a short reason for the run's first lines.
pub fn policy_for(grayscale: bool, side: i64, name: &str) -> (Vec<Aug>, String) {
    let crop = |pad: i64| Aug::Crop {
        pad,
        reflect: false,
    };
    if name == "fashion-mnist" {
        let why = "Fashion-MNIST: grayscale, garments look the same mirrored";
        return (vec![crop((side / 14).max(2)), Aug::Flip], why.into());
    }
    if grayscale || name == "mnist" {
        let why = "grayscale images: translation only, no flip (a mirrored digit is another shape)";
        return (vec![crop((side / 14).max(2))], why.into());
    }
    if side <= 64 {
        let reason = format!("{side}x{side} colour images: the CIFAR policy");
        return (vec![crop((side / 8).max(1)), Aug::Flip], reason);
    }
    let rrc = Aug::ResizedCrop {
        scale: (0.08, 1.0),
        ratio: (0.75, 4.0 / 3.0),
    };
    let reason = format!("{side}x{side} colour images: torchvision's ImageNet policy");
    (vec![rrc, Aug::Flip], reason)
}

/// Whether u8 NHWC images are grayscale: one channel, or three equal ones (a grayscale folder
/// decoded to RGB, or `data.rgb`).
pub fn is_grayscale(images: &Tensor) -> bool {
    let c = images.size()[3];
    if c == 1 {
        return true;
    }
    let first = images.narrow(3, 0, 1);
    c == 3 && images.eq_tensor(&first).all().int64_value(&[]) == 1
}

impl std::str::FromStr for Aug {
    type Err = String;
    /// `crop:4`, `crop:4:reflect`, `flip`, `cutout:8`, `rrc`, `rrc:0.2-1.0`,
    /// `jitter:0.4,0.4,0.4,0.1:0.8`, `gray:0.2`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize, default: f64| -> Result<f64, String> {
            parts.get(i).map_or(Ok(default), |p| {
                p.parse::<f64>()
                    .map_err(|_| format!("augmentation '{s}': '{p}' is not a number"))
            })
        };
        let aug = match parts[0] {
            "crop" => Aug::Crop {
                pad: num(1, 4.0)? as i64,
                reflect: parts.get(2) == Some(&"reflect"),
            },
            "flip" => Aug::Flip,
            "altflip" => Aug::AltFlip,
            "cutout" => Aug::Cutout {
                size: num(1, 8.0)? as i64,
            },
            "rrc" => {
                let scale = match parts.get(1) {
                    None => (0.08, 1.0),
                    Some(r) => {
                        parse_range(r).ok_or(format!("augmentation '{s}': bad scale range"))?
                    }
                };
                Aug::ResizedCrop {
                    scale,
                    ratio: (3.0 / 4.0, 4.0 / 3.0),
                }
            }
            "jitter" => {
                let f: Vec<f64> = match parts.get(1) {
                    None => vec![0.4, 0.4, 0.4, 0.1],
                    Some(list) => list
                        .split(',')
                        .map(|v| {
                            v.parse::<f64>()
                                .map_err(|_| format!("augmentation '{s}': bad factor '{v}'"))
                        })
                        .collect::<Result<_, _>>()?,
                };
                if f.len() != 4 {
                    return Err(format!(
                        "augmentation '{s}': jitter needs 4 factors b,c,s,h"
                    ));
                }
                Aug::Jitter(ColourJitter {
                    brightness: f[0],
                    contrast: f[1],
                    saturation: f[2],
                    hue: f[3],
                    p: num(2, 1.0)?,
                })
            }
            "gray" | "grayscale" => Aug::Grayscale { p: num(1, 0.2)? },
            other => {
                return Err(format!(
                    "unknown augmentation '{other}' (known: crop, flip, cutout, rrc, jitter, gray)"
                ));
            }
        };
        aug.check()
            .map_err(|p| format!("augmentation '{s}': {p}"))?;
        Ok(aug)
    }
}

impl Aug {
    /// The ranges each augmentation's numbers must lie in (sizes in pixels, probabilities and
    /// scales as fractions).
    fn check(&self) -> Result<(), String> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        match self {
            Aug::Crop { pad, .. } if !(0..=1024).contains(pad) => {
                Err(format!("padding {pad} must be 0 to 1024 pixels"))
            }
            Aug::Cutout { size } if !(1..=4096).contains(size) => {
                Err(format!("size {size} must be 1 to 4096 pixels"))
            }
            Aug::ResizedCrop {
                scale: (lo, hi), ..
            } if !(*lo > 0.0 && lo <= hi && *hi <= 1.0) => {
                Err(format!("scale {lo}-{hi} must satisfy 0 < low <= high <= 1"))
            }
            Aug::Jitter(j)
                if !(unit(j.p)
                    && [j.brightness, j.contrast, j.saturation]
                        .iter()
                        .all(|f| (0.0..=10.0).contains(f))
                    && (0.0..=0.5).contains(&j.hue)) =>
            {
                Err("factors must be 0 to 10, hue 0 to 0.5, probability 0 to 1".into())
            }
            Aug::Grayscale { p } if !unit(*p) => Err(format!("probability {p} must be 0 to 1")),
            _ => Ok(()),
        }
    }
}

/// The SupCon / SimCLR augmentation policy for 32 px images (Khosla et al. 2020): random-resized
/// crop (scale 0.2-1), flip, colour jitter 0.4/0.4/0.4/0.1 with p = 0.8, grayscale p = 0.2.
pub fn contrastive_policy() -> Vec<Aug> {
    [
        "rrc:0.2-1",
        "flip",
        "jitter:0.4,0.4,0.4,0.1:0.8",
        "gray:0.2",
    ]
    .iter()
    .map(|s| s.parse().expect("valid policy"))
    .collect()
}

fn parse_range(s: &str) -> Option<(f64, f64)> {
    let (a, b) = s.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl std::fmt::Display for Aug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Aug::Crop { pad, reflect } => {
                write!(f, "crop:{pad}{}", if *reflect { ":reflect" } else { "" })
            }
            Aug::Flip => write!(f, "flip"),
            Aug::AltFlip => write!(f, "altflip"),
            Aug::Cutout { size } => write!(f, "cutout:{size}"),
            Aug::ResizedCrop { scale, .. } => write!(f, "rrc:{}-{}", scale.0, scale.1),
            Aug::Jitter(j) => write!(
                f,
                "jitter:{},{},{},{}:{}",
                j.brightness, j.contrast, j.saturation, j.hue, j.p
            ),
            Aug::Grayscale { p } => write!(f, "gray:{p}"),
        }
    }
}

impl TryFrom<String> for Aug {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Aug> for String {
    fn from(a: Aug) -> String {
        a.to_string()
    }
}

/// A recipe's augmentation list plus the data set's normalisation.
#[derive(Debug)]
pub struct Augmenter {
    pub augs: Vec<Aug>,
    /// Bilinear resize of every batch to this side, last (small images for ImageNet weights).
    pub resize: Option<i64>,
    /// The epoch being trained and the run's seed (for `altflip`; set by the trainer).
    pub epoch: usize,
    pub seed: u64,
    mean: Tensor,
    std: Tensor,
}

impl Augmenter {
    pub fn new(augs: Vec<Aug>, mean: &[f64], std: &[f64], device: Device) -> Self {
        let c = mean.len() as i64;
        let as_tensor = |v: &[f64]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .reshape([1, c, 1, 1])
                .to_device(device)
        };
        Augmenter {
            augs,
            resize: None,
            epoch: 0,
            seed: 0,
            mean: as_tensor(mean),
            std: as_tensor(std),
        }
    }

    /// u8 NHWC -> normalised float NCHW, without augmentation (evaluation).
    pub fn eval_batch(&self, images: &Tensor) -> Tensor {
        self.network_input(&to_float_nchw(images))
    }

    /// Float NCHW images in [0, 1] as the network takes them in evaluation: normalised, and
    /// resized when `resize` is set (what exported models compute first).
    pub fn network_input(&self, x: &Tensor) -> Tensor {
        self.resized(self.normalise(x))
    }

    fn resized(&self, x: Tensor) -> Tensor {
        match self.resize {
            Some(s) if x.size()[2..] != [s, s] => {
                x.upsample_bilinear2d([s, s], false, None::<f64>, None::<f64>)
            }
            _ => x,
        }
    }

    /// u8 NHWC -> augmented, normalised float NCHW.
    pub fn train_batch(&self, images: &Tensor, rng: &mut StdRng) -> Tensor {
        self.train_batch_indexed(images, None, rng)
    }

    /// Whether `altflip` mirrors the image with data-set index `index` in this epoch.
    pub fn alternating_flip(&self, index: i64) -> bool {
        let first = crate::util::mix_seed(self.seed, 0xF11B_0000 + index as u64) & 1 == 1;
        first ^ (self.epoch % 2 == 1)
    }

    /// `train_batch` for the images whose data-set indices are `index` (for `altflip`).
    pub fn train_batch_indexed(
        &self,
        images: &Tensor,
        index: Option<&[i64]>,
        rng: &mut StdRng,
    ) -> Tensor {
        let n = images.size()[0] as usize;
        let shifts = self.draw_shifts(n, index, rng, images.device());
        self.train_batch_shifted(images, shifts.as_ref(), rng)
    }

    /// Every image's translation and flip for `n` images (data-set indices `index`, for
    /// `altflip`), drawn on the host and placed on `device`; None when the recipe neither
    /// crops nor flips. Several crops add up their offsets (with the last one's padding mode).
    pub fn draw_shifts(
        &self,
        n: usize,
        index: Option<&[i64]>,
        rng: &mut StdRng,
        device: Device,
    ) -> Option<Shifts> {
        let (mut dy, mut dx, mut flip) = (vec![0i64; n], vec![0i64; n], vec![false; n]);
        let (mut reflect, mut any) = (false, false);
        for aug in &self.augs {
            match aug {
                Aug::Crop { pad, reflect: r } => {
                    for b in 0..n {
                        dy[b] += rng.random_range(-pad..=*pad);
                        dx[b] += rng.random_range(-pad..=*pad);
                    }
                    (reflect, any) = (*r, true);
                }
                Aug::Flip => {
                    flip.iter_mut().for_each(|f| *f ^= rng.random_bool(0.5));
                    any = true;
                }
                Aug::AltFlip => {
                    for (b, f) in flip.iter_mut().enumerate() {
                        *f ^= match index {
                            Some(ix) => self.alternating_flip(ix[b]),
                            None => rng.random_bool(0.5),
                        };
                    }
                    any = true;
                }
                _ => {}
            }
        }
        any.then(|| Shifts::new(&dy, &dx, &flip, reflect, device))
    }

    /// u8 NHWC -> augmented, normalised float NCHW, with the geometry already drawn (`shifts`,
    /// one per image) and the remaining random choices drawn from `rng`.
    pub fn train_batch_shifted(
        &self,
        images: &Tensor,
        shifts: Option<&Shifts>,
        rng: &mut StdRng,
    ) -> Tensor {
        let s = images.size();
        let (b, h, w) = (s[0], s[1], s[2]);
        let gathered = match shifts {
            Some(sh) => shift_flip_gather(images, sh),
            None => images.shallow_clone(),
        };
        let mut x = to_float_nchw(&gathered);
        for aug in &self.augs {
            if let Aug::ResizedCrop { scale, ratio } = aug {
                let boxes: Vec<ResizedCropBox> = (0..b)
                    .map(|_| sample_resized_crop(h, w, *scale, *ratio, rng))
                    .collect();
                x = resized_crop(&x, &boxes);
            }
        }
        for aug in &self.augs {
            match aug {
                Aug::Jitter(j) => x = apply_jitter(&x, &j.sample(b, rng)),
                Aug::Grayscale { p } => {
                    let mask: Vec<bool> = (0..b).map(|_| rng.random_bool(*p)).collect();
                    x = apply_grayscale(&x, &mask);
                }
                _ => {}
            }
        }
        x = self.normalise(&x);
        for aug in &self.augs {
            if let Aug::Cutout { size } = aug {
                let centres: Vec<(i64, i64)> = (0..b)
                    .map(|_| (rng.random_range(0..h), rng.random_range(0..w)))
                    .collect();
                x = cutout(&x, &centres, *size);
            }
        }
        self.resized(x)
    }

    /// Two independently augmented views of every image, batched view-major as `[2B, C, H, W]`
    /// (rows 0..B the first view, B..2B the second), as contrastive losses expect.
    pub fn two_views(&self, images: &Tensor, rng: &mut StdRng) -> Tensor {
        let first = self.train_batch(images, rng);
        let second = self.train_batch(images, rng);
        Tensor::cat(&[first, second], 0)
    }

    pub fn normalise(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}

/// u8 colour images `[N, H, W, 3]` as grey `[N, H, W, 1]`: the rounded mean of the channels,
/// which is what a one-channel run sees of a colour file.
pub fn to_grey(images: &Tensor) -> Tensor {
    images
        .to_kind(Kind::Float)
        .mean_dim(3, true, Kind::Float)
        .round()
        .to_kind(Kind::Uint8)
}

/// u8 NHWC -> float NCHW in [0, 1]. The permute keeps channels-last memory, which convolutions
/// handle as well as or better than NCHW.
pub fn to_float_nchw(images: &Tensor) -> Tensor {
    (images.to_kind(Kind::Float) / 255.0).permute([0, 3, 1, 2])
}

/// Sets a `size` x `size` square (clipped at the borders) centred at each `(row, col)` to zero.
pub fn cutout(x: &Tensor, centres: &[(i64, i64)], size: i64) -> Tensor {
    let s = x.size();
    let (b, h, w) = (s[0], s[2], s[3]);
    let dev = x.device();
    let half = size / 2;
    let starts = |f: fn(&(i64, i64)) -> i64| {
        Tensor::from_slice(&centres.iter().map(|c| f(c) - half).collect::<Vec<_>>())
            .to_device(dev)
            .reshape([b, 1, 1, 1])
    };
    let (r0, c0) = (starts(|c| c.0), starts(|c| c.1));
    let opts = (Kind::Int64, dev);
    let rows = Tensor::arange(h, opts).reshape([1, 1, h, 1]);
    let cols = Tensor::arange(w, opts).reshape([1, 1, 1, w]);
    let in_rows = rows
        .ge_tensor(&r0)
        .logical_and(&rows.lt_tensor(&(&r0 + size)));
    let in_cols = cols
        .ge_tensor(&c0)
        .logical_and(&cols.lt_tensor(&(&c0 + size)));
    let hole = in_rows.logical_and(&in_cols);
    x.masked_fill(&hole, 0.0)
}
