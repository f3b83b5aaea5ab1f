//! `diffuse distill progressive` (Salimans & Ho 2022, `diffuse_train::progressive`): rounds
//! that halve the DDIM step count, each student the next round's teacher, in OUTPUT/steps-N.

use anyhow::Result;
use diffuse_train::progressive::{round_state, round_steps, RoundState};
use diffuse_train::reflow::teacher_guidance;
use diffuse_train::trainer::{RunFolder, Start};
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

pub(super) fn progressive(a: ProgressiveArgs) -> Result<()> {
    let (from, to) = (a.from_steps, a.to_steps);
    let Some(rounds) = round_steps(from, to) else {
        anyhow::bail!(
            "--from-steps {from} --to-steps {to}: each round halves the steps, so from-steps must be to-steps × 2^k with k ≥ 1"
        );
    };
    let device = crate::common::device(&a.device)?;
    let user_toml = super::read_train_config(a.train_config.as_deref())?;
    // OUTPUT is this command's for all rounds; each round's folder is claimed as it trains.
    let _lock = crate::common::lock_folder(&a.output, "diffuse distill progressive")?;
    let stop = crate::common::stop_flag("finishing the current training step");
    let mut teacher = a.teacher.clone();
    for (round, steps) in rounds.into_iter().enumerate() {
        let out = a.output.join(format!("steps-{steps}"));
        let guidance = if round == 0 {
            a.guidance_scale
                .or_else(|| teacher_guidance(&teacher))
                .unwrap_or(1.0)
        } else {
            1.0
        };
        let config = super::student_overrides(
            diffuse_train::progressive::student_config(
                &teacher,
                user_toml.as_deref(),
                steps,
                guidance,
            ),
            a.train_config.as_deref(),
            &a.set,
            a.steps_per_round,
        )?;
        let RoundState { newest, done } = round_state(&out, config.train.max_steps);
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
            let mut folder =
                RunFolder::claim(&out, Start::Continue, "diffuse distill progressive")?;
            let outcome =
                crate::training::run_training(&config, &mut folder, &device, a.quiet, &stop)?;
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
    }
    eprintln!(
        "students in {}: diffuse sample --model {}",
        a.output.display(),
        teacher.display()
    );
    Ok(())
}
