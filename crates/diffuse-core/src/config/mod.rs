//! Scheduler configuration read from a diffusers `scheduler_config.json` as it is.
//!
//! Follows the `__init__` signatures (and their defaults) of the diffusers schedulers in
//! `src/diffusers/schedulers/scheduling_*.py`. Unknown keys are kept in [`SchedulerConfig::extra`]
//! and listed in [`SchedulerConfig::ignored_keys`]; a bad value is an error that names the key and
//! the allowed values.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The diffusers scheduler class, picked by `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerClass {
    Ddpm,
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    Heun,
    DpmSolverMultistep,
    UniPcMultistep,
    FlowMatchEuler,
    FlowMatchHeun,
}

impl SchedulerClass {
    pub const ALL: [SchedulerClass; 10] = [
        SchedulerClass::Ddpm,
        SchedulerClass::Ddim,
        SchedulerClass::Pndm,
        SchedulerClass::Euler,
        SchedulerClass::EulerAncestral,
        SchedulerClass::Heun,
        SchedulerClass::DpmSolverMultistep,
        SchedulerClass::UniPcMultistep,
        SchedulerClass::FlowMatchEuler,
        SchedulerClass::FlowMatchHeun,
    ];

    /// The diffusers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerClass::Ddpm => "DDPMScheduler",
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::Pndm => "PNDMScheduler",
            SchedulerClass::Euler => "EulerDiscreteScheduler",
            SchedulerClass::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerClass::Heun => "HeunDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerClass::UniPcMultistep => "UniPCMultistepScheduler",
            SchedulerClass::FlowMatchEuler => "FlowMatchEulerDiscreteScheduler",
            SchedulerClass::FlowMatchHeun => "FlowMatchHeunDiscreteScheduler",
        }
    }

    /// Short names used on the command line (`--sampler ddim`).
    pub fn short_name(self) -> &'static str {
        match self {
            SchedulerClass::Ddpm => "ddpm",
            SchedulerClass::Ddim => "ddim",
            SchedulerClass::Pndm => "plms",
            SchedulerClass::Euler => "euler",
            SchedulerClass::EulerAncestral => "euler_a",
            SchedulerClass::Heun => "heun",
            SchedulerClass::DpmSolverMultistep => "dpmpp_2m",
            SchedulerClass::UniPcMultistep => "unipc",
            SchedulerClass::FlowMatchEuler => "flow_euler",
            SchedulerClass::FlowMatchHeun => "flow_heun",
        }
    }

    /// Parses a diffusers class name or one of our short names.
    pub fn parse(name: &str) -> Result<Self> {
        SchedulerClass::ALL
            .into_iter()
            .find(|c| c.class_name() == name || c.short_name() == name)
            .ok_or_else(|| {
                let allowed: Vec<_> = SchedulerClass::ALL.iter().map(|c| c.class_name()).collect();
                Error::config(
                    "_class_name",
                    format!(
                        "unknown scheduler class {name:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                )
            })
    }

    /// Whether the class works in sigma space (k-diffusion style: inputs scaled by 1/sqrt(σ²+1)).
    pub fn uses_sigmas(self) -> bool {
        matches!(
            self,
            SchedulerClass::Euler
                | SchedulerClass::EulerAncestral
                | SchedulerClass::Heun
                | SchedulerClass::DpmSolverMultistep
                | SchedulerClass::UniPcMultistep
                | SchedulerClass::FlowMatchEuler
                | SchedulerClass::FlowMatchHeun
        )
    }

    /// Whether the class is a flow-matching (rectified flow) sampler: x_σ = (1 − σ)x₀ + σε,
    /// the model predicts the velocity ε − x₀, no β schedule.
    pub fn is_flow(self) -> bool {
        matches!(
            self,
            SchedulerClass::FlowMatchEuler | SchedulerClass::FlowMatchHeun
        )
    }
}

/// How β_t is laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    /// Nichol & Dhariwal's cosine ᾱ(t), β capped at 0.999.
    SquaredCosCapV2,
    Sigmoid,
    Laplace,
    Exp,
}

impl BetaSchedule {
    pub const NAMES: [&'static str; 6] = [
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "sigmoid",
        "laplace",
        "exp",
    ];
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::Laplace => "laplace",
            BetaSchedule::Exp => "exp",
        }
    }
    fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
            "sigmoid" => BetaSchedule::Sigmoid,
            "laplace" => BetaSchedule::Laplace,
            "exp" => BetaSchedule::Exp,
            _ => return None,
        })
    }
}

/// How inference timesteps are picked from the training timesteps (Lin et al. 2023, table 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise ε.
    Epsilon,
    /// The clean sample x₀.
    Sample,
    /// v = α ε − σ x₀ (Salimans & Ho 2022).
    VPrediction,
    /// The rectified-flow velocity ε − x₀ (flow matching).
    Flow,
}

impl PredictionType {
    pub fn name(self) -> &'static str {
        match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::Sample => "sample",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Flow => "flow_prediction",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "epsilon" => PredictionType::Epsilon,
            "sample" | "original_sample" => PredictionType::Sample,
            "v_prediction" => PredictionType::VPrediction,
            "flow_prediction" => PredictionType::Flow,
            _ => {
                return Err(Error::config(
                    "prediction_type",
                    format!(
                    "unknown value {s:?}; allowed: epsilon, sample, v_prediction, flow_prediction"
                ),
                ))
            }
        })
    }
}

/// DDPM posterior variance choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
}

/// Where Euler/DPM/UniPC put the last sigma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// DPM-Solver flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmAlgorithm {
    /// Data-prediction DPM-Solver++ (Lu et al. 2022b).
    DpmSolverPP,
    /// Noise-prediction DPM-Solver.
    DpmSolver,
    /// Stochastic DPM-Solver++ (draws noise each step).
    SdeDpmSolverPP,
}

/// Second-order update rule of DPM-Solver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpmSolverType {
    Midpoint,
    Heun,
}

/// UniPC's B(h) choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcSolverType {
    Bh1,
    Bh2,
}

/// A validated scheduler configuration: the diffusers keys, with each class's defaults.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub class: SchedulerClass,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f64>>,
    pub rescale_betas_zero_snr: bool,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    pub set_alpha_to_one: bool,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub prediction_type: PredictionType,
    pub variance_type: VarianceType,
    pub skip_prk_steps: bool,
    pub use_karras_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: FinalSigmas,
    pub solver_order: usize,
    pub algorithm_type: DpmAlgorithm,
    pub dpm_solver_type: DpmSolverType,
    pub unipc_solver_type: UniPcSolverType,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    pub lambda_min_clipped: f64,
    pub predict_x0: bool,
    pub disable_corrector: Vec<usize>,
    pub shift: f64,
    /// DPM-Solver / UniPC: plan on flow-matching σ (x_σ = (1 − σ)x₀ + σε, α_t = 1 − σ) instead
    /// of the β schedule's; with `prediction_type = "flow_prediction"` this drives a flow model.
    pub use_flow_sigmas: bool,
    /// DPM-Solver / UniPC with `use_flow_sigmas`: the σ warp shift·σ / (1 + (shift − 1)·σ)
    /// (the FlowMatch schedulers call it `shift`).
    pub flow_shift: f64,
    pub stochastic_sampling: bool,
    /// diffuse's own key: the step count the model was made for (a reflowed or distilled
    /// student); `diffuse sample` uses it as its default `--steps`. Not a diffusers key:
    /// diffusers ignores it when it loads the config.
    pub num_inference_steps: Option<usize>,
    /// Keys we do not know, kept as they were (written back when the config is saved).
    pub extra: Map<String, Value>,
    /// Names of the keys in `extra`, for a note to the user.
    pub ignored_keys: Vec<String>,
    /// The JSON object this config was read from, as given (empty for [`SchedulerConfig::
    /// default_for`]). [`crate::compat::resolve_sampler`] carries its keys over to another
    /// class as diffusers' `from_config` does.
    pub given: Map<String, Value>,
    /// Not a diffusers key: the model's own output type where it differs from
    /// `prediction_type` (which is then what the sampler's diffusers class accepts). Set only by
    /// [`crate::compat::resolve_sampler`] for the cells it converts; [`crate::sampler::Sampler::
    /// step`] turns each model output into `prediction_type` first.
    pub model_prediction_type: Option<PredictionType>,
}

impl SchedulerConfig {
    /// The class defaults, as diffusers' constructor has them.
    pub fn default_for(class: SchedulerClass) -> Self {
        Self::from_map(class, &Map::new()).expect("defaults are valid")
    }

    /// Reads a diffusers `scheduler_config.json` text. `_class_name` picks the class; without
    /// it, `DDIMScheduler`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("malformed JSON: {e}")))?;
        let map = value
            .as_object()
            .ok_or_else(|| Error::Invalid("scheduler config must be a JSON object".into()))?;
        Self::from_json_map(map)
    }

    /// Whether the sampler runs on flow-matching σ: a FlowMatch class, or DPM-Solver / UniPC
    /// with `use_flow_sigmas`.
    pub fn uses_flow_sigmas(&self) -> bool {
        self.class.is_flow() || self.use_flow_sigmas
    }

    /// Reads a parsed config object; see [`SchedulerConfig::from_json_str`].
    pub fn from_json_map(map: &Map<String, Value>) -> Result<Self> {
        let class = match map.get("_class_name") {
            None | Some(Value::Null) => SchedulerClass::Ddim,
            Some(Value::String(s)) => SchedulerClass::parse(s)?,
            Some(other) => {
                return Err(Error::config(
                    "_class_name",
                    format!("expected a string, got {other}"),
                ))
            }
        };
        Self::from_map(class, map)
    }

    fn from_map(class: SchedulerClass, map: &Map<String, Value>) -> Result<Self> {
        use SchedulerClass as C;
        let mut r = Reader {
            map,
            used: BTreeSet::new(),
        };
        let (bs, be) = match class {
            C::Heun => (0.00085, 0.012),
            _ => (0.0001, 0.02),
        };
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        if num_train_timesteps < 2 {
            return Err(Error::config("num_train_timesteps", "must be at least 2"));
        }
        let beta_start = r.f64("beta_start", bs)?;
        let beta_end = r.f64("beta_end", be)?;
        let beta_schedule = {
            let s = r.choice("beta_schedule", "linear", &BetaSchedule::NAMES)?;
            BetaSchedule::from_name(&s).expect("checked")
        };
        let trained_betas = r.opt_f64_list("trained_betas")?;
        if trained_betas.is_none() && !class.is_flow() {
            if !(beta_start > 0.0 && beta_start < 1.0) {
                return Err(Error::config(
                    "beta_start",
                    format!("must be in (0, 1), got {beta_start}"),
                ));
            }
            if !(beta_end > 0.0 && beta_end < 1.0) {
                return Err(Error::config(
                    "beta_end",
                    format!("must be in (0, 1), got {beta_end}"),
                ));
            }
        }
        if let Some(tb) = &trained_betas {
            if tb.is_empty() || tb.iter().any(|b| !(*b >= 0.0 && *b < 1.0)) {
                return Err(Error::config(
                    "trained_betas",
                    "must be a non-empty list of numbers in [0, 1)",
                ));
            }
        }
        let rescale_betas_zero_snr = r.bool("rescale_betas_zero_snr", false)?;
        let default_spacing = match class {
            C::Ddpm | C::Ddim | C::Pndm => "leading",
            _ => "linspace",
        };
        let timestep_spacing = match r
            .choice(
                "timestep_spacing",
                default_spacing,
                &["leading", "trailing", "linspace"],
            )?
            .as_str()
        {
            "leading" => TimestepSpacing::Leading,
            "trailing" => TimestepSpacing::Trailing,
            _ => TimestepSpacing::Linspace,
        };
        let steps_offset = r.usize("steps_offset", 0)?;
        let set_alpha_to_one = r.bool("set_alpha_to_one", class == C::Ddim)?;
        let clip_sample = r.bool("clip_sample", matches!(class, C::Ddpm | C::Ddim))?;
        let clip_sample_range = r.f64("clip_sample_range", 1.0)?;
        let thresholding = r.bool("thresholding", false)?;
        let dynamic_thresholding_ratio = r.f64("dynamic_thresholding_ratio", 0.995)?;
        if !(0.0..=1.0).contains(&dynamic_thresholding_ratio) {
            return Err(Error::config(
                "dynamic_thresholding_ratio",
                "must be in [0, 1]",
            ));
        }
        let sample_max_value = r.f64("sample_max_value", 1.0)?;
        let allowed_preds: &[&str] = match class {
            C::Pndm => &["epsilon", "v_prediction"],
            C::EulerAncestral => &["epsilon", "v_prediction"],
            C::FlowMatchEuler | C::FlowMatchHeun => &["flow_prediction"],
            C::DpmSolverMultistep | C::UniPcMultistep => {
                &["epsilon", "sample", "v_prediction", "flow_prediction"]
            }
            C::Euler | C::Heun | C::Ddpm | C::Ddim => &["epsilon", "sample", "v_prediction"],
        };
        let prediction_type = if class.is_flow() {
            // The FlowMatch schedulers have no prediction_type key: it is always the velocity.
            r.used.insert("prediction_type");
            PredictionType::Flow
        } else {
            let mut p = r.string("prediction_type", "epsilon")?;
            if p == "original_sample" && class == C::Euler {
                p = "sample".into();
            }
            if !allowed_preds.contains(&p.as_str()) {
                return Err(Error::config(
                    "prediction_type",
                    format!(
                        "{p:?} is not supported by {}; allowed: {}",
                        class.class_name(),
                        allowed_preds.join(", ")
                    ),
                ));
            }
            PredictionType::parse(&p)?
        };
        let variance_type = if class == C::Ddpm {
            match r
                .choice(
                    "variance_type",
                    "fixed_small",
                    &["fixed_small", "fixed_small_log", "fixed_large"],
                )?
                .as_str()
            {
                "fixed_small" => VarianceType::FixedSmall,
                "fixed_small_log" => VarianceType::FixedSmallLog,
                _ => VarianceType::FixedLarge,
            }
        } else {
            // DPM-Solver's `variance_type` (learned variance channels) is accepted only as null.
            r.null_only("variance_type")?;
            VarianceType::FixedSmall
        };
        let skip_prk_steps = r.bool("skip_prk_steps", false)?;
        let use_karras_sigmas = r.bool("use_karras_sigmas", false)?;
        if use_karras_sigmas
            && !matches!(
                class,
                C::Euler | C::Heun | C::DpmSolverMultistep | C::UniPcMultistep
            )
        {
            return Err(Error::config(
                "use_karras_sigmas",
                format!("not supported by {}", class.class_name()),
            ));
        }
        let sigma_min = r.opt_f64("sigma_min")?;
        let sigma_max = r.opt_f64("sigma_max")?;
        let final_sigmas_type = match r
            .choice("final_sigmas_type", "zero", &["zero", "sigma_min"])?
            .as_str()
        {
            "zero" => FinalSigmas::Zero,
            _ => FinalSigmas::SigmaMin,
        };
        let solver_order = r.usize("solver_order", 2)?;
        let max_order = 3;
        if !(1..=max_order).contains(&solver_order) {
            return Err(Error::config(
                "solver_order",
                format!("{solver_order} is not supported; allowed: 1..={max_order}"),
            ));
        }
        let algorithm_type = match r
            .choice(
                "algorithm_type",
                "dpmsolver++",
                &["dpmsolver++", "dpmsolver", "sde-dpmsolver++"],
            )?
            .as_str()
        {
            "dpmsolver++" => DpmAlgorithm::DpmSolverPP,
            "dpmsolver" => DpmAlgorithm::DpmSolver,
            _ => DpmAlgorithm::SdeDpmSolverPP,
        };
        let default_solver = if class == C::UniPcMultistep {
            "bh2"
        } else {
            "midpoint"
        };
        let solver_type = r.choice(
            "solver_type",
            default_solver,
            &["midpoint", "heun", "bh1", "bh2"],
        )?;
        // diffusers maps the other family's names onto its own (DPM: bh* → midpoint; UniPC:
        // midpoint/heun → bh2).
        let dpm_solver_type = match solver_type.as_str() {
            "heun" => DpmSolverType::Heun,
            _ => DpmSolverType::Midpoint,
        };
        let unipc_solver_type = match solver_type.as_str() {
            "bh1" => UniPcSolverType::Bh1,
            _ => UniPcSolverType::Bh2,
        };
        let lower_order_final = r.bool("lower_order_final", true)?;
        let euler_at_final = r.bool("euler_at_final", false)?;
        let lambda_min_clipped = r.f64("lambda_min_clipped", f64::NEG_INFINITY)?;
        let predict_x0 = r.bool("predict_x0", true)?;
        let disable_corrector = r.usize_list("disable_corrector")?;
        let shift = r.f64("shift", 1.0)?;
        if shift <= 0.0 {
            return Err(Error::config("shift", format!("must be > 0, got {shift}")));
        }
        let stochastic_sampling = r.bool("stochastic_sampling", false)?;
        let use_flow_sigmas = r.bool("use_flow_sigmas", false)?;
        let flow_shift = r.f64("flow_shift", 1.0)?;
        if !(flow_shift > 0.0 && flow_shift.is_finite()) {
            return Err(Error::config(
                "flow_shift",
                format!("must be > 0, got {flow_shift}"),
            ));
        }
        if use_flow_sigmas {
            if !matches!(class, C::DpmSolverMultistep | C::UniPcMultistep) {
                return Err(Error::config(
                    "use_flow_sigmas",
                    format!(
                        "not supported by {}; only DPMSolverMultistepScheduler and \
                         UniPCMultistepScheduler have it (flow models: flow_euler, flow_heun)",
                        class.class_name()
                    ),
                ));
            }
            if use_karras_sigmas {
                return Err(Error::config(
                    "use_karras_sigmas",
                    "cannot be combined with use_flow_sigmas in diffuse",
                ));
            }
        }
        if prediction_type == PredictionType::Flow && !class.is_flow() {
            // diffusers accepts flow_prediction on the β schedule's σ too, where x₀ = x − σ·u is
            // not the model's x₀: refused rather than silently wrong.
            if !use_flow_sigmas {
                return Err(Error::config(
                    "prediction_type",
                    format!(
                        "\"flow_prediction\" needs use_flow_sigmas true with {}",
                        class.class_name()
                    ),
                ));
            }
            if class == C::DpmSolverMultistep && algorithm_type == DpmAlgorithm::DpmSolver {
                return Err(Error::config(
                    "algorithm_type",
                    "\"dpmsolver\" cannot take flow_prediction (diffusers: data prediction only); \
                     use \"dpmsolver++\"",
                ));
            }
            if class == C::UniPcMultistep && !predict_x0 {
                return Err(Error::config(
                    "predict_x0",
                    "must be true with flow_prediction (diffusers: data prediction only)",
                ));
            }
        }
        let num_inference_steps = match r.get("num_inference_steps") {
            None => None,
            Some(_) => match r.usize("num_inference_steps", 0)? {
                0 => {
                    return Err(Error::config(
                        "num_inference_steps",
                        "must be at least 1 (or absent)",
                    ))
                }
                n => Some(n),
            },
        };
        if class == C::UniPcMultistep
            && unipc_solver_type == UniPcSolverType::Bh1
            && final_sigmas_type == FinalSigmas::Zero
        {
            // B(h) = h is infinite on the last step to σ = 0: diffusers 0.42.1 returns NaN there.
            return Err(Error::config(
                "solver_type",
                "\"bh1\" with final_sigmas_type \"zero\" gives NaN on the last step (as in diffusers); \
                 use \"bh2\" or final_sigmas_type \"sigma_min\"",
            ));
        }
        if class == C::DpmSolverMultistep
            && algorithm_type == DpmAlgorithm::DpmSolver
            && final_sigmas_type == FinalSigmas::Zero
        {
            return Err(Error::config(
                "final_sigmas_type",
                "\"zero\" is not supported with algorithm_type \"dpmsolver\"; use \"sigma_min\"",
            ));
        }

        // Keys diffusers knows that select features we do not have: accepted at their defaults.
        r.default_only("interpolation_type", &Value::from("linear"))?;
        r.default_only("timestep_type", &Value::from("discrete"))?;
        for key in [
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_dynamic_shifting",
            "invert_sigmas",
        ] {
            r.default_only(key, &Value::Bool(false))?;
        }
        for key in ["solver_p", "shift_terminal"] {
            r.null_only(key)?;
        }
        // Keys that change nothing here but are part of the configs diffusers writes.
        for key in [
            "base_shift",
            "max_shift",
            "base_image_seq_len",
            "max_image_seq_len",
            "time_shift_type",
        ] {
            r.used.insert(key);
        }

        let mut extra = Map::new();
        let mut ignored_keys = Vec::new();
        for (k, v) in map {
            if !r.used.contains(k.as_str()) && !k.starts_with('_') {
                extra.insert(k.clone(), v.clone());
                ignored_keys.push(k.clone());
            }
        }
        Ok(SchedulerConfig {
            class,
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
            timestep_spacing,
            steps_offset,
            set_alpha_to_one,
            clip_sample,
            clip_sample_range,
            thresholding,
            dynamic_thresholding_ratio,
            sample_max_value,
            prediction_type,
            variance_type,
            skip_prk_steps,
            use_karras_sigmas,
            sigma_min,
            sigma_max,
            final_sigmas_type,
            solver_order,
            algorithm_type,
            dpm_solver_type,
            unipc_solver_type,
            lower_order_final,
            euler_at_final,
            lambda_min_clipped,
            predict_x0,
            disable_corrector,
            shift,
            use_flow_sigmas,
            flow_shift,
            stochastic_sampling,
            num_inference_steps,
            extra,
            ignored_keys,
            given: map.clone(),
            model_prediction_type: None,
        })
    }
}

/// Reads typed keys from a JSON object, recording which were known.
struct Reader<'a> {
    map: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl Reader<'_> {
    fn get(&mut self, key: &'static str) -> Option<&Value> {
        self.used.insert(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            // diffusers writes -inf as the JSON extension `-Infinity`; accept it as a string too.
            Some(Value::String(s)) if s == "-inf" || s == "-Infinity" => {
                Ok(Some(f64::NEG_INFINITY))
            }
            Some(v) => Err(Error::config(key, format!("expected a number, got {v}"))),
        }
    }

    fn usize(&mut self, key: &'static str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(|u| u as usize)
                .ok_or_else(|| {
                    Error::config(key, format!("expected a non-negative integer, got {v}"))
                }),
        }
    }

    fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Error::config(
                key,
                format!("expected true or false, got {v}"),
            )),
        }
    }

    fn string(&mut self, key: &'static str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(Error::config(key, format!("expected a string, got {v}"))),
        }
    }

    fn choice(&mut self, key: &'static str, default: &str, allowed: &[&str]) -> Result<String> {
        let s = self.string(key, default)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(Error::config(
                key,
                format!("unknown value {s:?}; allowed: {}", allowed.join(", ")),
            ))
        }
    }

    fn opt_f64_list(&mut self, key: &'static str) -> Result<Option<Vec<f64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| Error::config(key, format!("expected numbers, got {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::config(
                key,
                format!("expected a list of numbers, got {v}"),
            )),
        }
    }

    fn usize_list(&mut self, key: &'static str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64().map(|u| u as usize).ok_or_else(|| {
                        Error::config(key, format!("expected non-negative integers, got {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(Error::config(
                key,
                format!("expected a list of integers, got {v}"),
            )),
        }
    }

    /// A key whose only supported value is its default.
    fn default_only(&mut self, key: &'static str, default: &Value) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(Error::config(
                key,
                format!("value {v} is not supported by diffuse; only {default} is"),
            )),
        }
    }

    /// A key whose only supported value is null / absent.
    fn null_only(&mut self, key: &'static str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) => Err(Error::config(
                key,
                format!("value {v} is not supported by diffuse; only null is"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_defaults_follow_diffusers() {
        let heun = SchedulerConfig::default_for(SchedulerClass::Heun);
        assert_eq!((heun.beta_start, heun.beta_end), (0.00085, 0.012));
        assert_eq!(heun.timestep_spacing, TimestepSpacing::Linspace);
        let ddim = SchedulerConfig::default_for(SchedulerClass::Ddim);
        assert!(ddim.clip_sample && ddim.set_alpha_to_one);
        assert_eq!(ddim.timestep_spacing, TimestepSpacing::Leading);
        let pndm = SchedulerConfig::default_for(SchedulerClass::Pndm);
        assert!(!pndm.set_alpha_to_one && !pndm.clip_sample);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cosine"}"#).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("beta_schedule") && msg.contains("squaredcos_cap_v2"),
            "{msg}"
        );
        let e = SchedulerConfig::from_json_str(r#"{"beta_start": -0.1}"#).unwrap_err();
        assert!(e.to_string().contains("beta_start"));
        let e = SchedulerConfig::from_json_str(r#"{"_class_name": "FooScheduler"}"#).unwrap_err();
        assert!(e.to_string().contains("FooScheduler"));
        let e = SchedulerConfig::from_json_str("{").unwrap_err();
        assert!(e.to_string().contains("malformed JSON"));
        let e = SchedulerConfig::from_json_str(
            r#"{"_class_name": "PNDMScheduler", "prediction_type": "sample"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("prediction_type"));
    }

    #[test]
    fn flow_classes_and_the_recommended_step_count() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "flow_heun", "shift": 3.0, "num_inference_steps": 2}"#,
        )
        .unwrap();
        assert_eq!(c.class, SchedulerClass::FlowMatchHeun);
        assert!(c.class.is_flow() && SchedulerClass::FlowMatchEuler.is_flow());
        assert!(!SchedulerClass::Heun.is_flow());
        assert_eq!(c.prediction_type, PredictionType::Flow);
        assert_eq!(c.num_inference_steps, Some(2));
        assert!(c.ignored_keys.is_empty(), "{:?}", c.ignored_keys);
        assert_eq!(
            SchedulerConfig::default_for(SchedulerClass::Ddim).num_inference_steps,
            None
        );
        let e = SchedulerConfig::from_json_str(r#"{"num_inference_steps": 0}"#).unwrap_err();
        assert!(e.to_string().contains("num_inference_steps"), "{e}");
    }

    #[test]
    fn flow_sigmas_take_flow_prediction_and_refuse_what_would_be_wrong() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": true,
                "prediction_type": "flow_prediction", "flow_shift": 3.0, "solver_order": 3}"#,
        )
        .unwrap();
        assert!(c.use_flow_sigmas && c.uses_flow_sigmas() && !c.class.is_flow());
        assert_eq!((c.flow_shift, c.solver_order), (3.0, 3));
        assert_eq!(c.prediction_type, PredictionType::Flow);
        let d = SchedulerConfig::default_for(SchedulerClass::UniPcMultistep);
        assert!(!d.use_flow_sigmas && d.flow_shift == 1.0 && !d.uses_flow_sigmas());
        assert!(SchedulerConfig::default_for(SchedulerClass::FlowMatchHeun).uses_flow_sigmas());
        for (json, key) in [
            // flow_prediction on the β schedule's σ: diffusers runs it, wrongly.
            (
                r#"{"_class_name": "unipc", "prediction_type": "flow_prediction"}"#,
                "prediction_type",
            ),
            (
                r#"{"_class_name": "ddim", "prediction_type": "flow_prediction"}"#,
                "prediction_type",
            ),
            (
                r#"{"_class_name": "ddim", "use_flow_sigmas": true}"#,
                "use_flow_sigmas",
            ),
            (
                r#"{"_class_name": "dpmpp_2m", "use_flow_sigmas": true, "use_karras_sigmas": true}"#,
                "use_karras_sigmas",
            ),
            (
                r#"{"_class_name": "dpmpp_2m", "use_flow_sigmas": true, "prediction_type": "flow_prediction",
                 "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}"#,
                "algorithm_type",
            ),
            (
                r#"{"_class_name": "unipc", "use_flow_sigmas": true, "prediction_type": "flow_prediction",
                 "predict_x0": false}"#,
                "predict_x0",
            ),
            (
                r#"{"_class_name": "unipc", "solver_type": "bh1"}"#,
                "solver_type",
            ),
            (
                r#"{"_class_name": "dpmpp_2m", "flow_shift": 0}"#,
                "flow_shift",
            ),
            (
                r#"{"_class_name": "dpmpp_2m", "solver_order": 4}"#,
                "solver_order",
            ),
        ] {
            let e = SchedulerConfig::from_json_str(json)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{json}: {e}");
        }
        SchedulerConfig::from_json_str(
            r#"{"_class_name": "unipc", "solver_type": "bh1", "final_sigmas_type": "sigma_min"}"#,
        )
        .unwrap();
    }

    #[test]
    fn unknown_keys_are_kept() {
        let c = SchedulerConfig::from_json_str(
            r#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.30.0", "my_key": 3}"#,
        )
        .unwrap();
        assert_eq!(c.ignored_keys, vec!["my_key".to_string()]);
        assert_eq!(c.extra["my_key"], Value::from(3));
    }
}
