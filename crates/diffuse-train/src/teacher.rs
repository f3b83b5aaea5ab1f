//! A frozen teacher pipeline for distillation (progressive and consistency distillation):
//! loaded with detached weights (no graph, no gradients), checked against its student, and its
//! raw output under classifier-free guidance, cond and null rows in one call (Meng et al. 2023,
//! "On Distillation of Guided Diffusion Models", distil the guided output into the student).

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use diffuse_core::config::{PredictionType, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::pipeline::{LoadOptions, Pipeline};
use diffuse_models::Network;
use std::path::Path;

/// A loaded teacher network with its scheduler config and guidance.
pub struct Teacher {
    net: Network,
    sched: SchedulerConfig,
    guidance: f64,
    /// The null class row when teacher and student are class-conditional.
    null: Option<u32>,
}

impl Teacher {
    /// Loads the pipeline folder `dir` (its EMA weights unless `no_ema`) for a student with
    /// `student_classes` classes; `key` names the setting in errors (`distill.teacher`).
    pub fn load(
        key: &str,
        dir: &Path,
        no_ema: bool,
        guidance: f64,
        student_classes: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let err =
            |e: &dyn std::fmt::Display| Error::Invalid(format!("{key} {}: {e}", dir.display()));
        if !(guidance.is_finite() && guidance >= 1.0) {
            return Err(Error::Invalid(format!(
                "{key}: the guidance scale must be ≥ 1, got {guidance}"
            )));
        }
        // Checked before the weights load.
        let folder = diffuse_models::weights::resolve_model_folder(dir).map_err(|e| err(&e))?;
        if folder.scheduler_config.is_none() {
            return Err(err(
                &"no scheduler/scheduler_config.json: give the teacher's pipeline folder",
            ));
        }
        let opts = LoadOptions {
            no_ema,
            ..Default::default()
        };
        let pipe = Pipeline::load(dir, &opts, device).map_err(|e| err(&e))?;
        let sched = pipe.scheduler_config(None).map_err(|e| err(&e))?;
        let net = pipe.net;
        if guidance != 1.0 && !net.is_class_conditional() {
            return Err(err(&format!(
                "guidance scale {guidance} needs a class-conditional teacher and this one has no class labels; use guidance 1"
            )));
        }
        let null = match (student_classes, net.num_classes()) {
            (None, _) if net.is_class_conditional() => return Err(err(
                &"the teacher is class-conditional and the student is not (data.class_conditional)",
            )),
            (None, _) => None,
            (Some(k), Some(rows)) if rows == k + 1 => Some(k as u32),
            (Some(k), rows) => {
                return Err(err(&format!(
                "the student has {k} classes (+ null) and the teacher's class table {rows:?} rows"
            )))
            }
        };
        Ok(Teacher {
            net,
            sched,
            guidance,
            null,
        })
    }

    /// The teacher's scheduler config (its pipeline's `scheduler/`).
    pub fn scheduler(&self) -> &SchedulerConfig {
        &self.sched
    }

    /// What the teacher's network predicts.
    pub fn prediction(&self) -> PredictionType {
        self.sched.prediction_type
    }

    /// An error unless the teacher's ᾱ schedule is the student's (a diffusion teacher).
    pub fn check_schedule(&self, key: &str, student: &NoiseSchedule) -> Result<()> {
        let teacher = NoiseSchedule::from_config(&self.sched)?;
        let same = teacher.alphas_cumprod.len() == student.alphas_cumprod.len()
            && teacher
                .alphas_cumprod
                .iter()
                .zip(&student.alphas_cumprod)
                .all(|(a, b)| (a - b).abs() <= 1e-7 * a.abs().max(1e-30));
        if same {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{key}: the teacher's noise schedule (betas, num_train_timesteps) differs from the student's [scheduler]"
            )))
        }
    }

    /// The teacher's raw output at `z` (`[b, c, h, w]`), model times `t`, with classifier-free
    /// guidance for labelled rows (a null-class row gets the unconditional output).
    pub fn output(&self, z: &Tensor, t: &[f32], labels: Option<&[u32]>) -> Result<Tensor> {
        let dev = z.device();
        let out = match (labels, self.null) {
            (Some(l), Some(null)) if self.guidance != 1.0 => {
                let b = l.len();
                let mut both = l.to_vec();
                both.extend(std::iter::repeat_n(null, b));
                let lt = Tensor::from_vec(both, 2 * b, dev)?;
                let tt: Vec<f32> = t.iter().chain(t).copied().collect();
                let out = self
                    .net
                    .predict(&Tensor::cat(&[z, z], 0)?, &tt, Some(&lt))?;
                let (c, u) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
                (&u + ((c - &u)? * self.guidance)?)?
            }
            (Some(l), Some(_)) => {
                let lt = Tensor::from_vec(l.to_vec(), l.len(), dev)?;
                self.net.predict(z, t, Some(&lt))?
            }
            _ => self.net.predict(z, t, None)?,
        };
        Ok(out.detach())
    }
}

/// What a distilled student's training config takes from its teacher folder: the defaults of
/// its method, then the teacher's `train.toml` `[data]` (when it has one), then the user's
/// `--train-config` (`[data]`, `[train]`, `[scheduler]`, `[eval]`, …); `[model]` and the
/// initial weights are the teacher's (`train.init_from`).
pub struct StudentBase {
    teacher: std::path::PathBuf,
    table: toml::Table,
    /// The teacher's `scheduler_config.json` as `[scheduler]` entries.
    pub teacher_scheduler: serde_json::Map<String, serde_json::Value>,
    user_scheduler: serde_json::Map<String, serde_json::Value>,
}

impl StudentBase {
    /// `what` names the student in errors ("a progressive student").
    pub fn new(teacher: &Path, defaults: &str, user: toml::Table, what: &str) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(defaults).expect("valid defaults");
        let err = |e: &dyn std::fmt::Display| {
            Error::Invalid(format!("teacher {}: {e}", teacher.display()))
        };
        let folder = diffuse_models::weights::resolve_model_folder(teacher).map_err(|e| err(&e))?;
        let Some(sched_path) = &folder.scheduler_config else {
            return Err(err(
                &"no scheduler/scheduler_config.json: give the teacher's pipeline folder",
            ));
        };
        // The teacher's data, as `diffuse train` recorded it.
        if let Ok(text) = std::fs::read_to_string(teacher.join("train.toml")) {
            let t: toml::Table =
                toml::from_str(&text).map_err(|e| err(&format!("train.toml: {e}")))?;
            if let Some(toml::Value::Table(d)) = t.get("data") {
                crate::reflow::merge(
                    &mut table,
                    toml::Table::from_iter([("data".to_string(), toml::Value::Table(d.clone()))]),
                );
            }
        }
        if user
            .get("data")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("pairs"))
        {
            return Err(Error::Invalid(format!(
                "data.pairs: {what} trains on images or latents (data.name, data.latents)"
            )));
        }
        let user_scheduler = crate::reflow::user_scheduler(&user);
        crate::reflow::merge(&mut table, user);
        table.remove("scheduler");
        if !table
            .get("data")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("name") || d.contains_key("latents"))
        {
            return Err(err(&"its folder has no train.toml with a [data] section: give the student's data in --train-config ([data] name = …)"));
        }
        if table
            .get("model")
            .and_then(|m| m.as_table())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(Error::Invalid(format!(
                "[model]: {what} has its teacher's architecture and starts from its weights; remove [model]"
            )));
        }
        table.insert("model".into(), toml::Value::Table(Default::default()));
        let text = std::fs::read_to_string(sched_path).map_err(|e| err(&e))?;
        let sched: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .map_err(|e| err(&format!("{}: {e}", sched_path.display())))?;
        Ok(StudentBase {
            teacher: teacher.to_path_buf(),
            table,
            teacher_scheduler: crate::reflow::scheduler_entries(&sched),
            user_scheduler,
        })
    }

    /// The merged table (before [`Self::into_config`]).
    pub fn table_mut(&mut self) -> &mut toml::Table {
        &mut self.table
    }

    /// The training config with `[scheduler]` = `sched` overridden by the user's `[scheduler]`,
    /// and `train.init_from` = the teacher.
    pub fn into_config(
        self,
        mut sched: serde_json::Map<String, serde_json::Value>,
    ) -> Result<crate::trainer::TrainConfig> {
        let mut table = self.table;
        table.remove("distill");
        let mut config = crate::reflow::into_config(table)?;
        sched.extend(self.user_scheduler);
        config.scheduler = sched;
        config.train.init_from = Some(self.teacher.display().to_string());
        Ok(config)
    }
}
