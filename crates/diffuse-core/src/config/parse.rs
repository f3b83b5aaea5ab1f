//! A config object read key by key into a [`SchedulerConfig`]: each class's diffusers defaults,
//! the checks that name the key, unknown keys kept.

use super::reader::Reader;
use super::*;
use std::collections::BTreeSet;

/// The longest noise schedule a config may ask for.
const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

impl SchedulerConfig {
    pub(super) fn from_map(class: SchedulerClass, map: &Map<String, Value>) -> Result<Self> {
        use SchedulerClass as C;
        let mut r = Reader {
            map,
            used: BTreeSet::new(),
        };
        let (bs, be) = match class {
            C::Heun | C::Lcm => (0.00085, 0.012),
            _ => (0.0001, 0.02),
        };
        let num_train_timesteps = r.usize("num_train_timesteps", 1000)?;
        // The tables are this long; diffusers' models use 1000 (a few 4000).
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&num_train_timesteps) {
            return Err(Error::config(
                "num_train_timesteps",
                format!("must be in 2..={MAX_TRAIN_TIMESTEPS}, got {num_train_timesteps}"),
            ));
        }
        let beta_start = r.f64("beta_start", bs)?;
        let beta_end = r.f64("beta_end", be)?;
        let beta_schedule = {
            let default = if class == C::Lcm {
                "scaled_linear"
            } else {
                "linear"
            };
            let s = r.choice("beta_schedule", default, &BetaSchedule::NAMES)?;
            BetaSchedule::from_name(&s).expect("checked")
        };
        let trained_betas = r.opt_f64_list("trained_betas")?;
        if trained_betas.is_none() && class.has_beta_schedule() {
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
            C::Ddpm | C::Ddim | C::Pndm | C::Lcm => "leading",
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
        if steps_offset >= num_train_timesteps {
            return Err(Error::config(
                "steps_offset",
                format!(
                    "must be below num_train_timesteps ({num_train_timesteps}), got {steps_offset}"
                ),
            ));
        }
        let set_alpha_to_one = r.bool("set_alpha_to_one", matches!(class, C::Ddim | C::Lcm))?;
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
            C::Euler | C::Heun | C::Ddpm | C::Ddim | C::Lcm => {
                &["epsilon", "sample", "v_prediction"]
            }
            // EDM's "epsilon" is its F-prediction (`precondition_outputs`); diffusers lists
            // "sample" for the DPM class but raises on it.
            C::EdmEuler | C::EdmDpmSolverMultistep | C::EdmHeun => &["epsilon", "v_prediction"],
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
        let (sigma_min, sigma_max) = if class.is_edm() {
            let (lo, hi) = (r.f64("sigma_min", 0.002)?, r.f64("sigma_max", 80.0)?);
            if !(lo > 0.0 && lo < hi && hi.is_finite()) {
                return Err(Error::config(
                    "sigma_min",
                    format!("EDM needs 0 < sigma_min < sigma_max, got {lo} and {hi}"),
                ));
            }
            (Some(lo), Some(hi))
        } else {
            (r.opt_f64("sigma_min")?, r.opt_f64("sigma_max")?)
        };
        let (sigma_data, sigma_schedule, rho) = if class.is_edm() {
            let sigma_data = r.f64("sigma_data", 0.5)?;
            if !(sigma_data > 0.0 && sigma_data.is_finite()) {
                return Err(Error::config(
                    "sigma_data",
                    format!("must be > 0, got {sigma_data}"),
                ));
            }
            let schedule = match r
                .choice("sigma_schedule", "karras", &["karras", "exponential"])?
                .as_str()
            {
                "karras" => SigmaSchedule::Karras,
                _ => SigmaSchedule::Exponential,
            };
            let rho = r.f64("rho", 7.0)?;
            if !(rho > 0.0 && rho.is_finite()) {
                return Err(Error::config("rho", format!("must be > 0, got {rho}")));
            }
            (sigma_data, schedule, rho)
        } else {
            (0.5, SigmaSchedule::Karras, 7.0)
        };
        let (original_inference_steps, timestep_scaling) = if class == C::Lcm {
            let steps = r.usize("original_inference_steps", 50)?;
            // diffusers divides by it (k = T // steps) and raises in set_timesteps above T.
            if !(1..=num_train_timesteps).contains(&steps) {
                return Err(Error::config(
                    "original_inference_steps",
                    format!(
                        "must be in 1..=num_train_timesteps ({num_train_timesteps}), got {steps}"
                    ),
                ));
            }
            let scaling = r.f64("timestep_scaling", 10.0)?;
            if !(scaling > 0.0 && scaling.is_finite()) {
                return Err(Error::config(
                    "timestep_scaling",
                    format!("must be > 0, got {scaling}"),
                ));
            }
            (steps, scaling)
        } else {
            (50, 10.0)
        };
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
        // The EDM class has no noise-prediction DPM-Solver and maps "deis" onto "dpmsolver++".
        let algorithms: &[&str] = if class == C::EdmDpmSolverMultistep {
            &["dpmsolver++", "sde-dpmsolver++", "deis"]
        } else {
            &["dpmsolver++", "dpmsolver", "sde-dpmsolver++"]
        };
        let algorithm_type = match r
            .choice("algorithm_type", "dpmsolver++", algorithms)?
            .as_str()
        {
            "dpmsolver++" | "deis" => DpmAlgorithm::DpmSolverPP,
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
            &["midpoint", "heun", "bh1", "bh2", "logrho"],
        )?;
        // diffusers maps the other family's names onto its own (DPM: bh*, logrho → midpoint;
        // UniPC: midpoint/heun/logrho → bh2).
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
            sigma_data,
            sigma_schedule,
            rho,
            original_inference_steps,
            timestep_scaling,
            num_inference_steps,
            extra,
            ignored_keys,
            given: map.clone(),
            model_prediction_type: None,
        })
    }
}
