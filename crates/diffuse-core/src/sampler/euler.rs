//! Euler method in σ space (Karras et al. 2022, Alg. 2 with optional churn),
//! diffusers `scheduling_euler_discrete.py`. Also holds the σ planning the Euler family shares.

use super::parts::churned;
use super::{k_x0, Plan, StepIn, StepOutput};
use crate::config::{FinalSigmas, SchedulerConfig, TimestepSpacing};
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::{
    arange_desc, f32r, interp, karras_sigmas, linspace, round_half_even, sigma_to_t, NoiseSchedule,
};

/// Float timesteps of the Euler family for a spacing (float32 values).
pub(super) fn k_timesteps(config: &SchedulerConfig, n: usize) -> Vec<f64> {
    let t_train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = linspace(0.0, (t_train - 1) as f64, n)
                .into_iter()
                .map(f32r)
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = t_train / n;
            (0..n)
                .rev()
                .map(|i| f32r((i * ratio) as f64) + config.steps_offset as f64)
                .map(f32r)
                .collect()
        }
        TimestepSpacing::Trailing => arange_desc(t_train as f64, 0.0, t_train as f64 / n as f64)
            .into_iter()
            .map(|x| f32r(round_half_even(x)) - 1.0)
            .collect(),
    }
}

/// log σ of the training schedule as numpy gets it from a float32 array.
pub(super) fn log_sigmas(train_sigmas: &[f64]) -> Vec<f64> {
    train_sigmas.iter().map(|&s| f32r(s.ln())).collect()
}

/// Timesteps and σ (without the final one) of Euler/Heun: interpolated σ at the timesteps, or
/// the Karras ramp between the end points with timesteps mapped back through log σ.
pub(super) fn k_sigmas(
    config: &SchedulerConfig,
    schedule: &NoiseSchedule,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut timesteps = k_timesteps(config, n);
    let train = schedule.sigmas();
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp(t, &train)).collect();
    if config.use_karras_sigmas {
        let smin = config.sigma_min.unwrap_or(*sigmas.last().expect("n >= 1"));
        let smax = config.sigma_max.unwrap_or(sigmas[0]);
        sigmas = karras_sigmas(smin, smax, n);
        let logs = log_sigmas(&train);
        timesteps = sigmas.iter().map(|&s| f32r(sigma_to_t(s, &logs))).collect();
    }
    (timesteps, sigmas)
}

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let (timesteps, mut sigmas) = k_sigmas(config, schedule, n);
    sigmas.push(match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => schedule.sigmas()[0],
    });
    let sigmas: Vec<f64> = sigmas.into_iter().map(f32r).collect();
    Ok(Plan::k_sigmas(config, timesteps, sigmas))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let sigma = sigmas[i];
    let (x, sigma_hat) = churned(s, i, sample, noise)?;
    let x0 = match s.config.prediction_type {
        // diffusers uses σ̂ for ε and σ for v.
        crate::config::PredictionType::Epsilon => {
            k_x0(s.config.prediction_type, model_output, &x, sigma_hat)?
        }
        _ => k_x0(s.config.prediction_type, model_output, &x, sigma)?,
    };
    let derivative = ((&x - &x0)? / sigma_hat)?;
    let dt = sigmas[i + 1] - sigma_hat;
    let prev = (x + (derivative * dt)?)?;
    StepOutput::with_x0(prev, x0)
}
