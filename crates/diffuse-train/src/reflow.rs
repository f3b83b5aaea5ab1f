//! Reflow (Liu et al. 2022, "Flow Straight and Fast"): a teacher's ODE couples each noise z
//! with the sample x₀ it turns into; a student trained on straight paths between the two,
//! x_σ = (1 − σ)x₀ + σz with target z − x₀, follows nearly straight trajectories and samples
//! in 1–2 steps (2-rectified flow). A reflowed student is again a flow teacher: repeating gives
//! k-rectified flow.
//!
//! - [`generate_pairs`] solves the teacher's ODE for `num_pairs` seeded noises (pair i draws
//!   z from stream (seed, i), exactly the x_T `diffuse sample --seed` gives image i; class i mod
//!   k for class-conditional teachers, with classifier-free guidance) and writes a pairs folder:
//!   `shard-NNNNN.safetensors` (`noise`, `x0` `[n, c, h, w]` f32, `labels` `[n]` u32) and
//!   `index.json`, each written atomically, the index after its shard: a rerun continues after
//!   the last complete shard, and batches never span shards, so an interrupted and resumed
//!   run writes the same bytes as an uninterrupted one. Latent teachers give latent pairs (in
//!   the scaled space the UNet denoises) and a copy of their `vae/`.
//! - [`load_pairs`] + [`PairBatches`] feed a pairs folder to the trainer (`data.pairs`): the
//!   same loop, checkpoints, resume, logs and NaN guard as any `diffuse train` run.
//! - [`student_config`] turns a teacher and a pairs folder into that training config: the
//!   teacher's architecture and weights (`train.init_from`, EMA when present), its scheduler
//!   with the student's recommended step count (`num_inference_steps`, which `diffuse sample`
//!   takes as its default `--steps`).
//!
//! Teachers (UNet or DiT, pixel or latent): flow-matching pipelines (solved with `flow_heun` or
//! `flow_euler`), and also ε/v/x₀
//! diffusion pipelines, solved with any deterministic sampler (DDIM η = 0, DPM-Solver++,
//! UniPC, Euler, Heun, PNDM): their probability-flow ODE couples z and x₀ just the same, and
//! the student is a flow-matching model either way.

use crate::trainer::TrainConfig;
use crate::{io_err, Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use diffuse_core::compat::{self, Objective};
use diffuse_core::config::{DpmAlgorithm, SchedulerClass, SchedulerConfig};
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::Sampler;
use diffuse_data::loader::Position;
use diffuse_models::latent_cache::EpochOrder;
use diffuse_models::pipeline::{generate, GenerateOptions, LoadOptions, Pipeline};
use diffuse_models::weights::{resolve_model_folder, ModelFolder};
use diffuse_models::{AutoencoderKL, Network};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The pairs folder's index file.
pub const PAIRS_INDEX: &str = "index.json";
const FORMAT: &str = "diffuse-reflow-pairs-1";

/// What determines the pairs: a rerun must ask for the same, or it would mix two couplings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairSpec {
    /// FNV-1a 64 of the teacher's UNet config and weights and its scheduler config.
    pub teacher_fingerprint: String,
    /// The solver's diffusers class name and step count.
    pub sampler: String,
    pub steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub shard_size: usize,
    /// [channels, height, width] of one sample (latent-sized for latent teachers).
    pub shape: [usize; 3],
    /// Classes of a class-conditional teacher: pair i has label i mod k.
    pub num_classes: Option<usize>,
    /// Latent pairs: the folder holds the teacher's `vae/`.
    pub latent: bool,
}

/// One shard: pairs `start .. start + count`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairShard {
    pub file: String,
    pub start: usize,
    pub count: usize,
}

/// `index.json` of a pairs folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairsIndex {
    pub format: String,
    /// Complete pairs (the sum of the shards' counts).
    pub count: usize,
    pub spec: PairSpec,
    /// The teacher folder as given (for the record; the fingerprint is what is checked).
    pub teacher: String,
    /// Pairs per teacher call of the last run (bitwise identity across runs needs the same).
    pub batch_size: usize,
    pub shards: Vec<PairShard>,
}

/// How to make pairs.
#[derive(Debug, Clone)]
pub struct PairOptions {
    pub num_pairs: usize,
    /// Solver: a scheduler class or short name (default: `flow_heun` for flow teachers,
    /// `dpmpp_2m` for diffusion teachers).
    pub sampler: Option<String>,
    pub steps: usize,
    /// Classifier-free guidance scale for class-conditional teachers (1 = none).
    pub guidance_scale: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub shard_size: usize,
    /// Use `unet/` even when the teacher has `unet_ema/`.
    pub no_ema: bool,
    /// Stop after writing this many new shards (tests; `None` = all).
    pub max_new_shards: Option<usize>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            num_pairs: 1000,
            sampler: None,
            steps: 32,
            guidance_scale: 1.0,
            batch_size: 64,
            seed: 0,
            shard_size: 1000,
            no_ema: false,
            max_new_shards: None,
        }
    }
}

/// A loaded teacher pipeline.
pub struct Teacher {
    pub dir: PathBuf,
    pub folder: ModelFolder,
    /// The denoising network (a UNet or a DiT).
    pub model: Network,
    pub vae: Option<AutoencoderKL>,
    /// Its scheduler config as written.
    pub scheduler: Map<String, Value>,
    pub scheduler_config: SchedulerConfig,
    /// Classes of a class-conditional teacher (its class table minus the null class).
    pub classes: Option<usize>,
    /// [channels, height, width] the UNet denoises.
    pub shape: [usize; 3],
    /// The weights in use are `unet/` although the folder has `unet_ema/`.
    pub no_ema: bool,
    fingerprint: u64,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

/// FNV-1a, 64 bit: a stable fingerprint (not a cryptographic hash).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Opens a teacher pipeline folder (EMA weights unless `no_ema`); it must have a scheduler.
pub fn open_teacher(dir: &Path, no_ema: bool, device: &Device) -> Result<Teacher> {
    let err = |e: &dyn std::fmt::Display| Error::Invalid(format!("teacher: {e}"));
    // Checked before the weights load.
    let Some(sched_path) = resolve_model_folder(dir)
        .map_err(|e| err(&e))?
        .scheduler_config
    else {
        return Err(err(&format!(
            "{} has no scheduler/scheduler_config.json: reflow needs the teacher's ODE (give a pipeline folder)",
            dir.display()
        )));
    };
    let opts = LoadOptions {
        no_ema,
        ..Default::default()
    };
    let pipe = Pipeline::load(dir, &opts, device).map_err(|e| err(&e))?;
    let unet_dir = pipe.folder.net_dir_to_load(no_ema).to_path_buf();
    let scheduler_config = pipe.scheduler_config(None).map_err(|e| err(&e))?;
    let (h, w) = pipe
        .sample_hw()
        .ok_or_else(|| err(&"the network config has no sample_size"))?;
    let classes = pipe.classes().map_err(|e| err(&e))?;
    let Pipeline {
        folder,
        net: model,
        vae,
        scheduler,
        ..
    } = pipe;
    let mut fingerprint = 0xcbf2_9ce4_8422_2325;
    for f in diffuse_models::weights::weight_files(&unet_dir)
        .map_err(|e| err(&e))?
        .into_iter()
        .chain([
            unet_dir.join(diffuse_models::weights::CONFIG_NAME),
            sched_path,
        ])
    {
        fingerprint = fnv1a(fingerprint, &std::fs::read(&f).map_err(io_err(&f))?);
    }
    Ok(Teacher {
        dir: dir.to_path_buf(),
        shape: [model.in_channels(), h, w],
        no_ema: no_ema && folder.ema_net_dir.is_some(),
        folder,
        model,
        vae,
        scheduler,
        scheduler_config,
        classes,
        fingerprint,
    })
}

impl Teacher {
    /// The solver config: `sampler` on the teacher's scheduler as
    /// [`diffuse_core::compat::resolve_sampler`] runs it (default `flow_heun` for flow teachers,
    /// `dpmpp_2m` otherwise); it must also be deterministic.
    pub fn solver(&self, sampler: Option<&str>) -> Result<SchedulerConfig> {
        let model = SchedulerConfig::from_json_map(&self.scheduler).map_err(invalid)?;
        let flow = Objective::of(&model) == Objective::Flow;
        let name = sampler.unwrap_or(if flow { "flow_heun" } else { "dpmpp_2m" });
        let cfg = compat::resolve_sampler(name, &model).map_err(invalid)?;
        use SchedulerClass as C;
        let stochastic = match cfg.class {
            C::Ddpm | C::EulerAncestral | C::Lcm => true,
            C::DpmSolverMultistep => cfg.algorithm_type == DpmAlgorithm::SdeDpmSolverPP,
            C::FlowMatchEuler => cfg.stochastic_sampling,
            _ => false,
        };
        if stochastic {
            return Err(Error::Invalid(format!(
                "reflow pairs need a deterministic ODE solver, and {} draws noise at every step: use {}",
                cfg.class.short_name(),
                if flow {
                    "flow_heun, flow_euler (without stochastic_sampling), dpmpp_2m or unipc"
                } else {
                    "ddim, dpmpp_2m, unipc, euler or heun"
                }
            )));
        }
        Ok(cfg)
    }

    fn spec(&self, solver: &SchedulerConfig, opts: &PairOptions) -> PairSpec {
        PairSpec {
            teacher_fingerprint: format!("{:016x}", self.fingerprint),
            sampler: solver.class.class_name().into(),
            steps: opts.steps,
            guidance_scale: if self.classes.is_some() {
                opts.guidance_scale
            } else {
                1.0
            },
            seed: opts.seed,
            shard_size: opts.shard_size,
            shape: self.shape,
            num_classes: self.classes,
            latent: self.vae.is_some(),
        }
    }
}

/// The classifier-free guidance scale the teacher was previewed with when it was trained by
/// `diffuse train` (`train.toml`'s `train.sample_guidance`, 2 when absent), for
/// class-conditional teachers; None when the folder has no `train.toml`.
pub fn teacher_guidance(dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("train.toml")).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    Some(
        table
            .get("train")
            .and_then(|t| t.get("sample_guidance"))
            .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
            .unwrap_or(2.0),
    )
}

/// Reads a pairs folder's `index.json`.
pub fn read_index(dir: &Path) -> Result<PairsIndex> {
    let path = dir.join(PAIRS_INDEX);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Invalid(format!(
            "{}: {e} (not a reflow pairs folder: `diffuse distill reflow` writes them)",
            path.display()
        ))
    })?;
    let index: PairsIndex = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if index.format != FORMAT {
        return Err(Error::Invalid(format!(
            "{}: format {:?}; this diffuse reads {FORMAT:?}",
            path.display(),
            index.format
        )));
    }
    Ok(index)
}

/// The first field where two specs differ, as "name: old vs new".
fn spec_difference(old: &PairSpec, new: &PairSpec) -> Option<String> {
    let (a, b) = (
        serde_json::to_value(old).expect("json"),
        serde_json::to_value(new).expect("json"),
    );
    let (a, b) = (
        a.as_object().expect("object"),
        b.as_object().expect("object"),
    );
    a.iter()
        .find(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} {v} (this run: {})", b[k]))
}

/// Progress of [`generate_pairs`]: pairs done (this run included) and asked for.
pub struct PairProgress {
    pub done: usize,
    pub total: usize,
}

/// Makes (or continues) the pairs folder `out` from `teacher` (see the module docs). Returns
/// its index; `index.count < num_pairs` when `stop` was set (checked after each shard) or
/// `max_new_shards` reached.
pub fn generate_pairs(
    teacher: &Teacher,
    out: &Path,
    opts: &PairOptions,
    device: &Device,
    stop: &AtomicBool,
    on_progress: &mut dyn FnMut(PairProgress),
) -> Result<PairsIndex> {
    if opts.num_pairs == 0 || opts.batch_size == 0 || opts.shard_size == 0 || opts.steps == 0 {
        return Err(Error::Invalid(
            "reflow: the number of pairs, steps, batch size and shard size must be at least 1"
                .into(),
        ));
    }
    if teacher.classes.is_none() && opts.guidance_scale != 1.0 {
        return Err(Error::Invalid(format!(
            "guidance scale {}: the teacher is not class-conditional (use 1)",
            opts.guidance_scale
        )));
    }
    let solver = teacher.solver(opts.sampler.as_deref())?;
    let sampler = Sampler::new(&solver, opts.steps).map_err(invalid)?;
    let spec = teacher.spec(&solver, opts);
    let mut index = if out.join(PAIRS_INDEX).exists() {
        let old = read_index(out)?;
        if let Some(diff) = spec_difference(&old.spec, &spec) {
            return Err(Error::Invalid(format!(
                "{} holds pairs made with {diff}: rerun with the same teacher and options to continue, or use a new output folder",
                out.display()
            )));
        }
        if old.count > opts.num_pairs {
            return Err(Error::Invalid(format!(
                "{} already holds {} pairs, more than the {} asked for: ask for at least {}",
                out.display(),
                old.count,
                opts.num_pairs,
                old.count
            )));
        }
        old
    } else {
        PairsIndex {
            format: FORMAT.into(),
            count: 0,
            spec: spec.clone(),
            teacher: teacher.dir.display().to_string(),
            batch_size: opts.batch_size,
            shards: vec![],
        }
    };
    index.batch_size = opts.batch_size;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    if let Some(vae) = &teacher.folder.vae_dir {
        if !out
            .join("vae")
            .join(diffuse_models::weights::CONFIG_NAME)
            .exists()
        {
            diffuse_models::weights::copy_model_folder(vae, &out.join("vae")).map_err(invalid)?;
        }
    }
    let [c, h, w] = spec.shape;
    on_progress(PairProgress {
        done: index.count,
        total: opts.num_pairs,
    });
    let mut new_shards = 0;
    while index.count < opts.num_pairs
        && opts.max_new_shards.is_none_or(|m| new_shards < m)
        && !stop.load(Ordering::SeqCst)
    {
        let start = index.count;
        let n = opts.shard_size.min(opts.num_pairs - start);
        let (mut zs, mut xs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for b in (start..start + n).step_by(opts.batch_size) {
            let m = opts.batch_size.min(start + n - b);
            let mut noise = SeededNoise::from_streams((b..b + m).map(|i| (opts.seed, i as u64)));
            let z = noise.randn(&Shape::from((m, c, h, w)), DType::F32, device)?;
            let batch_labels: Option<Vec<u32>> = spec
                .num_classes
                .map(|k| (b..b + m).map(|i| (i % k) as u32).collect());
            let gen = GenerateOptions {
                num_images: m,
                batch_size: m,
                seed: opts.seed,
                size: (h, w),
                class_labels: batch_labels.clone(),
                class_weights: None,
                guidance_interval: None,
                guidance_scale: spec.guidance_scale,
                null_class: None,
                prompt_embeds: None,
                initial_noise: Some(z.clone()),
                edit: None,
            };
            let x0 = generate(&teacher.model, &sampler, &gen, device, &mut |_| {
                ControlFlow::Continue(())
            })
            .map_err(invalid)?
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?;
            let finite = x0
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(Error::Invalid(format!(
                    "the teacher's ODE gave non-finite samples for pairs {b}..{}: check the teacher and the solver",
                    b + m
                )));
            }
            zs.push(z.to_device(&Device::Cpu)?);
            xs.push(x0);
            labels.extend(batch_labels.unwrap_or_default());
            on_progress(PairProgress {
                done: b + m,
                total: opts.num_pairs,
            });
        }
        let mut tensors = vec![
            ("noise".to_string(), Tensor::cat(&zs, 0)?),
            ("x0".to_string(), Tensor::cat(&xs, 0)?),
        ];
        if spec.num_classes.is_some() {
            tensors.push(("labels".into(), Tensor::from_vec(labels, n, &Device::Cpu)?));
        }
        let file = format!("shard-{:05}.safetensors", index.shards.len());
        let bytes = diffuse_models::weights::serialize_tensors(tensors).map_err(invalid)?;
        diffuse_data::fs::write_atomic(&out.join(&file), &bytes).map_err(invalid)?;
        index.shards.push(PairShard {
            file,
            start,
            count: n,
        });
        index.count += n;
        // The index names only complete shards: written after its shard.
        let text = serde_json::to_string_pretty(&index).expect("json");
        diffuse_data::fs::write_atomic(&out.join(PAIRS_INDEX), text.as_bytes()).map_err(invalid)?;
        new_shards += 1;
    }
    Ok(index)
}

/// A whole pairs folder in memory.
#[derive(Debug, Clone)]
pub struct PairSet {
    pub index: PairsIndex,
    /// [count, c, h, w]
    pub noise: Tensor,
    /// [count, c, h, w]
    pub x0: Tensor,
    pub labels: Option<Vec<u32>>,
    /// `vae/` of latent pairs.
    pub vae_dir: Option<PathBuf>,
}

/// Reads a pairs folder written by [`generate_pairs`] onto `device`.
pub fn load_pairs(dir: &Path, device: &Device) -> Result<PairSet> {
    let index = read_index(dir)?;
    if index.shards.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no complete shard yet (rerun `diffuse distill reflow` to make the pairs)",
            dir.display()
        )));
    }
    let [c, h, w] = index.spec.shape;
    let (mut zs, mut xs, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for s in &index.shards {
        let p = dir.join(&s.file);
        let mut m = candle_core::safetensors::load(&p, device)
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        let mut take = |k: &str| {
            m.remove(k)
                .ok_or_else(|| Error::Invalid(format!("{}: no tensor `{k}`", p.display())))
        };
        let (z, x0) = (take("noise")?, take("x0")?);
        for (name, t) in [("noise", &z), ("x0", &x0)] {
            if t.dims() != [s.count, c, h, w] {
                return Err(Error::Invalid(format!(
                    "{}: `{name}` has shape {:?}; the index says [{}, {c}, {h}, {w}]",
                    p.display(),
                    t.dims(),
                    s.count
                )));
            }
        }
        if index.spec.num_classes.is_some() {
            labels.extend(take("labels")?.to_vec1::<u32>()?);
        }
        zs.push(z.to_dtype(DType::F32)?);
        xs.push(x0.to_dtype(DType::F32)?);
    }
    let vae_dir = if index.spec.latent {
        let v = dir.join("vae");
        if !v.join(diffuse_models::weights::CONFIG_NAME).exists() {
            return Err(Error::Invalid(format!(
                "{}: latent pairs without their vae/ folder",
                dir.display()
            )));
        }
        Some(v)
    } else {
        None
    };
    Ok(PairSet {
        noise: Tensor::cat(&zs, 0)?,
        x0: Tensor::cat(&xs, 0)?,
        labels: index.spec.num_classes.map(|_| labels),
        index,
        vae_dir,
    })
}

/// Training batches from a [`PairSet`]: a seeded permutation per epoch (the last partial batch
/// dropped, as the image loader does); the state is a [`Position`], so a run resumes exactly.
pub struct PairBatches {
    set: PairSet,
    batch_size: usize,
    order: EpochOrder,
}

impl PairBatches {
    pub fn new(set: PairSet, batch_size: usize, seed: u64, start: Position) -> Result<Self> {
        if batch_size == 0 || set.index.count < batch_size {
            return Err(Error::Invalid(format!(
                "data.pairs holds {} pairs, fewer than one batch of {batch_size}: make more pairs or lower data.batch_size",
                set.index.count
            )));
        }
        Ok(PairBatches {
            order: EpochOrder::new(set.index.count, batch_size, seed, start),
            set,
            batch_size,
        })
    }

    /// The position of the next batch.
    pub fn position(&self) -> Position {
        self.order.position()
    }

    /// The next batch: x₀ and z `[b, c, h, w]` and the labels of labelled pairs.
    pub fn next_batch(&mut self) -> Result<(Tensor, Tensor, Option<Vec<u32>>)> {
        let idx = self.order.next_indices();
        let it = Tensor::from_vec(idx.clone(), self.batch_size, self.set.x0.device())?;
        let x0 = self.set.x0.index_select(&it, 0)?;
        let z = self.set.noise.index_select(&it, 0)?;
        let labels = self
            .set
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i as usize]).collect());
        Ok((x0, z, labels))
    }
}

/// The student's training config when none is given: a fine-tune of the teacher on its pairs.
pub const STUDENT_DEFAULTS: &str = r#"
[data]
batch_size = 32

[train]
max_steps = 2000
learning_rate = 1e-4
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 100
prediction_type = "flow"
flow_sigma_sampling = "uniform"
cond_dropout = 0.1
ema_decay = 0.999
checkpoint_every = 500
keep_checkpoints = 2
log_every = 50
# The teacher's guidance is in the pairs: grids and evaluations sample the student without.
sample_guidance = 1.0
"#;

/// Merges `over` into `base`, tables key by key.
pub(crate) fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// A `--train-config` text as a TOML table (empty without one).
pub(crate) fn user_table(user_toml: Option<&str>) -> Result<toml::Table> {
    match user_toml {
        Some(text) => toml::from_str(text)
            .map_err(|e| Error::Invalid(format!("config: {}", e.to_string().trim()))),
        None => Ok(toml::Table::new()),
    }
}

/// The `[scheduler]` of a user table as a JSON map (empty without one).
pub(crate) fn user_scheduler(user: &toml::Table) -> Map<String, Value> {
    user.get("scheduler")
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// A merged student table as a training config.
pub(crate) fn into_config(table: toml::Table) -> Result<TrainConfig> {
    let config: TrainConfig = table.try_into().map_err(|e: toml::de::Error| {
        Error::Invalid(format!("config: {}", e.to_string().trim()))
    })?;
    config.check_model_keys()?;
    Ok(config)
}

/// A teacher's scheduler config as a student's `[scheduler]`: without nulls (they mean
/// "default", and TOML cannot hold them) and without `_diffusers_version`.
pub(crate) fn scheduler_entries(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, v)| !v.is_null() && k.as_str() != "_diffusers_version")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The student's training config: [`STUDENT_DEFAULTS`] overridden by `user_toml` (a
/// `--train-config` file: `[data]`, `[train]`, `[scheduler]`, `[eval]`; no data source),
/// then `data.pairs = pairs`. Without a `[model]` the student is the teacher's architecture and
/// starts from its weights (`train.init_from` = the teacher, EMA when present and not
/// `no_ema`). `[scheduler]`
/// is the teacher's (flow teachers) or FlowMatchEuler over the teacher's T, with
/// `num_inference_steps = student_steps` unless the file sets it; `train.sample_steps`
/// defaults to it too.
pub fn student_config(
    teacher: &Teacher,
    pairs: &Path,
    user_toml: Option<&str>,
    student_steps: usize,
) -> Result<TrainConfig> {
    let mut table: toml::Table = toml::from_str(STUDENT_DEFAULTS).expect("valid defaults");
    let user = user_table(user_toml)?;
    let section = |name: &str| user.get(name).and_then(|v| v.as_table());
    if let Some(d) = section("data") {
        for key in ["name", "latents", "pairs"] {
            if d.contains_key(key) {
                return Err(Error::Invalid(format!(
                    "data.{key}: a reflow student trains on its teacher's pairs; remove it from the config"
                )));
            }
        }
    }
    if let Some(p) = section("train")
        .and_then(|t| t.get("prediction_type"))
        .and_then(|v| v.as_str())
    {
        let parsed = toml::Value::from(p).try_into::<crate::trainer::Prediction>();
        if !matches!(parsed, Ok(crate::trainer::Prediction::Flow)) {
            return Err(Error::Invalid(format!(
                "train.prediction_type {p:?}: a reflow student is a flow-matching model (\"flow\")"
            )));
        }
    }
    let own_model = section("model").is_some_and(|m| !m.is_empty());
    // A student of another architecture must still take and predict the teacher's samples.
    for key in ["in_channels", "out_channels"] {
        if let Some(c) = section("model")
            .and_then(|m| m.get(key))
            .and_then(|v| v.as_integer())
        {
            if c != teacher.shape[0] as i64 {
                return Err(Error::Invalid(format!(
                    "model.{key} = {c}: the teacher's samples (the pairs) have shape {:?}",
                    teacher.shape
                )));
            }
        }
    }
    let user_sample_steps = section("train").is_some_and(|t| t.contains_key("sample_steps"));
    let user_init = section("train").is_some_and(|t| t.contains_key("init_from"));
    let user_scheduler = user_scheduler(&user);
    merge(&mut table, user);
    table.remove("scheduler");
    table
        .entry("model")
        .or_insert(toml::Value::Table(Default::default()));
    let mut config = into_config(table)?;

    // The teacher's scheduler (without nulls, which mean "default" and TOML cannot hold), or
    // rectified-flow Euler over its training time for diffusion teachers (at the teacher's
    // flow_shift for a flow teacher on DPM-Solver++/UniPC flow σ).
    let t = &teacher.scheduler_config;
    let mut sched: Map<String, Value> = if t.class.is_flow() {
        scheduler_entries(&teacher.scheduler)
    } else {
        Map::from_iter([
            (
                "_class_name".to_string(),
                Value::from("FlowMatchEulerDiscreteScheduler"),
            ),
            ("num_train_timesteps".into(), t.num_train_timesteps.into()),
            (
                "shift".into(),
                if t.uses_flow_sigmas() {
                    t.flow_shift
                } else {
                    1.0
                }
                .into(),
            ),
        ])
    };
    sched.insert("num_inference_steps".into(), student_steps.into());
    sched.extend(user_scheduler);
    SchedulerConfig::from_json_map(&sched)
        .map_err(|e| Error::Invalid(format!("student [scheduler]: {e}")))?;
    config.scheduler = sched;
    config.data.pairs = Some(pairs.display().to_string());
    config.train.prediction_type = crate::trainer::Prediction::Flow;
    if !own_model && !user_init {
        // The weights that made the pairs: the EMA UNet unless the teacher ran with `no_ema`.
        let init = if teacher.no_ema {
            teacher.folder.net_dir.clone()
        } else {
            teacher.dir.clone()
        };
        config.train.init_from = Some(init.display().to_string());
    }
    if !user_sample_steps {
        config.train.sample_steps = student_steps;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let h = |s: &str| fnv1a(0xcbf2_9ce4_8422_2325, s.as_bytes());
        assert_eq!(h(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(h("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(h("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn merged_tables_keep_untouched_keys() {
        let mut base: toml::Table = toml::from_str(STUDENT_DEFAULTS).unwrap();
        let over: toml::Table =
            toml::from_str("[train]\nmax_steps = 7\n[eval]\nevery = 3\n").unwrap();
        merge(&mut base, over);
        assert_eq!(base["train"]["max_steps"].as_integer(), Some(7));
        assert_eq!(base["train"]["learning_rate"].as_float(), Some(1e-4));
        assert_eq!(base["eval"]["every"].as_integer(), Some(3));
        assert_eq!(base["data"]["batch_size"].as_integer(), Some(32));
    }
}
