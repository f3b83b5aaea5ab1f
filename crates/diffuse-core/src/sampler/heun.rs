//! Heun's second-order method in σ space (Karras et al. 2022, Alg. 1),
//! diffusers `scheduling_heun_discrete.py`: every step but the first is taken in two model
//! calls, so timesteps run [t0, t1, t1, …, t_{N-1}, t_{N-1}].

use super::parts::{heun_calls, heun_first_stage, heun_second_stage};
use super::{k_x0, Plan, SamplerState, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::schedule::{f32r, NoiseSchedule};

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let (ts, sig) = super::euler::k_sigmas(config, schedule, n);
    let sig: Vec<f64> = sig.into_iter().map(f32r).collect();
    let mut sigmas = heun_calls(&sig);
    sigmas.push(0.0);
    let ts: Vec<f64> = ts.into_iter().map(f32r).collect();
    Ok(Plan::k_sigmas(config, heun_calls(&ts), sigmas))
}

pub(super) fn step(x: StepIn, st: &mut SamplerState) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let first_order = st.dt.is_none();
    let (sigma, sigma_next) = if first_order {
        (sigmas[i], sigmas[i + 1])
    } else {
        (sigmas[i - 1], sigmas[i])
    };
    let sigma_input = if first_order { sigma } else { sigma_next };
    let x0 = k_x0(s.config.prediction_type, model_output, sample, sigma_input)?;
    let x0 = if s.config.clip_sample {
        let r = s.config.clip_sample_range;
        x0.clamp(-r, r)?
    } else {
        x0
    };
    let prev = if first_order {
        let derivative = ((sample - &x0)? / sigma)?;
        let dt = sigma_next - sigma;
        heun_first_stage(st, sample.clone(), derivative, dt)?
    } else {
        let d2 = ((sample - &x0)? / sigma_next)?;
        heun_second_stage(st, d2)?
    };
    StepOutput::with_x0(prev, x0)
}
