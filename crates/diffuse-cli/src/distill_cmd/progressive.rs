//! `diffuse distill progressive` (Salimans & Ho 2022, `diffuse_train::progressive`): rounds
//! that halve the DDIM step count, each student the next round's teacher, in OUTPUT/steps-N.

use anyhow::{Context, Result};
use diffuse_train::reflow::teacher_guidance;
use diffuse_train::trainer::newest_checkpoint;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ProgressiveArgs {
    /// The teacher: a diffusion pipeline folder (ε, x₀ or v prediction).
    #[arg(long)]
    teacher: PathBuf,
    /// Output: one student pipeline per round in OUTPUT/steps-N.
    #[arg(long)]
    output: PathBuf,
    /// The teacher's DDIM step count in the first round.
    #[arg(long, default_value_t = 8)]
    from_steps: usize,
    /// The last student's step count (from_steps / 2^rounds).
    #[arg(long, default_value_t = 1)]
    to_steps: usize,
    /// Training steps per round (overrides train.max_steps).
    #[arg(long)]
    steps_per_round: Option<u64>,
    /// Classifier-free guidance scale of a class-conditional teacher in the first round
    /// (default: its train.toml's sample_guidance, else 1); later teachers are guided
    /// students, used without guidance.
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// The students' training config ([data], [train], [scheduler], [eval]; default: the
    /// teacher's data and the defaults of diffuse_train::progressive::STUDENT_DEFAULTS).
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Override a student config value: --set train.learning_rate=5e-5
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
}

/// The step count of a `step-N` checkpoint folder.
fn checkpoint_step(dir: &std::path::Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

pub(super) fn progressive(a: ProgressiveArgs) -> Result<()> {
    let (from, to) = (a.from_steps, a.to_steps);
    if to == 0 || from <= to || from % to != 0 || !(from / to).is_power_of_two() {
        anyhow::bail!(
            "--from-steps {from} --to-steps {to}: each round halves the steps, so from-steps must be to-steps × 2^k with k ≥ 1"
        );
    }
    let device = crate::common::device(&a.device)?;
    let user_toml = match &a.train_config {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let stop = crate::common::ctrl_c_flag("finishing the current training step");
    let mut teacher = a.teacher.clone();
    let mut steps = from / 2;
    let mut round = 0;
    while steps >= to {
        let out = a.output.join(format!("steps-{steps}"));
        let guidance = if round == 0 {
            a.guidance_scale
                .or_else(|| teacher_guidance(&teacher))
                .unwrap_or(1.0)
        } else {
            1.0
        };
        let mut config = diffuse_train::progressive::student_config(
            &teacher,
            user_toml.as_deref(),
            steps,
            guidance,
        )
        .map_err(|e| match &a.train_config {
            Some(p) if !e.to_string().starts_with("teacher") => {
                anyhow::anyhow!("{}: {e}", p.display())
            }
            _ => e.into(),
        })?;
        for s in &a.set {
            config.set(s)?;
        }
        if let Some(n) = a.steps_per_round {
            config.train.max_steps = n;
        }
        let newest = newest_checkpoint(&out.join("checkpoints"));
        let done = newest
            .as_deref()
            .and_then(checkpoint_step)
            .is_some_and(|s| s >= config.train.max_steps)
            && out.join("model_index.json").exists();
        if done {
            if !a.quiet {
                eprintln!("round {}: {} is complete", round + 1, out.display());
            }
        } else {
            if !a.quiet {
                eprintln!(
                    "round {}: {} DDIM steps of {} → {} in {}{}",
                    round + 1,
                    2 * steps,
                    teacher.display(),
                    steps,
                    out.display(),
                    if newest.is_some() { " (resuming)" } else { "" }
                );
            }
            let started = Instant::now();
            let outcome = crate::training::run_training(
                &config,
                &out,
                newest.is_some(),
                &device,
                a.quiet,
                &stop,
            )?;
            if stop.load(Ordering::SeqCst) || outcome.steps < config.train.max_steps {
                eprintln!(
                    "stopped in round {} at step {}: run the same command again to continue",
                    round + 1,
                    outcome.steps
                );
                return Ok(());
            }
            eprintln!(
                "round {}: student trained to step {} (last loss {:.4}) in {:.1} s → {} (made for {steps} steps)",
                round + 1,
                outcome.steps,
                outcome.last_loss,
                started.elapsed().as_secs_f64(),
                out.display()
            );
        }
        teacher = out;
        steps /= 2;
        round += 1;
    }
    eprintln!(
        "students in {}: diffuse sample --model {}",
        a.output.display(),
        teacher.display()
    );
    Ok(())
}
