//! The training loop of `diffuse train`: one TOML file configures model, data, objective,
//! optimizer and EMA; checkpoints are diffusers pipeline folders plus a training state, written
//! atomically (a temporary folder renamed into place), and `resume` continues bit for bit.

use crate::ema::{Ema, EmaConfig};
use crate::lr::LrSchedule;
use crate::objective::{diffusion_loss, ObjectiveConfig, SigmaSampling, TrainRng};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use diffuse_core::config::{PredictionType, SchedulerConfig};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::datasets::{self, Dataset, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::weights::build_unet;
use diffuse_models::UNet2DConfig;
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `mnist`, `fashion-mnist`, `cifar10`, or a folder.
    pub name: String,
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
    /// epsilon, sample, v_prediction, flow
    #[serde(default = "d_pred")]
    pub prediction_type: String,
    #[serde(default)]
    pub snr_gamma: Option<f64>,
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
}

/// The whole `diffuse train` configuration (`examples/*.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A diffusers UNet2DModel config (class labels get one extra "null" class when needed).
    pub model: Map<String, Value>,
    /// A diffusers scheduler config (default: DDPMScheduler's).
    #[serde(default)]
    pub scheduler: Map<String, Value>,
    pub data: DataSection,
    pub train: TrainSection,
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
    let t = &config.train;
    let d = &config.data;
    let dataset: Arc<dyn Dataset> = Arc::from(
        datasets::open(&d.name, Split::Train).map_err(|e| Error::Invalid(e.to_string()))?,
    );
    let classes = if d.class_conditional {
        dataset.num_classes()
    } else {
        None
    };

    // Model config: channels from the data, a class table with one extra null class.
    let mut model_map = config.model.clone();
    model_map
        .entry("_class_name")
        .or_insert("UNet2DModel".into());
    model_map.insert("sample_size".into(), d.size.into());
    let ch = dataset.channels();
    model_map.entry("in_channels").or_insert(ch.into());
    model_map.entry("out_channels").or_insert(ch.into());
    if let Some(k) = classes {
        model_map.insert("num_class_embeds".into(), (k + 1).into());
    }
    let unet_cfg = UNet2DConfig::from_json_str(&Value::Object(model_map).to_string())?;
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
    if prediction == PredictionType::Flow {
        sched_map.insert(
            "_class_name".into(),
            "FlowMatchEulerDiscreteScheduler".into(),
        );
    }
    let sched_cfg = SchedulerConfig::from_json_map(&sched_map)?;
    let schedule = if prediction == PredictionType::Flow {
        NoiseSchedule::from_config(&SchedulerConfig::default_for(
            diffuse_core::config::SchedulerClass::Ddpm,
        ))?
    } else {
        NoiseSchedule::from_config(&sched_cfg)?
    };

    let (model, varmap) = build_unet(&unet_cfg, device)?;
    diffuse_models::weights::seeded_init(&varmap, t.seed)?;
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        // The Fourier projection is fixed in diffusers (requires_grad=False).
        .filter(|(k, _)| {
            k.as_str() != "time_proj.weight" || unet_cfg.time_embedding_type != "fourier"
        })
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
    let objective = ObjectiveConfig {
        prediction,
        min_snr_gamma: t.snr_gamma,
        cond_dropout: t.cond_dropout,
        null_class: classes.map(|k| k as u32),
        sigma_sampling: SigmaSampling::LogitNormal {
            mean: 0.0,
            std: 1.0,
        },
    };
    let fit = Fit::parse(&d.fit).ok_or_else(|| {
        Error::Invalid(format!(
            "data.fit: unknown value {:?}; allowed: pad, resize, center_crop",
            d.fit
        ))
    })?;

    let ckpt_root = output.join("checkpoints");
    let mut step = 0u64;
    let mut position = Position::default();
    let mut rng = TrainRng::new(t.seed);
    if resume {
        if let Some(dir) = newest_checkpoint(&ckpt_root) {
            let st = load_checkpoint(&dir, &vars, &mut opt, &mut ema)?;
            step = st.step;
            position = st.position;
            rng = TrainRng::from_state(st.rng_seed, st.rng_word_pos);
        }
    }
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

    std::fs::create_dir_all(output).map_err(io_err(output))?;
    let mut checkpoints = Vec::new();
    let mut tb =
        crate::tensorboard::EventWriter::create(&output.join("logs")).map_err(io_err(output))?;
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
        for _ in 0..k_acc {
            let waited = std::time::Instant::now();
            let batch = loader
                .next_batch()
                .map_err(|e| Error::Invalid(e.to_string()))?;
            data_wait_s += waited.elapsed().as_secs_f64();
            let x0 = batch
                .to_tensor(device)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            images += x0.dim(0)?;
            let labels = if classes.is_some() {
                batch.labels.clone()
            } else {
                None
            };
            let parts = diffusion_loss(
                &model,
                &schedule,
                &x0,
                labels.as_deref(),
                &objective,
                &mut rng,
            )?;
            let micro = parts.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            loss_sum += micro;
            if !micro.is_finite() {
                finite = false;
                continue;
            }
            let g = (parts.loss / k_acc as f64)?.backward()?;
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
        };
        let Some(mut grads) = grads.filter(|_| finite) else {
            nonfinite += 1;
            report.skipped_nonfinite = true;
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
        if !report.grad_norm.is_finite() {
            report.skipped_nonfinite = true;
            on_step(&report);
            continue;
        }
        opt.update(&grads, lr_now)?;
        ema.step(&plain)?;
        step += 1;
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
        on_step(&report);
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        let last = step == t.max_steps || stopping;
        if (t.checkpoint_every > 0 && step.is_multiple_of(t.checkpoint_every)) || last {
            let state = TrainingState {
                step,
                position: loader.position(),
                rng_seed: rng.state().0,
                rng_word_pos: rng.state().1,
            };
            let dir = save_checkpoint(
                &ckpt_root,
                &unet_cfg,
                &sched_cfg_json(&sched_map),
                &vars,
                &opt,
                &ema,
                &state,
            )?;
            checkpoints.push(dir);
            prune_checkpoints(&ckpt_root, t.keep_checkpoints)?;
        }
        if t.sample_every > 0 && (step.is_multiple_of(t.sample_every) || last) {
            let names: Vec<String> = vars.iter().map(|(k, _)| k.clone()).collect();
            let png_path = output.join("samples").join(format!("step-{step}.png"));
            sample_grid(
                &unet_cfg, &varmap, &sched_cfg, &names, &ema, classes, t, device, &png_path,
            )?;
            if let (Ok(bytes), Ok(img)) = (std::fs::read(&png_path), image::open(&png_path)) {
                tb.image_png(
                    "samples/ema",
                    step as i64,
                    &bytes,
                    img.width(),
                    img.height(),
                    if img.color().has_color() { 3 } else { 1 },
                )
                .map_err(|e| Error::Invalid(format!("tensorboard log: {e}")))?;
            }
        }
        if step.is_multiple_of(10) || last {
            tb.flush().map_err(io_err(output))?;
        }
        if stopping {
            break;
        }
    }
    // The output folder itself becomes the final pipeline (copy of the last checkpoint's parts).
    if let Some(last) = newest_checkpoint(&ckpt_root) {
        for part in ["unet", "unet_ema", "scheduler"] {
            copy_dir(&last.join(part), &output.join(part))?;
        }
        std::fs::copy(
            last.join("model_index.json"),
            output.join("model_index.json"),
        )
        .map_err(io_err(output))?;
    }
    Ok(TrainOutcome {
        steps: step,
        last_loss,
        checkpoints,
    })
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
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    diffuse_data::fs::write_atomic(path, bytes).map_err(|e| Error::Invalid(e.to_string()))
}

/// Writes `root/step-N/` via `root/.step-N.tmp/` and a rename: valid or absent, never half.
fn save_checkpoint(
    root: &Path,
    unet_cfg: &UNet2DConfig,
    sched: &Value,
    vars: &[(String, Var)],
    opt: &AdamW,
    ema: &Ema,
    st: &TrainingState,
) -> Result<PathBuf> {
    let name = format!("step-{}", st.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    for sub in ["unet", "unet_ema", "scheduler"] {
        std::fs::create_dir_all(tmp.join(sub)).map_err(io_err(&tmp))?;
    }
    let config_text = unet_cfg.to_json_string();
    let weights = |tensors: Vec<(String, Tensor)>| -> Result<Vec<u8>> {
        Ok(diffuse_models::weights::serialize_tensors(tensors)?)
    };
    let model_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    write(
        &tmp.join("unet/diffusion_pytorch_model.safetensors"),
        &weights(model_tensors)?,
    )?;
    write(&tmp.join("unet/config.json"), config_text.as_bytes())?;
    let ema_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .zip(ema.shadow())
        .map(|((k, _), t)| (k.clone(), t.clone()))
        .collect();
    write(
        &tmp.join("unet_ema/diffusion_pytorch_model.safetensors"),
        &weights(ema_tensors)?,
    )?;
    write(&tmp.join("unet_ema/config.json"), config_text.as_bytes())?;
    write(
        &tmp.join("scheduler/scheduler_config.json"),
        serde_json::to_string_pretty(sched)
            .expect("json")
            .as_bytes(),
    )?;
    let index = diffuse_models::weights::model_index(
        sched["_class_name"].as_str().unwrap_or("DDPMScheduler"),
        false,
    );
    write(
        &tmp.join("model_index.json"),
        serde_json::to_string_pretty(&index)
            .expect("json")
            .as_bytes(),
    )?;
    write(&tmp.join("optimizer.safetensors"), &weights(opt.state())?)?;
    let meta = json!({
        "step": st.step,
        "adam_step": opt.step,
        "ema_optimization_step": ema.optimization_step,
        "loader": {"epoch": st.position.epoch, "batch": st.position.batch},
        "rng": {"seed": st.rng_seed, "word_pos": st.rng_word_pos.to_string()},
    });
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
    let unet = read(dir.join("unet/diffusion_pytorch_model.safetensors"))?;
    let shadow_map = read(dir.join("unet_ema/diffusion_pytorch_model.safetensors"))?;
    let mut shadow = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        let get = |m: &HashMap<String, Tensor>, what: &str| -> Result<Tensor> {
            m.get(k)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("{}: {what} lacks `{k}`", dir.display())))
        };
        v.set(&get(&unet, "unet")?.to_device(v.device())?)?;
        shadow.push(get(&shadow_map, "unet_ema")?.to_device(v.device())?);
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
    })
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in std::fs::read_dir(src).map_err(io_err(src))?.flatten() {
        let bytes = std::fs::read(e.path()).map_err(io_err(&e.path()))?;
        write(&dst.join(e.file_name()), &bytes)?;
    }
    Ok(())
}

/// A grid of samples from the EMA weights: one row per class (or 8×8 unconditional), fixed seed.
#[allow(clippy::too_many_arguments)]
fn sample_grid(
    unet_cfg: &UNet2DConfig,
    varmap: &candle_nn::VarMap,
    sched_cfg: &SchedulerConfig,
    names: &[String],
    ema: &Ema,
    classes: Option<usize>,
    t: &TrainSection,
    device: &Device,
    path: &Path,
) -> Result<()> {
    // The EMA weights over the model's own: variables that are not trained (the Fourier
    // projection) have no shadow and keep their values.
    let mut tensors = diffuse_models::weights::detached_tensors(varmap);
    tensors.extend(
        names
            .iter()
            .cloned()
            .zip(ema.shadow().iter().map(|s| s.detach())),
    );
    let model = diffuse_models::weights::model_from_tensors(unet_cfg, tensors, device)?;
    let mut sched = sched_cfg.clone();
    if sched.class != diffuse_core::config::SchedulerClass::FlowMatchEuler {
        sched = SchedulerConfig::from_json_map(
            &serde_json::from_value(json!({
                "_class_name": "DDIMScheduler",
                "num_train_timesteps": sched.num_train_timesteps,
                "beta_start": sched.beta_start,
                "beta_end": sched.beta_end,
                "beta_schedule": sched.beta_schedule.name(),
                "prediction_type": sched.prediction_type.name(),
                "timestep_spacing": "trailing",
                "clip_sample": false,
            }))
            .expect("object"),
        )?;
    }
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
    let size = unet_cfg.sample_hw().unwrap_or((32, 32));
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
    let images = diffuse_models::pipeline::generate(&model, &sampler, &opts, device, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let grid = diffuse_data::image_io::grid(&images.to_device(&Device::Cpu)?, cols, 2, 1.0)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    diffuse_data::image_io::save_png(&grid, path).map_err(|e| Error::Invalid(e.to_string()))
}
