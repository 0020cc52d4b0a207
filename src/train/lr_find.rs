//! `convkit lr-find` (Smith 2015, as fastai does it): train with a learning rate that grows
//! exponentially each step, smooth the loss, stop when it explodes, and suggest the rate where
//! the smoothed loss falls fastest.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics;
use crate::train::{self, Trainer};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Fewer recorded steps than this leave no slope to read a suggestion from.
const MIN_STEPS: usize = 10;

#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub start: f64,
    pub end: f64,
    pub steps: usize,
}

impl Default for SweepSpec {
    fn default() -> Self {
        SweepSpec {
            start: 1e-7,
            end: 10.0,
            steps: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LrFind {
    pub lrs: Vec<f64>,
    pub losses: Vec<f64>,
    pub smoothed: Vec<f64>,
    /// The rate at the steepest descent of the smoothed loss.
    pub suggested_lr: f64,
    /// The rate at the smallest smoothed loss, divided by 10 (fastai's other rule of thumb).
    pub min_lr_over_10: f64,
}

/// `steps` rates from `start` to `end`, evenly spaced in log scale.
pub fn exponential_rates(s: &SweepSpec) -> Vec<f64> {
    let n = s.steps.max(2);
    let ratio = (s.end / s.start).ln() / (n - 1) as f64;
    (0..n).map(|i| s.start * (ratio * i as f64).exp()).collect()
}

/// Exponential moving average with bias correction (beta 0.98, as fastai).
pub fn smooth(losses: &[f64]) -> Vec<f64> {
    let beta: f64 = 0.98;
    let mut avg = 0.0;
    losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            avg = beta * avg + (1.0 - beta) * l;
            avg / (1.0 - beta.powi(i as i32 + 1))
        })
        .collect()
}

/// The sweep has gone far enough once the smoothed loss is non-finite or 4x its minimum.
pub fn exploded(losses: &[f64]) -> bool {
    let s = smooth(losses);
    let last = *s.last().unwrap_or(&0.0);
    let best = s.iter().cloned().fold(f64::INFINITY, f64::min);
    !last.is_finite() || (s.len() > 10 && last > 4.0 * best)
}

/// The rate where the smoothed loss falls fastest per unit of log(lr), between the first tenth
/// of the sweep (where the average has not settled) and the minimum; and the rate of the
/// minimum over ten.
pub fn suggest(lrs: &[f64], smoothed: &[f64]) -> (f64, f64) {
    let n = smoothed.len().min(lrs.len());
    let skip = n / 10;
    let min_i = (0..n)
        .filter(|&i| smoothed[i].is_finite())
        .min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))
        .unwrap_or(0);
    let steepest = (skip.max(1)..=min_i)
        .map(|i| {
            let slope = (smoothed[i] - smoothed[i - 1]) / (lrs[i].ln() - lrs[i - 1].ln());
            (i, slope)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(min_i, |(i, _)| i);
    (lrs[steepest], lrs[min_i] / 10.0)
}

/// Runs the sweep for `cfg` (any recipe, pretrained weights and freezing included) and writes
/// `out/lr-find.json` and `out/plots/lr-find.png`.
pub fn run(cfg: Config, spec: &SweepSpec, out: &Path, progress: bool) -> Result<LrFind> {
    if crate::dist::Launch::from_env()?.is_some() {
        return Err(Error::Invalid(
            "lr-find runs in one process: start it without torchrun or srun (its suggestion \
             holds for the global batch of the recipe)"
                .into(),
        ));
    }
    let mut trainer = Trainer::new(cfg, out, false)?;
    train::print_start(&trainer);
    let lrs = exponential_rates(spec);
    eprintln!(
        "lr-find: {} steps from {:.1e} to {:.1e}, batch {}, cycling through the {} training images \
         as often as needed",
        lrs.len(),
        spec.start,
        spec.end,
        trainer.cfg.train.batch_size,
        trainer.splits().0.len()
    );
    let losses = trainer.lr_sweep(&lrs, exploded, progress)?;
    // The sweep cycles through small data, so it stops early only when the loss explodes; a
    // handful of steps would make the suggestion the sweep's first rate, which means nothing.
    if losses.len() < MIN_STEPS.min(lrs.len()) {
        return Err(crate::error::Error::Invalid(format!(
            "lr-find: the loss was not finite after {} steps (rates {:.1e} to {:.1e}); no rate \
             can be suggested: start the sweep lower (--start)",
            losses.len(),
            lrs[0],
            lrs[losses.len().saturating_sub(1)]
        )));
    }
    let smoothed = smooth(&losses);
    let (suggested_lr, min_lr_over_10) = suggest(&lrs, &smoothed);
    let result = LrFind {
        lrs: lrs[..losses.len()].to_vec(),
        losses,
        smoothed,
        suggested_lr,
        min_lr_over_10,
    };
    crate::util::create_dir(&out.join("plots"))?;
    metrics::write_json(&out.join("lr-find.json"), &result)?;
    let points = |v: &[f64]| -> Vec<(f64, f64)> {
        result
            .lrs
            .iter()
            .zip(v)
            .map(|(lr, l)| (lr.log10(), *l))
            .filter(|(_, l)| l.is_finite())
            .collect()
    };
    crate::report::line_chart(
        &out.join("plots").join("lr-find.png"),
        &format!("lr-find: suggested {:.2e}", result.suggested_lr),
        ("log10 learning rate", "training loss"),
        &[
            ("loss", points(&result.losses)),
            ("smoothed", points(&result.smoothed)),
        ],
    )
    .map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_log_spaced_and_the_steepest_descent_is_found() {
        let lrs = exponential_rates(&SweepSpec {
            start: 1e-4,
            end: 1.0,
            steps: 5,
        });
        let want = [1e-4, 1e-3, 1e-2, 1e-1, 1.0];
        assert!(
            lrs.iter()
                .zip(want)
                .all(|(a, b)| (a / b - 1.0).abs() < 1e-12)
        );
        // Loss flat, then a steep drop between 1e-3 and 1e-2, a minimum at 1e-1, then up.
        let smoothed = [2.0, 2.0, 1.0, 0.8, 3.0];
        let (steep, tenth) = suggest(&lrs, &smoothed);
        assert!((steep / 1e-2 - 1.0).abs() < 1e-9 && (tenth / 1e-2 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn smoothing_is_bias_corrected_and_explosion_detected() {
        assert!((smooth(&[3.0])[0] - 3.0).abs() < 1e-12);
        assert!(smooth(&[1.0; 50]).iter().all(|v| (v - 1.0).abs() < 1e-12));
        let mut l = vec![1.0; 20];
        assert!(!exploded(&l));
        l.extend([1e3; 20]);
        assert!(exploded(&l));
        assert!(exploded(&[1.0, f64::NAN]));
    }
}
