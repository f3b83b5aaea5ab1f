//! Plumbing shared by the command modules: device names, progress bars, Ctrl-C and SIGTERM, JSON files,
//! folder locks.
//! Command modules import this, never each other.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

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

/// The stop flag of this process and what the running command does when it is set.
struct Stop {
    flag: Arc<AtomicBool>,
    what: Mutex<Option<&'static str>>,
}

fn stop_state() -> &'static Stop {
    static STOP: OnceLock<Stop> = OnceLock::new();
    STOP.get_or_init(|| Stop {
        flag: Arc::new(AtomicBool::new(false)),
        what: Mutex::new(None),
    })
}

/// Handles Ctrl-C, SIGTERM and SIGHUP for every command but `serve` (which drains in-flight
/// requests itself): a command that registered a unit of work with [`stop_flag`] finishes it
/// and stops cleanly, and a second signal exits at once; any other command exits at once with
/// status 130. Either way nothing is left half-written: files are written atomically.
pub(crate) fn install_stop_handler() {
    let _ = ctrlc::set_handler(|| {
        let stop = stop_state();
        let what = *stop.what.lock().unwrap_or_else(|p| p.into_inner());
        match what {
            Some(what) if !stop.flag.swap(true, Ordering::SeqCst) => {
                eprintln!("\nstopping: {what} (Ctrl-C again to abort)");
            }
            _ => {
                eprintln!("\ninterrupted");
                std::process::exit(130);
            }
        }
    });
}

/// The flag the first Ctrl-C / SIGTERM / SIGHUP sets: the command finishes its current unit
/// of work — `what` — and stops cleanly.
pub(crate) fn stop_flag(what: &'static str) -> Arc<AtomicBool> {
    let stop = stop_state();
    *stop.what.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
    stop.flag.clone()
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

/// `--fit`: pad, resize or center_crop.
pub fn parse_fit(s: &str) -> Result<diffuse_data::transform::Fit, String> {
    diffuse_data::transform::Fit::parse(s)
        .ok_or_else(|| format!("unknown value {s:?}; allowed: pad, resize, center_crop"))
}

/// The pixel side of the images an edit of `pipe` works on: its network size `(h, w)` (square)
/// times the VAE's downscale.
pub fn edit_size(
    pipe: &diffuse_models::pipeline::Pipeline,
    (h, w): (usize, usize),
) -> Result<usize> {
    if h != w {
        bail!("editing needs a square model size; this one is {h}×{w}");
    }
    Ok(h * pipe.downscale())
}

/// An image file as `pipe`'s images are, `[1, C, size, size]` in pixel space, converted and
/// fitted as `data` does; what that changed is printed after `flag` (`--init-image a.png: 28×28
/// → 16×16 (resize)`) unless `quiet`.
pub fn load_edit_image(
    pipe: &diffuse_models::pipeline::Pipeline,
    size: usize,
    path: &std::path::Path,
    fit: diffuse_data::transform::Fit,
    flag: &str,
    quiet: bool,
) -> Result<candle_core::Tensor> {
    let (image, notes) =
        diffuse_data::image_io::load_fitted(path, pipe.image_channels(), size, fit, &Device::Cpu)?;
    if !notes.is_empty() && !quiet {
        eprintln!("{flag}{}: {}", path.display(), notes.join(", "));
    }
    Ok(image)
}

/// `--guidance-interval`: `LO,HI` noise levels, or `all` (guide every step).
#[derive(Debug, Clone, Copy)]
pub enum GuidanceChoice {
    All,
    Interval(diffuse_core::denoiser::GuidanceInterval),
}

impl GuidanceChoice {
    /// The interval to sample with: the given one, none for `all`, else the pipeline's
    /// recorded one.
    pub fn resolve(
        choice: Option<Self>,
        pipe: &diffuse_models::pipeline::Pipeline,
    ) -> Option<diffuse_core::denoiser::GuidanceInterval> {
        match choice {
            Some(GuidanceChoice::All) => None,
            Some(GuidanceChoice::Interval(g)) => Some(g),
            None => pipe.default_guidance_interval(),
        }
    }
}

pub fn parse_guidance_interval(s: &str) -> Result<GuidanceChoice, String> {
    if s == "all" {
        return Ok(GuidanceChoice::All);
    }
    diffuse_core::denoiser::GuidanceInterval::parse(s)
        .map(GuidanceChoice::Interval)
        .map_err(|e| format!("{e}, or `all`"))
}
