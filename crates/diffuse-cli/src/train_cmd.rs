//! `diffuse train`: train a UNet or DiT (or, with `[vae]`, an AutoencoderKL) from a TOML config
//! into a diffusers folder, with checkpoints, exact resume, a progress bar and a JSONL metrics
//! log.
//! Ctrl-C saves and exits.

use anyhow::{bail, Context, Result};
use diffuse_train::trainer::{train, TrainConfig, TrainOutcome};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (examples/tiny.toml, examples/mnist.toml, examples/dit-mnist.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: a diffusers pipeline at the end, checkpoints in DIR/checkpoints.
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in DIR from its newest valid checkpoint (its config is DIR/train.toml).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Override a config value: --set train.learning_rate=1e-3 --set data.batch_size=64
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (output, config_path, resume) = match (&args.resume, &args.output, &args.config) {
        (Some(dir), _, cfg) => (
            dir.clone(),
            cfg.clone().unwrap_or_else(|| dir.join("train.toml")),
            true,
        ),
        (None, Some(out), Some(cfg)) => (out.clone(), cfg.clone(), false),
        _ => bail!("give --config FILE --output DIR, or --resume DIR"),
    };
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config = TrainConfig::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    for s in &args.set {
        config.set(s)?;
    }
    if let Some(n) = args.max_steps {
        config.train.max_steps = n;
    }
    if let Some(s) = args.seed {
        config.train.seed = s;
    }
    let device = crate::sample_cmd::device(&args.device)?;
    let stop = ctrl_c_flag("saving a checkpoint after this step");
    let start = Instant::now();
    let outcome = run_training(&config, &output, resume, &device, args.quiet, &stop)?;
    let next = if config.vae.is_some() {
        format!(
            "encode a data set with it: diffuse data encode --vae {} --data …",
            output.join("vae_ema").display()
        )
    } else {
        format!("sample it: diffuse sample --model {}", output.display())
    };
    eprintln!(
        "trained to step {} (last loss {:.4}) in {:.1} s → {} ({next})",
        outcome.steps,
        outcome.last_loss,
        start.elapsed().as_secs_f64(),
        output.display(),
    );
    Ok(())
}

/// A flag that the first Ctrl-C sets (the command finishes its current unit of work — `what` —
/// and stops cleanly); a second Ctrl-C exits at once.
pub(crate) fn ctrl_c_flag(what: &'static str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping: {what} (Ctrl-C again to abort)");
    });
    stop
}

/// Saves `config` as `output/train.toml` and trains into `output` with a progress bar and the
/// `metrics.jsonl` log (`diffuse train`, and the student of `diffuse distill reflow`).
pub(crate) fn run_training(
    config: &TrainConfig,
    output: &std::path::Path,
    resume: bool,
    device: &candle_core::Device,
    quiet: bool,
    stop: &AtomicBool,
) -> Result<TrainOutcome> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    let saved = toml::to_string(config).context("config")?;
    diffuse_data::fs::write_atomic(&output.join("train.toml"), saved.as_bytes())?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(config.train.max_steps);
        b.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} · eta {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        b
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output.join("metrics.jsonl"))
        .with_context(|| format!("cannot write {}", output.join("metrics.jsonl").display()))?;
    let start = Instant::now();
    let mut images = 0usize;
    let outcome = train(config, output, resume, device, stop, &mut |r| {
        images += r.images;
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.4} · lr {:.2e} · {:.1} img/s",
            r.loss,
            r.lr,
            images as f64 / secs
        ));
        if r.skipped_nonfinite {
            bar.println(format!(
                "step {}: non-finite loss or gradient, step skipped",
                r.step
            ));
        }
        let mut line = serde_json::json!({"step": r.step, "loss": r.loss, "lr": r.lr,
            "grad_norm": r.grad_norm, "images_per_s": images as f64 / secs,
            "skipped": r.skipped_nonfinite, "time_s": secs, "data_wait_s": r.data_wait_s});
        for (k, v) in &r.metrics {
            line[k.as_str()] = (*v).into();
            if k == "eval/psnr" {
                bar.println(format!("step {}: held-out PSNR {v:.2} dB", r.step));
            }
        }
        let evals: Vec<String> = r
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("eval/") && k != "eval/psnr" && k != "eval/ssim")
            .map(|(k, v)| format!("{} {v:.4}", &k["eval/".len()..]))
            .collect();
        if !evals.is_empty() {
            bar.println(format!("step {}: {}", r.step, evals.join(" · ")));
        }
        let _ = writeln!(log, "{line}");
    })?;
    bar.finish_and_clear();
    Ok(outcome)
}
