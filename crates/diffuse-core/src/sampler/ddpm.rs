//! DDPM ancestral sampling (Ho et al. 2020), diffusers `scheduling_ddpm.py`.

use super::parts::add_noise;
use super::{clip_or_threshold, lin, vp_x0, Extra, Plan, StepIn, StepOutput};
use crate::config::{SchedulerConfig, VarianceType};
use crate::error::Result;
use crate::rng::NoiseSource;

pub(super) fn plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    Ok(Plan::spaced(config, n, Extra::FinalAlpha(1.0)))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let t = s.timesteps[i];
    // The previous timestep is the next one planned (or "before 0" at the end).
    let ap = s.alpha_cumprod(t)? as f32;
    let ap_prev = match s.timesteps.get(i + 1) {
        Some(&p) => s.alpha_cumprod(p)? as f32,
        None => 1.0,
    };
    let (bp, bp_prev) = (1.0 - ap, 1.0 - ap_prev);
    let cur_alpha = ap / ap_prev;
    let cur_beta = 1.0 - cur_alpha;

    let x0 = vp_x0(s.config.prediction_type, model_output, sample, ap as f64)?;
    let x0 = clip_or_threshold(&s.config, x0)?;

    // Posterior mean μ̃(x_t, x₀), eq. 7.
    let c_x0 = (ap_prev.sqrt() * cur_beta / bp) as f64;
    let c_xt = (cur_alpha.sqrt() * bp_prev / bp) as f64;
    let mut prev = lin(c_x0, &x0, c_xt, sample)?;

    if t > 0.0 {
        let var = (bp_prev / bp * cur_beta).max(1e-20);
        let std = match s.config.variance_type {
            VarianceType::FixedSmall => var.sqrt(),
            VarianceType::FixedSmallLog => (0.5 * var.ln()).exp(),
            VarianceType::FixedLarge => cur_beta.sqrt(),
        };
        prev = add_noise(prev, std as f64, sample, noise)?;
    }
    StepOutput::with_x0(prev, x0)
}
