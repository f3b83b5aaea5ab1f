//! Rectified flow / flow matching Euler sampler (Liu et al. 2022; Esser et al. 2024),
//! diffusers `scheduling_flow_match_euler_discrete.py`: x_σ = (1 − σ) x₀ + σ ε, the model
//! predicts u = ε − x₀, and σ is warped by `shift`: σ' = shift·σ / (1 + (shift − 1)·σ).

use super::{lin, Plan, StepIn, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::{Error, Result};
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

/// `set_timesteps(timesteps=[...])` without `sigmas` (diffusers 0.42.1): the timesteps as
/// float32, σ = timesteps/T and then the shift, all in float32 numpy arithmetic (a float32
/// array with Python scalars stays float32), final σ 0. The model is called at the timesteps
/// as given, not at σ·T: with a shift the two disagree (diffusers warns so). diffusers checks
/// nothing more; here the timesteps must be in (0, T] and strictly descending.
pub(super) fn custom_plan(config: &SchedulerConfig, timesteps: &[f64]) -> Result<Plan> {
    let t_max = config.num_train_timesteps as f64;
    for (i, &t) in timesteps.iter().enumerate() {
        if !(t > 0.0 && t <= t_max) {
            return Err(Error::Sampler(format!(
                "FlowMatchEulerDiscreteScheduler custom timesteps must be in (0, {t_max}], got {t} \
                 at position {i}"
            )));
        }
        if i > 0 && t >= timesteps[i - 1] {
            return Err(Error::Sampler(format!(
                "FlowMatchEulerDiscreteScheduler custom timesteps must be strictly descending, got \
                 {t} after {} at position {i}",
                timesteps[i - 1]
            )));
        }
    }
    let t32: Vec<f32> = timesteps.iter().map(|&t| t as f32).collect();
    let (k, k1, n) = (
        config.shift as f32,
        (config.shift - 1.0) as f32,
        config.num_train_timesteps as f32,
    );
    let mut sigmas: Vec<f64> = t32
        .iter()
        .map(|&t| {
            let s = t / n;
            (k * s / (1.0 + k1 * s)) as f64
        })
        .collect();
    sigmas.push(0.0);
    Ok(Plan::unit_noise(
        t32.into_iter().map(f64::from).collect(),
        sigmas,
    ))
}

pub(super) fn step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let sigmas = s.planned_sigmas();
    let (sigma, next) = (sigmas[i], sigmas[i + 1]);
    let x0 = lin(1.0, sample, -sigma, model_output)?;
    let gamma = s.options.gamma;
    let prev = if s.config.stochastic_sampling && gamma < 1.0 {
        // γ-sampling: Euler to σ_s = (1 − γ)·σ_next (x_s = x + (σ_s − σ)u), then forward
        // noise from σ_s to σ_next: x' = r·x_s + √(σ_next² − r²σ_s²)·z, r = (1 − σ_next)/(1 − σ_s).
        let to = (1.0 - gamma) * next;
        let x_s = lin(1.0, sample, to - sigma, model_output)?;
        let r = (1.0 - next) / (1.0 - to);
        let var = next * next - r * r * to * to;
        if var <= 0.0 {
            x_s
        } else {
            let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
            lin(r, &x_s, var.sqrt(), &z)?
        }
    } else if s.config.stochastic_sampling {
        let z = noise.randn(sample.shape(), sample.dtype(), sample.device())?;
        lin(1.0 - next, &x0, next, &z)?
    } else {
        lin(1.0, sample, next - sigma, model_output)?
    };
    StepOutput::with_x0(prev, x0)
}

#[cfg(test)]
mod tests {
    use crate::config::{SchedulerClass, SchedulerConfig};
    use crate::sampler::Sampler;

    #[test]
    fn custom_timesteps_shift_sigma_and_keep_the_timesteps() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}"#,
        )
        .unwrap();
        let s = Sampler::with_timesteps(&c, &[1000.0, 750.0, 500.0], Default::default()).unwrap();
        assert_eq!(s.timesteps(), [1000.0, 750.0, 500.0]);
        // 3σ/(1 + 2σ) at σ = 1, 0.75, 0.5 (float32), then 0.
        assert_eq!(s.sigmas().unwrap(), [1.0, 0.9f32 as f64, 0.75, 0.0]);
        assert_eq!(s.num_inference_steps(), 3);
        let d = SchedulerConfig::default_for(SchedulerClass::FlowMatchEuler);
        for (ts, needle) in [
            (&[500.0, 1000.0][..], "strictly descending"),
            (&[1001.0, 500.0][..], "(0, 1000]"),
            (&[1000.0, 0.0][..], "(0, 1000]"),
            (&[1000.0, f64::NAN][..], "(0, 1000]"),
            (&[][..], "empty"),
        ] {
            let e = Sampler::with_timesteps(&d, ts, Default::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{ts:?}: {e}");
        }
        let heun = SchedulerConfig::default_for(SchedulerClass::FlowMatchHeun);
        let e = Sampler::with_timesteps(&heun, &[1000.0], Default::default()).unwrap_err();
        assert!(e
            .to_string()
            .contains("FlowMatchHeunDiscreteScheduler does not take custom timesteps"));
    }
}
