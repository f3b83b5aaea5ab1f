//! The student's times: points of its β schedule (LCMScheduler's boundary scalings) or of
//! flow σ, CD's grid, and EDM's σ mapped onto either (ECT's log-normal draws).

use crate::{Error, Result};
use diffuse_core::config::{SchedulerClass, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;

/// Where on its schedule the student is: the β schedule of an LCM student, or flow σ.
#[derive(Debug, Clone)]
pub enum Family {
    /// ᾱ per training timestep, ln √((1 − ᾱ)/ᾱ) (EDM's log σ, ascending) per timestep, and
    /// LCM's `timestep_scaling`.
    Beta {
        alphas_cumprod: Vec<f64>,
        log_sigmas: Vec<f64>,
        timestep_scaling: f64,
    },
    /// Flow matching with diffusers' σ shift over `num_train_timesteps`.
    Flow {
        shift: f64,
        num_train_timesteps: usize,
    },
}

/// One time of the student's schedule: what the network is given and what f needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The timestep the network is called with.
    pub t: f64,
    /// x = α x₀ + σ ε.
    pub alpha: f64,
    pub sigma: f64,
    /// f = c_skip·x + c_out·x̂₀.
    pub c_skip: f64,
    pub c_out: f64,
}

impl Point {
    /// EDM's σ of this point (σ/α), ∞ at α = 0.
    pub fn ve_sigma(&self) -> f64 {
        self.sigma / self.alpha
    }
}

impl Family {
    /// The family of a student scheduler: LCMScheduler on its β schedule, or a flow scheduler.
    pub fn of(sched: &SchedulerConfig) -> Result<Self> {
        if sched.class.is_flow() {
            return Ok(Family::Flow {
                shift: sched.shift,
                num_train_timesteps: sched.num_train_timesteps,
            });
        }
        if sched.class != SchedulerClass::Lcm {
            return Err(Error::Invalid(format!(
                "[consistency]: the student samples with LCMScheduler (ε, x₀ or v) or FlowMatchEulerDiscreteScheduler (flow); [scheduler] is {}",
                sched.class.class_name()
            )));
        }
        let alphas_cumprod = NoiseSchedule::from_config(sched)?.alphas_cumprod;
        let log_sigmas = alphas_cumprod
            .iter()
            .map(|a| ((1.0 - a) / a).sqrt().ln())
            .collect();
        Ok(Family::Beta {
            alphas_cumprod,
            log_sigmas,
            timestep_scaling: sched.timestep_scaling,
        })
    }

    /// The point at an integer timestep (β) or at σ_flow = t / T (flow).
    pub fn at_timestep(&self, t: f64) -> Point {
        match self {
            Family::Beta {
                alphas_cumprod,
                timestep_scaling,
                ..
            } => {
                let abar = alphas_cumprod[(t.max(0.0) as usize).min(alphas_cumprod.len() - 1)];
                let (c_skip, c_out) = diffuse_core::sampler::lcm_boundary(t, *timestep_scaling);
                Point {
                    t,
                    alpha: abar.sqrt(),
                    sigma: (1.0 - abar).sqrt(),
                    c_skip,
                    c_out,
                }
            }
            Family::Flow {
                num_train_timesteps,
                ..
            } => Self::flow_point(t / *num_train_timesteps as f64, *num_train_timesteps),
        }
    }

    fn flow_point(s: f64, n: usize) -> Point {
        Point {
            t: s * n as f64,
            alpha: 1.0 - s,
            sigma: s,
            c_skip: 0.0,
            c_out: 1.0,
        }
    }

    /// The point of EDM noise level σ (x₀ + σε scaled into the schedule): on a β schedule the
    /// timestep is interpolated in log σ between the training timesteps (clamped to them).
    pub fn at_ve_sigma(&self, ve: f64) -> Point {
        match self {
            Family::Beta {
                log_sigmas: log_s,
                timestep_scaling,
                ..
            } => {
                let ls = ve.max(1e-30).ln();
                let n = log_s.len();
                let t = if ls <= log_s[0] {
                    0.0
                } else if ls >= log_s[n - 1] {
                    (n - 1) as f64
                } else {
                    let hi = log_s.partition_point(|&v| v < ls).max(1);
                    let (a, b) = (log_s[hi - 1], log_s[hi]);
                    (hi - 1) as f64 + (ls - a) / (b - a)
                };
                // α, σ exact for the clamped level.
                let ve = ls.clamp(log_s[0], log_s[n - 1]).exp();
                let alpha = 1.0 / (1.0 + ve * ve).sqrt();
                let (c_skip, c_out) = diffuse_core::sampler::lcm_boundary(t, *timestep_scaling);
                Point {
                    t,
                    alpha,
                    sigma: ve * alpha,
                    c_skip,
                    c_out,
                }
            }
            Family::Flow {
                num_train_timesteps,
                ..
            } => Self::flow_point(ve / (1.0 + ve), *num_train_timesteps),
        }
    }

    /// CD's grid of `n` points, from the least to the most noisy: LCM's DDIM timesteps
    /// (k·T/n − 1, k = 1..=n) on a β schedule, σ = shift(k/n) on flow. The boundary (t = 0)
    /// is the point before the first.
    pub fn grid(&self, n: usize) -> Result<Vec<Point>> {
        match self {
            Family::Beta { alphas_cumprod, .. } => {
                let big_t = alphas_cumprod.len();
                if n == 0 || n > big_t || !big_t.is_multiple_of(n) {
                    return Err(Error::Invalid(format!(
                        "consistency.num_timesteps = {n} must divide num_train_timesteps = {big_t}"
                    )));
                }
                Ok((1..=n)
                    .map(|k| self.at_timestep((k * (big_t / n)) as f64 - 1.0))
                    .collect())
            }
            Family::Flow {
                shift,
                num_train_timesteps,
            } => {
                if n == 0 {
                    return Err(Error::Invalid(
                        "consistency.num_timesteps must be at least 1".into(),
                    ));
                }
                Ok((1..=n)
                    .map(|k| {
                        let s = diffuse_core::sampler::shift_sigma(k as f64 / n as f64, *shift);
                        Self::flow_point(s, *num_train_timesteps)
                    })
                    .collect())
            }
        }
    }

    /// The boundary point t = 0 (f = x there).
    pub fn boundary(&self) -> Point {
        match self {
            Family::Beta { .. } => self.at_timestep(0.0),
            Family::Flow {
                num_train_timesteps,
                ..
            } => Self::flow_point(0.0, *num_train_timesteps),
        }
    }
}
