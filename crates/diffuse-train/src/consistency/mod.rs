//! Consistency models: consistency distillation (CD; Song et al. 2023, "Consistency Models",
//! Alg. 2, with LCM's skip-step teacher solver, Luo et al. 2023) and easy consistency tuning
//! (ECT; Geng et al. 2024, "Consistency Models Made Easy", `training/loss.py` of locuslab/ect),
//! with iCT's pseudo-Huber loss (Song & Dhariwal 2023, "Improved Techniques for Training
//! Consistency Models").
//!
//! The student is its teacher's network and keeps its prediction type; the consistency function
//! is built from that output with boundary scalings so that f(x, 0) = x:
//!
//! ```text
//! β schedule (ε, x₀, v):  f(x, t) = c_skip(t)·x + c_out(t)·x̂₀(x, t)    (LCMScheduler's
//!                          c_skip = σ_d²/((10t)² + σ_d²), c_out = 10t/√((10t)² + σ_d²), σ_d = ½)
//! flow:                   f(x, σ) = x − σ·u(x, σ)                        (c_skip = 1, c_out = −σ)
//! ```
//!
//! so a student samples with diffusers' `LCMScheduler` or, for flow, `FlowMatchEulerDiscrete
//! Scheduler` with `stochastic_sampling` (x₀ = x − σu, then re-noised to the next σ): one step
//! is f at the first time. Times are points of the student's own schedule; ECT draws its noise
//! level as EDM's σ (x = x₀ + σε) and maps it to the schedule (β: √((1 − ᾱ)/ᾱ) = σ,
//! interpolated in log σ as diffusers' `_sigma_to_t`; flow: σ_flow = σ/(1 + σ)).

use crate::objective::{drop_labels, ObjectiveConfig, TrainRng};
use crate::teacher::Teacher;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use diffuse_core::config::{PredictionType, SchedulerClass, SchedulerConfig};
use diffuse_core::noising;
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::Network;
use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

mod solve;
mod student;
mod time;

use solve::{col, lin, times};
pub use solve::{consistency_fn, ect_r, pseudo_huber, solve, TeacherEval};
pub use student::{student_config, CD_TARGET_EMA_DECAY, STUDENT_DEFAULTS};
pub use time::{Family, Point};

/// The checkpoint file of the EMA target network (CD with `target_ema_decay > 0`).
pub const TARGET_FILE: &str = "consistency_target.safetensors";

/// `[consistency] method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyMethod {
    /// Consistency distillation: the target is f at the point a teacher ODE step reaches.
    Cd,
    /// Easy consistency tuning: no teacher; x_t and x_r share their noise.
    Ect,
}

/// The teacher's one skip-step ODE solver (CD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// First order: DDIM (η = 0); for a flow teacher the flow Euler step, which is the same.
    Ddim,
    /// Heun's second order (two teacher calls): in DDIM's variables (x/α over σ/α) on a β
    /// schedule, in (x, σ) for flow.
    Heun,
    /// DPM-Solver++(2S) (Lu et al. 2022), a midpoint in log-SNR, data prediction (two calls).
    DpmSolver,
}

impl Solver {
    /// The solver that matches a teacher's own sampler: Heun for Heun samplers, DDIM for DDIM
    /// and the Euler samplers (Euler on flow is DDIM), DPM-Solver++(2S) for the rest (DPM-Solver,
    /// UniPC, and an ancestral DDPM teacher, whose ODE it solves best: docs/few-step.md).
    pub fn for_sampler(class: SchedulerClass) -> Self {
        use SchedulerClass as C;
        match class {
            C::Heun | C::FlowMatchHeun | C::EdmHeun => Solver::Heun,
            C::Ddim | C::Euler | C::FlowMatchEuler | C::EdmEuler => Solver::Ddim,
            _ => Solver::DpmSolver,
        }
    }
}

fn default_guidance() -> f64 {
    1.0
}
/// CD's grid: 10 points (LCM uses 50; on the 16 px MNIST teacher of docs/few-step.md, 10 points
/// with DPM-Solver++(2S) teacher steps gave one-step FID 1.76 against 8.68 for 50 with DDIM, at
/// the same 1000 steps).
fn default_num_timesteps() -> usize {
    10
}
fn default_p_mean() -> f64 {
    -1.1
}
fn default_p_std() -> f64 {
    2.0
}
fn default_q() -> f64 {
    2.0
}
fn default_k() -> f64 {
    8.0
}
fn default_b() -> f64 {
    1.0
}
fn default_stage_steps() -> u64 {
    400
}

/// `[consistency]` of a training config: train the network as a consistency model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencySection {
    pub method: ConsistencyMethod,
    /// CD: the teacher pipeline folder (ε, x₀, v or flow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// CD: classifier-free guidance of a class-conditional teacher (1 = none); the student
    /// learns the guided ODE and samples without guidance.
    #[serde(default = "default_guidance")]
    pub guidance_scale: f64,
    /// CD: the teacher's `unet/` even where it has `unet_ema/`.
    #[serde(default)]
    pub teacher_no_ema: bool,
    /// CD: the teacher's skip-step solver (default: the one matching its scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver: Option<Solver>,
    /// CD: N, the points of the time grid (default 10: a skip of T/N timesteps per step; LCM
    /// uses 50).
    #[serde(default = "default_num_timesteps")]
    pub num_timesteps: usize,
    /// The EMA decay μ of the target network; 0 (iCT, ECT) uses the student itself under
    /// stop-gradient. LCM uses 0.95.
    #[serde(default)]
    pub target_ema_decay: f64,
    /// The pseudo-Huber c (default iCT's 0.00054·√d, d = values per sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huber_c: Option<f64>,
    /// ECT: log-normal noise levels, ln σ ~ N(p_mean, p_std²).
    #[serde(default = "default_p_mean")]
    pub p_mean: f64,
    #[serde(default = "default_p_std")]
    pub p_std: f64,
    /// ECT's curriculum: r = t·(1 − (1 + k·sigmoid(−b·t)) / q^(stage+1)), stage = step /
    /// stage_steps, so Δt = t − r shrinks by q each stage.
    #[serde(default = "default_q")]
    pub q: f64,
    #[serde(default = "default_k")]
    pub k: f64,
    #[serde(default = "default_b")]
    pub b: f64,
    #[serde(default = "default_stage_steps")]
    pub stage_steps: u64,
}

impl ConsistencySection {
    /// The section's values against each other and their ranges (before any folder is made).
    pub fn check(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.target_ema_decay) {
            return Err(Error::Invalid(format!(
                "consistency.target_ema_decay must be in [0, 1), got {}",
                self.target_ema_decay
            )));
        }
        if self.huber_c.is_some_and(|c| !(c >= 0.0 && c.is_finite())) {
            return Err(Error::Invalid("consistency.huber_c must be ≥ 0".into()));
        }
        if self.method == ConsistencyMethod::Ect
            && !(self.p_std > 0.0
                && self.p_mean.is_finite()
                && self.q > 1.0
                && self.stage_steps > 0)
        {
            return Err(Error::Invalid(format!(
                "[consistency] ECT: need p_std > 0, q > 1 and stage_steps ≥ 1 (got {}, {}, {})",
                self.p_std, self.q, self.stage_steps
            )));
        }
        Ok(())
    }
}

/// The EMA target network (μ > 0): the student's architecture over its own weights.
struct Target {
    net: Network,
    vars: Vec<(String, Var)>,
    decay: f64,
}

/// A consistency student's loss: CD with its teacher, or ECT.
pub struct Consistency {
    section: ConsistencySection,
    family: Family,
    prediction: PredictionType,
    teacher: Option<Teacher>,
    solver: Solver,
    grid: Vec<Point>,
    target: Option<Target>,
}

impl Consistency {
    /// Checks the section against the student's scheduler and loads the CD teacher.
    pub fn new(
        section: &ConsistencySection,
        student_sched: &SchedulerConfig,
        student_classes: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let s = section;
        s.check()?;
        let family = Family::of(student_sched)?;
        let (teacher, solver, grid) = match s.method {
            ConsistencyMethod::Cd => {
                let Some(dir) = &s.teacher else {
                    return Err(Error::Invalid(
                        "consistency.teacher: CD needs the teacher's pipeline folder".into(),
                    ));
                };
                let teacher = Teacher::load(
                    "consistency.teacher",
                    Path::new(dir),
                    s.teacher_no_ema,
                    s.guidance_scale,
                    student_classes,
                    device,
                )?;
                let flow_teacher = teacher.prediction() == PredictionType::Flow;
                let flow_student = matches!(family, Family::Flow { .. });
                if flow_teacher != flow_student {
                    return Err(Error::Invalid(format!(
                        "consistency.teacher {dir}: a {} teacher needs a {} student ([scheduler] {})",
                        teacher.prediction().name(),
                        if flow_teacher { "flow" } else { "β-schedule" },
                        if flow_teacher {
                            "FlowMatchEulerDiscreteScheduler"
                        } else {
                            "LCMScheduler"
                        }
                    )));
                }
                if teacher.scheduler().class.is_edm() {
                    return Err(Error::Invalid(format!(
                        "consistency.teacher {dir}: EDM teachers are not supported yet; distil an ε, x₀, v or flow model"
                    )));
                }
                if let Family::Beta { .. } = family {
                    teacher.check_schedule(
                        "consistency.teacher",
                        &NoiseSchedule::from_config(student_sched)?,
                    )?;
                }
                let solver = s
                    .solver
                    .unwrap_or_else(|| Solver::for_sampler(teacher.scheduler().class));
                let grid = family.grid(s.num_timesteps)?;
                (Some(teacher), solver, grid)
            }
            ConsistencyMethod::Ect => {
                if s.teacher.is_some() {
                    return Err(Error::Invalid(
                        "consistency.teacher: ECT trains without a teacher (it starts from the model's own weights, train.init_from); remove teacher or use method = \"cd\"".into(),
                    ));
                }
                (None, Solver::Ddim, Vec::new())
            }
        };
        Ok(Consistency {
            section: s.clone(),
            family,
            prediction: student_sched.prediction_type,
            teacher,
            solver,
            grid,
            target: None,
        })
    }

    /// Whether the run keeps an EMA target network (μ > 0).
    pub fn has_target(&self) -> bool {
        self.section.target_ema_decay > 0.0
    }

    /// Makes the EMA target network (μ > 0) from the student's current weights, or from a
    /// checkpoint's `state` on resume. `all` are every student variable (the fixed ones too),
    /// `trained` the ones the optimizer updates.
    pub fn attach_target(
        &mut self,
        cfg: &diffuse_models::NetworkConfig,
        all: &candle_nn::VarMap,
        trained: &[(String, Var)],
        state: Option<&HashMap<String, Tensor>>,
        device: &Device,
    ) -> Result<()> {
        let decay = self.section.target_ema_decay;
        if decay == 0.0 {
            return Ok(());
        }
        let (net, varmap) = diffuse_models::weights::build::<Network>(cfg, device)?;
        let student = all.data().lock().expect("varmap lock");
        let mine = varmap.data().lock().expect("varmap lock");
        let mut vars = Vec::with_capacity(trained.len());
        for (name, var) in mine.iter() {
            let from = match state.and_then(|s| s.get(name)) {
                Some(t) => t.clone(),
                None if state.is_some() && trained.iter().any(|(n, _)| n == name) => {
                    return Err(Error::Invalid(format!(
                        "{TARGET_FILE}: no tensor {name}; the checkpoint's target network does not match this model"
                    )))
                }
                None => student
                    .get(name)
                    .ok_or_else(|| Error::Invalid(format!("target network: no student weight {name}")))?
                    .as_tensor()
                    .clone(),
            };
            var.set(&from.to_dtype(var.dtype())?.to_device(device)?)?;
            if trained.iter().any(|(n, _)| n == name) {
                vars.push((name.clone(), var.clone()));
            }
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        drop(mine);
        self.target = Some(Target { net, vars, decay });
        Ok(())
    }

    /// After an optimizer step: target ← μ·target + (1 − μ)·student.
    pub fn update_target(&self, trained: &[(String, Var)]) -> Result<()> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        for ((name, tv), (sn, sv)) in t.vars.iter().zip(trained) {
            debug_assert_eq!(name, sn);
            let next = ((tv.as_tensor() * t.decay)? + (sv.as_tensor() * (1.0 - t.decay))?)?;
            tv.set(&next.detach())?;
        }
        Ok(())
    }

    /// The target network's weights for a checkpoint (none with μ = 0).
    pub fn target_state(&self) -> Option<Vec<(String, Tensor)>> {
        self.target.as_ref().map(|t| {
            t.vars
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
                .collect()
        })
    }

    /// f of the target network (or the student under stop-gradient) at x.
    fn target_fn(
        &self,
        model: &Network,
        x: &Tensor,
        points: &[Point],
        labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let net = self.target.as_ref().map_or(model, |t| &t.net);
        let out = net.predict(x, &times(points), labels)?.detach();
        Ok(consistency_fn(self.prediction, &out.to_dtype(DType::F32)?, x, points)?.detach())
    }

    /// The loss of a batch x₀ (`[b, c, h, w]`) at optimizer step `step` for the student
    /// `model`, with its per-row parts' means for the log.
    pub fn loss(
        &self,
        model: &Network,
        x0: &Tensor,
        labels: Option<&[u32]>,
        cfg: &ObjectiveConfig,
        rng: &mut TrainRng,
        step: u64,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        let b = x0.dim(0)?;
        let dev = x0.device();
        let x0 = x0.to_dtype(DType::F32)?;
        let d = x0.elem_count() / b;
        let noise = Tensor::from_vec(rng.row_normal(b, d), x0.shape(), dev)?;
        let labels = drop_labels(labels, cfg, rng);
        let label_t = match &labels {
            Some(l) => Some(Tensor::from_vec(l.clone(), b, dev)?),
            None => None,
        };
        let c = self.section.huber_c.unwrap_or(0.00054 * (d as f64).sqrt());
        let noised =
            |p: &[Point]| lin(&[(&col(p, |q| q.alpha), &x0), (&col(p, |q| q.sigma), &noise)]);
        let (t_pts, x_t, target, weight, parts) = match self.section.method {
            ConsistencyMethod::Cd => {
                let teacher = self.teacher.as_ref().expect("CD has a teacher");
                let rows = rng.row_index(b, self.grid.len());
                let t_pts: Vec<Point> = rows.iter().map(|&i| self.grid[i]).collect();
                let s_pts: Vec<Point> = rows
                    .iter()
                    .map(|&i| {
                        if i == 0 {
                            self.family.boundary()
                        } else {
                            self.grid[i - 1]
                        }
                    })
                    .collect();
                let x_t = noised(&t_pts)?;
                let tp = teacher.prediction();
                let x_s = solve(
                    self.solver,
                    &self.family,
                    &x_t,
                    &t_pts,
                    &s_pts,
                    &mut |x, p| {
                        let out = teacher.output(x, &times(p), labels.as_deref())?;
                        Ok(noising::to_x0_eps(
                            tp,
                            &out.to_dtype(DType::F32)?,
                            x,
                            &col(p, |q| q.alpha),
                            &col(p, |q| q.sigma),
                        )?)
                    },
                )?
                .detach();
                let target = self.target_fn(model, &x_s, &s_pts, label_t.as_ref())?;
                (t_pts, x_t, target, vec![1.0; b], vec![])
            }
            ConsistencyMethod::Ect => {
                let s = &self.section;
                let stage = step / s.stage_steps;
                let z: Vec<f64> = rng.rows(b, |r| r.sample::<f64, _>(StandardNormal));
                let t_pts: Vec<Point> = z
                    .iter()
                    .map(|z| self.family.at_ve_sigma((s.p_mean + s.p_std * z).exp()))
                    .collect();
                let r_ve: Vec<f64> = t_pts
                    .iter()
                    .map(|p| ect_r(p.ve_sigma(), stage, s.q, s.k, s.b))
                    .collect();
                let r_pts: Vec<Point> = r_ve
                    .iter()
                    .map(|&r| {
                        if r > 0.0 {
                            self.family.at_ve_sigma(r)
                        } else {
                            self.family.boundary()
                        }
                    })
                    .collect();
                // Rows at r = 0 take x₀ itself as the target (the diffusion loss).
                let at_zero: Vec<f64> = r_ve.iter().map(|&r| (r == 0.0) as u8 as f64).collect();
                let x_r = noised(&r_pts)?;
                let f_r = self.target_fn(model, &x_r, &r_pts, label_t.as_ref())?;
                let other: Vec<f64> = at_zero.iter().map(|z| 1.0 - z).collect();
                let target = lin(&[(&at_zero, &x0), (&other, &f_r)])?;
                // λ = 1/(t − r) in EDM σ.
                let weight: Vec<f64> = t_pts
                    .iter()
                    .zip(&r_pts)
                    .map(|(t, r)| {
                        let rv = if r.sigma == 0.0 { 0.0 } else { r.ve_sigma() };
                        1.0 / (t.ve_sigma() - rv).max(1e-6)
                    })
                    .collect();
                let frac = at_zero.iter().sum::<f64>() / b as f64;
                let x_t = noised(&t_pts)?;
                (
                    t_pts,
                    x_t,
                    target,
                    weight,
                    vec![
                        ("ect_stage".to_string(), stage as f64),
                        ("ect_rows_at_r0".to_string(), frac),
                    ],
                )
            }
        };
        let out = model.predict(&x_t, &times(&t_pts), label_t.as_ref())?;
        let f = consistency_fn(self.prediction, &out.to_dtype(DType::F32)?, &x_t, &t_pts)?;
        let per_row_loss = pseudo_huber(&f, &target, c)?;
        let w = Tensor::from_vec(weight.iter().map(|&w| w as f32).collect(), b, dev)?;
        let loss = (per_row_loss * w)?.mean_all()?;
        Ok((loss, parts))
    }
}

#[cfg(test)]
mod tests;
