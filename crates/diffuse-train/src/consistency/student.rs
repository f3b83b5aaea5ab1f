//! A consistency student's training config from its model folder (`diffuse distill
//! consistency` / `diffuse distill ect`).

use super::{default_num_timesteps, ConsistencyMethod, ConsistencySection};
use crate::trainer::Prediction;
use crate::{Error, Result};
use diffuse_core::config::{PredictionType, SchedulerConfig};
use std::path::Path;

/// The target network's EMA decay of a CD student unless `[consistency]` sets it.
pub const CD_TARGET_EMA_DECAY: f64 = 0.95;

/// What a consistency student trains with unless the `--train-config` file says otherwise.
pub const STUDENT_DEFAULTS: &str = r#"
[train]
max_steps = 1000
seed = 0
learning_rate = 1e-4
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 50
# A guided CD teacher is distilled into the conditional student (as progressive distillation).
cond_dropout = 0.0
# A short run from the teacher's weights: an EMA that forgets the starting point.
ema_decay = 0.995
checkpoint_every = 250
keep_checkpoints = 2
log_every = 50
sample_guidance = 1.0
"#;

/// The student config of `method` from the pipeline folder `model` (CD: the teacher; ECT: the
/// model tuned): [`STUDENT_DEFAULTS`], the folder's `train.toml` `[data]`, then `user_toml`
/// (`[data]`, `[train]`, `[scheduler]`, `[eval]`, `[consistency]`). The student keeps the
/// model's prediction type and architecture and starts from its weights; `[scheduler]` is
/// `LCMScheduler` on the model's β schedule (`original_inference_steps` = the CD grid) or, for a
/// flow model, its FlowMatchEuler scheduler with `stochastic_sampling`; both record
/// `num_inference_steps = steps` (what `diffuse sample` then uses).
pub fn student_config(
    method: ConsistencyMethod,
    model: &Path,
    user_toml: Option<&str>,
    steps: usize,
    guidance_scale: f64,
) -> Result<crate::trainer::TrainConfig> {
    if steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    let user = crate::reflow::user_table(user_toml)?;
    if user
        .get("train")
        .and_then(|t| t.get("prediction_type"))
        .is_some()
    {
        return Err(Error::Invalid(
            "train.prediction_type: a consistency student keeps its model's prediction type; remove it".into(),
        ));
    }
    let mut base =
        crate::teacher::StudentBase::new(model, STUDENT_DEFAULTS, user, "a consistency student")?;
    let teacher_sched = SchedulerConfig::from_json_map(&base.teacher_scheduler)
        .map_err(|e| Error::Invalid(format!("teacher {}: {e}", model.display())))?;
    if teacher_sched.class.is_edm() {
        return Err(Error::Invalid(format!(
            "{}: EDM models are not supported as consistency teachers yet; use an ε, x₀, v or flow model",
            model.display()
        )));
    }
    // [consistency]: the user's keys, then method, teacher and guidance.
    let mut section = match base.table_mut().remove("consistency") {
        Some(toml::Value::Table(t)) => t,
        None => toml::Table::new(),
        Some(v) => {
            return Err(Error::Invalid(format!(
                "[consistency] must be a table, got {v}"
            )))
        }
    };
    section.insert(
        "method".into(),
        toml::Value::try_from(method).expect("a unit variant serializes"),
    );
    if method == ConsistencyMethod::Cd {
        section.insert("teacher".into(), model.display().to_string().into());
        section.insert("guidance_scale".into(), guidance_scale.into());
        // CD's EMA target network (Song et al. 2023 and LCM use μ = 0.95).
        section
            .entry("target_ema_decay")
            .or_insert(CD_TARGET_EMA_DECAY.into());
    }
    let parsed: ConsistencySection =
        toml::Value::Table(section)
            .try_into()
            .map_err(|e: toml::de::Error| {
                Error::Invalid(format!("[consistency]: {}", e.to_string().trim()))
            })?;
    let prediction = teacher_sched.prediction_type;
    let mut sched = base.teacher_scheduler.clone();
    if teacher_sched.class.is_flow() || prediction == PredictionType::Flow {
        sched.insert(
            "_class_name".into(),
            "FlowMatchEulerDiscreteScheduler".into(),
        );
        sched.insert("stochastic_sampling".into(), true.into());
    } else {
        let grid = match method {
            ConsistencyMethod::Cd => parsed.num_timesteps,
            ConsistencyMethod::Ect => default_num_timesteps(),
        };
        if steps > grid {
            return Err(Error::Invalid(format!(
                "--steps {steps}: an LCM student samples at most original_inference_steps = {grid} steps"
            )));
        }
        sched.insert("_class_name".into(), "LCMScheduler".into());
        // The teacher's β schedule as resolved (its class's defaults are not LCM's).
        sched.insert("beta_start".into(), teacher_sched.beta_start.into());
        sched.insert("beta_end".into(), teacher_sched.beta_end.into());
        sched.insert(
            "beta_schedule".into(),
            teacher_sched.beta_schedule.name().into(),
        );
        sched.insert("original_inference_steps".into(), grid.into());
        sched.insert("prediction_type".into(), prediction.name().into());
    }
    sched.insert("num_inference_steps".into(), steps.into());
    let mut config = base.into_config(sched)?;
    config.train.prediction_type = Prediction::from_core(prediction);
    config.train.sample_steps = steps;
    config.consistency = Some(parsed);
    Ok(config)
}
