//! Rectified flow / flow matching Euler sampler (Liu et al. 2022; Esser et al. 2024),
//! diffusers `scheduling_flow_match_euler_discrete.py`: x_σ = (1 − σ) x₀ + σ ε, the model
//! predicts u = ε − x₀, and σ is warped by `shift`: σ' = shift·σ / (1 + (shift − 1)·σ).

use super::{lin, Plan, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::{f32r, linspace};

/// σ' = shift·σ / (1 + (shift − 1)·σ).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// The σ of `n` steps (without the final 0), as diffusers' FlowMatch `set_timesteps` makes
/// them: a linspace between the constructor's shifted end points, shifted again, in float32.
pub(super) fn sigmas(config: &SchedulerConfig, n: usize) -> Vec<f64> {
    let t = config.num_train_timesteps as f64;
    // At construction diffusers shifts σ = (1..=T)/T in float32; its end points bound the plan.
    let shift32 = |s: f32| {
        let k = config.shift as f32;
        k * s / (1.0 + (k - 1.0) * s)
    };
    let sigma_max = shift32(1.0) as f64;
    let sigma_min = shift32(1.0 / t as f32) as f64;
    linspace(sigma_max * t, sigma_min * t, n)
        .into_iter()
        .map(|ts| f32r(shift_sigma(ts / t, config.shift)))
        .collect()
}

/// Model time of a σ: σ·T in float32 (diffusers' `sigmas * num_train_timesteps`).
pub(super) fn sigma_to_t(config: &SchedulerConfig, sigma: f64) -> f64 {
    f32r((sigma as f32 * config.num_train_timesteps as f32) as f64)
}

pub(super) fn plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    let mut sigmas = sigmas(config, n);
    let timesteps = sigmas.iter().map(|&s| sigma_to_t(config, s)).collect();
    sigmas.push(0.0);
    Ok(Plan::unit_noise(timesteps, sigmas))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let (sigma, next) = (sigmas[i], sigmas[i + 1]);
    let x0 = lin(1.0, sample, -sigma, model_output)?;
    let prev = if s.config.stochastic_sampling {
        let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
        lin(1.0 - next, &x0, next, &z)?
    } else {
        lin(1.0, sample, next - sigma, model_output)?
    };
    StepOutput::with_x0(prev, x0)
}
