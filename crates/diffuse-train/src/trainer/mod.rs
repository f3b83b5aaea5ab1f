//! The training loop of `diffuse train`: one TOML file configures model, data, objective,
//! optimizer and EMA; checkpoints are diffusers pipeline folders plus a training state, written
//! atomically (a temporary folder renamed into place), and `resume` continues bit for bit.
//! The same loop trains a diffusion UNet, a DiT (`[model] type = "dit"`) or, with a `[vae]`
//! section, an AutoencoderKL (reconstruction + β-KL with warm-up, PSNR of reconstructions on
//! held-out images).
//! With `train.mixed_precision` the forward runs in bf16/f16 over f32 master weights
//! ([`crate::amp`]); [`train_with`] runs the loop as one rank of a data-parallel group
//! ([`crate::dist`]: each rank takes its slice of every global batch, gradients are averaged
//! before clipping, rank 0 alone writes). [`RunFolder`] makes the output folder one run's: locked,
//! never silently overwritten, its logs cut back to the step a resumed run continues from.

mod budget;
mod checkpoint;
mod config;
mod data;
mod folder;
mod grids;
mod net;
mod run;
mod setup;
mod step;
mod train_loop;

pub use checkpoint::newest_checkpoint;
pub(crate) use checkpoint::{copy_dir, write};
pub use config::*;
pub use folder::{RunFolder, Start, RUN_ENTRIES};
pub(crate) use grids::preview_scheduler;
pub use run::train_with;

pub(crate) use crate::io_err;
pub use step::{step, MicroLoss, Skipped, StepOptions, StepResult};

use crate::dist::SingleProcess;
use crate::Result;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Per-step report for progress bars and logs.
pub struct StepReport {
    pub step: u64,
    pub max_steps: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub images: usize,
    pub skipped_nonfinite: bool,
    /// Seconds the step waited for its batch (the loader should keep this near 0).
    pub data_wait_s: f64,
    /// Further named values of this step (VAE: reconstruction, kl, kl_weight; eval/psnr when
    /// evaluated).
    pub metrics: Vec<(String, f64)>,
    /// Things the user should know now (e.g. the disk filling up), said once each.
    pub warnings: Vec<String>,
    /// Things that changed the run's course (a time budget's plan), said once each.
    pub notes: Vec<String>,
}

/// What a training run produced.
pub struct TrainOutcome {
    pub steps: u64,
    /// The step the run was to end at: `train.max_steps`, or a time budget's plan.
    pub max_steps: u64,
    pub last_loss: f32,
    pub checkpoints: Vec<PathBuf>,
}

/// Runs training into `output` (a diffusers pipeline folder at the end; checkpoints under
/// `output/checkpoints/step-N/`). With `resume`, continues from the newest valid checkpoint
/// in `output/checkpoints` exactly where it stopped. Setting `stop` (Ctrl-C) saves a checkpoint
/// after the current step and returns.
pub fn train(
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainOutcome> {
    train_with(
        config,
        output,
        resume,
        device,
        stop,
        on_step,
        &SingleProcess,
    )
}
