//! The training run: [`train_with`] validates the config, builds the model and its data, loops
//! over optimizer steps and writes the output pipeline.

use super::checkpoint::*;
use super::config::*;
use super::grids::*;
use super::net::*;
use super::setup::*;
use super::step::*;
use super::{io_err, StepReport, TrainOutcome};
use crate::amp::{GradScaler, MixedPrecision};
use crate::dist::{shard_rows, Collective};
use crate::ema::{Ema, EmaConfig};
use crate::lr::LrSchedule;
use crate::objective::{RowShard, TrainRng};
use crate::optim::{AdamW, AdamWConfig};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use diffuse_data::datasets::{self, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::Transform;
use diffuse_models::DenoiserNet;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// [`train`] as rank `comm.rank()` of a data-parallel group (torch DDP): every rank builds the
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
    let t = &config.train;
    let d = &config.data;
    let (rank, world) = (comm.rank(), comm.world_size());
    let root = rank == 0;
    // Data parallel: collectives each step (`--gpus 1` runs them too, on one rank).
    let sync = !comm.is_noop();
    let (row_offset, local_rows) = shard_rows(d.batch_size, rank, world)?;
    let row_shard = RowShard {
        offset: row_offset,
        rows: local_rows,
        total: d.batch_size,
    };
    if sync && d.skip_bad {
        return Err(Error::Invalid(
            "data.skip_bad: skipped samples would leave the data-parallel ranks unequal slices; fix or remove the bad files".into(),
        ));
    }
    let amp = t.mixed_precision;
    if amp != MixedPrecision::No && config.vae.is_some() {
        return Err(Error::Invalid(format!(
            "train.mixed_precision = {:?} applies to UNet and DiT training; a [vae] trains in f32 (set it to \"no\")",
            config_name(&amp)
        )));
    }
    let source = match (&d.latents, &d.pairs, d.name.is_empty()) {
        (Some(_), _, _) | (_, Some(_), _) if config.vae.is_some() => {
            return Err(Error::Invalid(
                "data.latents / data.pairs: a VAE trains on images; give data.name".into(),
            ))
        }
        (Some(dir), None, true) => Source::Latents(
            diffuse_models::latent_cache::load_latents(Path::new(dir), device)?,
            PathBuf::from(dir).join("vae"),
        ),
        (None, Some(dir), true) => {
            if t.prediction_type != Prediction::Flow {
                return Err(Error::Invalid(format!(
                    "data.pairs: reflow trains a flow-matching student; set train.prediction_type = \"flow\" (got {:?})",
                    config_name(&t.prediction_type)
                )));
            }
            Source::Pairs(crate::reflow::load_pairs(Path::new(dir), device)?)
        }
        (None, None, false) => Source::Images(Arc::from(
            datasets::open(&d.name, Split::Train).map_err(|e| Error::Invalid(e.to_string()))?,
        )),
        _ => {
            return Err(Error::Invalid(
                "data: give exactly one of `name` (images), `latents` (a `diffuse data encode` cache) and `pairs` (`diffuse distill reflow` pairs)"
                    .into(),
            ))
        }
    };
    let shape_of = |[c, h, w]: [usize; 3]| (c, if h == w { json!(h) } else { json!([h, w]) });
    let (ch, sample_size, num_classes) = match &source {
        Source::Images(ds) => (ds.channels(), json!(d.size), ds.num_classes()),
        Source::Latents(set, _) => {
            let (c, size) = shape_of(set.index.latent_shape);
            (c, size, set.index.num_classes)
        }
        Source::Pairs(set) => {
            let (c, size) = shape_of(set.index.spec.shape);
            (c, size, set.index.spec.num_classes)
        }
    };
    let classes = if d.class_conditional && config.vae.is_none() {
        num_classes
    } else {
        None
    };

    // Model config: sample size and channels from the data; an empty [model] with
    // `train.init_from` takes the architecture of those weights.
    let mut model_map = match (&t.init_from, &config.vae) {
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "train.init_from applies to diffusion models, not to [vae] training".into(),
            ))
        }
        (Some(dir), None) if config.model.is_empty() => init_config(Path::new(dir))?,
        (None, _) if config.model.is_empty() => {
            return Err(Error::Invalid(
                "[model] is empty: give the network's config, or train.init_from = a pipeline folder to take its architecture and weights".into(),
            ))
        }
        _ => config.model.clone(),
    };
    model_map.insert("sample_size".into(), sample_size);
    model_map.entry("in_channels").or_insert(ch.into());
    model_map.entry("out_channels").or_insert(ch.into());
    if let (Some(p), None) = (&d.pairs, &config.vae) {
        // A DiT's null out_channels means in_channels; with learned σ it predicts 2× as many.
        let dit = model_map.get("type").and_then(|v| v.as_str()) == Some("dit")
            || model_map.get("_class_name").and_then(|v| v.as_str())
                == Some("DiTTransformer2DModel");
        for key in ["in_channels", "out_channels"] {
            let fits = match model_map[key].as_u64() {
                None => model_map[key].is_null() && key == "out_channels",
                Some(n) => n == ch as u64 || (dit && key == "out_channels" && n == 2 * ch as u64),
            };
            if !fits {
                return Err(Error::Invalid(format!(
                    "data.pairs: {p} holds samples of shape {:?} but [model] has {key} = {}: the student must take and predict the teacher's samples",
                    match &source {
                        Source::Pairs(set) => set.index.spec.shape,
                        _ => unreachable!("pairs"),
                    },
                    model_map[key]
                )));
            }
        }
    }
    let latent_vae = match &source {
        Source::Latents(_, vae) => Some(vae.as_path()),
        Source::Pairs(set) => set.vae_dir.as_deref(),
        Source::Images(_) => None,
    };
    if config.distill.is_some() && (config.vae.is_some() || d.pairs.is_some()) {
        return Err(Error::Invalid(
            "[distill] trains a diffusion student on images or latents (data.name or data.latents), not a VAE or reflow pairs".into(),
        ));
    }
    let (mut net, varmap) = match &config.vae {
        None => unet_task(config, model_map, classes, latent_vae, device)?,
        Some(v) => vae_task(config, v, model_map, device)?,
    };
    net.set_gradient_checkpointing(t.gradient_checkpointing);
    net.seeded_init(&varmap, t.seed)?;
    if let Some(dir) = &t.init_from {
        init_from(&varmap, Path::new(dir))?;
    }
    let eval_hook = match (&config.eval, &net) {
        (Some(e), Net::Unet(u)) if e.every > 0 && root => {
            let (h, _) = u.cfg.sample_hw().unwrap_or((d.size, d.size));
            let size = match &u.vae {
                Some((v, _)) => h * v.config().downscale(),
                None => h,
            };
            Some(crate::eval_hook::EvalHook::new(
                e,
                (!d.name.is_empty()).then_some(d.name.as_str()),
                classes,
                size,
                &u.sched_cfg,
                t.sample_guidance,
                device,
            )?)
        }
        (Some(e), Net::Vae(_)) if e.every > 0 && root => {
            return Err(Error::Invalid(
                "[eval] applies to diffusion models; VAE training logs held-out PSNR/SSIM (vae.eval_images)".into(),
            ))
        }
        _ => None,
    };
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| net.trainable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let defaults = AdamWConfig::default();
    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            beta1: t.adam_beta1.unwrap_or(defaults.beta1),
            beta2: t.adam_beta2.unwrap_or(defaults.beta2),
            eps: t.adam_epsilon.unwrap_or(defaults.eps),
            weight_decay: t.adam_weight_decay.unwrap_or(defaults.weight_decay),
        },
    )?;
    let ema_defaults = EmaConfig::default();
    let mut ema = Ema::new(
        &plain,
        EmaConfig {
            decay: t.ema_decay.unwrap_or(ema_defaults.decay),
            power: t.ema_power.unwrap_or(ema_defaults.power),
            ..ema_defaults
        },
    )?;
    let lr = LrSchedule::new(t.lr_scheduler, t.lr_warmup_steps, t.max_steps);
    let fit = d.fit.into();
    // Mixed precision: the weights that are not trained enter the low-precision copy as they
    // are; fp16 scales the loss.
    let fixed: HashMap<String, Tensor> = match amp {
        MixedPrecision::No => HashMap::new(),
        _ => {
            let mut all = diffuse_models::weights::detached_tensors(&varmap);
            all.retain(|k, _| !vars.iter().any(|(n, _)| n == k));
            all
        }
    };
    let mut scaler = (amp == MixedPrecision::Fp16).then(GradScaler::default);

    let ckpt_root = output.join("checkpoints");
    let mut step = 0u64;
    let mut position = Position::default();
    let mut rng = TrainRng::new(t.seed);
    if resume {
        // Rank 0 picks the checkpoint; every rank loads that one.
        let newest = if root {
            newest_checkpoint(&ckpt_root)
        } else {
            None
        };
        let name = newest
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = String::from_utf8_lossy(&comm.broadcast(name.as_bytes())?).into_owned();
        if !name.is_empty() {
            let dir = ckpt_root.join(&name);
            if !dir.join("training_state.json").exists() {
                return Err(Error::Invalid(format!(
                    "rank {rank}: cannot read checkpoint {} that rank 0 resumes from (the ranks of a multi-node run need the output folder on a shared file system)",
                    dir.display()
                )));
            }
            let st = load_checkpoint(&dir, net.component(), &vars, &mut opt, &mut ema)?;
            step = st.step;
            position = st.position;
            rng = TrainRng::from_state(st.rng_seed, st.rng_word_pos);
            if let (Some(s), Some((scale, tracker))) = (&mut scaler, st.scaler) {
                *s = GradScaler::from_state(scale, tracker);
            }
        }
    }
    let mut batches = match source {
        Source::Images(dataset) => Batches::Images({
            let mut loader = Loader::new(
                dataset,
                LoaderConfig {
                    batch_size: d.batch_size,
                    seed: t.seed,
                    workers: d.workers,
                    shuffle: true,
                    skip_bad: d.skip_bad,
                    transform: Transform {
                        size: d.size,
                        fit,
                        hflip: d.hflip,
                    },
                },
                position,
            )
            .map_err(|e| Error::Invalid(e.to_string()))?;
            // This rank decodes only its rows of each global batch.
            loader
                .set_shard(rank, world)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            loader
        }),
        Source::Latents(set, vae_dir) => {
            let v = diffuse_models::weights::read_vae_config(&vae_dir)?;
            Batches::Latents(diffuse_models::latent_cache::LatentBatches::new(
                set,
                d.batch_size,
                t.seed,
                v.scaling_factor,
                v.shift_factor.unwrap_or(0.0),
                position,
            )?)
        }
        Source::Pairs(set) => Batches::Pairs(crate::reflow::PairBatches::new(
            set,
            d.batch_size,
            t.seed,
            position,
        )?),
    };

    if root {
        std::fs::create_dir_all(output).map_err(io_err(output))?;
    }
    let mut checkpoints = Vec::new();
    let mut tb = if root {
        crate::tensorboard::EventWriter::create(&output.join("logs")).map_err(io_err(output))?
    } else {
        crate::tensorboard::EventWriter::discard().map_err(io_err(output))?
    };
    let started = std::time::Instant::now();
    let mut seen_images = 0usize;
    let mut smoothed: Option<f32> = None;
    let mut nonfinite = 0u32;
    let mut last_loss = f32::NAN;
    while step < t.max_steps {
        let mut data_wait_s = 0.0;
        let mut images = 0usize;
        // Mixed precision: this step's bf16/f16 network over the f32 variables.
        let low_net = match (amp.compute_dtype(), &net) {
            (Some(dtype), Net::Unet(u)) => {
                let mut low = crate::amp::low_precision_net(&u.cfg, &vars, &fixed, dtype, device)?;
                low.set_gradient_checkpointing(t.gradient_checkpointing);
                Some(low)
            }
            _ => None,
        };
        let lr_now = t.learning_rate * lr.factor(step);
        let options = StepOptions {
            lr: lr_now,
            max_grad_norm: t.max_grad_norm,
            accumulation: t.gradient_accumulation_steps,
        };
        let result = super::step::step(
            &vars,
            &mut opt,
            &options,
            scaler.as_mut(),
            comm,
            &mut || {
                let waited = std::time::Instant::now();
                let (x0, noise, batch_labels) = match &mut batches {
                    Batches::Images(loader) => {
                        let batch = loader
                            .next_batch()
                            .map_err(|e| Error::Invalid(e.to_string()))?;
                        let x0 = batch
                            .to_tensor(device)
                            .map_err(|e| Error::Invalid(e.to_string()))?;
                        (x0, None, batch.labels)
                    }
                    // z = mean + std·ε draws ε from the run's own (checkpointed) stream.
                    Batches::Latents(lb) => {
                        let (x0, labels) = lb.next_batch(&mut rng)?;
                        (x0, None, labels)
                    }
                    // Reflow: each x₀ with the noise the teacher turned into it.
                    Batches::Pairs(pb) => {
                        let (x0, z, labels) = pb.next_batch()?;
                        (x0, Some(z), labels)
                    }
                };
                // Data parallel: this rank's rows (the image loader hands out only those).
                let (x0, noise, batch_labels) = match &batches {
                    Batches::Images(_) => (x0, noise, batch_labels),
                    _ if !sync => (x0, noise, batch_labels),
                    _ => {
                        let rows = |t: Tensor| t.narrow(0, row_offset, local_rows);
                        (
                            rows(x0)?,
                            noise.map(rows).transpose()?,
                            batch_labels.map(|l| l[row_offset..row_offset + local_rows].to_vec()),
                        )
                    }
                };
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
                    &mut rng,
                    step,
                );
                rng.set_row_shard(None);
                let (loss, parts) = out?;
                Ok(MicroLoss { loss, parts })
            },
        )?;
        let loss = result.loss;
        let mut report = StepReport {
            step: step + 1,
            max_steps: t.max_steps,
            loss,
            lr: lr_now,
            grad_norm: result.grad_norm,
            images,
            skipped_nonfinite: result.skipped.is_some(),
            data_wait_s,
            metrics: result.parts,
        };
        match result.skipped {
            Some(Skipped::NonFiniteLoss) => {
                nonfinite += 1;
                on_step(&report);
                if nonfinite >= t.max_nonfinite {
                    return Err(Error::Invalid(format!(
                        "stopping: {nonfinite} non-finite losses in a row at step {} (lower the learning rate, check the data)",
                        step + 1
                    )));
                }
                continue;
            }
            Some(Skipped::NonFiniteGradient) => {
                nonfinite = 0;
                on_step(&report);
                continue;
            }
            None => nonfinite = 0,
        }
        ema.step(&plain)?;
        step += 1;
        // A wall-clock budget ends the run like Ctrl-C: last evaluation, checkpoint, stop.
        let out_of_time = t
            .max_minutes
            .is_some_and(|m| started.elapsed().as_secs_f64() >= m * 60.0);
        last_loss = loss;
        seen_images += report.images;
        let sm = smoothed.map_or(loss, |s| 0.98 * s + 0.02 * loss);
        smoothed = Some(sm);
        let s = step as i64;
        let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
        tb.scalar("train/loss", s, loss).map_err(tb_io)?;
        tb.scalar("train/loss_smoothed", s, sm).map_err(tb_io)?;
        tb.scalar("train/lr", s, lr_now as f32).map_err(tb_io)?;
        tb.scalar("train/grad_norm", s, report.grad_norm as f32)
            .map_err(tb_io)?;
        tb.scalar("train/data_wait_s", s, data_wait_s as f32)
            .map_err(tb_io)?;
        tb.scalar(
            "train/images_per_s",
            s,
            (seen_images as f64 / started.elapsed().as_secs_f64().max(1e-9)) as f32,
        )
        .map_err(tb_io)?;
        for (k, v) in &report.metrics {
            tb.scalar(&format!("train/{k}"), s, *v as f32)
                .map_err(tb_io)?;
        }
        // Sample / reconstruction grids (and evaluation values, reported with this step).
        let preview_due = t.sample_every > 0 && step.is_multiple_of(t.sample_every);
        if root && (preview_due || (t.sample_every > 0 && step == t.max_steps)) {
            let m = preview_and_log(
                &net, &varmap, &vars, &ema, classes, t, device, output, step, &mut tb,
            )?;
            report.metrics.extend(m);
        }
        if let (Some(hook), Net::Unet(u)) = (&eval_hook, &net) {
            if hook.due(step, step == t.max_steps || out_of_time) {
                let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
                let model: DenoiserNet = diffuse_models::weights::from_tensors(
                    &u.cfg,
                    ema_tensors(&varmap, &names, &ema),
                    device,
                )?;
                let size = u.cfg.sample_hw().unwrap_or((d.size, d.size));
                let m = hook.run(&model, u.vae.as_ref().map(|v| &v.0), classes, size, device)?;
                let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
                for (k, v) in &m {
                    tb.scalar(k, s, *v as f32).map_err(tb_io)?;
                }
                report.metrics.extend(m);
            }
        }
        on_step(&report);
        let mut stopping = stop.load(std::sync::atomic::Ordering::SeqCst) || out_of_time;
        if sync {
            // One rank's Ctrl-C or time budget stops every rank after this step.
            stopping = agree(comm, vec![if stopping { 1.0 } else { 0.0 }])?[0] > 0.0;
        }
        let last = step == t.max_steps || stopping;
        let checkpoint_due =
            (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || last;
        if checkpoint_due && sync {
            check_same_weights(comm, &vars)?;
        }
        if checkpoint_due && root {
            let state = TrainingState {
                step,
                position: match &batches {
                    Batches::Images(l) => l.position(),
                    Batches::Latents(l) => l.position(),
                    Batches::Pairs(l) => l.position(),
                },
                rng_seed: rng.state().0,
                rng_word_pos: rng.state().1,
                scaler: scaler.as_ref().map(|s| s.state()),
            };
            let files = net.files();
            let parts = CheckpointParts {
                component: net.component(),
                files: &files,
                vars: &vars,
                opt: &opt,
                ema: &ema,
                state: &state,
            };
            let dir = save_checkpoint(&ckpt_root, &parts)?;
            checkpoints.push(dir);
            prune_checkpoints(&ckpt_root, t.keep_checkpoints)?;
        }
        if root && t.sample_every > 0 && stopping && !preview_due && step != t.max_steps {
            preview_and_log(
                &net, &varmap, &vars, &ema, classes, t, device, output, step, &mut tb,
            )?;
        }
        if step.is_multiple_of(10) || last {
            tb.flush().map_err(io_err(output))?;
        }
        if stopping {
            break;
        }
    }
    // The output folder itself becomes the final pipeline or model folders (copy of the last
    // checkpoint's parts).
    if let Some(last) = newest_checkpoint(&ckpt_root).filter(|_| root) {
        let c = net.component();
        for part in [
            c.to_string(),
            format!("{c}_ema"),
            "scheduler".into(),
            "vae".into(),
        ] {
            if last.join(&part).is_dir() {
                copy_dir(&last.join(&part), &output.join(&part))?;
            }
        }
        if last.join("model_index.json").exists() {
            std::fs::copy(
                last.join("model_index.json"),
                output.join("model_index.json"),
            )
            .map_err(io_err(output))?;
        }
    }
    // The other ranks return once rank 0's output is complete.
    comm.barrier()?;
    Ok(TrainOutcome {
        steps: step,
        last_loss,
        checkpoints,
    })
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
