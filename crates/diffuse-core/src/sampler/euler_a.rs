//! Euler ancestral sampling in σ space (k-diffusion `sample_euler_ancestral`),
//! diffusers `scheduling_euler_ancestral_discrete.py`.

use super::parts::add_noise;
use super::{k_x0, Plan, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::{f32r, interp, NoiseSchedule};

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let timesteps = super::euler::k_timesteps(config, n);
    let train = schedule.sigmas();
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| f32r(interp(t, &train))).collect();
    sigmas.push(0.0);
    Ok(Plan::k_sigmas(config, timesteps, sigmas))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let (from, to) = (sigmas[i], sigmas[i + 1]);
    let x0 = k_x0(s.config.prediction_type, model_output, sample, from)?;
    // Split the step into a deterministic part down to σ_down and fresh noise σ_up.
    let (f, t) = (from as f32, to as f32);
    let sigma_up = (t * t * (f * f - t * t) / (f * f)).sqrt();
    let sigma_down = (t * t - sigma_up * sigma_up).sqrt();
    let derivative = ((sample - &x0)? / from)?;
    let dt = sigma_down as f64 - from;
    let prev = (sample + (derivative * dt)?)?;
    let prev = add_noise(prev, sigma_up as f64, sample, noise)?;
    StepOutput::with_x0(prev, x0)
}
