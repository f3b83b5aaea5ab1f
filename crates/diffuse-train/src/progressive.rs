//! Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
//! Diffusion Models", Algorithm 2), with a guided teacher distilled into an unguided student
//! as Meng et al. 2023 ("On Distillation of Guided Diffusion Models") do it.
//!
//! The student samples with DDIM in N steps (its scheduler config: `DDIMScheduler`,
//! `num_inference_steps = N`); the teacher with DDIM in 2N. For a data batch x₀ each row draws
//! one of the student's steps k (from t to s), z_t = α_t x₀ + σ_t ε, and the teacher takes two
//! deterministic DDIM steps t → m → s (m: the 2N-step grid's point between them). The student's
//! target is the x̃ with which one DDIM step from z_t lands where the teacher's two did:
//!
//! ```text
//! x̃ = (z_s − (σ_s/σ_t)·z_t) / (α_s − (σ_s/σ_t)·α_t)
//! ```
//!
//! expressed in the student's prediction type (v-prediction recommended: a 1-step student must
//! predict x₀ at t = T − 1, where ε-prediction divides by α_t ≈ 0), with the plain MSE of that
//! output (for v: the "SNR + 1" weighting of the paper). The landing time s is the one
//! diffusers' DDIM steps to (t − T // N, or its final ᾱ), so the student is exact for the
//! sampler it is used with.

use crate::objective::{drop_labels, ObjectiveConfig, TrainRng};
use crate::teacher::Teacher;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use diffuse_core::config::{PredictionType, SchedulerClass, SchedulerConfig};
use diffuse_core::noising::{self, per_row};
use diffuse_core::sampler::Sampler;
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::Network;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Classifier-free guidance of the teacher: none.
pub const DEFAULT_GUIDANCE_SCALE: f64 = 1.0;

fn default_guidance_scale() -> f64 {
    DEFAULT_GUIDANCE_SCALE
}

/// `[distill] method`: how the student learns from the teacher. Reflow is not a method of
/// this section: it trains on `data.pairs` (`diffuse distill reflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum DistillMethod {
    /// Progressive distillation (Salimans & Ho 2022): each student step matches two teacher
    /// DDIM steps.
    Progressive,
}

impl DistillMethod {
    pub const ALL: [DistillMethod; 1] = [DistillMethod::Progressive];

    /// The config string.
    pub fn name(self) -> &'static str {
        match self {
            DistillMethod::Progressive => "progressive",
        }
    }
}

impl TryFrom<String> for DistillMethod {
    type Error = String;

    /// An unknown name is an error naming the key and the allowed values.
    fn try_from(s: String) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let allowed: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
                format!(
                    "method: unknown value {s:?}; allowed: {} (reflow: `diffuse distill reflow`)",
                    allowed.join(", ")
                )
            })
    }
}

/// `[distill]` of a training config: train the network as a distilled student of a teacher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    pub method: DistillMethod,
    /// The teacher pipeline folder (a diffusion model: ε, x₀ or v prediction).
    pub teacher: String,
    /// Classifier-free guidance scale of a class-conditional teacher (1 = none); the student
    /// learns the guided result and is sampled without guidance.
    #[serde(default = "default_guidance_scale")]
    pub guidance_scale: f64,
    /// Use the teacher's `unet/` even when it has EMA weights in `unet_ema/`.
    #[serde(default)]
    pub teacher_no_ema: bool,
}

/// One student step k: timestep t, the teacher's midpoint m, ᾱ at t, m and the landing s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTimes {
    pub t: f64,
    pub mid: f64,
    pub abar_t: f64,
    pub abar_mid: f64,
    pub abar_s: f64,
}

/// The student's N DDIM steps and the teacher's midpoints (from the 2N-step grid).
pub fn step_times(sched: &SchedulerConfig, steps: usize) -> Result<Vec<StepTimes>> {
    if sched.class != SchedulerClass::Ddim {
        return Err(Error::Invalid(format!(
            "[distill]: the progressive student samples with DDIM; set [scheduler] _class_name = \"DDIMScheduler\" (got {})",
            sched.class.class_name()
        )));
    }
    let student = Sampler::new(sched, steps)?;
    let teacher = Sampler::new(sched, 2 * steps)?;
    let abar = &student.schedule().alphas_cumprod;
    let at = |t: f64| -> Result<f64> {
        abar.get(t as usize).copied().ok_or_else(|| {
            Error::Invalid(format!(
                "timestep {t} is outside the schedule's 0..{}",
                abar.len()
            ))
        })
    };
    let final_alpha = if sched.set_alpha_to_one { 1.0 } else { abar[0] };
    let jump = (sched.num_train_timesteps / steps) as i64;
    let (ts, tt) = (student.timesteps(), teacher.timesteps());
    let mut out = Vec::with_capacity(steps);
    for (k, &t) in ts.iter().enumerate() {
        if tt[2 * k] != t {
            return Err(Error::Invalid(format!(
                "[scheduler] timestep_spacing {:?}: the {}-step grid ({:?}) is not every other point of the {}-step grid ({:?}); use \"trailing\"",
                sched.timestep_spacing,
                steps,
                ts,
                2 * steps,
                tt
            )));
        }
        let s = t as i64 - jump;
        out.push(StepTimes {
            t,
            mid: tt[2 * k + 1],
            abar_t: at(t)?,
            abar_mid: at(tt[2 * k + 1])?,
            abar_s: if s >= 0 { at(s as f64)? } else { final_alpha },
        });
    }
    Ok(out)
}

/// (α, σ) = (√ᾱ, √(1 − ᾱ)) per row, in DDIM's float32 rounding.
fn alpha_sigma(abar: &[f64]) -> (Vec<f64>, Vec<f64>) {
    abar.iter()
        .map(|&a| {
            let a = a as f32;
            (a.sqrt() as f64, (1.0 - a).sqrt() as f64)
        })
        .unzip()
}

/// x̂ from a prediction at z with per-row ᾱ.
fn x0_of(
    prediction: PredictionType,
    out: &Tensor,
    z: &Tensor,
    abar: &[f64],
) -> Result<(Tensor, Tensor)> {
    let (a, s) = alpha_sigma(abar);
    Ok(noising::to_x0_eps(prediction, out, z, &a, &s)?)
}

/// One DDIM (η = 0) step from z (ᾱ_from, model output) to ᾱ_to: α_to x̂ + σ_to ε̂.
fn ddim_step(
    prediction: PredictionType,
    out: &Tensor,
    z: &Tensor,
    abar_from: &[f64],
    abar_to: &[f64],
) -> Result<Tensor> {
    let (x0, eps) = x0_of(prediction, out, z, abar_from)?;
    let (a, s) = alpha_sigma(abar_to);
    Ok((x0.broadcast_mul(&per_row(&a, z)?)? + eps.broadcast_mul(&per_row(&s, z)?)?)?)
}

/// The student's target output at z_t for rows at `steps`, given the teacher's (guided) raw
/// output `teacher(z, timesteps)`.
pub fn student_target(
    steps: &[StepTimes],
    z_t: &Tensor,
    teacher_prediction: PredictionType,
    student_prediction: PredictionType,
    teacher: &mut dyn FnMut(&Tensor, &[f32]) -> Result<Tensor>,
) -> Result<Tensor> {
    let col = |f: fn(&StepTimes) -> f64| steps.iter().map(f).collect::<Vec<f64>>();
    let (abar_t, abar_m, abar_s) = (col(|s| s.abar_t), col(|s| s.abar_mid), col(|s| s.abar_s));
    let t: Vec<f32> = steps.iter().map(|s| s.t as f32).collect();
    let m: Vec<f32> = steps.iter().map(|s| s.mid as f32).collect();
    // Two teacher DDIM steps: t → m → s.
    let out = teacher(z_t, &t)?;
    let z_m = ddim_step(teacher_prediction, &out, z_t, &abar_t, &abar_m)?;
    let out = teacher(&z_m, &m)?;
    let z_s = ddim_step(teacher_prediction, &out, &z_m, &abar_m, &abar_s)?;
    // x̃ = (z_s − r·z_t) / (α_s − r·α_t), r = σ_s / σ_t.
    let (a_t, s_t) = alpha_sigma(&abar_t);
    let (a_s, s_s) = alpha_sigma(&abar_s);
    let r: Vec<f64> = s_s.iter().zip(&s_t).map(|(s, t)| s / t).collect();
    let denom: Vec<f64> = (0..steps.len())
        .map(|i| 1.0 / (a_s[i] - r[i] * a_t[i]))
        .collect();
    let x =
        (z_s - z_t.broadcast_mul(&per_row(&r, z_t)?)?)?.broadcast_mul(&per_row(&denom, z_t)?)?;
    // ε̃ = (z_t − α_t x̃) / σ_t, then the student's output type.
    let inv_s: Vec<f64> = s_t.iter().map(|s| 1.0 / s).collect();
    let eps =
        (z_t - x.broadcast_mul(&per_row(&a_t, z_t)?)?)?.broadcast_mul(&per_row(&inv_s, z_t)?)?;
    Ok(noising::from_x0_eps(
        student_prediction,
        &x,
        &eps,
        &a_t,
        &s_t,
    )?)
}

/// A loaded teacher and the student's step grid: the progressive loss of a batch.
pub struct Progressive {
    teacher: Teacher,
    steps: Vec<StepTimes>,
}

impl Progressive {
    /// Loads the teacher (detached weights: no graph, no gradients) and checks it against the
    /// student: same ᾱ schedule, same class table, a diffusion (not flow) model.
    pub fn new(
        section: &DistillSection,
        student_sched: &SchedulerConfig,
        student_schedule: &NoiseSchedule,
        student_classes: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let Some(n) = student_sched.num_inference_steps else {
            return Err(Error::Invalid(
                "[distill]: set [scheduler] num_inference_steps = N, the student's step count (the teacher takes 2N)".into(),
            ));
        };
        if student_sched.prediction_type == PredictionType::Flow {
            return Err(Error::Invalid(
                "[distill] progressive: the student is a diffusion model; set train.prediction_type = \"v_prediction\"".into(),
            ));
        }
        let steps = step_times(student_sched, n)?;
        let teacher = Teacher::load(
            "distill.teacher",
            Path::new(&section.teacher),
            section.teacher_no_ema,
            section.guidance_scale,
            student_classes,
            device,
        )?;
        if teacher.scheduler().uses_flow_sigmas() {
            return Err(Error::Invalid(format!(
                "distill.teacher {}: a flow-matching teacher: distil it with `diffuse distill reflow` or `diffuse distill consistency`",
                section.teacher
            )));
        }
        teacher.check_schedule("distill.teacher", student_schedule)?;
        Ok(Progressive { teacher, steps })
    }

    /// The student's steps (t, midpoint, ᾱ's).
    pub fn steps(&self) -> &[StepTimes] {
        &self.steps
    }

    /// The loss of a batch x₀ (`[b, c, h, w]`) for the student `model` of prediction type
    /// `cfg.prediction`; labels dropped to the null class with `cfg.cond_dropout` (the teacher
    /// then gives its unconditional output).
    pub fn loss(
        &self,
        model: &Network,
        x0: &Tensor,
        labels: Option<&[u32]>,
        cfg: &ObjectiveConfig,
        rng: &mut TrainRng,
    ) -> Result<Tensor> {
        let b = x0.dim(0)?;
        let dev = x0.device();
        let noise = Tensor::from_vec(rng.row_normal(b, x0.elem_count() / b), x0.shape(), dev)?
            .to_dtype(x0.dtype())?;
        let rows: Vec<StepTimes> = rng
            .row_index(b, self.steps.len())
            .into_iter()
            .map(|i| self.steps[i])
            .collect();
        let labels = drop_labels(labels, cfg, rng);
        let (a, s) = alpha_sigma(&rows.iter().map(|r| r.abar_t).collect::<Vec<_>>());
        let z_t =
            (x0.broadcast_mul(&per_row(&a, x0)?)? + noise.broadcast_mul(&per_row(&s, x0)?)?)?;
        let target = student_target(
            &rows,
            &z_t,
            self.teacher.prediction(),
            cfg.prediction,
            &mut |z, t| self.teacher.output(z, t, labels.as_deref()),
        )?
        .detach();
        let t: Vec<f32> = rows.iter().map(|r| r.t as f32).collect();
        let label_t = match &labels {
            Some(l) => Some(Tensor::from_vec(l.clone(), b, dev)?),
            None => None,
        };
        let pred = model.predict(&z_t, &t, label_t.as_ref())?;
        let mse =
            noising::mse_per_sample(&pred.to_dtype(DType::F32)?, &target.to_dtype(DType::F32)?)?;
        Ok(mse.mean_all()?)
    }
}

/// What a progressive student trains with unless the `--train-config` file says otherwise.
pub const STUDENT_DEFAULTS: &str = r#"
[train]
max_steps = 500
seed = 0
learning_rate = 1e-4
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 50
# v: a 1-step student predicts x₀ at t = T − 1, where ε would be divided by α_t ≈ 0.
prediction_type = "v_prediction"
# The guided teacher is distilled into the conditional student (Meng et al. 2023).
cond_dropout = 0.0
ema_decay = 0.999
checkpoint_every = 250
keep_checkpoints = 2
log_every = 50
sample_guidance = 1.0
"#;

/// The student config of one round: [`STUDENT_DEFAULTS`], then the teacher's `train.toml`
/// `[data]` (when it has one), then `user_toml` (`[data]`, `[train]`, `[scheduler]`,
/// `[eval]`); `[model]` and the initial weights are the teacher's; `[scheduler]` is the
/// teacher's with DDIM, trailing spacing and `num_inference_steps = steps` unless the file
/// sets them; `[distill]` names the teacher and its guidance scale.
pub fn student_config(
    teacher: &Path,
    user_toml: Option<&str>,
    steps: usize,
    guidance_scale: f64,
) -> Result<crate::trainer::TrainConfig> {
    let user = crate::reflow::user_table(user_toml)?;
    if let Some(p) = user
        .get("train")
        .and_then(|t| t.get("prediction_type"))
        .and_then(|v| v.as_str())
    {
        if matches!(p, "flow" | "flow_prediction") {
            return Err(Error::Invalid("train.prediction_type \"flow\": a progressive student is a DDIM model (v_prediction, sample or epsilon)".into()));
        }
    }
    let mut base =
        crate::teacher::StudentBase::new(teacher, STUDENT_DEFAULTS, user, "a progressive student")?;
    base.table_mut().remove("consistency");
    let mut sched = base.teacher_scheduler.clone();
    sched.insert("_class_name".into(), "DDIMScheduler".into());
    sched.insert("timestep_spacing".into(), "trailing".into());
    sched.insert("num_inference_steps".into(), steps.into());
    let mut config = base.into_config(sched)?;
    config.train.sample_steps = steps;
    config.distill = Some(DistillSection {
        method: DistillMethod::Progressive,
        teacher: teacher.display().to_string(),
        guidance_scale,
        teacher_no_ema: false,
    });
    Ok(config)
}

/// The students' step counts round by round, from a `from`-step teacher down to `to` steps
/// (8 → 1: [4, 2, 1]); `None` unless `from` is `to` × 2^k with k ≥ 1.
pub fn round_steps(from: usize, to: usize) -> Option<Vec<usize>> {
    if to == 0 || from <= to || !from.is_multiple_of(to) || !(from / to).is_power_of_two() {
        return None;
    }
    Some(
        std::iter::successors(Some(from / 2), |s| Some(s / 2))
            .take_while(|&s| s >= to)
            .collect(),
    )
}

/// Where one round's student stands in its output folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundState {
    /// The newest checkpoint, to resume from.
    pub newest: Option<std::path::PathBuf>,
    /// Trained to `max_steps` and written as a pipeline: the next round may start.
    pub done: bool,
}

/// The state of the round whose student is written to `out` and trains `max_steps` steps.
pub fn round_state(out: &Path, max_steps: u64) -> RoundState {
    let newest = crate::trainer::newest_checkpoint(&out.join("checkpoints"));
    let done = newest
        .as_deref()
        .and_then(checkpoint_step)
        .is_some_and(|s| s >= max_steps)
        && out.join("model_index.json").exists();
    RoundState { newest, done }
}

/// The step count of a `step-N` checkpoint folder.
fn checkpoint_step(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use diffuse_core::rng::NoiseSource;

    fn ddim(steps: usize, spacing: &str) -> SchedulerConfig {
        let map = serde_json::json!({
            "_class_name": "DDIMScheduler",
            "beta_schedule": "linear",
            "timestep_spacing": spacing,
            "clip_sample": false,
            "num_inference_steps": steps,
        });
        SchedulerConfig::from_json_map(map.as_object().unwrap()).unwrap()
    }

    /// The ideal ε-predictor for data x₀ ~ N(0, c²): ε̂ = σ z / (α² c² + σ²).
    fn gaussian_eps(z: &Tensor, abar: f64, c: f64) -> Tensor {
        let (a2, s) = (abar, (1.0 - abar).sqrt());
        (z * (s / (a2 * c * c + (1.0 - a2)))).unwrap()
    }

    struct NoNoise;
    impl NoiseSource for NoNoise {
        fn randn(
            &mut self,
            _: &candle_core::Shape,
            _: DType,
            _: &Device,
        ) -> diffuse_core::Result<Tensor> {
            unreachable!("DDIM with η = 0 draws no noise")
        }
    }

    #[test]
    fn trailing_grids_nest_and_land_where_ddim_steps() {
        let cfg = ddim(4, "trailing");
        let st = step_times(&cfg, 4).unwrap();
        let t: Vec<f64> = st.iter().map(|s| s.t).collect();
        let m: Vec<f64> = st.iter().map(|s| s.mid).collect();
        assert_eq!(t, vec![999.0, 749.0, 499.0, 249.0]);
        assert_eq!(m, vec![874.0, 624.0, 374.0, 124.0]);
        assert_eq!(st[3].abar_s, 1.0); // set_alpha_to_one
        let one = step_times(&ddim(1, "trailing"), 1).unwrap();
        assert_eq!((one[0].t, one[0].mid, one[0].abar_s), (999.0, 499.0, 1.0));
        // "leading" with 3 steps does not nest: a clear error, not a wrong target.
        let e = step_times(&ddim(3, "leading"), 3).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
        let mut ddpm = cfg.clone();
        ddpm.class = SchedulerClass::Ddpm;
        assert!(step_times(&ddpm, 4)
            .unwrap_err()
            .to_string()
            .contains("DDIM"));
    }

    /// One step of our (diffusers-parity) DDIM sampler with the student's target output lands
    /// exactly where two DDIM steps of the teacher land, for every student step and for ε, x₀
    /// and v students.
    #[test]
    fn one_student_step_equals_two_teacher_steps_of_the_ddim_sampler() {
        let dev = Device::Cpu;
        let c = 0.5;
        let n = 4;
        let student_cfg = ddim(n, "trailing");
        let st = step_times(&student_cfg, n).unwrap();
        let student = Sampler::new(&student_cfg, n).unwrap();
        let mut teacher_cfg = student_cfg.clone();
        teacher_cfg.prediction_type = PredictionType::Epsilon;
        let teacher = Sampler::new(&teacher_cfg, 2 * n).unwrap();
        let abar = student.schedule().alphas_cumprod.clone();
        let z = Tensor::randn(0f32, 1.0, (3, 1, 4, 4), &dev).unwrap();
        for (k, row) in st.iter().enumerate() {
            let rows = vec![*row; 3];
            // The teacher's two steps through the sampler.
            let mut state = teacher.new_state();
            let mut x = z.clone();
            for i in [2 * k, 2 * k + 1] {
                // Skip the earlier steps' state: DDIM is one-step, its state is the index only.
                while state.index() < i {
                    let t = teacher.timesteps()[state.index()];
                    let out = gaussian_eps(&x, abar[t as usize], c);
                    let _ = teacher.step(&mut state, &out, &x, &mut NoNoise).unwrap();
                }
                let t = teacher.timesteps()[i];
                let out = gaussian_eps(&x, abar[t as usize], c);
                x = teacher
                    .step(&mut state, &out, &x, &mut NoNoise)
                    .unwrap()
                    .prev_sample;
            }
            let landed = x;
            for pred in [
                PredictionType::Epsilon,
                PredictionType::Sample,
                PredictionType::VPrediction,
            ] {
                let target =
                    student_target(&rows, &z, PredictionType::Epsilon, pred, &mut |z, t| {
                        Ok(gaussian_eps(z, abar[t[0] as usize], c))
                    })
                    .unwrap();
                let mut cfg = student_cfg.clone();
                cfg.prediction_type = pred;
                let s = Sampler::new(&cfg, n).unwrap();
                let mut state = s.new_state();
                while state.index() < k {
                    let _ = s.step(&mut state, &target, &z, &mut NoNoise).unwrap();
                }
                let one = s
                    .step(&mut state, &target, &z, &mut NoNoise)
                    .unwrap()
                    .prev_sample;
                let diff = (one - &landed)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let scale = landed
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    diff <= 2e-5 * scale.max(1.0),
                    "step {k} {pred:?}: {diff} vs {scale}"
                );
            }
        }
    }

    #[test]
    fn rounds_halve_and_a_round_is_done_at_its_last_checkpoint() {
        assert_eq!(round_steps(8, 1), Some(vec![4, 2, 1]));
        assert_eq!(round_steps(16, 4), Some(vec![8, 4]));
        for (from, to) in [(8, 0), (4, 4), (2, 4), (12, 1), (6, 2)] {
            assert_eq!(round_steps(from, to), None, "{from} → {to}");
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        assert_eq!(
            round_state(out, 10),
            RoundState {
                newest: None,
                done: false
            }
        );
        let ckpt = out.join("checkpoints/step-10");
        std::fs::create_dir_all(&ckpt).unwrap();
        std::fs::write(ckpt.join("training_state.json"), "{}").unwrap();
        let s = round_state(out, 10);
        assert_eq!(s.newest.as_deref(), Some(ckpt.as_path()));
        assert!(!s.done, "no pipeline written yet");
        std::fs::write(out.join("model_index.json"), "{}").unwrap();
        assert!(round_state(out, 10).done);
        assert!(!round_state(out, 11).done);
    }
}
