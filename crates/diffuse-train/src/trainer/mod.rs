//! The training loop of `diffuse train`: one TOML file configures model, data, objective,
//! optimizer and EMA; checkpoints are diffusers pipeline folders plus a training state, written
//! atomically (a temporary folder renamed into place), and `resume` continues bit for bit.
//! The same loop trains a diffusion UNet, a DiT (`[model] type = "dit"`) or, with a `[vae]`
//! section, an AutoencoderKL (reconstruction + β-KL with warm-up, PSNR of reconstructions on
//! held-out images).
//! With `train.mixed_precision` the forward runs in bf16/f16 over f32 master weights
//! ([`crate::amp`]); [`train_with`] runs the loop as one rank of a data-parallel group
//! ([`crate::dist`]: each rank takes its slice of every global batch, gradients are averaged
//! before clipping, rank 0 alone writes).

use crate::amp::{GradScaler, MixedPrecision};
use crate::dist::{shard_rows, Collective, SingleProcess};
use crate::ema::{Ema, EmaConfig};
use crate::lr::LrSchedule;
use crate::objective::{
    diffusion_loss_with_noise, vae_loss, ObjectiveConfig, Reconstruction, RowShard, SigmaSampling,
    TrainRng,
};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::quality::{psnr, ssim};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use diffuse_core::config::{PredictionType, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::datasets::{self, Dataset, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::weights::build_vae;
use diffuse_models::{AutoencoderKL, AutoencoderKLConfig, DenoiserConfig, DenoiserNet};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn d_batch() -> usize {
    32
}
fn d_workers() -> usize {
    2
}
fn d_size() -> usize {
    32
}
fn d_fit() -> String {
    "pad".into()
}
fn d_lr() -> f64 {
    1e-4
}
fn d_sched() -> String {
    "cosine".into()
}
fn d_pred() -> String {
    "epsilon".into()
}
fn d_norm() -> f64 {
    1.0
}
fn d_every() -> u64 {
    500
}
fn d_keep() -> usize {
    3
}
fn d_nan() -> u32 {
    5
}
fn d_true() -> bool {
    true
}
fn d_dropout() -> f64 {
    0.1
}
fn d_one() -> u64 {
    1
}
fn d_sample_steps() -> usize {
    25
}
fn d_guidance() -> f64 {
    2.0
}
fn d_rec() -> String {
    "l1".into()
}
fn d_kl() -> f64 {
    1e-6
}
fn d_eval_images() -> usize {
    256
}
fn d_logit_normal() -> String {
    "logit_normal".into()
}
fn d_unit() -> f64 {
    1.0
}
fn d_no() -> String {
    "no".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `mnist`, `fashion-mnist`, `cifar10`, or a folder.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Instead of `name`: a latent cache (`diffuse data encode`); the UNet then trains on its
    /// latents and the output is a latent pipeline with the cache's VAE (`size`, `fit`,
    /// `hflip`, `workers` and `skip_bad` do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    /// Instead of `name`: reflow pairs (`diffuse distill reflow`, `OUTPUT/pairs`): (noise, x₀,
    /// label) triples from a teacher's ODE; the flow loss then uses each x₀'s own noise (latent
    /// pairs carry their VAE; `size`, `fit`, `hflip`, `workers` and `skip_bad` do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<String>,
    #[serde(default = "d_size")]
    pub size: usize,
    #[serde(default = "d_fit")]
    pub fit: String,
    #[serde(default)]
    pub hflip: bool,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_workers")]
    pub workers: usize,
    #[serde(default)]
    pub skip_bad: bool,
    /// Train class-conditionally when the data set has labels.
    #[serde(default = "d_true")]
    pub class_conditional: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub max_steps: u64,
    /// Stop (with a checkpoint and the output pipeline) after this many minutes of this
    /// invocation, for comparisons at the same wall-clock budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_minutes: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_sched")]
    pub lr_scheduler: String,
    #[serde(default)]
    pub lr_warmup_steps: u64,
    #[serde(default)]
    pub adam_beta1: Option<f64>,
    #[serde(default)]
    pub adam_beta2: Option<f64>,
    #[serde(default)]
    pub adam_epsilon: Option<f64>,
    #[serde(default)]
    pub adam_weight_decay: Option<f64>,
    #[serde(default = "d_norm")]
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step (gradients averaged); 1 = none.
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: u64,
    /// Recompute each block's activations in backward instead of keeping them (diffusers'
    /// `--gradient_checkpointing`): UNet and VAE ResNets, attentions and resamplers, DiT
    /// transformer blocks. Same gradients; less memory for about one more forward per step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// epsilon, sample, v_prediction, flow
    #[serde(default = "d_pred")]
    pub prediction_type: String,
    #[serde(default)]
    pub snr_gamma: Option<f64>,
    /// Flow matching: how σ is drawn, `logit_normal` (SD3) or `uniform` (rectified flow); it
    /// is then warped by the scheduler's `shift`, as the FlowMatch samplers warp theirs.
    #[serde(default = "d_logit_normal")]
    pub flow_sigma_sampling: String,
    /// Mean and std of the logit-normal σ (a positive mean trains more at high noise).
    #[serde(default)]
    pub flow_logit_mean: f64,
    #[serde(default = "d_unit")]
    pub flow_logit_std: f64,
    /// Start from these weights instead of a random init: a pipeline folder (its EMA UNet when
    /// it has `unet_ema/`) or a UNet folder; every tensor must match `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Probability of training on the null class (classifier-free guidance).
    #[serde(default = "d_dropout")]
    pub cond_dropout: f64,
    #[serde(default = "d_every")]
    pub checkpoint_every: u64,
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    #[serde(default = "d_every")]
    pub log_every: u64,
    /// Write a grid of EMA samples (fixed seed, every class) to `samples/step-N.png` every this
    /// many steps and at the end; 0 disables.
    #[serde(default)]
    pub sample_every: u64,
    /// Sampling steps for those grids.
    #[serde(default = "d_sample_steps")]
    pub sample_steps: usize,
    /// Guidance scale for the grids of class-conditional models.
    #[serde(default = "d_guidance")]
    pub sample_guidance: f64,
    /// Stop after this many non-finite losses in a row.
    #[serde(default = "d_nan")]
    pub max_nonfinite: u32,
    #[serde(default)]
    pub ema_decay: Option<f64>,
    #[serde(default)]
    pub ema_power: Option<f64>,
    /// Forward precision, accelerate's names: "no" (f32), "bf16" or "fp16" (with dynamic loss
    /// scaling); weights, gradients, AdamW and EMA stay f32 ([`crate::amp`]).
    #[serde(default = "d_no")]
    pub mixed_precision: String,
}

/// VAE training (`[vae]`): `[model]` is then an AutoencoderKL config. Labels, `[scheduler]`
/// and the diffusion keys of `[train]` are not used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeSection {
    /// Reconstruction loss: l1 or l2 (mean over pixels).
    #[serde(default = "d_rec")]
    pub loss: String,
    /// β: weight of KL(q(z|x) ‖ N(0, I)) (per-sample sum, batch mean); diffusers' script uses 1e-6.
    #[serde(default = "d_kl")]
    pub kl_weight: f64,
    /// β rises linearly from 0 over this many steps.
    #[serde(default)]
    pub kl_warmup_steps: u64,
    /// Held-out images (the data set's test split) for the PSNR and SSIM logged with every
    /// reconstruction grid (`train.sample_every`); 0 disables both.
    #[serde(default = "d_eval_images")]
    pub eval_images: usize,
}

/// The whole `diffuse train` configuration (`examples/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A diffusers UNet2DModel config (class labels get one extra "null" class when needed);
    /// with `type = "dit"` a DiTTransformer2DModel config (`num_embeds_ada_norm` is set from the
    /// data: its classes, or 0 for an unconditional model; the null class is the extra last
    /// row); or an AutoencoderKL config with `[vae]`.
    pub model: Map<String, Value>,
    /// A diffusers scheduler config (default: DDPMScheduler's).
    #[serde(default)]
    pub scheduler: Map<String, Value>,
    pub data: DataSection,
    pub train: TrainSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeSection>,
    /// Metrics of EMA samples every N steps (diffusion models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval_hook::EvalSection>,
    /// Train as the progressive-distillation student of a teacher pipeline (images or a
    /// latent cache as data; `[scheduler]` DDIM with the student's `num_inference_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<crate::progressive::DistillSection>,
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("config: {}", e.to_string().trim())))
    }

    /// Applies `key.path=value` overrides (`train.max_steps=100`, `data.batch_size=8`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("--set {assignment:?}: expected key=value")))?;
        let mut doc = serde_json::to_value(&*self).expect("serializable");
        let parsed: Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|t| serde_json::to_value(&t["v"]).ok())
            .unwrap_or_else(|| Value::from(value));
        let mut slot = &mut doc;
        for part in key.split('.') {
            slot = slot
                .as_object_mut()
                .ok_or_else(|| Error::Invalid(format!("--set {key}: not a table")))?
                .entry(part.to_string())
                .or_insert(Value::Null);
        }
        *slot = parsed;
        *self =
            serde_json::from_value(doc).map_err(|e| Error::Invalid(format!("--set {key}: {e}")))?;
        Ok(())
    }
}

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
}

/// What a training run produced.
pub struct TrainOutcome {
    pub steps: u64,
    pub last_loss: f32,
    pub checkpoints: Vec<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("{}: {e}", path.display()))
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
    let amp = MixedPrecision::parse(&t.mixed_precision)?;
    if amp != MixedPrecision::No && config.vae.is_some() {
        return Err(Error::Invalid(format!(
            "train.mixed_precision = {:?} applies to UNet and DiT training; a [vae] trains in f32 (set it to \"no\")",
            t.mixed_precision
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
            if !matches!(t.prediction_type.as_str(), "flow" | "flow_prediction") {
                return Err(Error::Invalid(format!(
                    "data.pairs: reflow trains a flow-matching student; set train.prediction_type = \"flow\" (got {:?})",
                    t.prediction_type
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
    let lr = LrSchedule::parse(&t.lr_scheduler, t.lr_warmup_steps, t.max_steps)?;
    let fit = parse_fit(&d.fit)?;
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
        // One optimizer step = `gradient_accumulation_steps` micro-batches, gradients averaged
        // (each micro loss is scaled by 1/K and the detached gradients summed).
        let k_acc = t.gradient_accumulation_steps.max(1);
        let mut data_wait_s = 0.0;
        let mut loss_sum = 0f32;
        let mut images = 0usize;
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut finite = true;
        // Named loss parts, averaged over the micro-batches.
        let mut parts_sum: Vec<(String, f64)> = Vec::new();
        // Mixed precision: this step's bf16/f16 network over the f32 variables.
        let low_net = match (amp.compute_dtype(), &net) {
            (Some(dtype), Net::Unet(u)) => {
                let mut low = crate::amp::low_precision_net(&u.cfg, &vars, &fixed, dtype, device)?;
                low.set_gradient_checkpointing(t.gradient_checkpointing);
                Some(low)
            }
            _ => None,
        };
        for _ in 0..k_acc {
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
            let (micro_loss, parts) = out?;
            for (k, v) in parts {
                match parts_sum.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, s)) => *s += v / k_acc as f64,
                    None => parts_sum.push((k, v / k_acc as f64)),
                }
            }
            let micro = micro_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            loss_sum += micro;
            if !micro.is_finite() {
                finite = false;
                continue;
            }
            let g = match &scaler {
                Some(s) => (micro_loss * (s.scale() / k_acc as f64))?,
                None => (micro_loss / k_acc as f64)?,
            }
            .backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for (_, v) in &vars {
                        if let Some(new) = g.get(v) {
                            let sum = match acc.get(v) {
                                Some(old) => (old.detach() + new.detach())?,
                                None => new.detach(),
                            };
                            acc.insert(v, sum);
                        }
                    }
                    acc
                }
            });
        }
        // Data parallel: one small all-reduce agrees on the loss, its parts and whether every
        // rank was finite; then the gradients are averaged.
        if sync {
            let mut ctl = vec![loss_sum, if finite { 0.0 } else { 1.0 }];
            ctl.extend(parts_sum.iter().map(|(_, v)| *v as f32));
            let ctl = agree(comm, ctl)?;
            loss_sum = ctl[0] / world as f32;
            finite = ctl[1] == 0.0;
            for ((_, v), c) in parts_sum.iter_mut().zip(&ctl[2..]) {
                *v = *c as f64 / world as f64;
            }
        }
        let unscale = scaler.as_ref().map_or(1.0, |s| s.scale()) * world as f64;
        if let (true, Some(g)) = (finite && (sync || unscale != 1.0), grads.as_mut()) {
            average_gradients(g, &vars, comm, unscale)?;
        }
        let loss = loss_sum / k_acc as f32;
        let lr_now = t.learning_rate * lr.factor(step);
        let mut report = StepReport {
            step: step + 1,
            max_steps: t.max_steps,
            loss,
            lr: lr_now,
            grad_norm: f64::NAN,
            images,
            skipped_nonfinite: false,
            data_wait_s,
            metrics: parts_sum,
        };
        let Some(mut grads) = grads.filter(|_| finite) else {
            nonfinite += 1;
            report.skipped_nonfinite = true;
            if let Some(s) = &mut scaler {
                s.update(true);
            }
            on_step(&report);
            if nonfinite >= t.max_nonfinite {
                return Err(Error::Invalid(format!(
                    "stopping: {nonfinite} non-finite losses in a row at step {} (lower the learning rate, check the data)",
                    step + 1
                )));
            }
            continue;
        };
        nonfinite = 0;
        report.grad_norm = clip_grad_norm(&mut grads, &vars, t.max_grad_norm)?;
        if let Some(s) = &mut scaler {
            // fp16: an overflow halves the loss scale and skips the step (GradScaler).
            s.update(!report.grad_norm.is_finite());
            report.metrics.push(("loss_scale".into(), s.scale()));
        }
        if !report.grad_norm.is_finite() {
            report.skipped_nonfinite = true;
            on_step(&report);
            continue;
        }
        opt.update(&grads, lr_now)?;
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
            let dir = save_checkpoint(
                &ckpt_root,
                net.component(),
                &net.files(),
                &vars,
                &opt,
                &ema,
                &state,
            )?;
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

/// Data parallel: the elementwise sum of `values` over the ranks (host values; the NCCL group
/// sends them over its TCP links).
fn agree(comm: &dyn Collective, values: Vec<f32>) -> Result<Vec<f32>> {
    let mut t = [Tensor::new(values.as_slice(), &Device::Cpu)?];
    comm.all_reduce_sum(&mut t)?;
    Ok(t[0].to_vec1()?)
}

/// Data parallel and fp16: the gradients of `vars` summed over the ranks and divided by `div`
/// (world size × loss scale). A variable keeps no gradient only if no rank has one.
fn average_gradients(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[(String, Var)],
    comm: &dyn Collective,
    div: f64,
) -> Result<()> {
    let mut ts = Vec::with_capacity(vars.len() + 1);
    let mut present = Vec::with_capacity(vars.len());
    for (_, v) in vars {
        match grads.get(v) {
            Some(g) => {
                ts.push(g.detach());
                present.push(1f32);
            }
            None => {
                ts.push(Tensor::zeros(v.shape(), DType::F32, v.device())?);
                present.push(0f32);
            }
        }
    }
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    ts.push(Tensor::new(present.as_slice(), &device)?);
    comm.all_reduce_sum(&mut ts)?;
    let present: Vec<f32> = ts
        .pop()
        .expect("flags")
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    for (((_, v), g), p) in vars.iter().zip(ts).zip(present) {
        if p > 0.0 {
            grads.insert(v, (g / div)?);
        }
    }
    Ok(())
}

/// Data parallel: every rank must hold rank 0's weights bit for bit (a checksum each
/// checkpoint; a mismatch is a bug, not a numerical effect).
fn check_same_weights(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
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

/// Files of a checkpoint as (path relative to it, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// Where training data comes from.
enum Source {
    Images(Arc<dyn Dataset>),
    /// A latent cache and its `vae/` folder.
    Latents(diffuse_models::latent_cache::LatentSet, PathBuf),
    /// Reflow pairs (their `vae/` for latent pairs).
    Pairs(crate::reflow::PairSet),
}

enum Batches {
    Images(Loader),
    Latents(diffuse_models::latent_cache::LatentBatches),
    Pairs(crate::reflow::PairBatches),
}

/// What the loop trains: a diffusion network (UNet or DiT) or an AutoencoderKL.
enum Net {
    Unet(Box<UnetTask>),
    Vae(Box<VaeTask>),
}

/// A diffusion network: a UNet or a DiT.
struct UnetTask {
    model: DenoiserNet,
    cfg: DenoiserConfig,
    schedule: NoiseSchedule,
    objective: ObjectiveConfig,
    sched_map: Map<String, Value>,
    sched_cfg: SchedulerConfig,
    /// For latent diffusion: the VAE (decodes the sample grids) and its folder's files, written
    /// as `vae/` of every checkpoint and of the output pipeline.
    vae: Option<(AutoencoderKL, Files)>,
    /// `[distill]`: the teacher whose two DDIM steps each student step learns.
    distill: Option<crate::progressive::Progressive>,
}

struct VaeTask {
    model: AutoencoderKL,
    cfg: AutoencoderKLConfig,
    rec: Reconstruction,
    section: VaeSection,
    /// [n, c, size, size] held-out images for PSNR and the reconstruction grids.
    holdout: Option<Tensor>,
}

fn unet_task(
    config: &TrainConfig,
    mut model_map: Map<String, Value>,
    classes: Option<usize>,
    latent_vae: Option<&Path>,
    device: &Device,
) -> Result<(Net, candle_nn::VarMap)> {
    let t = &config.train;
    let vae = match latent_vae {
        Some(dir) => {
            let (vae, _) = diffuse_models::weights::load_vae(dir, device)?;
            let mut files = Vec::new();
            for f in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
                let bytes = std::fs::read(f.path()).map_err(io_err(&f.path()))?;
                files.push((format!("vae/{}", f.file_name().to_string_lossy()), bytes));
            }
            Some((vae, files))
        }
        None => None,
    };
    // A class table with one extra null class.
    let kind = match model_map.remove("type") {
        None => "unet".to_string(),
        Some(Value::String(s)) => s,
        Some(v) => {
            return Err(Error::Invalid(format!(
                "model.type: expected a string (unet, dit), got {v}"
            )))
        }
    };
    match kind.as_str() {
        "unet" => {
            model_map
                .entry("_class_name")
                .or_insert("UNet2DModel".into());
            if let Some(k) = classes {
                model_map.insert("num_class_embeds".into(), (k + 1).into());
            }
        }
        "dit" => {
            model_map
                .entry("_class_name")
                .or_insert("DiTTransformer2DModel".into());
            // The DiT's label table always has the null class as its extra last row.
            model_map.insert("num_embeds_ada_norm".into(), classes.unwrap_or(0).into());
        }
        other => {
            return Err(Error::Invalid(format!(
                "model.type: unknown value {other:?}; allowed: unet, dit"
            )))
        }
    }
    let unet_cfg = DenoiserConfig::from_json_str(&Value::Object(model_map).to_string())
        .map_err(|e| Error::Invalid(format!("[model] ({kind}): {e}")))?;
    let mut sched_map = config.scheduler.clone();
    sched_map
        .entry("_class_name")
        .or_insert("DDPMScheduler".into());
    let prediction = match t.prediction_type.as_str() {
        "flow" | "flow_prediction" => PredictionType::Flow,
        p => {
            sched_map.insert("prediction_type".into(), p.into());
            PredictionType::parse(p)?
        }
    };
    let flow_class = SchedulerConfig::from_json_map(&sched_map).is_ok_and(|c| c.class.is_flow());
    if prediction == PredictionType::Flow && !flow_class {
        sched_map.insert(
            "_class_name".into(),
            "FlowMatchEulerDiscreteScheduler".into(),
        );
    } else if prediction != PredictionType::Flow && flow_class {
        return Err(Error::Invalid(format!(
            "[scheduler] is a flow-matching scheduler but train.prediction_type is {:?}; set prediction_type = \"flow\" or use a diffusion scheduler",
            t.prediction_type
        )));
    }
    let sched_cfg = SchedulerConfig::from_json_map(&sched_map)?;
    let schedule = if prediction == PredictionType::Flow {
        NoiseSchedule::from_config(&SchedulerConfig::default_for(
            diffuse_core::config::SchedulerClass::Ddpm,
        ))?
    } else {
        NoiseSchedule::from_config(&sched_cfg)?
    };

    let (model, varmap) = diffuse_models::weights::build::<DenoiserNet>(&unet_cfg, device)?;
    let objective = ObjectiveConfig {
        prediction,
        min_snr_gamma: t.snr_gamma,
        cond_dropout: t.cond_dropout,
        null_class: classes.map(|k| k as u32),
        sigma_sampling: SigmaSampling::parse(
            &t.flow_sigma_sampling,
            t.flow_logit_mean,
            t.flow_logit_std,
        )?,
        // SD3 trains and samples with the same shift (FlowMatchEulerDiscreteScheduler's).
        flow_shift: sched_cfg.shift,
        flow_num_train_timesteps: sched_cfg.num_train_timesteps,
    };
    if let Some((v, _)) = &vae {
        diffuse_models::pipeline::check_latent_channels(&unet_cfg, v.config())?;
    }
    let distill = match &config.distill {
        Some(section) => Some(crate::progressive::Progressive::new(
            section, &sched_cfg, &schedule, classes, device,
        )?),
        None => None,
    };
    let task = UnetTask {
        distill,
        model,
        cfg: unet_cfg,
        schedule,
        objective,
        sched_map,
        sched_cfg,
        vae,
    };
    Ok((Net::Unet(Box::new(task)), varmap))
}

fn vae_task(
    config: &TrainConfig,
    section: &VaeSection,
    mut model_map: Map<String, Value>,
    device: &Device,
) -> Result<(Net, candle_nn::VarMap)> {
    model_map
        .entry("_class_name")
        .or_insert("AutoencoderKL".into());
    let cfg = AutoencoderKLConfig::from_json_str(&Value::Object(model_map).to_string())?;
    let rec = match section.loss.as_str() {
        "l1" => Reconstruction::L1,
        "l2" => Reconstruction::L2,
        other => {
            return Err(Error::Invalid(format!(
                "vae.loss: unknown value {other:?}; allowed: l1, l2"
            )))
        }
    };
    let d = &config.data;
    let holdout = if section.eval_images > 0 {
        let test = datasets::open(&d.name, Split::Test).map_err(|e| {
            Error::Invalid(format!(
                "vae.eval_images: the held-out images come from the test split ({e}); set vae.eval_images = 0 to train without them"
            ))
        })?;
        let n = section.eval_images.min(test.len());
        let tf = Transform {
            size: d.size,
            fit: parse_fit(&d.fit)?,
            hflip: false,
        };
        let mut pixels = Vec::with_capacity(n * test.channels() * d.size * d.size);
        for i in 0..n {
            let s = test.get(i).map_err(|e| Error::Invalid(e.to_string()))?;
            pixels.extend(tf.apply(&s, false));
        }
        Some(Tensor::from_vec(
            pixels,
            (n, test.channels(), d.size, d.size),
            device,
        )?)
    } else {
        None
    };
    let (model, varmap) = build_vae(&cfg, device)?;
    let task = VaeTask {
        model,
        cfg,
        rec,
        section: section.clone(),
        holdout,
    };
    Ok((Net::Vae(Box::new(task)), varmap))
}

fn parse_fit(fit: &str) -> Result<Fit> {
    Fit::parse(fit).ok_or_else(|| {
        Error::Invalid(format!(
            "data.fit: unknown value {fit:?}; allowed: pad, resize, center_crop"
        ))
    })
}

impl Net {
    /// The model's folder name in checkpoints and the output (`unet`, `transformer`, `vae`;
    /// EMA in `*_ema`).
    fn component(&self) -> &'static str {
        match self {
            Net::Unet(u) => u.cfg.component(),
            Net::Vae(_) => "vae",
        }
    }

    /// Files beside the weights in every checkpoint and the output: configs, and for a UNet or
    /// DiT the scheduler and `model_index.json` of a pipeline.
    fn files(&self) -> Files {
        let text = |v: &Value| serde_json::to_string_pretty(v).expect("json").into_bytes();
        let config = match self {
            Net::Unet(u) => u.cfg.to_json_string().into_bytes(),
            Net::Vae(v) => text(&serde_json::to_value(&v.cfg).expect("json")),
        };
        let c = self.component();
        let mut files = vec![
            (format!("{c}/config.json"), config.clone()),
            (format!("{c}_ema/config.json"), config),
        ];
        if let Net::Unet(u) = self {
            let sched = sched_cfg_json(&u.sched_map);
            let class = sched["_class_name"].as_str().unwrap_or("DDPMScheduler");
            let index = diffuse_models::weights::pipeline_index(&u.cfg, class, u.vae.is_some());
            files.push(("scheduler/scheduler_config.json".into(), text(&sched)));
            files.push(("model_index.json".into(), text(&index)));
            if let Some((_, vae_files)) = &u.vae {
                files.extend(vae_files.iter().cloned());
            }
        }
        files
    }

    /// Seeded initialization of the fresh weights: PyTorch's layer defaults (UNet, VAE), the
    /// DiT paper's adaLN-Zero init for a DiT.
    fn seeded_init(&self, varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
        match self {
            Net::Unet(u) => Ok(u.cfg.seeded_init(varmap, seed)?),
            Net::Vae(_) => Ok(diffuse_models::weights::seeded_init(varmap, seed)?),
        }
    }

    /// `train.gradient_checkpointing` on the trained model (previews and evaluations build
    /// their own models from the weights, without it).
    fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Net::Unet(u) => u.model.set_gradient_checkpointing(on),
            Net::Vae(v) => v.model.set_gradient_checkpointing(on),
        }
    }

    /// Whether a variable is trained (diffusers keeps a UNet's Fourier projection fixed).
    fn trainable(&self, name: &str) -> bool {
        match self {
            Net::Unet(u) => u.cfg.trainable(name),
            Net::Vae(_) => true,
        }
    }

    /// The loss of one batch at optimizer step `step`, and named parts of it; `low` is the
    /// network's low-precision copy under mixed precision.
    fn loss(
        &self,
        low: Option<&DenoiserNet>,
        x0: &Tensor,
        noise: Option<&Tensor>,
        labels: Option<&[u32]>,
        rng: &mut TrainRng,
        step: u64,
    ) -> Result<(Tensor, Vec<(String, f64)>)> {
        match self {
            Net::Unet(u) if u.distill.is_some() => {
                let p = u.distill.as_ref().expect("distill");
                let model = low.unwrap_or(&u.model);
                Ok((p.loss(model, x0, labels, &u.objective, rng)?, vec![]))
            }
            Net::Unet(u) => {
                let parts = diffusion_loss_with_noise(
                    low.unwrap_or(&u.model),
                    &u.schedule,
                    x0,
                    noise,
                    labels,
                    &u.objective,
                    rng,
                )?;
                Ok((parts.loss, vec![]))
            }
            Net::Vae(v) => {
                let warm = v.section.kl_warmup_steps;
                let ramp = if warm == 0 {
                    1.0
                } else {
                    ((step + 1) as f64 / warm as f64).min(1.0)
                };
                let beta = v.section.kl_weight * ramp;
                let parts = vae_loss(&v.model, x0, v.rec, beta, rng)?;
                Ok((
                    parts.loss,
                    vec![
                        ("reconstruction".into(), parts.reconstruction as f64),
                        ("kl".into(), parts.kl as f64),
                        ("kl_weight".into(), beta),
                    ],
                ))
            }
        }
    }

    /// With the EMA weights: a grid of samples (UNet) or of held-out images over their
    /// reconstructions (VAE) at `path`; returns evaluation values (VAE: `eval/psnr`,
    /// `eval/ssim`).
    #[allow(clippy::too_many_arguments)]
    fn preview(
        &self,
        varmap: &candle_nn::VarMap,
        names: &[String],
        ema: &Ema,
        classes: Option<usize>,
        t: &TrainSection,
        device: &Device,
        path: &Path,
    ) -> Result<Vec<(String, f64)>> {
        let tensors = ema_tensors(varmap, names, ema);
        let (grid, cols, metrics) = match self {
            Net::Unet(u) => {
                let model: DenoiserNet =
                    diffuse_models::weights::from_tensors(&u.cfg, tensors, device)?;
                let (mut images, cols) = sample_grid(&model, &u.sched_cfg, classes, t, device)?;
                if let Some((vae, _)) = &u.vae {
                    images = diffuse_models::pipeline::decode_latents(vae, &images, 16)?;
                }
                (images, cols, vec![])
            }
            Net::Vae(v) => {
                let Some(x) = &v.holdout else {
                    return Ok(vec![]);
                };
                let model: AutoencoderKL =
                    diffuse_models::weights::from_tensors(&v.cfg, tensors, device)?;
                let n = x.dim(0)?;
                let rec = (0..n)
                    .step_by(64)
                    .map(|s| model.forward(&x.narrow(0, s, 64.min(n - s))?, None))
                    .collect::<Result<Vec<_>, _>>()?;
                let rec = Tensor::cat(&rec, 0)?;
                let mut metrics = vec![("eval/psnr".to_string(), psnr(&rec, x)?)];
                if x.dim(2)? >= 11 && x.dim(3)? >= 11 {
                    metrics.push(("eval/ssim".to_string(), ssim(&rec, x)?));
                }
                let k = n.min(8);
                let grid = Tensor::cat(&[x.narrow(0, 0, k)?, rec.narrow(0, 0, k)?], 0)?;
                (grid, k, metrics)
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let grid = diffuse_data::image_io::grid(&grid.to_device(&Device::Cpu)?, cols, 2, 1.0)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        diffuse_data::image_io::save_png(&grid, path).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(metrics)
    }
}

/// Writes `samples/step-N.png` with [`Net::preview`], logs it and its values to TensorBoard.
#[allow(clippy::too_many_arguments)]
fn preview_and_log(
    net: &Net,
    varmap: &candle_nn::VarMap,
    vars: &[(String, Var)],
    ema: &Ema,
    classes: Option<usize>,
    t: &TrainSection,
    device: &Device,
    output: &Path,
    step: u64,
    tb: &mut crate::tensorboard::EventWriter,
) -> Result<Vec<(String, f64)>> {
    let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
    let png_path = output.join("samples").join(format!("step-{step}.png"));
    let metrics = net.preview(varmap, &names, ema, classes, t, device, &png_path)?;
    let tb_io = |e| Error::Invalid(format!("tensorboard log: {e}"));
    for (k, v) in &metrics {
        tb.scalar(k, step as i64, *v as f32).map_err(tb_io)?;
    }
    if let (Ok(bytes), Ok(img)) = (std::fs::read(&png_path), image::open(&png_path)) {
        let tag = match net {
            Net::Unet(_) => "samples/ema",
            Net::Vae(_) => "reconstructions/ema",
        };
        tb.image_png(
            tag,
            step as i64,
            &bytes,
            img.width(),
            img.height(),
            if img.color().has_color() { 3 } else { 1 },
        )
        .map_err(tb_io)?;
    }
    Ok(metrics)
}

/// The EMA weights over the model's own: variables that are not trained (the Fourier
/// projection) have no shadow and keep their values.
fn ema_tensors(varmap: &candle_nn::VarMap, names: &[String], ema: &Ema) -> HashMap<String, Tensor> {
    let mut tensors = diffuse_models::weights::detached_tensors(varmap);
    tensors.extend(
        names
            .iter()
            .cloned()
            .zip(ema.shadow().iter().map(|s| s.detach())),
    );
    tensors
}

fn sched_cfg_json(map: &Map<String, Value>) -> Value {
    let mut m = map.clone();
    m.entry("_diffusers_version").or_insert("0.42.1".into());
    Value::Object(m)
}

struct TrainingState {
    step: u64,
    position: Position,
    rng_seed: u64,
    rng_word_pos: u128,
    /// fp16: the loss scaler's (scale, growth tracker).
    scaler: Option<(f64, u64)>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    diffuse_data::fs::write_atomic(path, bytes).map_err(|e| Error::Invalid(e.to_string()))
}

/// Writes `root/step-N/` via `root/.step-N.tmp/` and a rename: valid or absent, never half.
/// A failed write (a full disk, a file-size limit) removes the partial folder and says which
/// earlier checkpoint is still intact.
fn save_checkpoint(
    root: &Path,
    component: &str,
    files: &[(String, Vec<u8>)],
    vars: &[(String, Var)],
    opt: &AdamW,
    ema: &Ema,
    st: &TrainingState,
) -> Result<PathBuf> {
    write_checkpoint(root, component, files, vars, opt, ema, st).map_err(|e| {
        let _ = std::fs::remove_dir_all(root.join(format!(".step-{}.tmp", st.step)));
        let kept = match newest_checkpoint(root) {
            Some(p) => format!(
                "the previous checkpoint {} is intact (continue with --resume)",
                p.display()
            ),
            None => "no earlier checkpoint exists".to_string(),
        };
        Error::Invalid(format!(
            "could not write checkpoint step-{}: {e}; {kept}",
            st.step
        ))
    })
}

fn write_checkpoint(
    root: &Path,
    component: &str,
    files: &[(String, Vec<u8>)],
    vars: &[(String, Var)],
    opt: &AdamW,
    ema: &Ema,
    st: &TrainingState,
) -> Result<PathBuf> {
    let name = format!("step-{}", st.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    let weights = |tensors: Vec<(String, Tensor)>| -> Result<Vec<u8>> {
        Ok(diffuse_models::weights::serialize_tensors(tensors)?)
    };
    let model_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let ema_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .zip(ema.shadow())
        .map(|((k, _), t)| (k.clone(), t.clone()))
        .collect();
    let mut all = vec![
        (
            format!("{component}/diffusion_pytorch_model.safetensors"),
            weights(model_tensors)?,
        ),
        (
            format!("{component}_ema/diffusion_pytorch_model.safetensors"),
            weights(ema_tensors)?,
        ),
    ];
    all.extend(files.iter().cloned());
    for (rel, bytes) in &all {
        let path = tmp.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        write(&path, bytes)?;
    }
    write(&tmp.join("optimizer.safetensors"), &weights(opt.state())?)?;
    let mut meta = json!({
        "step": st.step,
        "adam_step": opt.step,
        "ema_optimization_step": ema.optimization_step,
        "loader": {"epoch": st.position.epoch, "batch": st.position.batch},
        "rng": {"seed": st.rng_seed, "word_pos": st.rng_word_pos.to_string()},
    });
    if let Some((scale, tracker)) = st.scaler {
        meta["grad_scaler"] = json!({"scale": scale, "growth_tracker": tracker});
    }
    // Written last: its presence marks the checkpoint complete.
    write(
        &tmp.join("training_state.json"),
        serde_json::to_string_pretty(&meta)
            .expect("json")
            .as_bytes(),
    )?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(dst)
}

/// The newest `step-N` folder that holds a complete training state.
pub fn newest_checkpoint(root: &Path) -> Option<PathBuf> {
    let rd = std::fs::read_dir(root).ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("training_state.json")
                .exists()
                .then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

fn prune_checkpoints(root: &Path, keep: usize) -> Result<()> {
    let mut all: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    all.sort();
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, p) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

fn load_checkpoint(
    dir: &Path,
    component: &str,
    vars: &[(String, Var)],
    opt: &mut AdamW,
    ema: &mut Ema,
) -> Result<TrainingState> {
    let read = |p: PathBuf| -> Result<HashMap<String, Tensor>> {
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a valid safetensors file ({e})",
                p.display()
            ))
        })
    };
    let weights = "diffusion_pytorch_model.safetensors";
    let model = read(dir.join(component).join(weights))?;
    let shadow_map = read(dir.join(format!("{component}_ema")).join(weights))?;
    let mut shadow = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        let get = |m: &HashMap<String, Tensor>, what: &str| -> Result<Tensor> {
            m.get(k)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("{}: {what} lacks `{k}`", dir.display())))
        };
        v.set(&get(&model, component)?.to_device(v.device())?)?;
        shadow.push(get(&shadow_map, &format!("{component}_ema"))?.to_device(v.device())?);
    }
    let meta_path = dir.join("training_state.json");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?)
            .map_err(|e| Error::Invalid(format!("{}: {e}", meta_path.display())))?;
    let num = |v: &Value, what: &str| -> Result<u64> {
        v.as_u64()
            .ok_or_else(|| Error::Invalid(format!("{}: bad `{what}`", meta_path.display())))
    };
    opt.load_state(
        &read(dir.join("optimizer.safetensors"))?,
        num(&meta["adam_step"], "adam_step")?,
    )?;
    ema.set_shadow(
        shadow,
        num(&meta["ema_optimization_step"], "ema_optimization_step")?,
    );
    Ok(TrainingState {
        step: num(&meta["step"], "step")?,
        position: Position {
            epoch: num(&meta["loader"]["epoch"], "loader.epoch")?,
            batch: num(&meta["loader"]["batch"], "loader.batch")?,
        },
        rng_seed: num(&meta["rng"]["seed"], "rng.seed")?,
        rng_word_pos: meta["rng"]["word_pos"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::Invalid(format!("{}: bad `rng.word_pos`", meta_path.display()))
            })?,
        scaler: meta["grad_scaler"]["scale"].as_f64().map(|s| {
            (
                s,
                meta["grad_scaler"]["growth_tracker"].as_u64().unwrap_or(0),
            )
        }),
    })
}

/// The UNet `config.json` of a pipeline or UNet folder (`train.init_from` with an empty
/// `[model]`).
fn init_config(dir: &Path) -> Result<Map<String, Value>> {
    let err = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("train.init_from {}: {e}", dir.display()))
    };
    let folder = diffuse_models::weights::resolve_model_folder(dir).map_err(|e| err(&e))?;
    let path = folder
        .ema_unet_dir
        .unwrap_or(folder.unet_dir)
        .join(diffuse_models::weights::CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut map: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| err(&format!("{}: {e}", path.display())))?;
    if map.get("_class_name").and_then(|c| c.as_str()) == Some("DiTTransformer2DModel") {
        map.insert("type".into(), "dit".into());
    }
    Ok(map)
}

/// Overwrites the fresh weights with those of a pipeline folder (its EMA UNet when there is
/// one) or a UNet folder (`train.init_from`).
fn init_from(varmap: &candle_nn::VarMap, dir: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("train.init_from {}: {e}", dir.display()))
    };
    let folder = diffuse_models::weights::resolve_model_folder(dir).map_err(|e| err(&e))?;
    let unet = folder.ema_unet_dir.unwrap_or(folder.unet_dir);
    let files = diffuse_models::weights::weight_files(&unet).map_err(|e| err(&e))?;
    let unused = diffuse_models::weights::load_into(varmap, &files).map_err(|e| err(&e))?;
    if !unused.is_empty() {
        return Err(err(&format!(
            "{} tensors the model does not have (e.g. `{}`): [model] differs from the weights' config",
            unused.len(),
            unused[0]
        )));
    }
    Ok(())
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in std::fs::read_dir(src).map_err(io_err(src))?.flatten() {
        let bytes = std::fs::read(e.path()).map_err(io_err(&e.path()))?;
        write(&dst.join(e.file_name()), &bytes)?;
    }
    Ok(())
}

/// The sampler of grids and evaluations: `name` (a scheduler class or alias) over the training
/// schedule, else DDIM with trailing spacing — or flow-matching Euler for flow models.
pub(crate) fn preview_scheduler(
    sched_cfg: &SchedulerConfig,
    name: Option<&str>,
) -> Result<SchedulerConfig> {
    let flow = sched_cfg.class.is_flow();
    if flow && name.is_none() {
        return Ok(sched_cfg.clone());
    }
    let mut map: Map<String, Value> = serde_json::from_value(json!({
        "_class_name": name.unwrap_or("DDIMScheduler"),
        "num_train_timesteps": sched_cfg.num_train_timesteps,
        "beta_start": sched_cfg.beta_start,
        "beta_end": sched_cfg.beta_end,
        "beta_schedule": sched_cfg.beta_schedule.name(),
        "prediction_type": sched_cfg.prediction_type.name(),
        "timestep_spacing": "trailing",
        "clip_sample": false,
    }))
    .expect("object");
    if flow {
        map.insert("shift".into(), sched_cfg.shift.into());
    }
    Ok(SchedulerConfig::from_json_map(&map)?)
}

/// Samples for a grid from `model` (the EMA weights): one row per class (or 8×8
/// unconditional), fixed seed. Returns the images and the grid's column count.
fn sample_grid(
    model: &DenoiserNet,
    sched_cfg: &SchedulerConfig,
    classes: Option<usize>,
    t: &TrainSection,
    device: &Device,
) -> Result<(Tensor, usize)> {
    let sched = preview_scheduler(sched_cfg, None)?;
    let sampler = diffuse_core::sampler::Sampler::new(&sched, t.sample_steps)?;
    let (labels, cols) = match classes {
        Some(k) => (
            (0..k as u32)
                .flat_map(|c| std::iter::repeat_n(c, 8))
                .collect::<Vec<_>>(),
            8,
        ),
        None => (vec![], 8),
    };
    let n = if labels.is_empty() { 64 } else { labels.len() };
    let size = model.sample_hw().unwrap_or((32, 32));
    let opts = diffuse_models::pipeline::GenerateOptions {
        num_images: n,
        batch_size: n.min(80),
        seed: 1234,
        size,
        class_labels: (!labels.is_empty()).then_some(labels),
        guidance_scale: if classes.is_some() {
            t.sample_guidance
        } else {
            1.0
        },
        null_class: None,
        initial_noise: None,
    };
    let images = diffuse_models::pipeline::generate(model, &sampler, &opts, device, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    Ok((images, cols))
}
