//! Learning-rate schedules as pure functions of the step, so a resumed run continues exactly.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Constant,
    /// Multiply by `gamma` at each epoch in `milestones`.
    Step,
    /// Linear warm-up over `warmup_epochs`, then cosine to 0.
    Cosine,
    /// One cycle: from lr/div up to lr over `pct_start` of training, then down to lr/final_div;
    /// `anneal` picks linear (airbench) or cosine (fastai) ramps.
    OneCycle,
    /// Linear warm-up, then linear decay to 0.
    Linear,
}

/// The shape of one-cycle's ramps (`schedule.anneal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anneal {
    /// Half a cosine (fastai's `fit_one_cycle`).
    #[serde(alias = "cosine")]
    Cos,
    /// Straight lines (airbench).
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_epochs: f64,
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub pct_start: f64,
    pub div: f64,
    pub final_div: f64,
    /// `linear` or `cos` ramps for one-cycle.
    pub anneal: Anneal,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            milestones: vec![],
            gamma: 0.1,
            pct_start: 0.25,
            div: 25.0,
            final_div: 1e4,
            anneal: Anneal::Cos,
        }
    }
}

impl Schedule {
    /// The factor applied to the base learning rate at `step` (0-based) of `total` steps, with
    /// `steps_per_epoch` steps in an epoch.
    pub fn factor(&self, step: usize, total: usize, steps_per_epoch: usize) -> f64 {
        let t = step as f64;
        let total = total.max(1) as f64;
        let warmup = self.warmup_epochs * steps_per_epoch as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Step => {
                let epoch = t / steps_per_epoch.max(1) as f64;
                let passed = self.milestones.iter().filter(|m| epoch >= **m).count();
                self.gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                if t < warmup {
                    (t + 1.0) / warmup
                } else {
                    let p = (t - warmup) / (total - warmup).max(1.0);
                    0.5 * (1.0 + (std::f64::consts::PI * p).cos())
                }
            }
            ScheduleKind::Linear => {
                if t < warmup {
                    (t + 1.0) / warmup
                } else {
                    1.0 - (t - warmup) / (total - warmup).max(1.0)
                }
            }
            ScheduleKind::OneCycle => {
                let peak = (self.pct_start * total).max(1.0);
                let (from, to, p) = if t < peak {
                    (1.0 / self.div, 1.0, t / peak)
                } else {
                    (
                        1.0,
                        1.0 / self.final_div,
                        (t - peak) / (total - peak).max(1.0),
                    )
                };
                self.ramp(from, to, p)
            }
        }
    }

    fn ramp(&self, from: f64, to: f64, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        if self.anneal == Anneal::Linear {
            from + (to - from) * p
        } else {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}
