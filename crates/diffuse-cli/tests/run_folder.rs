//! A run folder belongs to one run (issue 21): a second writer is refused naming the holder, a
//! dead holder's lock is taken over and said, a finished run is not trained over without
//! `--resume` or `--overwrite`, `--overwrite` leaves only the new run, and a resumed run's
//! `metrics.jsonl` holds each step once, up to the step its weights are at.

mod common;

use common::{assert_one_line_error, command, diffuse, stderr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny.toml")
}

/// `diffuse train` of tiny.toml into `out` for `steps` steps, a checkpoint every 4, and `extra`.
fn train_args(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--config",
        tiny().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-steps",
        &steps.to_string(),
        "--set",
        "train.checkpoint_every=4",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    diffuse(&args)
}

/// The steps of `metrics.jsonl`, in file order.
fn logged_steps(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const WEIGHTS: &str = "unet/diffusion_pytorch_model.safetensors";

/// Scenario (a): two `diffuse train` with the same --output at the same time — the second (and
/// a `data encode` into the same folder) is refused in one line naming the first; the first,
/// killed with -9, leaves a lock that `--resume` takes over and says so; the resumed log holds
/// each step once.
#[test]
fn a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut first = command(
        &train_args(&out, 1000, &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let pid = first.id();
    // Running, with a checkpoint (step 4) to resume from.
    let t0 = Instant::now();
    while !out.join("checkpoints/step-4/training_state.json").exists()
        || std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
            < 6
    {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let holder = format!("is in use by `diffuse train` (pid {pid} on ");
    let o = run(&train_args(&out, 40, &[]));
    assert_one_line_error(&o, &holder);
    let o = run(&train_args(&out, 40, &["--overwrite"]));
    assert_one_line_error(&o, &holder);
    let o = diffuse(&["train", "--resume", out.to_str().unwrap(), "--quiet"]);
    assert_one_line_error(&o, &holder);
    let vae = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../diffuse-models/tests/fixtures/vae_gray_plain");
    let o = diffuse(&[
        "data",
        "encode",
        "--vae",
        vae.to_str().unwrap(),
        "--data",
        "mnist",
        "--limit",
        "4",
        "--size",
        "16",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert_one_line_error(&o, &holder);

    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let _ = first.wait();
    let killed_at = logged_steps(&out).len();
    // The killed run's newest checkpoint, and 4 steps beyond it.
    let newest = checkpoints(&out)
        .iter()
        .filter_map(|n| n.strip_prefix("step-")?.parse::<u64>().ok())
        .max()
        .unwrap();
    let end = newest + 4;

    let o = diffuse(&[
        "train",
        "--resume",
        out.to_str().unwrap(),
        "--max-steps",
        &end.to_string(),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("warning: took over the lock of {}", out.display()))
            && err.contains(&format!("(pid {pid} on ")),
        "{err}"
    );
    assert!(
        err.contains(&format!("trained to step {end}"))
            && err.contains(&format!("its weights are at step {end}")),
        "{err}"
    );
    // Steps logged after the checkpoint it resumed from were cut, then logged again once.
    assert_eq!(
        logged_steps(&out),
        (1..=end).collect::<Vec<_>>(),
        "killed at {killed_at}"
    );
    assert!(checkpoints(&out).contains(&format!("step-{end}")));
    // Released cleanly: the next writer takes it without a takeover.
    let o = diffuse(&["train", "--resume", out.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("took over"), "{}", stderr(&o));
}

/// Scenarios (b) and (c): re-running a finished run's command is refused; so is a shorter
/// re-run; with --overwrite the folder then holds only the new run and the message names its
/// step.
#[test]
fn a_finished_run_is_not_trained_over_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = run(&train_args(&out, 8, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("its weights are at step 8"),
        "{}",
        stderr(&o)
    );
    let before = std::fs::read(out.join(WEIGHTS)).unwrap();

    // (b) The same command again.
    let o = run(&train_args(&out, 8, &[]));
    assert_one_line_error(&o, "already holds a run (checkpoints up to step 8");
    assert!(stderr(&o).contains("--resume") && stderr(&o).contains("--overwrite"));
    // (c) A shorter re-run.
    let o = run(&train_args(&out, 6, &[]));
    assert_one_line_error(&o, "already holds a run");
    assert_eq!(std::fs::read(out.join(WEIGHTS)).unwrap(), before);
    assert_eq!(logged_steps(&out), (1..=8).collect::<Vec<_>>());

    let o = run(&train_args(&out, 6, &["--overwrite"]));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("--overwrite: the previous run"), "{err}");
    assert!(
        err.contains("trained to step 6") && err.contains("its weights are at step 6"),
        "{err}"
    );
    // Only the new run: its checkpoints, its log, its weights (those of its step-6 checkpoint),
    // and nothing set aside left over.
    assert_eq!(checkpoints(&out), ["step-4", "step-6"]);
    assert_eq!(logged_steps(&out), (1..=6).collect::<Vec<_>>());
    let after = std::fs::read(out.join(WEIGHTS)).unwrap();
    assert_ne!(after, before);
    assert_eq!(
        after,
        std::fs::read(out.join("checkpoints/step-6").join(WEIGHTS)).unwrap()
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".diffuse.lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(out.join("train.toml").exists() && out.join("logs").is_dir());
}

/// `--overwrite` goes with a new run, not with `--resume`.
#[test]
fn overwrite_and_resume_exclude_each_other() {
    let o = diffuse(&["train", "--resume", "x", "--overwrite"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}
