//! Scheduler configuration read from a diffusers `scheduler_config.json` as it is.
//!
//! Follows the `__init__` signatures (and their defaults) of the diffusers schedulers in
//! `src/diffusers/schedulers/scheduling_*.py`. Unknown keys are kept in [`SchedulerConfig::extra`]
//! and listed in [`SchedulerConfig::ignored_keys`]; a bad value is an error that names the key and
//! the allowed values.

mod class;
mod options;
mod parse;
mod reader;

pub use class::SchedulerClass;
pub use options::*;

use crate::error::{Error, Result};
use serde_json::{Map, Value};

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
    /// EDM: the data's standard deviation σ_data of the preconditioning (default 0.5).
    pub sigma_data: f64,
    /// EDM: how σ is spaced between `sigma_max` and `sigma_min`.
    pub sigma_schedule: SigmaSchedule,
    /// EDM: the ρ of the Karras ramp (default 7).
    pub rho: f64,
    /// LCM: the length of the distillation's timestep grid (default 50): the skipping step is
    /// k = T // original_inference_steps and the grid k−1, 2k−1, …, T−1.
    pub original_inference_steps: usize,
    /// LCM: the factor on the timestep in the consistency boundary scalings c_skip, c_out
    /// (default 10).
    pub timestep_scaling: f64,
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
        let value: Value = crate::pyjson::parse(text)
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
