//! Training with a progress bar and the `metrics.jsonl` log into a claimed
//! [`RunFolder`]: what `diffuse train` and the students of `diffuse distill` run.

use anyhow::{Context, Result};
use diffuse_train::dist::{Collective, SingleProcess};
use diffuse_train::trainer::{train_with, RunFolder, TrainConfig, TrainOutcome};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Saves `config` as `train.toml` in the claimed `folder` and trains into it with a progress bar
/// and the `metrics.jsonl` log (`diffuse train`, and the students of `diffuse distill`),
/// resuming as the claim decided; what the claim did is said first.
pub(crate) fn run_training(
    config: &TrainConfig,
    folder: &mut RunFolder,
    device: &candle_core::Device,
    quiet: bool,
    stop: &AtomicBool,
) -> Result<TrainOutcome> {
    run_training_with(config, folder, device, quiet, stop, &SingleProcess)
}

/// [`run_training`] as one rank of `comm`: rank 0 writes `train.toml` and `metrics.jsonl`.
pub(crate) fn run_training_with(
    config: &TrainConfig,
    folder: &mut RunFolder,
    device: &candle_core::Device,
    quiet: bool,
    stop: &AtomicBool,
    comm: &dyn Collective,
) -> Result<TrainOutcome> {
    let output = &folder.dir().to_path_buf();
    let resume = folder.resumes();
    if comm.rank() != 0 {
        return Ok(train_with(
            config,
            output,
            resume,
            device,
            stop,
            &mut |_| {},
            comm,
        )?);
    }
    for note in folder.take_notes() {
        eprintln!("warning: {note}");
    }
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
    let outcome = train_with(
        config,
        output,
        resume,
        device,
        stop,
        &mut |r| {
            images += r.images;
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_length(r.max_steps);
            bar.set_position(r.step);
            bar.set_message(format!(
                "loss {:.4} · lr {:.2e} · {:.1} img/s",
                r.loss,
                r.lr,
                images as f64 / secs
            ));
            for w in &r.warnings {
                bar.suspend(|| eprintln!("warning: {w}"));
            }
            for n in &r.notes {
                bar.suspend(|| eprintln!("{n}"));
            }
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
            settle(folder, &bar, quiet);
        },
        comm,
    );
    settle(folder, &bar, quiet);
    bar.finish_and_clear();
    Ok(outcome?)
}

/// `--overwrite`: the previous run goes once this run has a checkpoint.
fn settle(folder: &mut RunFolder, bar: &ProgressBar, quiet: bool) {
    match folder.settle() {
        Ok(Some(old)) if !quiet => bar.suspend(|| {
            eprintln!(
                "deleted the previous run set aside in {} (this run has its first checkpoint)",
                old.display()
            )
        }),
        Ok(_) => {}
        Err(e) => bar.suspend(|| eprintln!("warning: {e}")),
    }
}
