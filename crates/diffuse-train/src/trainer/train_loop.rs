//! The loop, the second phase of a run: [`Session::advance`] takes one optimizer step through
//! the public [`step`](super::step::step) (its micro-batches drawn here) and then does what is due
//! after it: EMA, TensorBoard scalars, sample grids, evaluation, the stop decision agreed by
//! all ranks and an atomic checkpoint.

use super::checkpoint::*;
use super::grids::*;
use super::net::Net;
use super::run::Session;
use super::step::*;
use super::{io_err, StepReport};
use crate::dist::Collective;
use crate::{Error, Result};
use candle_core::{Device, Var};
use diffuse_models::Network;
use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;

impl Session<'_> {
    /// One optimizer step and what is due after it; `Break` when the run stops early (Ctrl-C
    /// or `train.max_minutes`, agreed by all ranks) after checkpointing.
    pub(super) fn advance(
        &mut self,
        stop: &AtomicBool,
        on_step: &mut dyn FnMut(&StepReport),
    ) -> Result<ControlFlow<()>> {
        let t = &self.config.train;
        let step = self.step;
        let lr_now = t.learning_rate * self.lr.factor(step);
        let options = StepOptions {
            lr: lr_now,
            max_grad_norm: t.max_grad_norm,
            accumulation: t.gradient_accumulation_steps,
        };
        let (result, data_wait_s, images) = self.optimizer_step(&options)?;
        let loss = result.loss;
        let mut report = StepReport {
            step: step + 1,
            max_steps: self.max_steps,
            loss,
            lr: lr_now,
            grad_norm: result.grad_norm,
            images,
            skipped_nonfinite: result.skipped.is_some(),
            data_wait_s,
            metrics: result.parts,
            warnings: Vec::new(),
            notes: Vec::new(),
        };
        if !self.disk_warned && self.comm.rank() == 0 {
            // Early, at the first step: will the run's checkpoints fit?
            self.disk_warned = true;
            let need = checkpoint_bytes(&self.vars);
            if let Some(free) = diffuse_data::fs::free_bytes(&self.ckpt_root) {
                let keep = t.keep_checkpoints.max(1);
                if let Disk::Low(w) = disk_check(&self.ckpt_root, free, need, keep) {
                    report.warnings.push(w);
                }
            }
        }
        match result.skipped {
            Some(Skipped::NonFiniteLoss) => {
                self.nonfinite += 1;
                on_step(&report);
                if self.nonfinite >= t.max_nonfinite {
                    return Err(Error::Invalid(format!(
                        "stopping: {} non-finite losses in a row at step {} (lower the learning rate, check the data)",
                        self.nonfinite,
                        step + 1
                    )));
                }
                return Ok(ControlFlow::Continue(()));
            }
            Some(Skipped::NonFiniteGradient) => {
                self.nonfinite = 0;
                on_step(&report);
                return Ok(ControlFlow::Continue(()));
            }
            None => self.nonfinite = 0,
        }
        self.ema.step(&self.plain)?;
        if let Net::Unet(u) = &self.net {
            if let Some(c) = &u.consistency {
                c.update_target(&self.vars)?;
            }
        }
        self.step += 1;
        let step = self.step;
        if let Some(p) = &mut self.phema {
            p.step(&self.plain, step)?;
        }
        // A time budget plans the run's length once its first steps are timed, and again at
        // fixed fractions of the plan; the LR schedule then ends there.
        if let Some(n) = self
            .budget
            .as_mut()
            .and_then(|b| b.after_step(step, t.max_steps))
        {
            let n = self.planned_steps(n)?;
            self.max_steps = n;
            self.lr.total = n;
            report.max_steps = n;
            report.notes.push(format!(
                "train.max_minutes: {n} steps fit in the budget (planned at step {step}); the learning-rate schedule now ends at step {n}"
            ));
        }
        // Reaching the budget before the plan ends the run like Ctrl-C: last evaluation,
        // checkpoint, stop.
        let out_of_time = self.budget.as_ref().is_some_and(|b| b.out_of_time());
        self.last_loss = loss;
        self.log_step(&report, lr_now)?;
        // Sample / reconstruction grids (and evaluation values, reported with this step).
        let preview_due = t.sample_every > 0 && step.is_multiple_of(t.sample_every);
        let root = self.comm.rank() == 0;
        if root && (preview_due || (t.sample_every > 0 && step == self.max_steps)) {
            let m = self.preview()?;
            report.metrics.extend(m);
        }
        if let (Some(hook), Net::Unet(u)) = (&self.eval_hook, &self.net) {
            if hook.due(step, step == self.max_steps || out_of_time) {
                let (d, device) = (&self.config.data, self.device);
                let names: Vec<String> = self.vars.iter().map(|(k, _)| k.clone()).collect();
                let model: Network = diffuse_models::weights::from_tensors(
                    &u.cfg,
                    ema_tensors(&self.varmap, &names, &self.ema)?,
                    device,
                )?;
                let size = u.cfg.sample_hw().unwrap_or((d.size, d.size));
                let m = hook.run(
                    &model,
                    u.vae.as_ref().map(|v| &v.0),
                    self.classes,
                    size,
                    device,
                )?;
                let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
                for (k, v) in &m {
                    self.tb.scalar(k, step as i64, *v as f32).map_err(tb_io)?;
                }
                report.metrics.extend(m);
            }
        }
        on_step(&report);
        let mut stopping = stop.load(std::sync::atomic::Ordering::SeqCst) || out_of_time;
        if self.sync {
            // One rank's Ctrl-C or time budget stops every rank after this step.
            stopping = agree(self.comm, vec![if stopping { 1.0 } else { 0.0 }])?[0] > 0.0;
        }
        let last = step == self.max_steps || stopping;
        let checkpoint_due =
            (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || last;
        if checkpoint_due && self.sync {
            check_same_weights(self.comm, &self.vars)?;
        }
        if checkpoint_due && root {
            self.checkpoint()?;
        }
        if root && t.sample_every > 0 && stopping && !preview_due && step != self.max_steps {
            self.preview()?;
        }
        if step.is_multiple_of(10) || last {
            self.tb.flush().map_err(io_err(self.output))?;
        }
        Ok(if stopping {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }

    /// [`step`] over this step's micro-batches, each drawn from the data source (this rank's
    /// rows) with the loss of the network; also the seconds spent waiting for data and the
    /// images seen by all ranks.
    fn optimizer_step(&mut self, options: &StepOptions) -> Result<(StepResult, f64, usize)> {
        let t = &self.config.train;
        let (device, comm, step) = (self.device, self.comm, self.step);
        let (sync, row_shard, classes) = (self.sync, self.row_shard, self.classes);
        let world = comm.world_size();
        let mut data_wait_s = 0.0;
        let mut images = 0usize;
        // Mixed precision: this step's bf16/f16 network over the f32 variables.
        let low_net = match (t.mixed_precision.compute_dtype(), &self.net) {
            (Some(dtype), Net::Unet(u)) => {
                let mut low =
                    crate::amp::low_precision_net(&u.cfg, &self.vars, &self.fixed, dtype, device)?;
                low.set_gradient_checkpointing(t.gradient_checkpointing);
                Some(low)
            }
            _ => None,
        };
        let (batches, rng, net) = (&mut self.batches, &mut self.rng, &self.net);
        let result = super::step::step(
            &self.vars,
            &mut self.opt,
            options,
            self.scaler.as_mut(),
            comm,
            &mut || {
                let waited = std::time::Instant::now();
                let (x0, noise, batch_labels, indices) =
                    batches.next(rng, device, sync.then_some(row_shard))?;
                data_wait_s += waited.elapsed().as_secs_f64();
                images += x0.dim(0)? * world;
                let labels = if classes.is_some() {
                    batch_labels
                } else {
                    None
                };
                rng.set_row_shard(sync.then_some(row_shard));
                let out = net.loss(
                    low_net.as_ref(),
                    &x0,
                    noise.as_ref(),
                    labels.as_deref(),
                    indices.as_deref(),
                    rng,
                    step,
                );
                rng.set_row_shard(None);
                let (loss, parts) = out?;
                Ok(MicroLoss { loss, parts })
            },
        )?;
        Ok((result, data_wait_s, images))
    }

    /// This step's TensorBoard scalars: loss (raw and smoothed), learning rate, gradient norm,
    /// data wait, throughput and the loss's named parts.
    /// Data parallel: every rank takes rank 0's plan (their step timings differ).
    fn planned_steps(&self, n: u64) -> Result<u64> {
        if !self.sync {
            return Ok(n);
        }
        let mine = if self.comm.rank() == 0 { n as f32 } else { 0.0 };
        Ok(agree(self.comm, vec![mine])?[0] as u64)
    }

    fn log_step(&mut self, report: &StepReport, lr_now: f64) -> Result<()> {
        let loss = report.loss;
        self.seen_images += report.images;
        let sm = self.smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss);
        self.smoothed = Some(sm);
        let s = self.step as i64;
        let tb = &mut self.tb;
        let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
        tb.scalar("train/loss", s, loss).map_err(tb_io)?;
        tb.scalar("train/loss_smoothed", s, sm).map_err(tb_io)?;
        tb.scalar("train/lr", s, lr_now as f32).map_err(tb_io)?;
        tb.scalar("train/grad_norm", s, report.grad_norm as f32)
            .map_err(tb_io)?;
        tb.scalar("train/data_wait_s", s, report.data_wait_s as f32)
            .map_err(tb_io)?;
        tb.scalar(
            "train/images_per_s",
            s,
            (self.seen_images as f64 / self.started.elapsed().as_secs_f64().max(1e-9)) as f32,
        )
        .map_err(tb_io)?;
        for (k, v) in &report.metrics {
            tb.scalar(&format!("train/{k}"), s, *v as f32)
                .map_err(tb_io)?;
        }
        Ok(())
    }

    /// `samples/step-N.png` of the EMA weights, logged with its values ([`preview_and_log`]).
    fn preview(&mut self) -> Result<Vec<(String, f64)>> {
        preview_and_log(
            &self.net,
            &self.varmap,
            &self.vars,
            &self.ema,
            self.classes,
            &self.config.train,
            self.device,
            self.output,
            self.step,
            &mut self.tb,
        )
    }

    /// Rank 0: `checkpoints/step-N/` with the weights, optimizer, EMA and the training state to
    /// resume from; older ones pruned to `train.keep_checkpoints`.
    fn checkpoint(&mut self) -> Result<()> {
        let state = TrainingState {
            step: self.step,
            position: self.batches.position(),
            rng_seed: self.rng.state().0,
            rng_word_pos: self.rng.state().1,
            scaler: self.scaler.as_ref().map(|s| s.state()),
            budget: self.budget.as_ref().map(|b| b.state()),
        };
        let mut files = self.net.files()?;
        if let Some(p) = &self.phema {
            // The profiles for resume, and this step's snapshot for `diffuse ema`.
            let names: Vec<String> = self.vars.iter().map(|(k, _)| k.clone()).collect();
            files.push((
                crate::phema::CHECKPOINT_FILE.to_string(),
                diffuse_models::weights::serialize_tensors(p.state(&names))?,
            ));
            p.snapshot(
                &self.output.join(crate::phema::SNAPSHOT_DIR),
                self.step,
                &names,
            )?;
        }
        if let Net::Unet(u) = &self.net {
            if let Some(state) = u.consistency.as_ref().and_then(|c| c.target_state()) {
                files.push((
                    crate::consistency::TARGET_FILE.to_string(),
                    diffuse_models::weights::serialize_tensors(state)?,
                ));
            }
        }
        let parts = CheckpointParts {
            component: self.net.component(),
            files: &files,
            vars: &self.vars,
            opt: &self.opt,
            ema: &self.ema,
            state: &state,
        };
        let dir = save_checkpoint(&self.ckpt_root, &parts)?;
        self.checkpoints.push(dir);
        prune_checkpoints(&self.ckpt_root, self.config.train.keep_checkpoints)
    }
}

/// Data parallel: every rank must hold rank 0's weights bit for bit (a checksum each
/// checkpoint; a mismatch is a bug, not a numerical effect).
pub(super) fn check_same_weights(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
    let mut sum = 0f64;
    for (_, v) in vars {
        let vals: Vec<f32> = v
            .as_tensor()
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        sum += vals
            .iter()
            .enumerate()
            .map(|(i, x)| (*x as f64) * (1.0 + (i % 7) as f64))
            .sum::<f64>();
    }
    let theirs = comm.broadcast(&sum.to_le_bytes())?;
    let theirs = f64::from_le_bytes(theirs.as_slice().try_into().map_err(|_| {
        Error::Invalid("data-parallel weight check: bad message from rank 0".into())
    })?);
    if theirs.to_bits() != sum.to_bits() {
        return Err(Error::Invalid(format!(
            "data-parallel rank {}: weights differ from rank 0's (checksum {sum} vs {theirs}); the ranks diverged",
            comm.rank()
        )));
    }
    Ok(())
}
