//! The training run in three phases, each a room of its own:
//!
//! - setup ([`super::setup`], data sources in [`super::data`]): config checks, data source,
//!   network, optimizer, EMA, resume — all of it built once into a [`Session`];
//! - loop ([`super::train_loop`]): [`Session::advance`] takes one optimizer step and does what is
//!   due after it (logs, grids, evaluation, checkpoint, the stop decision);
//! - finish (here): the last checkpoint's parts copied into the output folder, file by file,
//!   each atomically (readers of the folder never see a half-written file).
//!
//! [`train_with`] is only the sequence of the three. The split follows what a reader asks of a
//! run: what it is made of (the `Session`'s fields, in one place), what one step does, and what
//! it leaves behind. The loop's state lives on the `Session` instead of in locals of one
//! 600-line function, so each phase can be read, and changed, without scrolling past the
//! others; the order of every check, draw and write is the one the single function had.

use super::checkpoint::newest_checkpoint;
use super::checkpoint::{copy_dir, write};
use super::config::TrainConfig;
use super::data::Batches;
use super::net::Net;
use super::{io_err, StepReport, TrainOutcome};
use crate::amp::GradScaler;
use crate::dist::Collective;
use crate::ema::Ema;
use crate::eval_hook::EvalHook;
use crate::lr::LrSchedule;
use crate::objective::{RowShard, TrainRng};
use crate::optim::AdamW;
use crate::tensorboard::EventWriter;
use crate::Result;
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// [`train`](super::train) as rank `comm.rank()` of a data-parallel group (torch DDP): every rank builds the
/// same model, reads the same global batches and takes its contiguous 1/N of each, draws the
/// global batch's noise and timesteps and keeps its rows ([`RowShard`]), and averages losses and
/// gradients over the group before clipping, so N ranks × B/N rows make the update one process
/// makes with B. Rank 0 alone writes checkpoints, logs and samples; all ranks resume from the
/// checkpoint rank 0 picks; `stop` and `train.max_minutes` take effect on all ranks at the same
/// step. Only rank 0's [`TrainOutcome::checkpoints`] is filled.
pub fn train_with(
    config: &TrainConfig,
    output: &Path,
    resume: bool,
    device: &Device,
    stop: &std::sync::atomic::AtomicBool,
    on_step: &mut dyn FnMut(&StepReport),
    comm: &dyn Collective,
) -> Result<TrainOutcome> {
    let mut session = Session::setup(config, output, resume, device, comm)?;
    while session.step < session.max_steps {
        if session.advance(stop, on_step)?.is_break() {
            break;
        }
    }
    session.finish()
}

/// One rank's run between setup and finish: what setup built and what the loop advances.
pub(super) struct Session<'a> {
    pub(super) config: &'a TrainConfig,
    /// The output folder: checkpoints, logs, samples and, at the end, the pipeline.
    pub(super) output: &'a Path,
    pub(super) device: &'a Device,
    pub(super) comm: &'a dyn Collective,
    /// Data parallel: collectives run each step (`--gpus 1` runs them too, on one rank).
    pub(super) sync: bool,
    /// Data parallel: this rank's rows of every global batch.
    pub(super) row_shard: RowShard,
    /// Class labels reach the network (`data.class_conditional` and a labelled data set).
    pub(super) classes: Option<usize>,
    pub(super) net: Net,
    pub(super) varmap: candle_nn::VarMap,
    /// The trained variables, sorted by name (optimizer, EMA, gradients, checkpoints).
    pub(super) vars: Vec<(String, Var)>,
    /// `vars` without names (the EMA's order).
    pub(super) plain: Vec<Var>,
    pub(super) opt: AdamW,
    pub(super) ema: Ema,
    /// `train.posthoc_ema`: the power-function EMAs snapshotted at each checkpoint.
    pub(super) phema: Option<crate::phema::PowerEma>,
    pub(super) lr: LrSchedule,
    /// The step the run ends at: `train.max_steps`, or the plan of a time budget.
    pub(super) max_steps: u64,
    /// `train.max_minutes`: the budget this run spends and plans its schedule over.
    pub(super) budget: Option<super::budget::Budget>,
    /// Mixed precision: the weights that are not trained, entering the low-precision copy as
    /// they are.
    pub(super) fixed: HashMap<String, Tensor>,
    /// fp16: the loss scaler.
    pub(super) scaler: Option<GradScaler>,
    pub(super) eval_hook: Option<EvalHook>,
    /// `output/checkpoints`.
    pub(super) ckpt_root: PathBuf,
    // What the loop advances.
    /// Optimizer steps taken (restored on resume).
    pub(super) step: u64,
    pub(super) rng: TrainRng,
    pub(super) batches: Batches,
    pub(super) tb: EventWriter,
    pub(super) started: std::time::Instant,
    pub(super) seen_images: usize,
    /// The loss's exponential moving average (TensorBoard's `train/loss_smoothed`).
    pub(super) smoothed: Option<f32>,
    /// Non-finite losses in a row.
    pub(super) nonfinite: u32,
    pub(super) last_loss: f32,
    /// The checkpoints this run wrote (rank 0).
    pub(super) checkpoints: Vec<PathBuf>,
    /// Rank 0 checked the free disk space against the run's checkpoints (once, early).
    pub(super) disk_warned: bool,
}

impl Session<'_> {
    /// The output folder itself becomes the final pipeline or model folders (a copy of the
    /// last checkpoint's parts); the other ranks return once rank 0's output is complete.
    fn finish(self) -> Result<TrainOutcome> {
        let Session {
            output,
            comm,
            net,
            ckpt_root,
            step,
            max_steps,
            last_loss,
            checkpoints,
            ..
        } = self;
        let root = comm.rank() == 0;
        if let Some(last) = newest_checkpoint(&ckpt_root).filter(|_| root) {
            let c = net.component();
            for part in [
                c.to_string(),
                format!("{c}_ema"),
                "scheduler".into(),
                "vae".into(),
                "tokenizer".into(),
                crate::text::COMPONENT.into(),
                format!("{}_ema", crate::text::COMPONENT),
            ] {
                if last.join(&part).is_dir() {
                    copy_dir(&last.join(&part), &output.join(&part))?;
                }
            }
            // Atomically, as every file of the parts above: a reader of the folder (sample,
            // serve, eval) sees the old file or the new one, never a truncated one.
            let index = last.join("model_index.json");
            if index.exists() {
                let bytes = std::fs::read(&index).map_err(io_err(&index))?;
                write(&output.join("model_index.json"), &bytes)?;
            }
        }
        comm.barrier()?;
        Ok(TrainOutcome {
            steps: step,
            max_steps,
            last_loss,
            checkpoints,
        })
    }
}
