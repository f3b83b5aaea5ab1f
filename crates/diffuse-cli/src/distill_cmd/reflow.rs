//! `diffuse distill reflow` (2-rectified flow, `diffuse_train::reflow`): (noise, sample) pairs
//! from the teacher's ODE into OUTPUT/pairs, resumable shard by shard, then the student trained
//! on them by the same trainer as `diffuse train` into OUTPUT (a pipeline folder that records
//! its step count).

use anyhow::Result;
use diffuse_train::reflow::{
    generate_pairs, open_teacher, student_config, teacher_guidance, PairOptions,
};
use diffuse_train::trainer::{RunFolder, Start};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ReflowArgs {
    /// The teacher: a pipeline folder (flow matching, or ε/v-prediction solved with a
    /// deterministic sampler); a reflowed student works too (k-rectified flow).
    #[arg(long)]
    teacher: PathBuf,
    /// Output: the student pipeline, its checkpoints, and the pairs in OUTPUT/pairs.
    #[arg(long)]
    output: PathBuf,
    /// Number of (noise, sample) pairs.
    #[arg(long)]
    num_pairs: usize,
    /// Steps of the teacher's ODE solve (flow_heun: 2·steps − 1 model calls).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// The teacher's ODE solver: flow_heun (default for flow teachers), flow_euler; for
    /// diffusion teachers ddim, dpmpp_2m (default), unipc, euler, heun.
    #[arg(long)]
    sampler: Option<String>,
    /// Classifier-free guidance scale of the teacher for class-conditional teachers (default:
    /// its train.toml's sample_guidance, else 1). Sample the student without guidance.
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// Pairs per teacher call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Pairs per shard file (the unit of resumption).
    #[arg(long, default_value_t = 1000)]
    shard_size: usize,
    /// Seed of the noise: pair i draws from stream (seed, i), as image i of `sample --seed`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the teacher's unet/ even when it has EMA weights in unet_ema/.
    #[arg(long)]
    no_ema: bool,
    /// The student's training config ([data], [train], [scheduler], [eval]; default: a
    /// fine-tune of the teacher, see examples/reflow-mnist.toml).
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// The step count the student is made for: recorded in its scheduler config
    /// (`num_inference_steps`, the default `--steps` of `diffuse sample`).
    #[arg(long, default_value_t = 2)]
    student_steps: usize,
    /// Override a student config value: --set train.learning_rate=5e-5
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Student training steps (overrides train.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Make the pairs only.
    #[arg(long)]
    pairs_only: bool,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
}

pub(super) fn reflow(a: ReflowArgs) -> Result<()> {
    let device = crate::common::device(&a.device)?;
    let teacher = open_teacher(&a.teacher, a.no_ema, &device)?;
    let guidance_scale = match (a.guidance_scale, teacher.classes) {
        (Some(g), _) => g,
        (None, Some(_)) => teacher_guidance(&a.teacher).unwrap_or(1.0),
        (None, None) => 1.0,
    };
    let user_toml = super::read_train_config(a.train_config.as_deref())?;
    let pairs_dir = a.output.join("pairs");
    // Check the student's config before the (long) pair generation.
    let mut config = student_config(&teacher, &pairs_dir, user_toml.as_deref(), a.student_steps)
        .map_err(|e| match &a.train_config {
            Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
            None => e.into(),
        })?;
    for s in &a.set {
        config.set(s)?;
    }
    if let Some(n) = a.max_steps {
        config.train.max_steps = n;
    }
    // The folder is this command's from the first pair to the student's last step.
    let mut folder = RunFolder::claim(&a.output, Start::Continue, "diffuse distill reflow")?;
    let stop = crate::common::stop_flag("finishing the current pair shard or training step");

    let opts = PairOptions {
        num_pairs: a.num_pairs,
        sampler: a.sampler.clone(),
        steps: a.steps,
        guidance_scale,
        batch_size: a.batch_size,
        seed: a.seed,
        shard_size: a.shard_size,
        no_ema: a.no_ema,
        max_new_shards: None,
    };
    let solver = teacher.solver(a.sampler.as_deref())?;
    if !a.quiet {
        eprintln!(
            "pairs: {} from {} ({} × {} steps{}) → {}",
            a.num_pairs,
            a.teacher.display(),
            solver.class.short_name(),
            a.steps,
            if teacher.classes.is_some() {
                format!(", guidance {guidance_scale}")
            } else {
                String::new()
            },
            pairs_dir.display()
        );
    }
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(a.num_pairs as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} pairs [{bar:30}] {pos}/{len} · {per_sec} · eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        b
    };
    let started = Instant::now();
    let index = generate_pairs(&teacher, &pairs_dir, &opts, &device, &stop, &mut |p| {
        bar.set_position(p.done as u64)
    })?;
    bar.finish_and_clear();
    if index.count < a.num_pairs {
        eprintln!(
            "stopped with {} of {} pairs in {}: run the same command again to continue",
            index.count,
            a.num_pairs,
            pairs_dir.display()
        );
        return Ok(());
    }
    if !a.quiet {
        eprintln!(
            "{} pairs in {} ({:.1} s this run)",
            index.count,
            pairs_dir.display(),
            started.elapsed().as_secs_f64()
        );
    }
    if a.pairs_only || stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    drop(teacher);

    if folder.resumed_step() > 0 && !a.quiet {
        eprintln!(
            "student: resuming from the newest checkpoint in {}",
            a.output.display()
        );
    }
    let started = Instant::now();
    let outcome = crate::training::run_training(&config, &mut folder, &device, a.quiet, &stop)?;
    let steps = config.scheduler["num_inference_steps"].clone();
    eprintln!(
        "student trained to step {} (last loss {:.4}) in {:.1} s → {} (made for {steps} steps: diffuse sample --model {})",
        outcome.steps,
        outcome.last_loss,
        started.elapsed().as_secs_f64(),
        a.output.display(),
        a.output.display()
    );
    Ok(())
}
