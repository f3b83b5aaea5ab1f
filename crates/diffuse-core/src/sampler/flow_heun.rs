//! Heun's second-order method for flow matching, diffusers
//! `scheduling_flow_match_heun_discrete.py`: the σ of [`super::flow`] (with `shift`), each step
//! but the first taken in two model calls, so timesteps run [t0, t1, t1, …, t_{N−1}, t_{N−1}]
//! (2N − 1 calls) and the last step, to σ = 0, is an Euler step. Optional Karras "churn"
//! (`s_churn`, `s_tmin`, `s_tmax`, `s_noise`) as diffusers has it.

use super::parts::{churn_gamma, heun_calls, heun_first_stage, heun_second_stage};
use super::{lin, Plan, SamplerState, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::NoiseSource;

pub(super) fn plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    let sig = super::flow::sigmas(config, n);
    let ts: Vec<f64> = sig
        .iter()
        .map(|&s| super::flow::sigma_to_t(config, s))
        .collect();
    let mut sigmas = heun_calls(&sig);
    sigmas.push(0.0);
    Ok(Plan::unit_noise(heun_calls(&ts), sigmas))
}

pub(super) fn step(
    x: StepIn,
    st: &mut SamplerState,
    noise: &mut dyn NoiseSource,
) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let first_order = st.dt.is_none();
    let (sigma, sigma_next) = if first_order {
        (sigmas[i], sigmas[i + 1])
    } else {
        (sigmas[i - 1], sigmas[i])
    };
    // Churn, in float32 as diffusers computes it on 0-dim tensors.
    let o = &s.options;
    let gamma = churn_gamma(o, sigma, sigmas.len());
    let sigma_hat = (sigma as f32 * (gamma + 1.0) as f32) as f64;
    let sample = if gamma > 0.0 {
        let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
        let (h, s32) = (sigma_hat as f32, sigma as f32);
        let scale = (h * h - s32 * s32).sqrt() as f64;
        lin(1.0, sample, scale * o.s_noise, &z)?
    } else {
        sample.clone()
    };
    let (x0, prev) = if first_order {
        let x0 = lin(1.0, &sample, -sigma, model_output)?;
        let derivative = ((&sample - &x0)? / sigma_hat)?;
        let dt = (sigma_next as f32 - sigma_hat as f32) as f64;
        (x0, heun_first_stage(st, sample, derivative, dt)?)
    } else {
        let x0 = lin(1.0, &sample, -sigma_next, model_output)?;
        let d2 = ((&sample - &x0)? / sigma_next)?;
        (x0, heun_second_stage(st, d2)?)
    };
    StepOutput::with_x0(prev, x0)
}
