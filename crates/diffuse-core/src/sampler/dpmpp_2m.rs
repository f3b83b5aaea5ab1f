//! DPM-Solver++(2M) and DPM-Solver multistep (Lu et al. 2022a/b),
//! diffusers `scheduling_dpmsolver_multistep.py`. Orders 1–3, midpoint or Heun update,
//! `lower_order_final`, Karras σ, the SDE variant of DPM-Solver++, and flow-matching σ
//! (`use_flow_sigmas`, `flow_shift`: α_t = 1 − σ, σ_t = σ, as `_sigma_to_alpha_sigma_t` has
//! it); the flow-σ plan of UniPC (`scheduling_unipc_multistep.py`) is here too.

use super::{lin, sigma_to_alpha_sigma_t, Plan, SamplerState, StepIn, StepOutput};
use crate::config::{
    BetaSchedule, DpmAlgorithm, DpmSolverType, FinalSigmas, PredictionType, SchedulerClass,
    SchedulerConfig, TimestepSpacing,
};
use crate::error::{Error, Result};
use crate::rng::NoiseSource;
use crate::schedule::{
    arange_desc, f32r, interp, karras_sigmas, linspace, round_half_even, sigma_to_t, NoiseSchedule,
};
use candle_core::Tensor;

/// Timesteps and σ (final σ included) shared by DPM-Solver and UniPC.
pub(super) fn multistep_plan(
    config: &SchedulerConfig,
    schedule: &NoiseSchedule,
    n: usize,
) -> Result<Plan> {
    if config.use_flow_sigmas {
        return flow_plan(config, schedule, n);
    }
    let t_train = config.num_train_timesteps;
    let is_dpm = config.class == SchedulerClass::DpmSolverMultistep;
    // DPM-Solver can stop early where λ(t) drops under `lambda_min_clipped`.
    let last = if is_dpm && config.lambda_min_clipped > f64::NEG_INFINITY {
        let lambdas: Vec<f64> = schedule
            .alphas_cumprod
            .iter()
            .rev()
            .map(|&a| {
                let a = a as f32;
                (a.sqrt().ln() - (1.0 - a).sqrt().ln()) as f64
            })
            .collect();
        let clipped = lambdas
            .iter()
            .take_while(|&&l| l < config.lambda_min_clipped)
            .count();
        t_train - clipped
    } else {
        t_train
    };
    let mut timesteps: Vec<f64> = match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = linspace(0.0, (last - 1) as f64, n + 1)
                .into_iter()
                .map(round_half_even)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => arange_desc(last as f64, 0.0, t_train as f64 / n as f64)
            .into_iter()
            .map(|x| round_half_even(x) - 1.0)
            .collect(),
    };
    let train = schedule.sigmas();
    let mut sigmas: Vec<f64> = if config.use_karras_sigmas {
        let smin = config.sigma_min.unwrap_or(train[0]);
        let smax = config.sigma_max.unwrap_or(*train.last().expect("T >= 2"));
        let ks = karras_sigmas(smin, smax, n);
        let logs = super::euler::log_sigmas(&train);
        let round = !is_dpm || config.beta_schedule != BetaSchedule::SquaredCosCapV2;
        timesteps = ks
            .iter()
            .map(|&s| {
                let t = sigma_to_t(s, &logs);
                // Cast to int64 (truncation) after optional numpy rounding.
                (if round { round_half_even(t) } else { t }).trunc()
            })
            .collect();
        ks
    } else {
        timesteps.iter().map(|&t| interp(t, &train)).collect()
    };
    let last_sigma = match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin if config.use_karras_sigmas && !is_dpm => {
            *sigmas.last().expect("n >= 1")
        }
        FinalSigmas::SigmaMin => train[0],
    };
    sigmas.push(last_sigma);
    Ok(Plan::unit_noise(
        timesteps,
        sigmas.into_iter().map(f32r).collect(),
    ))
}

/// `set_timesteps` with `use_flow_sigmas` (numpy f64, σ stored as float32, timesteps
/// σ·T cast to int64). The two classes differ, as in diffusers:
/// - DPM-Solver: σ = shift(1 − linspace(1, 1/T, N+1)) flipped, the trailing 0 dropped (so the
///   first σ is shift(1 − 1/T)); the final σ is 0 or, for `sigma_min`, the β schedule's
///   σ₀ = sqrt((1 − ᾱ₀)/ᾱ₀).
/// - UniPC: σ = shift(linspace(1, 1/T, N+1)[:-1]), a first σ within 1e-6 of 1 lowered by 1e-6
///   (log α would be −∞); the final σ is 0 or, for `sigma_min`, the last σ.
fn flow_plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    let t = config.num_train_timesteps as f64;
    let k = config.flow_shift;
    let ends = linspace(1.0, 1.0 / t, n + 1);
    let mut sigmas: Vec<f64> = if config.class == SchedulerClass::DpmSolverMultistep {
        let mut v: Vec<f64> = ends
            .iter()
            .map(|a| super::shift_sigma(1.0 - a, k))
            .rev()
            .collect();
        v.pop();
        v
    } else {
        let mut v: Vec<f64> = ends[..n]
            .iter()
            .map(|&s| super::shift_sigma(s, k))
            .collect();
        if (v[0] - 1.0).abs() < 1e-6 {
            v[0] -= 1e-6;
        }
        v
    };
    let timesteps = sigmas.iter().map(|&s| (s * t).trunc()).collect();
    let last = match (config.final_sigmas_type, config.class) {
        (FinalSigmas::Zero, _) => 0.0,
        (FinalSigmas::SigmaMin, SchedulerClass::DpmSolverMultistep) => schedule.sigmas()[0],
        (FinalSigmas::SigmaMin, _) => *sigmas.last().expect("n >= 1"),
    };
    sigmas.push(last);
    Ok(Plan::unit_noise(
        timesteps,
        sigmas.into_iter().map(f32r).collect(),
    ))
}

pub(super) fn plan(config: &SchedulerConfig, schedule: &NoiseSchedule, n: usize) -> Result<Plan> {
    multistep_plan(config, schedule, n)
}

/// (α_t, σ_t) of a planned σ (diffusers `_sigma_to_alpha_sigma_t`, float32): (1 − σ, σ) on flow
/// σ, (1, σ) for EDM (its inputs are preconditioned), else the VP pair of a k-diffusion σ.
pub(super) fn alpha_sigma(config: &SchedulerConfig, sigma: f64) -> (f64, f64) {
    if config.class.is_edm() {
        (1.0, sigma)
    } else if config.use_flow_sigmas {
        ((1.0f32 - sigma as f32) as f64, sigma)
    } else {
        sigma_to_alpha_sigma_t(sigma)
    }
}

/// λ = log α − log σ at a planned σ, with its (α, σ) pair.
pub(super) fn lambda(config: &SchedulerConfig, sigma: f64) -> (f64, f64, f64) {
    let (a, s) = alpha_sigma(config, sigma);
    (a, s, a.ln() - s.ln())
}

/// Model output → x₀ (DPM-Solver++) or ε (DPM-Solver) at σ.
pub(super) fn convert(
    config: &SchedulerConfig,
    data_prediction: bool,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    let (a, s) = alpha_sigma(config, sigma);
    let p = config.prediction_type;
    if data_prediction {
        let x0 = match p {
            _ if config.class.is_edm() => {
                super::edm::denoised(config, sample, model_output, sigma)?
            }
            PredictionType::Epsilon => (lin(1.0, sample, -s, model_output)? / a)?,
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => lin(a, sample, -s, model_output)?,
            PredictionType::Flow => lin(1.0, sample, -sigma, model_output)?,
        };
        if config.thresholding {
            super::dynamic_threshold(
                &x0,
                config.dynamic_thresholding_ratio,
                config.sample_max_value,
            )
        } else {
            Ok(x0)
        }
    } else {
        let eps = match p {
            PredictionType::Epsilon => model_output.clone(),
            PredictionType::Sample => (lin(1.0, sample, -a, model_output)? / s)?,
            PredictionType::VPrediction => lin(a, model_output, s, sample)?,
            PredictionType::Flow => {
                return Err(Error::config(
                    "prediction_type",
                    "flow_prediction needs algorithm_type dpmsolver++",
                ))
            }
        };
        if config.thresholding {
            let x0 = (lin(1.0, sample, -s, &eps)? / a)?;
            let x0 = super::dynamic_threshold(
                &x0,
                config.dynamic_thresholding_ratio,
                config.sample_max_value,
            )?;
            Ok((lin(1.0, sample, -a, &x0)? / s)?)
        } else {
            Ok(eps)
        }
    }
}

pub(super) fn step(
    x: StepIn,
    st: &mut SamplerState,
    noise: &mut dyn NoiseSource,
) -> Result<StepOutput> {
    let StepIn(s, i, model_output, sample) = x;
    let c = &s.config;
    let sigmas = s.planned_sigmas();
    let n = s.timesteps.len();
    let small = c.lower_order_final && n < 15;
    let lower_final =
        i == n - 1 && (c.euler_at_final || small || c.final_sigmas_type == FinalSigmas::Zero);
    let data_pred = c.algorithm_type != DpmAlgorithm::DpmSolver;
    let m = convert(c, data_pred, model_output, sample, sigmas[i])?;
    st.history.push(m);
    if st.history.len() > c.solver_order {
        st.history.remove(0);
    }
    let z = if c.algorithm_type == DpmAlgorithm::SdeDpmSolverPP {
        Some(noise.randn(sample.shape(), sample.dtype(), sample.device())?)
    } else {
        None
    };
    let hist = &st.history;
    let m0 = &hist[hist.len() - 1];
    let (alpha_t, sigma_t, lambda_t) = lambda(c, sigmas[i + 1]);
    let (alpha_s0, sigma_s0, lambda_s0) = lambda(c, sigmas[i]);
    let h = lambda_t - lambda_s0;
    let first = c.solver_order == 1 || st.lower_order_nums < 1 || lower_final;
    let lower_second = i + 2 == n && small;
    let second = c.solver_order == 2 || st.lower_order_nums < 2 || lower_second;
    let z = z.as_ref();
    let prev = if first {
        match c.algorithm_type {
            DpmAlgorithm::DpmSolverPP => lin(
                sigma_t / sigma_s0,
                sample,
                -alpha_t * ((-h).exp() - 1.0),
                m0,
            )?,
            DpmAlgorithm::DpmSolver => {
                lin(alpha_t / alpha_s0, sample, -sigma_t * (h.exp() - 1.0), m0)?
            }
            DpmAlgorithm::SdeDpmSolverPP => {
                let x = lin(
                    sigma_t / sigma_s0 * (-h).exp(),
                    sample,
                    alpha_t * (1.0 - (-2.0 * h).exp()),
                    m0,
                )?;
                let zs = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
                (x + (z.expect("drawn") * zs)?)?
            }
        }
    } else if second {
        let m1 = &hist[hist.len() - 2];
        let (_, _, lambda_s1) = lambda(c, sigmas[i - 1]);
        let r0 = (lambda_s0 - lambda_s1) / h;
        // D0 = m0, D1 = (m0 − m1)/r0
        let d1 = ((m0 - m1)? * (1.0 / r0))?;
        let eh = (-h).exp() - 1.0;
        match (c.algorithm_type, c.dpm_solver_type) {
            (DpmAlgorithm::DpmSolverPP, DpmSolverType::Midpoint) => {
                (lin(sigma_t / sigma_s0, sample, -alpha_t * eh, m0)?
                    + (d1 * (-0.5 * alpha_t * eh))?)?
            }
            (DpmAlgorithm::DpmSolverPP, DpmSolverType::Heun) => {
                (lin(sigma_t / sigma_s0, sample, -alpha_t * eh, m0)?
                    + (d1 * (alpha_t * (eh / h + 1.0)))?)?
            }
            (DpmAlgorithm::DpmSolver, solver) => {
                let ep = h.exp() - 1.0;
                let c1 = match solver {
                    DpmSolverType::Midpoint => -0.5 * sigma_t * ep,
                    DpmSolverType::Heun => -sigma_t * (ep / h - 1.0),
                };
                (lin(alpha_t / alpha_s0, sample, -sigma_t * ep, m0)? + (d1 * c1)?)?
            }
            (DpmAlgorithm::SdeDpmSolverPP, solver) => {
                let e2 = 1.0 - (-2.0 * h).exp();
                let c1 = match solver {
                    DpmSolverType::Midpoint => 0.5 * alpha_t * e2,
                    DpmSolverType::Heun => alpha_t * (e2 / (-2.0 * h) + 1.0),
                };
                let x = lin(sigma_t / sigma_s0 * (-h).exp(), sample, alpha_t * e2, m0)?;
                let zs = sigma_t * e2.sqrt();
                ((x + (d1 * c1)?)? + (z.expect("drawn") * zs)?)?
            }
        }
    } else {
        third_order(c, hist, sigmas, i, sample, z)?
    };
    if st.lower_order_nums < c.solver_order {
        st.lower_order_nums += 1;
    }
    let x0 = if data_pred {
        Some(hist[hist.len() - 1].clone())
    } else {
        None
    };
    Ok(StepOutput {
        prev_sample: prev,
        pred_original_sample: x0,
    })
}

/// diffusers `multistep_dpm_solver_third_order_update` (the same for the midpoint and Heun
/// solver types): D1, D2 from the last three converted outputs.
fn third_order(
    c: &SchedulerConfig,
    hist: &[Tensor],
    sigmas: &[f64],
    i: usize,
    sample: &Tensor,
    z: Option<&Tensor>,
) -> Result<Tensor> {
    let (alpha_t, sigma_t, lambda_t) = lambda(c, sigmas[i + 1]);
    let (alpha_s0, sigma_s0, lambda_s0) = lambda(c, sigmas[i]);
    let (_, _, lambda_s1) = lambda(c, sigmas[i - 1]);
    let (_, _, lambda_s2) = lambda(c, sigmas[i - 2]);
    let k = hist.len();
    let (m0, m1, m2) = (&hist[k - 1], &hist[k - 2], &hist[k - 3]);
    let (h, h0, h1) = (
        lambda_t - lambda_s0,
        lambda_s0 - lambda_s1,
        lambda_s1 - lambda_s2,
    );
    let (r0, r1) = (h0 / h, h1 / h);
    let d1_0 = ((m0 - m1)? * (1.0 / r0))?;
    let d1_1 = ((m1 - m2)? * (1.0 / r1))?;
    let diff = (&d1_0 - &d1_1)?;
    let d1 = (&d1_0 + (&diff * (r0 / (r0 + r1)))?)?;
    let d2 = (diff * (1.0 / (r0 + r1)))?;
    let x = match c.algorithm_type {
        DpmAlgorithm::DpmSolverPP => {
            let eh = (-h).exp() - 1.0;
            let base = lin(sigma_t / sigma_s0, sample, -alpha_t * eh, m0)?;
            (lin(1.0, &base, alpha_t * (eh / h + 1.0), &d1)?
                + (d2 * (-alpha_t * ((eh + h) / (h * h) - 0.5)))?)?
        }
        DpmAlgorithm::DpmSolver => {
            let ep = h.exp() - 1.0;
            let base = lin(alpha_t / alpha_s0, sample, -sigma_t * ep, m0)?;
            (lin(1.0, &base, -sigma_t * (ep / h - 1.0), &d1)?
                + (d2 * (-sigma_t * ((ep - h) / (h * h) - 0.5)))?)?
        }
        DpmAlgorithm::SdeDpmSolverPP => {
            let e2 = 1.0 - (-2.0 * h).exp();
            let base = lin(sigma_t / sigma_s0 * (-h).exp(), sample, alpha_t * e2, m0)?;
            let x = (lin(1.0, &base, alpha_t * (e2 / (-2.0 * h) + 1.0), &d1)?
                + (d2 * (alpha_t * ((e2 - 2.0 * h) / (2.0 * h).powi(2) - 0.5)))?)?;
            (x + (z.expect("drawn") * (sigma_t * e2.sqrt()))?)?
        }
    };
    Ok(x)
}
