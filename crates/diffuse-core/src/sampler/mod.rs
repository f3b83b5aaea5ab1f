//! Samplers: one immutable plan per (config, step count), one explicit state per request.
//!
//! Each file mirrors one diffusers scheduler (`schedulers/scheduling_*.py`): `set_timesteps`
//! becomes [`Sampler::new`], `step` becomes [`Sampler::step`], and whatever diffusers keeps on
//! `self` between steps lives in a [`SamplerState`] the caller owns, so one `Sampler` can serve
//! any number of concurrent requests. [`sample`] is the k-diffusion style loop over a
//! [`Denoiser`] with an explicit noise source and an `on_step` callback.

mod ddim;
mod ddpm;
mod dpmpp_2m;
pub mod edit;
mod edm;
mod euler;
mod euler_a;
mod flow;
mod flow_heun;

pub use flow::shift_sigma;
mod heun;
mod lcm;
pub use lcm::lcm_boundary;
mod parts;
mod plms;
mod unipc;

use crate::config::{SchedulerClass, SchedulerConfig};
use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::rng::NoiseSource;
use crate::schedule::NoiseSchedule;
use candle_core::Tensor;
use std::ops::ControlFlow;

/// Per-request options that diffusers passes to `step()` rather than to the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOptions {
    /// DDIM η: 0 is deterministic DDIM, 1 matches DDPM's posterior variance.
    pub eta: f64,
    /// DDIM: recompute ε from the clipped x₀.
    pub use_clipped_model_output: bool,
    /// Euler "churn" (Karras et al. 2022, Alg. 2); 0 disables it.
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
    /// Consistency γ-sampling (Kim et al. 2024, "Consistency Trajectory Models"; diffusers'
    /// `TCDScheduler` calls it `gamma`) for LCM and stochastic FlowMatch Euler: each step jumps
    /// deterministically to s = (1 − γ)·t_next and is noised from s to t_next. 1 (the default)
    /// re-noises from x̂₀ as diffusers' LCMScheduler does; 0 is deterministic (DDIM-like).
    pub gamma: f64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            eta: 0.0,
            use_clipped_model_output: false,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
            gamma: 1.0,
        }
    }
}

/// The result of one step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// x at the next timestep.
    pub prev_sample: Tensor,
    /// The model's x₀ estimate at this step, where the sampler forms one (for previews).
    pub pred_original_sample: Option<Tensor>,
}

/// What a sampler carries from one step to the next (diffusers keeps this on the scheduler).
#[derive(Debug, Clone, Default)]
pub struct SamplerState {
    /// Index of the next step.
    index: usize,
    /// Past (converted) model outputs: DPM-Solver and UniPC history, PNDM's `ets`.
    history: Vec<Tensor>,
    /// How many lower-order warm-up steps have run (multistep solvers).
    lower_order_nums: usize,
    /// UniPC's x before the predictor; Heun's x at the first stage; PNDM's `cur_sample`.
    saved_sample: Option<Tensor>,
    /// Heun's first-stage derivative; PNDM's running Runge–Kutta sum.
    saved_derivative: Option<Tensor>,
    /// Heun's step size of the pending second stage.
    dt: Option<f64>,
    /// UniPC's order of the last predictor (used by the next corrector).
    this_order: usize,
}

impl SamplerState {
    /// Index of the next step to run.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// Class-specific data fixed at planning time.
#[derive(Debug, Clone)]
enum Extra {
    None,
    /// DDIM/DDPM/PNDM: ᾱ used past the last timestep.
    FinalAlpha(f64),
    /// PNDM: the final ᾱ and the number of Runge–Kutta (PRK) calls before PLMS.
    Pndm {
        final_alpha: f64,
        prk_len: usize,
    },
}

/// A planned sampler: config + schedule + the timesteps of one `num_inference_steps`.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    options: SamplerOptions,
    extra: Extra,
}

struct Plan {
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    extra: Extra,
}

/// What every sampler's `step` reads: the plan, the call index, the model output (already in
/// the class's prediction type) and the sample it was computed on.
pub(super) struct StepIn<'a>(&'a Sampler, usize, &'a Tensor, &'a Tensor);

impl Sampler {
    /// Plans `num_inference_steps` steps (diffusers `set_timesteps`).
    pub fn new(config: &SchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        Self::with_options(config, num_inference_steps, SamplerOptions::default())
    }

    /// Plans with per-request options (η, churn).
    pub fn with_options(
        config: &SchedulerConfig,
        num_inference_steps: usize,
        options: SamplerOptions,
    ) -> Result<Self> {
        if num_inference_steps == 0 {
            return Err(Error::Sampler(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        if num_inference_steps > config.num_train_timesteps {
            return Err(Error::Sampler(format!(
                "num_inference_steps {num_inference_steps} cannot exceed num_train_timesteps {}",
                config.num_train_timesteps
            )));
        }
        let n = num_inference_steps;
        Self::planned(config, n, options, |schedule| match config.class {
            SchedulerClass::Ddpm => ddpm::plan(config, n),
            SchedulerClass::Ddim => ddim::plan(config, schedule, n),
            SchedulerClass::Pndm => plms::plan(config, schedule, n),
            SchedulerClass::Euler => euler::plan(config, schedule, n),
            SchedulerClass::EulerAncestral => euler_a::plan(config, schedule, n),
            SchedulerClass::Heun => heun::plan(config, schedule, n),
            SchedulerClass::DpmSolverMultistep => dpmpp_2m::plan(config, schedule, n),
            SchedulerClass::UniPcMultistep => unipc::plan(config, schedule, n),
            SchedulerClass::FlowMatchEuler => flow::plan(config, n),
            SchedulerClass::FlowMatchHeun => flow_heun::plan(config, n),
            SchedulerClass::EdmEuler | SchedulerClass::EdmDpmSolverMultistep => {
                edm::plan(config, n)
            }
            SchedulerClass::EdmHeun => edm::heun_plan(config, n),
            SchedulerClass::Lcm => lcm::plan(config, n),
        })
    }

    /// Plans the given timesteps instead of `num_inference_steps` evenly chosen ones
    /// (diffusers `set_timesteps(timesteps=[...])`), for the classes in
    /// [`Sampler::CUSTOM_TIMESTEP_CLASSES`]: LCMScheduler (integer training timesteps, strictly
    /// descending, below `num_train_timesteps`) and FlowMatchEulerDiscreteScheduler (σ =
    /// timestep/T, shifted as the config says, the model called at the timesteps as given,
    /// final σ 0). `num_inference_steps()` is the list's length.
    pub fn with_timesteps(
        config: &SchedulerConfig,
        timesteps: &[f64],
        options: SamplerOptions,
    ) -> Result<Self> {
        if !Self::CUSTOM_TIMESTEP_CLASSES.contains(&config.class) {
            let names: Vec<_> = Self::CUSTOM_TIMESTEP_CLASSES
                .iter()
                .map(|c| format!("{} ({})", c.class_name(), c.short_name()))
                .collect();
            return Err(Error::Sampler(format!(
                "{} does not take custom timesteps; the classes that do: {}",
                config.class.class_name(),
                names.join(", ")
            )));
        }
        if timesteps.is_empty() {
            return Err(Error::Sampler(
                "custom timesteps: the list is empty; give at least one".into(),
            ));
        }
        Self::planned(config, timesteps.len(), options, |_| match config.class {
            SchedulerClass::Lcm => lcm::custom_plan(config, timesteps),
            _ => flow::custom_plan(config, timesteps),
        })
    }

    /// The classes [`Sampler::with_timesteps`] plans custom timesteps for.
    pub const CUSTOM_TIMESTEP_CLASSES: [SchedulerClass; 2] =
        [SchedulerClass::Lcm, SchedulerClass::FlowMatchEuler];

    /// The options' checks, the β schedule, then the plan `plan` makes on it.
    fn planned(
        config: &SchedulerConfig,
        n: usize,
        options: SamplerOptions,
        plan: impl FnOnce(&NoiseSchedule) -> Result<Plan>,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&options.gamma) {
            return Err(Error::Sampler(format!(
                "gamma must be in [0, 1], got {}",
                options.gamma
            )));
        }
        if options.eta < 0.0 || !options.eta.is_finite() {
            return Err(Error::Sampler(format!(
                "eta must be >= 0, got {}",
                options.eta
            )));
        }
        let schedule = if !config.class.has_beta_schedule() {
            NoiseSchedule {
                betas: vec![],
                alphas_cumprod: vec![],
            }
        } else {
            NoiseSchedule::from_config(config)?
        };
        let plan = plan(&schedule)?;
        Ok(Sampler {
            config: config.clone(),
            schedule,
            num_inference_steps: n,
            timesteps: plan.timesteps,
            sigmas: plan.sigmas,
            init_noise_sigma: plan.init_noise_sigma,
            options,
            extra: plan.extra,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    pub fn options(&self) -> &SamplerOptions {
        &self.options
    }

    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// The timestep given to the model at each call (diffusers `scheduler.timesteps`).
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Number of model calls (may exceed the step count: Heun, PNDM).
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// σ per call plus the final σ, for sigma-space samplers (diffusers `scheduler.sigmas`).
    pub fn sigmas(&self) -> Option<&[f64]> {
        self.sigmas.as_deref()
    }

    /// Scale of the initial noise: x_T = ε · init_noise_sigma.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// A fresh state for one request.
    pub fn new_state(&self) -> SamplerState {
        SamplerState::default()
    }

    /// A fresh state whose next call is `index` (a run that starts mid-plan: image-to-image,
    /// or a RePaint jump back; multistep solvers start their history again there).
    pub fn state_at(&self, index: usize) -> SamplerState {
        SamplerState {
            index,
            ..SamplerState::default()
        }
    }

    /// The input the model sees at step `index` (k-diffusion samplers divide by sqrt(σ²+1),
    /// EDM multiplies by c_in(σ)).
    pub fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        match self.config.class {
            SchedulerClass::Euler | SchedulerClass::EulerAncestral | SchedulerClass::Heun => {
                let sigma = self.sigma(index)? as f32;
                let scale = (sigma * sigma + 1.0).sqrt();
                Ok((sample / scale as f64)?)
            }
            SchedulerClass::EdmEuler
            | SchedulerClass::EdmDpmSolverMultistep
            | SchedulerClass::EdmHeun => {
                let c_in = edm::precond(&self.config).c_in(self.sigma(index)?);
                Ok((sample * c_in)?)
            }
            _ => Ok(sample.clone()),
        }
    }

    /// One step: from the model output at `state.index()` to the sample at the next timestep.
    pub fn step(
        &self,
        state: &mut SamplerState,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> Result<StepOutput> {
        let i = state.index;
        if i >= self.timesteps.len() {
            return Err(Error::Sampler(format!(
                "step {i} called after the last of {} steps",
                self.timesteps.len()
            )));
        }
        if model_output.shape() != sample.shape() {
            return Err(Error::Sampler(format!(
                "model output shape {:?} differs from sample shape {:?}",
                model_output.shape(),
                sample.shape()
            )));
        }
        let converted;
        let model_output = match self.config.model_prediction_type {
            Some(from) if from != self.config.prediction_type => {
                converted = self.convert_model_output(from, i, model_output, sample)?;
                &converted
            }
            _ => model_output,
        };
        let x = StepIn(self, i, model_output, sample);
        let out = match self.config.class {
            SchedulerClass::Ddpm => ddpm::step(x, noise),
            SchedulerClass::Ddim => ddim::step(x, noise),
            SchedulerClass::Pndm => plms::step(x, state),
            SchedulerClass::Euler => euler::step(x, noise),
            SchedulerClass::EulerAncestral => euler_a::step(x, noise),
            SchedulerClass::Heun => heun::step(x, state),
            SchedulerClass::DpmSolverMultistep => dpmpp_2m::step(x, state, noise),
            SchedulerClass::UniPcMultistep => unipc::step(x, state),
            SchedulerClass::FlowMatchEuler => flow::step(x, noise),
            SchedulerClass::FlowMatchHeun => flow_heun::step(x, state, noise),
            SchedulerClass::EdmEuler => edm::euler_step(x, noise),
            SchedulerClass::EdmHeun => edm::heun_step(x, state, noise),
            SchedulerClass::EdmDpmSolverMultistep => dpmpp_2m::step(x, state, noise),
            SchedulerClass::Lcm => lcm::step(x, noise),
        }?;
        state.index += 1;
        Ok(out)
    }

    /// A model output of type `from` at call `index` as `config.prediction_type`, exact under
    /// the VP schedule the sample is on: with x = α x₀ + σ ε the sample the model saw (the
    /// β schedule's ᾱ at the timestep for DDPM/DDIM/PNDM; for the k-diffusion classes x/√(σ²+1)
    /// at α = 1/√(σ²+1)), x₀ and ε are recovered from the output and the wanted type formed.
    fn convert_model_output(
        &self,
        from: crate::config::PredictionType,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor> {
        use crate::config::PredictionType as P;
        let (x, alpha, sigma) = match self.config.class {
            SchedulerClass::Ddpm
            | SchedulerClass::Ddim
            | SchedulerClass::Pndm
            | SchedulerClass::Lcm => {
                let abar = self.alpha_cumprod(self.timesteps[index])?;
                (sample.clone(), abar.sqrt(), (1.0 - abar).sqrt())
            }
            SchedulerClass::Euler | SchedulerClass::EulerAncestral | SchedulerClass::Heun => {
                let s = self.sigma(index)?;
                let a = 1.0 / (s * s + 1.0).sqrt();
                ((sample * a)?, a, s * a)
            }
            other => {
                return Err(Error::Sampler(format!(
                    "{} does not convert model outputs",
                    other.class_name()
                )))
            }
        };
        if from == P::Flow || self.config.prediction_type == P::Flow || sigma == 0.0 {
            return Err(Error::Sampler(format!(
                "cannot convert {} to {} at σ = {sigma}",
                from.name(),
                self.config.prediction_type.name()
            )));
        }
        let (x0, eps) = match from {
            P::Epsilon => (
                (lin(1.0, &x, -sigma, model_output)? / alpha)?,
                model_output.clone(),
            ),
            P::Sample => (
                model_output.clone(),
                (lin(1.0, &x, -alpha, model_output)? / sigma)?,
            ),
            P::VPrediction => (
                lin(alpha, &x, -sigma, model_output)?,
                lin(sigma, &x, alpha, model_output)?,
            ),
            P::Flow => unreachable!("refused above"),
        };
        match self.config.prediction_type {
            P::Epsilon => Ok(eps),
            P::Sample => Ok(x0),
            P::VPrediction => lin(alpha, &eps, -sigma, &x0),
            P::Flow => unreachable!("refused above"),
        }
    }

    fn sigma(&self, index: usize) -> Result<f64> {
        self.sigmas
            .as_ref()
            .and_then(|s| s.get(index).copied())
            .ok_or_else(|| Error::Sampler(format!("no sigma for step {index}")))
    }

    /// ᾱ at an integer timestep; an error (not a panic) past the schedule, which diffusers'
    /// `set_timesteps` allows (e.g. `leading` + `steps_offset=1` with N = T gives t = T).
    fn alpha_cumprod(&self, t: f64) -> Result<f64> {
        let n = self.schedule.alphas_cumprod.len();
        if t >= 0.0 && (t as usize) < n {
            Ok(self.schedule.alphas_cumprod[t as usize])
        } else {
            Err(Error::Sampler(format!(
                "timestep {t} is outside the schedule's 0..{n}; lower steps_offset or use fewer steps"
            )))
        }
    }

    fn final_alpha(&self) -> f64 {
        match self.extra {
            Extra::FinalAlpha(a) | Extra::Pndm { final_alpha: a, .. } => a,
            Extra::None => 1.0,
        }
    }
}

/// What `on_step` sees after each step.
pub struct StepInfo<'a> {
    /// 0-based index of the step just taken.
    pub index: usize,
    /// Number of model calls in the whole run.
    pub total: usize,
    /// The timestep the model was called at.
    pub timestep: f64,
    pub sample: &'a Tensor,
    pub pred_original_sample: Option<&'a Tensor>,
}

/// Runs a whole sampling loop, as a diffusers pipeline does: x_T = `initial_noise` ·
/// init_noise_sigma, then for each timestep scale → model → step. `on_step` may return
/// `ControlFlow::Break(())` to cancel, which ends with an error.
pub fn sample(
    sampler: &Sampler,
    model: &dyn Denoiser,
    initial_noise: &Tensor,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(StepInfo<'_>) -> ControlFlow<()>,
) -> Result<Tensor> {
    let x = (initial_noise * sampler.init_noise_sigma())?;
    sample_from(sampler, model, x, 0, noise, on_step)
}

/// The loop from call `begin` of the plan, `x` being the sample there (image-to-image starts
/// mid-plan: [`Sampler::begin_index`], [`Sampler::add_noise`]).
pub fn sample_from(
    sampler: &Sampler,
    model: &dyn Denoiser,
    x: Tensor,
    begin: usize,
    noise: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(StepInfo<'_>) -> ControlFlow<()>,
) -> Result<Tensor> {
    let mut state = sampler.state_at(begin);
    let mut keep = |_: usize, x: Tensor, _: &mut dyn NoiseSource| Ok(x);
    run(
        sampler,
        model,
        x,
        &mut state,
        sampler.len(),
        noise,
        &mut keep,
        on_step,
    )
}

/// What [`run`] may do to the sample after each step, given the index it is now at
/// (inpainting puts the known pixels back).
pub(crate) type AfterStep<'a> =
    dyn FnMut(usize, Tensor, &mut dyn NoiseSource) -> Result<Tensor> + 'a;

/// Calls `state.index()..end` of the plan from `x`: scale → model → step → `after`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    sampler: &Sampler,
    model: &dyn Denoiser,
    mut x: Tensor,
    state: &mut SamplerState,
    end: usize,
    noise: &mut dyn NoiseSource,
    after: &mut AfterStep<'_>,
    on_step: &mut dyn FnMut(StepInfo<'_>) -> ControlFlow<()>,
) -> Result<Tensor> {
    let total = sampler.len();
    while state.index < end.min(total) {
        let (i, t) = (state.index, sampler.timesteps[state.index]);
        let x_in = sampler.scale_model_input(&x, i)?;
        let out = model.predict(&x_in, t)?;
        let step = sampler.step(state, &out, &x, noise)?;
        x = after(i + 1, step.prev_sample, noise)?;
        let flow = on_step(StepInfo {
            index: i,
            total,
            timestep: t,
            sample: &x,
            pred_original_sample: step.pred_original_sample.as_ref(),
        });
        if flow.is_break() {
            return Err(Error::Sampler(format!(
                "cancelled at step {} of {total}",
                i + 1
            )));
        }
    }
    Ok(x)
}

// ---- helpers shared by the sampler files -------------------------------------------------

/// a·x + b·y with scalar coefficients.
pub(crate) fn lin(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok(((x * a)? + (y * b)?)?)
}

/// x₀ clipping or Imagen dynamic thresholding, as the config asks.
pub(crate) fn clip_or_threshold(config: &SchedulerConfig, x0: Tensor) -> Result<Tensor> {
    if config.thresholding {
        dynamic_threshold(
            &x0,
            config.dynamic_thresholding_ratio,
            config.sample_max_value,
        )
    } else if config.clip_sample {
        let r = config.clip_sample_range;
        Ok(x0.clamp(-r, r)?)
    } else {
        Ok(x0)
    }
}

/// Saharia et al. 2022 (Imagen) dynamic thresholding: per sample, s = quantile(|x|, ratio)
/// clamped to [1, max]; x ← clamp(x, −s, s)/s. Quantile with linear interpolation (torch).
pub(crate) fn dynamic_threshold(x: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let shape = x.shape().clone();
    let b = x.dim(0)?;
    let rows: Vec<Vec<f32>> = x
        .to_dtype(candle_core::DType::F32)?
        .reshape((b, ()))?
        .to_vec2()?;
    let mut out = Vec::with_capacity(shape.elem_count());
    for row in rows {
        let mut abs: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        abs.sort_by(|a, b| a.total_cmp(b));
        let pos = ratio * (abs.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(abs.len() - 1);
        let w = (pos - lo as f64) as f32;
        // torch.quantile's lerp: a + w·(b − a)
        let q = abs[lo] + w * (abs[hi] - abs[lo]);
        let s = q.clamp(1.0, max_value as f32);
        out.extend(row.iter().map(|v| v.clamp(-s, s) / s));
    }
    Ok(Tensor::from_vec(out, shape, x.device())?.to_dtype(dtype)?)
}

/// Model output → x₀ in VP space with α = sqrt(ᾱ), σ = sqrt(1 − ᾱ) (DDPM/DDIM formulas).
pub(crate) fn vp_x0(
    prediction: crate::config::PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha_prod: f64,
) -> Result<Tensor> {
    use crate::config::PredictionType as P;
    let ap = alpha_prod as f32;
    let (a, s) = (ap.sqrt() as f64, (1.0 - ap).sqrt() as f64);
    match prediction {
        P::Epsilon => Ok((lin(1.0, sample, -s, model_output)? / a)?),
        P::Sample => Ok(model_output.clone()),
        P::VPrediction => lin(a, sample, -s, model_output),
        P::Flow => Err(Error::Sampler(
            "flow_prediction needs a FlowMatch scheduler (flow_euler, flow_heun)".into(),
        )),
    }
}

/// α_t = 1/sqrt(σ² + 1), σ_t = σ·α_t: the VP pair of a k-diffusion σ (float32 as diffusers).
pub(crate) fn sigma_to_alpha_sigma_t(sigma: f64) -> (f64, f64) {
    let s = sigma as f32;
    let a = 1.0 / (s * s + 1.0).sqrt();
    (a as f64, (s * a) as f64)
}

/// The x₀ a k-diffusion sampler forms from a model output at noise level σ.
pub(crate) fn k_x0(
    prediction: crate::config::PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    use crate::config::PredictionType as P;
    match prediction {
        P::Epsilon => lin(1.0, sample, -sigma, model_output),
        P::Sample => Ok(model_output.clone()),
        P::VPrediction => {
            let s = sigma as f32;
            let c_out = (-s / (s * s + 1.0).sqrt()) as f64;
            let c_skip = (1.0 / (s * s + 1.0)) as f64;
            lin(c_out, model_output, c_skip, sample)
        }
        P::Flow => Err(Error::Sampler(
            "flow_prediction needs a FlowMatch scheduler (flow_euler, flow_heun)".into(),
        )),
    }
}

/// `init_noise_sigma` of the Euler family: σ_max for linspace/trailing, else sqrt(σ_max² + 1).
pub(crate) fn k_init_noise_sigma(config: &SchedulerConfig, sigmas: &[f64]) -> f64 {
    let max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32;
    match config.timestep_spacing {
        crate::config::TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
        _ => max as f64,
    }
}
