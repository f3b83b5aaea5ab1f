//! DDIM (Song et al. 2021) with η ≥ 0, diffusers `scheduling_ddim.py`.

use super::parts::add_noise;
use super::{clip_or_threshold, lin, vp_x0, Extra, Plan, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::NoiseSchedule;

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let final_alpha = if config.set_alpha_to_one {
        1.0
    } else {
        schedule.alphas_cumprod[0]
    };
    Ok(Plan::spaced(config, n, Extra::FinalAlpha(final_alpha)))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let t = s.timesteps[i];
    // diffusers steps back by T // N whatever the spacing.
    let prev_t = t as i64 - (s.config.num_train_timesteps / s.num_inference_steps) as i64;
    let ap = s.alpha_cumprod(t)? as f32;
    let ap_prev = if prev_t >= 0 {
        s.alpha_cumprod(prev_t as f64)? as f32
    } else {
        s.final_alpha() as f32
    };
    let bp = 1.0 - ap;
    let (sa, sb) = (ap.sqrt() as f64, bp.sqrt() as f64);

    let x0 = vp_x0(s.config.prediction_type, model_output, sample, ap as f64)?;
    let mut eps = match s.config.prediction_type {
        crate::config::PredictionType::Epsilon => model_output.clone(),
        crate::config::PredictionType::Sample => (lin(1.0, sample, -sa, &x0)? / sb)?,
        _ => lin(sa, model_output, sb, sample)?,
    };
    let x0 = clip_or_threshold(&s.config, x0)?;

    // σ_t(η), eq. 16.
    let variance = (1.0 - ap_prev) / bp * (1.0 - ap / ap_prev);
    let std = s.options.eta as f32 * variance.sqrt();
    if s.options.use_clipped_model_output {
        eps = (lin(1.0, sample, -sa, &x0)? / sb)?;
    }
    let dir = (1.0 - ap_prev - std * std).sqrt() as f64;
    let mut prev = lin(ap_prev.sqrt() as f64, &x0, dir, &eps)?;
    if s.options.eta > 0.0 {
        prev = add_noise(prev, std as f64, sample, noise)?;
    }
    StepOutput::with_x0(prev, x0)
}
