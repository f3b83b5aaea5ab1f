//! The EDM schedulers (Karras et al. 2022): diffusers `scheduling_edm_euler.py`
//! (EDMEulerScheduler: Euler in σ with optional churn, Alg. 2 without its second stage), the
//! plan of `scheduling_edm_dpmsolver_multistep.py` (EDMDPMSolverMultistepScheduler, whose
//! steps are DPM-Solver++'s with α = 1, in `dpmpp_2m.rs`), and EDM's own Heun sampler
//! (Alg. 1, with Alg. 2's churn; k-diffusion `sample_heun`), which diffusers lacks: on
//! EDMEulerScheduler's σ, every step but the last corrected by a second model call at its end.
//! All precondition the network as [`crate::edm::Precond`] says: input c_in·x, time
//! c_noise(σ), x₀ = c_skip x + c_out F.

use super::parts::{churned, heun_calls, heun_first_stage, heun_second_stage};
use super::{lin, Extra, Plan, SamplerState, StepIn, StepOutput};
use crate::config::{FinalSigmas, PredictionType, SchedulerClass, SchedulerConfig, SigmaSchedule};
use crate::edm::Precond;
use crate::error::Result;
use crate::rng::NoiseSource;
use crate::schedule::f32r;
use candle_core::Tensor;

/// The preconditioning of an EDM config.
pub(crate) fn precond(config: &SchedulerConfig) -> Precond {
    Precond {
        sigma_data: config.sigma_data,
        negate_out: config.prediction_type == PredictionType::VPrediction,
    }
}

/// `(σ_min, σ_max)` of an EDM config (always set by the parser for these classes).
fn range(config: &SchedulerConfig) -> (f64, f64) {
    (
        config.sigma_min.expect("EDM classes default sigma_min"),
        config.sigma_max.expect("EDM classes default sigma_max"),
    )
}

/// `torch.linspace(start, end, n)` as the pinned torch computes it on the CPU, in float64 and
/// float32: the first half `start + i·step`, the second `end − (n−1−i)·step`, each with one
/// rounding (its kernel is compiled with FMA contraction). Checked against torch 2.15 on four
/// ranges (float32: n = 2..69, 100, 1000; float64: n = 1..119, 1000, 1001); the unfused
/// products of `schedule::linspace_f32` differ from it by an ulp here and there (float32
/// n = 10: 0.6666666 for torch's 0.6666667 at i = 6), which moved EDMDPMSolverMultistep's
/// Karras σ and c_noise by more than 1e-6 relative.
macro_rules! torch_linspace {
    ($name:ident, $t:ty) => {
        fn $name(start: $t, end: $t, n: usize) -> Vec<$t> {
            if n == 1 {
                return vec![start];
            }
            let step = (end - start) / (n - 1) as $t;
            (0..n)
                .map(|i| {
                    if i < n / 2 {
                        step.mul_add(i as $t, start)
                    } else {
                        (-step).mul_add((n - 1 - i) as $t, end)
                    }
                })
                .collect()
        }
    };
}
torch_linspace!(torch_linspace_f64, f64);
torch_linspace!(torch_linspace_f32, f32);

/// `n` σ from σ_max down to σ_min. The Euler (and Heun) class ramps in float64 and rounds to
/// float32; the DPM class computes the Karras ramp in float32 (its `torch.linspace` default
/// dtype); the exponential schedule is float32 in all.
fn sigmas(config: &SchedulerConfig, n: usize) -> Vec<f64> {
    let (lo, hi) = range(config);
    let rho = config.rho;
    match config.sigma_schedule {
        SigmaSchedule::Karras if config.class != SchedulerClass::EdmDpmSolverMultistep => {
            let (min_inv, max_inv) = (lo.powf(1.0 / rho), hi.powf(1.0 / rho));
            torch_linspace_f64(0.0, 1.0, n)
                .into_iter()
                .map(|r| f32r((max_inv + r * (min_inv - max_inv)).powf(rho)))
                .collect()
        }
        SigmaSchedule::Karras => {
            let (min_inv, max_inv) = (lo.powf(1.0 / rho), hi.powf(1.0 / rho));
            let (span, start) = ((min_inv - max_inv) as f32, max_inv as f32);
            torch_linspace_f32(0.0, 1.0, n)
                .into_iter()
                .map(|r| (start + r * span).powf(rho as f32) as f64)
                .collect()
        }
        SigmaSchedule::Exponential => {
            let mut v: Vec<f64> = torch_linspace_f32(lo.ln() as f32, hi.ln() as f32, n)
                .into_iter()
                .map(|l| l.exp() as f64)
                .collect();
            v.reverse();
            v
        }
    }
}

/// `set_timesteps` of both EDM classes: σ, the final σ, timesteps c_noise(σ) and
/// x_T = ε·√(σ_max² + 1) (diffusers' `init_noise_sigma`).
pub(super) fn plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    let mut s = sigmas(config, n);
    let timesteps = s.iter().map(|&x| Precond::c_noise(x)).collect();
    let last = match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        // The Euler (and Heun) class repeats its last σ; the DPM class takes the config's σ_min.
        FinalSigmas::SigmaMin if config.class != SchedulerClass::EdmDpmSolverMultistep => {
            *s.last().expect("n >= 1")
        }
        FinalSigmas::SigmaMin => f32r(range(config).0),
    };
    s.push(last);
    let sigma_max = range(config).1;
    Ok(Plan {
        timesteps,
        sigmas: Some(s),
        init_noise_sigma: (sigma_max * sigma_max + 1.0).sqrt(),
        extra: Extra::None,
    })
}

/// D(x; σ) = c_skip x + c_out F: the x₀ an EDM class forms from a model output.
pub(super) fn denoised(
    config: &SchedulerConfig,
    sample: &Tensor,
    model_output: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    let (c_skip, c_out) = precond(config).skip_out(sigma);
    lin(c_skip, sample, c_out, model_output)
}

/// The Euler part of both EDM samplers' step: churn (γ from `s_churn`, fresh noise to σ̂), x₀
/// at σ̂, and the slope and step size from σ̂ to the next σ; the churned sample comes first.
fn euler_slope(x: StepIn, noise: &mut dyn NoiseSource) -> Result<(Tensor, Tensor, Tensor, f64)> {
    let StepIn(s, i, model_output, sample) = x;
    let (x, sigma_hat) = churned(s, i, sample, noise)?;
    let x0 = denoised(&s.config, &x, model_output, sigma_hat)?;
    let derivative = ((&x - &x0)? / sigma_hat)?;
    let dt = s.planned_sigmas()[i + 1] - sigma_hat;
    Ok((x, x0, derivative, dt))
}

/// EDMEulerScheduler's `step`: one Euler step from σ̂ to the next σ.
pub(super) fn euler_step(x: StepIn, noise: &mut dyn NoiseSource) -> Result<StepOutput> {
    let (x, x0, derivative, dt) = euler_slope(x, noise)?;
    StepOutput::with_x0((x + (derivative * dt)?)?, x0)
}

/// EDM Heun's plan: the Euler class's σ with every σ after the first twice, so the calls run
/// [σ₀, σ₁, σ₁, …, σ_{N−1}, σ_{N−1}] (2N − 1) and the last step, to the final σ, is Euler.
pub(super) fn heun_plan(config: &SchedulerConfig, n: usize) -> Result<Plan> {
    let p = plan(config, n)?;
    let sig = p.sigmas.as_deref().expect("EDM plans have σ");
    let mut sigmas = heun_calls(&sig[..n]);
    sigmas.push(sig[n]);
    Ok(Plan {
        timesteps: heun_calls(&p.timesteps),
        sigmas: Some(sigmas),
        ..p
    })
}

/// EDM Heun's `step`: at a step's first call, churn and an Euler step from σ̂ (as
/// [`euler_step`]); at its second, the slope at the step's end averaged with the first.
pub(super) fn heun_step(
    x: StepIn,
    st: &mut SamplerState,
    noise: &mut dyn NoiseSource,
) -> Result<StepOutput> {
    if st.dt.is_none() {
        let (x, x0, derivative, dt) = euler_slope(x, noise)?;
        StepOutput::with_x0(heun_first_stage(st, x, derivative, dt)?, x0)
    } else {
        let StepIn(s, i, model_output, sample) = x;
        let sigma = s.planned_sigmas()[i];
        let x0 = denoised(&s.config, sample, model_output, sigma)?;
        let d2 = ((sample - &x0)? / sigma)?;
        StepOutput::with_x0(heun_second_stage(st, d2)?, x0)
    }
}
