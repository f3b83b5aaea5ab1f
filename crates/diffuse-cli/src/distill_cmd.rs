//! `diffuse distill`: few-step students of a teacher pipeline. `reflow` (2-rectified flow,
//! `diffuse_train::reflow`): (noise, sample) pairs from the teacher's ODE into OUTPUT/pairs,
//! resumable shard by shard, then the student trained on them by the same trainer as
//! `diffuse train` into OUTPUT (a pipeline folder that records its step count).
//! `progressive` (Salimans & Ho 2022, `diffuse_train::progressive`): rounds that halve the
//! DDIM step count, each student the next round's teacher, in OUTPUT/steps-N.
//! `consistency` and `ect` (`diffuse_train::consistency`): a consistency student (one-step and
//! multistep) distilled from a teacher or tuned from a pretrained model, in OUTPUT.

mod consistency;
mod progressive;
mod reflow;

use anyhow::{Context, Result};
use std::path::Path;

use consistency::{CdArgs, EctArgs};
use progressive::ProgressiveArgs;
use reflow::ReflowArgs;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Reflow (2-rectified flow): pairs (noise → sample) from the teacher's ODE, then a
    /// flow-matching student trained on the straight paths between them; rerun to continue.
    Reflow(ReflowArgs),
    /// Progressive distillation: rounds of students that each take one DDIM step where their
    /// teacher takes two (e.g. 8 → 4 → 2 → 1 steps), trained on the teacher's data; rerun to
    /// continue.
    Progressive(ProgressiveArgs),
    /// Consistency distillation (CD): a student whose one step maps noise to the end of the
    /// teacher's ODE (skip-step teacher solves, EMA target, pseudo-Huber loss); rerun to
    /// continue.
    Consistency(CdArgs),
    /// Easy consistency tuning (ECT): a pretrained model tuned into a consistency model
    /// without a teacher (shrinking Δt curriculum, log-normal noise); rerun to continue.
    Ect(EctArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Reflow(a) => reflow::reflow(a),
        Command::Progressive(a) => progressive::progressive(a),
        Command::Consistency(a) => consistency::cd(a),
        Command::Ect(a) => consistency::ect(a),
    }
}

/// The text of `--train-config`, if given.
fn read_train_config(path: Option<&Path>) -> Result<Option<String>> {
    path.map(|p| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display())))
        .transpose()
}

/// A student's config as built from the teacher (an error not about the teacher named with the
/// `--train-config` file it came from), then the `--set` overrides and the step count.
fn student_overrides(
    built: diffuse_train::Result<diffuse_train::trainer::TrainConfig>,
    train_config: Option<&Path>,
    set: &[String],
    max_steps: Option<u64>,
) -> Result<diffuse_train::trainer::TrainConfig> {
    let mut config = built.map_err(|e| match train_config {
        Some(p) if !e.to_string().starts_with("teacher") => {
            anyhow::anyhow!("{}: {e}", p.display())
        }
        _ => e.into(),
    })?;
    for s in set {
        config.set(s)?;
    }
    if let Some(n) = max_steps {
        config.train.max_steps = n;
    }
    Ok(config)
}
