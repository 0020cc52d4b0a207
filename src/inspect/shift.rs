//! Shift equivariance and invariance: convolution with weight sharing moves its output along
//! with a shifted input; striding and pooling break this for shifts that are not multiples of
//! the stride (Zhang 2019, "Making convolutional networks shift-invariant again").
//!
//! Shifts are circular (`roll`), so no content leaves the image and a stride-1 circular
//! convolution is exactly equivariant.

use crate::models::{Ctx, Model};
use tch::{Kind, Tensor};

/// Rolls `[.., H, W]` right by `dx` and down by `dy` (fractional shifts interpolate linearly
/// between the two neighbouring whole shifts).
pub fn roll(x: &Tensor, dx: f64, dy: f64) -> Tensor {
    let whole = |t: &Tensor, d: f64, dim: i64| -> Tensor {
        let (lo, frac) = (d.floor(), d - d.floor());
        let a = t.roll([lo as i64].as_slice(), [dim].as_slice());
        if frac == 0.0 {
            return a;
        }
        let b = t.roll([lo as i64 + 1].as_slice(), [dim].as_slice());
        a * (1.0 - frac) + b * frac
    };
    let d = x.dim() as i64;
    whole(&whole(x, dx, d - 1), dy, d - 2)
}

/// ||f(shift(x)) - shift(f(x))|| / ||f(x)||, where the output shifts by k / jump positions.
pub fn relative_error(fx: &Tensor, f_shifted_x: &Tensor, k: i64, jump: i64) -> f64 {
    let expected = roll(fx, k as f64 / jump as f64, k as f64 / jump as f64);
    let num = (f_shifted_x - expected).norm().double_value(&[]);
    num / fx.norm().double_value(&[]).max(1e-12)
}

/// One row of the shift table: a stage (or `prediction`) and its value for k = 1..=max.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShiftRow {
    pub layer: String,
    pub jump: i64,
    pub values: Vec<f64>,
}

/// Relative equivariance error of every stage and the fraction of changed predictions, for
/// diagonal shifts of k = 1..=max_shift pixels of the normalised images `x` `[N, C, H, W]`.
/// `jumps` gives each stage's stride product (from [`super::receptive_fields`]).
pub fn measure(
    model: &Model,
    x: &Tensor,
    jumps: &[(String, i64)],
    max_shift: i64,
) -> Vec<ShiftRow> {
    let run = |input: &Tensor| -> (Vec<(String, Tensor)>, Tensor) {
        let ctx = Ctx::capturing();
        let logits = tch::no_grad(|| model.net.forward(input, &ctx));
        (ctx.take_stages(), logits.argmax(1, false))
    };
    let (base, pred) = run(x);
    let mut rows: Vec<ShiftRow> = base
        .iter()
        .map(|(name, _)| ShiftRow {
            layer: name.clone(),
            jump: jumps.iter().find(|(n, _)| n == name).map_or(1, |(_, j)| *j),
            values: vec![],
        })
        .collect();
    let mut changed = Vec::new();
    for k in 1..=max_shift {
        let (shifted, pred_k) = run(&roll(x, k as f64, k as f64));
        for (row, ((_, a), (_, b))) in rows.iter_mut().zip(base.iter().zip(&shifted)) {
            row.values.push(relative_error(a, b, k, row.jump));
        }
        changed.push(
            pred.ne_tensor(&pred_k)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
        );
    }
    rows.push(ShiftRow {
        layer: "prediction changed".into(),
        jump: 0,
        values: changed,
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn circular_conv(x: &Tensor, w: &Tensor, stride: i64) -> Tensor {
        let p = w.size()[2] / 2;
        x.pad([p, p, p, p], "circular", None::<f64>).conv2d(
            w,
            None::<Tensor>,
            [stride, stride],
            [0, 0],
            [1, 1],
            1,
        )
    }

    #[test]
    fn stride_one_circular_convolution_is_exactly_equivariant() {
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        for k in 1..4 {
            let e = relative_error(
                &circular_conv(&x, &w, 1),
                &circular_conv(&roll(&x, k as f64, k as f64), &w, 1),
                k,
                1,
            );
            assert!(e < 1e-5, "k = {k}: {e}");
        }
    }

    #[test]
    fn striding_and_pooling_break_equivariance_for_odd_shifts() {
        tch::manual_seed(0);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let strided = |x: &Tensor| circular_conv(x, &w, 2);
        let pooled =
            |x: &Tensor| circular_conv(x, &w, 1).max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        for f in [&strided as &dyn Fn(&Tensor) -> Tensor, &pooled] {
            let odd = relative_error(&f(&x), &f(&roll(&x, 1.0, 1.0)), 1, 2);
            let even = relative_error(&f(&x), &f(&roll(&x, 2.0, 2.0)), 2, 2);
            assert!(odd > 0.3, "odd shift error {odd}");
            assert!(even < 1e-5, "a shift by the stride stays exact: {even}");
        }
    }
}
