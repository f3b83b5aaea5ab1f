//! `diffuse distill consistency` (CD) and `diffuse distill ect` (easy consistency tuning):
//! a consistency student of a pipeline folder trained by the same trainer as `diffuse train`
//! (`diffuse_train::consistency`), written to OUTPUT; rerun to continue.

use anyhow::Result;
use diffuse_train::consistency::{student_config, ConsistencyMethod};
use diffuse_train::progressive::{round_state, RoundState};
use diffuse_train::reflow::teacher_guidance;
use diffuse_train::trainer::{RunFolder, Start};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What both commands take beside their model folder.
#[derive(clap::Args)]
pub struct StudentArgs {
    /// Output: the student's pipeline folder (checkpoints inside; rerun to continue).
    #[arg(long)]
    output: PathBuf,
    /// Training steps (overrides train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// The step count the student records for `diffuse sample` and `serve` (1 = one-step).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// The student's training config ([data], [train], [scheduler], [eval], [consistency];
    /// default: the model's data and diffuse_train::consistency::STUDENT_DEFAULTS).
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Override a student config value: --set consistency.solver="heun"
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct CdArgs {
    /// The teacher: a pipeline folder (ε, x₀, v or flow prediction).
    #[arg(long)]
    teacher: PathBuf,
    /// Classifier-free guidance of a class-conditional teacher, distilled into the student
    /// (default: its train.toml's sample_guidance, else 1).
    #[arg(long)]
    guidance_scale: Option<f64>,
    #[command(flatten)]
    student: StudentArgs,
}

#[derive(clap::Args)]
pub struct EctArgs {
    /// The pretrained model tuned into a consistency model (a pipeline folder).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    student: StudentArgs,
}

pub(super) fn cd(a: CdArgs) -> Result<()> {
    let guidance = a
        .guidance_scale
        .or_else(|| teacher_guidance(&a.teacher))
        .unwrap_or(1.0);
    train(ConsistencyMethod::Cd, a.teacher, guidance, a.student)
}

pub(super) fn ect(a: EctArgs) -> Result<()> {
    train(ConsistencyMethod::Ect, a.model, 1.0, a.student)
}

fn train(method: ConsistencyMethod, model: PathBuf, guidance: f64, a: StudentArgs) -> Result<()> {
    let (name, what) = match method {
        ConsistencyMethod::Cd => ("diffuse distill consistency", "consistency distillation"),
        ConsistencyMethod::Ect => ("diffuse distill ect", "easy consistency tuning"),
    };
    let device = crate::common::device(&a.device)?;
    let user_toml = super::read_train_config(a.train_config.as_deref())?;
    let config = super::student_overrides(
        student_config(method, &model, user_toml.as_deref(), a.steps, guidance),
        a.train_config.as_deref(),
        &a.set,
        a.max_steps,
    )?;
    // Checked before OUTPUT is claimed: a bad value leaves no folder behind.
    if let Some(c) = &config.consistency {
        c.check()?;
    }
    let RoundState { newest, done } = round_state(&a.output, config.train.max_steps);
    if done {
        eprintln!(
            "{} is complete: diffuse sample --model {}",
            a.output.display(),
            a.output.display()
        );
        return Ok(());
    }
    if !a.quiet {
        eprintln!(
            "{what} of {} → {}{}",
            model.display(),
            a.output.display(),
            if newest.is_some() { " (resuming)" } else { "" }
        );
    }
    let stop = crate::common::stop_flag("finishing the current training step");
    let started = Instant::now();
    let mut folder = RunFolder::claim(&a.output, Start::Continue, name)?;
    let outcome = crate::training::run_training(&config, &mut folder, &device, a.quiet, &stop)?;
    if stop.load(Ordering::SeqCst) || outcome.steps < config.train.max_steps {
        eprintln!(
            "stopped at step {}: run the same command again to continue",
            outcome.steps
        );
        return Ok(());
    }
    eprintln!(
        "student trained to step {} (last loss {:.4}) in {:.1} s → {} ({} step(s) by default): diffuse sample --model {}",
        outcome.steps,
        outcome.last_loss,
        started.elapsed().as_secs_f64(),
        a.output.display(),
        a.steps,
        a.output.display()
    );
    Ok(())
}
