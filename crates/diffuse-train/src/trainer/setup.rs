//! Setup, the first phase of a run: the config checked against itself, the data source opened,
//! the network built from `[model]` and the data's shape, optimizer, EMA and loss scaler made,
//! and a checkpoint loaded on `resume` — everything the loop then advances, as a [`Session`].

use super::checkpoint::*;
use super::config::*;
use super::data::*;
use super::io_err;
use super::net::*;
use super::run::Session;
use crate::amp::{GradScaler, MixedPrecision};
use crate::dist::{shard_rows, Collective};
use crate::ema::{Ema, EmaConfig};
use crate::lr::LrSchedule;
use crate::objective::{RowShard, TrainRng};
use crate::optim::{AdamW, AdamWConfig};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use diffuse_data::loader::Position;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

impl<'a> Session<'a> {
    /// Everything a run needs before its first step (or, with `resume`, its next one).
    pub(super) fn setup(
        config: &'a TrainConfig,
        output: &'a Path,
        resume: bool,
        device: &'a Device,
        comm: &'a dyn Collective,
    ) -> Result<Self> {
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
        let text = config.check_text()?;
        let mut source = open_source(config, device)?;
        if text {
            // Captions held out as whole strings leave training with their images.
            if let Source::Images(ds) = source {
                let holdout = config.captions.clone().unwrap_or_default().holdout;
                source = Source::Images(std::sync::Arc::new(
                    diffuse_data::datasets::Subset::without_captions(ds, &holdout)
                        .map_err(|e| Error::Invalid(e.to_string()))?,
                ));
            }
        }
        // Images encoded on the fly (data.vae): the network sees the VAE's latents.
        let encode_vae = match (&d.vae, &source) {
            (Some(dir), Source::Images(_)) => Some(Path::new(dir)),
            (Some(_), _) => {
                return Err(Error::Invalid(
                    "data.vae encodes images as they are drawn: it goes with data.name, not a latent cache or reflow pairs".into(),
                ))
            }
            (None, _) => None,
        };
        let (mut ch, mut sample_size, num_classes) = data_shape(&source, d.size);
        if let Some(dir) = encode_vae {
            let v = diffuse_models::weights::read_vae_config(dir)?;
            let f = v.downscale();
            if v.in_channels != ch || !d.size.is_multiple_of(f) {
                return Err(Error::Invalid(format!(
                    "data.vae {}: it takes {} channels at sizes divisible by {f}; the data has {ch} channels at data.size {}",
                    dir.display(),
                    v.in_channels,
                    d.size
                )));
            }
            (ch, sample_size) = (v.latent_channels, Value::from(d.size / f));
        }
        let classes = if d.class_conditional && config.vae.is_none() && !text {
            num_classes
        } else {
            None
        };
        let model_map = model_config(config, &source, ch, sample_size)?;
        let latent_vae = match &source {
            Source::Latents(_, vae) => Some(vae.as_path()),
            Source::Pairs(set) => set.vae_dir.as_deref(),
            Source::Images(_) => encode_vae,
        };
        if config.consistency.is_some()
            && (config.vae.is_some() || d.pairs.is_some() || config.distill.is_some())
        {
            return Err(Error::Invalid(
                "[consistency] trains a diffusion student on images or latents (data.name or data.latents); it cannot go with [vae], data.pairs or [distill]".into(),
            ));
        }
        if config.distill.is_some() && (config.vae.is_some() || d.pairs.is_some()) {
            return Err(Error::Invalid(
                "[distill] trains a diffusion student on images or latents (data.name or data.latents), not a VAE or reflow pairs".into(),
            ));
        }
        let (mut net, varmap) = match &config.vae {
            None => unet_task(config, model_map, classes, latent_vae, device)?,
            Some(v) => vae_task(config, v, model_map, device)?,
        };
        if let Net::Unet(u) = &mut net {
            u.encode_images = encode_vae.is_some();
            if let (true, Source::Images(ds)) = (text, &source) {
                u.text = Some(crate::text::TextConditioning::new(
                    &config.text_encoder.clone().unwrap_or_default(),
                    &config.captions.clone().unwrap_or_default(),
                    ds.as_ref(),
                    t.cond_dropout,
                    t.seed,
                    &varmap,
                    device,
                )?);
            }
            u.attribution = match &source {
                Source::Images(ds) => ds.attribution().map(str::to_string),
                Source::Latents(set, _) => set.index.attribution.clone(),
                Source::Pairs(_) => None,
            };
        }
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
        let mut phema = if t.posthoc_ema.is_empty() {
            None
        } else {
            Some(crate::phema::PowerEma::new(&plain, &t.posthoc_ema)?)
        };
        let mut lr = LrSchedule::new(t.lr_scheduler, t.lr_warmup_steps, t.max_steps);
        // Mixed precision: the weights that are not trained enter the low-precision copy as
        // they are; fp16 scales the loss.
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
        let mut budget_state = None;
        let mut target_state = None;
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
                target_state = consistency_target(&net, &dir, device)?;
                step = st.step;
                position = st.position;
                rng = TrainRng::from_state(st.rng_seed, st.rng_word_pos);
                budget_state = st.budget;
                if let Some(p) = &mut phema {
                    let path = dir.join(crate::phema::CHECKPOINT_FILE);
                    let state = candle_core::safetensors::load(&path, device).map_err(|e| {
                        Error::Invalid(format!(
                            "{}: {e} (train.posthoc_ema was turned on after this checkpoint; resume without it or start over)",
                            path.display()
                        ))
                    })?;
                    let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
                    p.load_state(&names, &state, device)?;
                }
                if let (Some(s), Some((scale, tracker))) = (&mut scaler, st.scaler) {
                    *s = GradScaler::from_state(scale, tracker);
                }
            }
        }
        if let Net::Unet(u) = &mut net {
            if let Some(c) = &mut u.consistency {
                c.attach_target(&u.cfg, &varmap, &vars, target_state.as_ref(), device)?;
            }
        }
        let batches = open_batches(config, source, position, rank, world)?;
        // A time budget's plan (from the checkpoint) ends the schedule early.
        let budget = t
            .max_minutes
            .map(|m| super::budget::Budget::new(m, budget_state));
        let max_steps = budget
            .as_ref()
            .and_then(|b| b.planned())
            .map_or(t.max_steps, |n| n.min(t.max_steps));
        lr.total = max_steps;

        if root {
            std::fs::create_dir_all(output).map_err(io_err(output))?;
        }
        let tb = if root {
            crate::tensorboard::EventWriter::create(&output.join("logs")).map_err(io_err(output))?
        } else {
            crate::tensorboard::EventWriter::discard().map_err(io_err(output))?
        };
        Ok(Session {
            config,
            output,
            device,
            comm,
            sync,
            row_shard,
            classes,
            net,
            varmap,
            vars,
            plain,
            opt,
            ema,
            phema,
            lr,
            fixed,
            scaler,
            eval_hook,
            ckpt_root,
            step,
            rng,
            batches,
            tb,
            started: std::time::Instant::now(),
            max_steps,
            budget,
            seen_images: 0,
            smoothed: None,
            nonfinite: 0,
            last_loss: f32::NAN,
            checkpoints: Vec::new(),
            disk_warned: false,
        })
    }
}

/// The network's config: sample size and channels from the data; an empty `[model]` with
/// `train.init_from` takes the architecture of those weights.
fn model_config(
    config: &TrainConfig,
    source: &Source,
    ch: usize,
    sample_size: Value,
) -> Result<Map<String, Value>> {
    let (t, d) = (&config.train, &config.data);
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
                    match source {
                        Source::Pairs(set) => set.index.spec.shape,
                        _ => unreachable!("pairs"),
                    },
                    model_map[key]
                )));
            }
        }
    }
    Ok(model_map)
}

/// The EMA target network's weights in a checkpoint, when the run has one (CD with
/// `target_ema_decay > 0`); a missing file is an error naming the fix.
fn consistency_target(
    net: &Net,
    dir: &Path,
    device: &Device,
) -> Result<Option<HashMap<String, Tensor>>> {
    let wants =
        matches!(net, Net::Unet(u) if u.consistency.as_ref().is_some_and(|c| c.has_target()));
    if !wants {
        return Ok(None);
    }
    let path = dir.join(crate::consistency::TARGET_FILE);
    candle_core::safetensors::load(&path, device)
        .map(Some)
        .map_err(|e| {
            Error::Invalid(format!(
                "{}: {e} (consistency.target_ema_decay was set after this checkpoint; resume with 0 or start over)",
                path.display()
            ))
        })
}
