//! Plumbing shared by the command modules: device names, progress bars, Ctrl-C, JSON files,
//! folder locks.
//! Command modules import this, never each other.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--device`: cpu, or cuda (a build with --features cuda).
pub(crate) fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("--device cuda"),
        other => bail!("--device: unknown device {other:?}; allowed: cpu, cuda"),
    }
}

/// Reads a scheduler config (any JSON object file), with one-line errors naming the file.
pub(crate) fn read_json_object(
    path: &std::path::Path,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scheduler config {}", path.display()))?;
    match diffuse_core::pyjson::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: malformed JSON: {e}", path.display()))?
    {
        serde_json::Value::Object(m) => Ok(m),
        _ => anyhow::bail!(
            "{}: a scheduler config must be a JSON object",
            path.display()
        ),
    }
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

pub(crate) fn bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(0);
    b.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} · {per_sec} · eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    b
}

/// Locks `dir` for `command` (one writer per folder, `diffuse_data::lock`), saying so when it
/// takes over the lock of a process that died holding it.
pub(crate) fn lock_folder(
    dir: &std::path::Path,
    command: &str,
) -> Result<diffuse_data::lock::FolderLock> {
    let lock = diffuse_data::lock::FolderLock::acquire(dir, command)?;
    if let Some(h) = lock.taken_over() {
        eprintln!(
            "warning: took over the lock of {} left by {h}, which ended without releasing it",
            dir.display()
        );
    }
    Ok(lock)
}
