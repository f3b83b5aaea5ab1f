//! Learning-rate schedules as diffusers' `optimization.get_scheduler` defines them: a factor
//! of the base LR per optimizer step (the step index before the update).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// `train.lr_scheduler`, diffusers' names (default `cosine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrKind {
    Constant,
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at `total`.
    Linear,
    /// Linear warmup, then half a cosine to 0 at `total` (diffusers' `cosine`, num_cycles 0.5).
    #[default]
    Cosine,
}

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub kind: LrKind,
    pub warmup: u64,
    pub total: u64,
}

impl LrSchedule {
    pub fn parse(name: &str, warmup: u64, total: u64) -> Result<Self> {
        let kind = match name {
            "constant" => LrKind::Constant,
            "constant_with_warmup" => LrKind::ConstantWithWarmup,
            "linear" => LrKind::Linear,
            "cosine" => LrKind::Cosine,
            other => {
                return Err(Error::Invalid(format!(
                    "lr_scheduler: unknown value {other:?}; allowed: constant, constant_with_warmup, linear, cosine"
                )))
            }
        };
        Ok(LrSchedule::new(kind, warmup, total))
    }

    pub fn new(kind: LrKind, warmup: u64, total: u64) -> Self {
        LrSchedule {
            kind,
            warmup,
            total,
        }
    }

    /// The LR multiplier at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        if self.kind != LrKind::Constant && step < self.warmup {
            return s / w.max(1.0);
        }
        match self.kind {
            LrKind::Constant | LrKind::ConstantWithWarmup => 1.0,
            LrKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            LrKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}
