//! The pieces several samplers share, so that each sampler file holds only what is its own:
//! the three kinds of plan (β-schedule timesteps, k-diffusion σ, flow-matching σ), the step
//! output with its x₀, fresh noise added at a scale, Karras' churn factor γ, and the two stages
//! of Heun's method (diffusers' `scheduling_heun_discrete.py` and
//! `scheduling_flow_match_heun_discrete.py` share them). Each piece is the same tensor
//! operations in the same order as the code it replaced, so results are bit for bit the same.

use super::{k_init_noise_sigma, Extra, Plan, Sampler, SamplerOptions, SamplerState, StepOutput};
use crate::config::SchedulerConfig;
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::spaced_timesteps;
use candle_core::Tensor;

impl Plan {
    /// DDPM, DDIM, PNDM: `n` timesteps spaced over the β schedule, no σ, x_T = ε.
    pub(super) fn spaced(config: &SchedulerConfig, n: usize, extra: Extra) -> Plan {
        Plan {
            timesteps: spaced_timesteps(
                config.timestep_spacing,
                config.num_train_timesteps,
                n,
                config.steps_offset,
            ),
            sigmas: None,
            init_noise_sigma: 1.0,
            extra,
        }
    }

    /// Euler, Euler ancestral, Heun: σ space with k-diffusion's initial noise scale.
    pub(super) fn k_sigmas(
        config: &SchedulerConfig,
        timesteps: Vec<f64>,
        sigmas: Vec<f64>,
    ) -> Plan {
        Plan {
            init_noise_sigma: k_init_noise_sigma(config, &sigmas),
            timesteps,
            sigmas: Some(sigmas),
            extra: Extra::None,
        }
    }

    /// σ space with x_T = ε (flow matching, the multistep solvers).
    pub(super) fn unit_noise(timesteps: Vec<f64>, sigmas: Vec<f64>) -> Plan {
        Plan {
            timesteps,
            sigmas: Some(sigmas),
            init_noise_sigma: 1.0,
            extra: Extra::None,
        }
    }
}

impl StepOutput {
    /// A step's result with the x₀ estimate it formed.
    pub(super) fn with_x0(prev_sample: Tensor, x0: Tensor) -> Result<StepOutput> {
        Ok(StepOutput {
            prev_sample,
            pred_original_sample: Some(x0),
        })
    }
}

impl Sampler {
    /// The planned σ of a σ-space sampler.
    pub(super) fn planned_sigmas(&self) -> &[f64] {
        self.sigmas.as_deref().expect("planned")
    }
}

/// `x + z·std` with z fresh noise of `like`'s shape, dtype and device.
pub(super) fn add_noise(
    x: Tensor,
    std: f64,
    like: &Tensor,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let z = noise.randn(like.shape(), like.dtype(), like.device())?;
    Ok((x + (z * std)?)?)
}

/// Karras et al.'s churn before step `i` of a σ-space Euler step: γ at σ_i, σ̂ = σ_i(1 + γ)
/// (float32, as diffusers' tensor), and `sample` with fresh noise raising its level to σ̂.
pub(super) fn churned(
    s: &Sampler,
    i: usize,
    sample: &Tensor,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor, f64)> {
    let sigmas = s.planned_sigmas();
    let sigma = sigmas[i];
    let o = &s.options;
    let gamma = churn_gamma(o, sigma, sigmas.len());
    let sigma_hat = crate::schedule::f32r(sigma * (gamma + 1.0));
    let mut x = sample.clone();
    if gamma > 0.0 {
        let extra = (sigma_hat * sigma_hat - sigma * sigma).sqrt() * o.s_noise;
        x = add_noise(x, extra, sample, noise)?;
    }
    Ok((x, sigma_hat))
}

/// Karras et al.'s churn γ at `sigma` (Alg. 2): `s_churn` spread over the `n_sigmas − 1`
/// steps, capped at √2 − 1, only within [`s_tmin`, `s_tmax`].
pub(super) fn churn_gamma(o: &SamplerOptions, sigma: f64, n_sigmas: usize) -> f64 {
    if o.s_tmin <= sigma && sigma <= o.s_tmax {
        (o.s_churn / (n_sigmas - 1) as f64).min(2f64.sqrt() - 1.0)
    } else {
        0.0
    }
}

/// The per-call values of a Heun plan from the per-step ones: every value after the first
/// twice, [v₀, v₁, v₁, …, v_{N−1}, v_{N−1}] (2N − 1 model calls).
pub(super) fn heun_calls(per_step: &[f64]) -> Vec<f64> {
    let mut v = per_step[..1].to_vec();
    for &x in &per_step[1..] {
        v.extend([x, x]);
    }
    v
}

/// Heun's first stage: an Euler step of `dt` along `derivative` from `sample`; the slope, the
/// step size and the start are kept in `st` for the second stage.
pub(super) fn heun_first_stage(
    st: &mut SamplerState,
    sample: Tensor,
    derivative: Tensor,
    dt: f64,
) -> Result<Tensor> {
    let prev = (&sample + (&derivative * dt)?)?;
    st.saved_derivative = Some(derivative);
    st.dt = Some(dt);
    st.saved_sample = Some(sample);
    Ok(prev)
}

/// Heun's second stage: the first stage's step taken again from its start along the mean of
/// its slope and `d2`, the slope at its end.
pub(super) fn heun_second_stage(st: &mut SamplerState, d2: Tensor) -> Result<Tensor> {
    let d1 = st.saved_derivative.take().expect("first stage ran");
    let derivative = ((d1 + d2)? * 0.5)?;
    let dt = st.dt.take().expect("first stage ran");
    let x = st.saved_sample.take().expect("first stage ran");
    Ok((x + (derivative * dt)?)?)
}
