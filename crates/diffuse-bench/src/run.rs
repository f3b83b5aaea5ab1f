//! The benchmark run: forward cases, DDIM sampling and the training step on one seeded model,
//! and the weights and check tensors the PyTorch side loads.

use crate::machine::{machine_peak, reset_peak_rss};
use crate::presets::scheduler_config_json;
use crate::report::{BenchReport, Measurement};
use crate::timing::{measure, median, Timed};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use diffuse_core::config::SchedulerConfig;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::{Sampler, SamplerOptions};
use diffuse_models::config::ClassEmbedding;
use diffuse_models::flops::forward_flops_at;
use diffuse_models::pipeline::{generate, GenerateOptions};
use diffuse_models::weights::{
    build_unet, detached_tensors, inference_model, model_index, save_unet, seeded_init,
};
use diffuse_models::{Network, NetworkConfig, UNet2DConfig, UNet2DModel};
use diffuse_train::dist::SingleProcess;
use diffuse_train::optim::{AdamW, AdamWConfig};
use diffuse_train::trainer::{step, MicroLoss, StepOptions};
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// DDIM steps of the short sampling run in the check file.
pub const CHECK_STEPS: usize = 5;

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Forward,
    Train,
    Sample,
}

impl Phase {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "forward" => Ok(Phase::Forward),
            "train" => Ok(Phase::Train),
            "sample" => Ok(Phase::Sample),
            other => Err(Error::UnknownPhase(other.into())),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The preset's name, or the config file it came from (for the report).
    pub model_name: String,
    pub config: UNet2DConfig,
    pub runs: usize,
    pub warmup: usize,
    /// Timed runs of the sampling loop (each is `sample_steps` forwards).
    pub sample_runs: usize,
    /// Untimed sampling runs before them.
    pub sample_warmup: usize,
    pub forward_batches: Vec<usize>,
    pub train_batch: usize,
    pub sample_images: usize,
    pub sample_steps: usize,
    pub phases: Vec<Phase>,
    pub seed: u64,
    pub learning_rate: f64,
    pub max_grad_norm: f64,
    /// Where to write the weights as a diffusers DDIM pipeline folder.
    pub save_weights: Option<PathBuf>,
    /// Where to write the check tensors (inputs and outputs the PyTorch side recomputes).
    pub save_check: Option<PathBuf>,
    pub threads: usize,
    /// Train with gradient checkpointing (the case is then named `train_bN_ckpt`).
    pub gradient_checkpointing: bool,
    /// F32, or BF16 for the low-precision paths (see the module docs).
    pub dtype: DType,
}

impl BenchOptions {
    pub fn new(model_name: &str, config: UNet2DConfig) -> Self {
        BenchOptions {
            model_name: model_name.into(),
            config,
            runs: 10,
            warmup: 2,
            sample_runs: 10,
            sample_warmup: 1,
            forward_batches: vec![1, 8, 32],
            train_batch: 32,
            sample_images: 16,
            sample_steps: 50,
            phases: vec![Phase::Forward, Phase::Sample, Phase::Train],
            seed: 0,
            learning_rate: 1e-4,
            max_grad_norm: 1.0,
            save_weights: None,
            save_check: None,
            threads: candle_core::utils::get_num_threads(),
            gradient_checkpointing: false,
            dtype: DType::F32,
        }
    }
}

fn randn(seed: u64, shape: (usize, usize, usize, usize), device: &Device) -> Result<Tensor> {
    Ok(SeededNoise::new(seed, shape.0).randn(&shape.into(), DType::F32, device)?)
}

/// Integer timesteps spread over [0, 1000) for a batch.
fn spread_timesteps(b: usize) -> Vec<f32> {
    (0..b).map(|i| ((i * 997 + 500) % 1000) as f32).collect()
}

/// Runs the benchmark; `log` gets one line per finished measurement.
pub fn run(opts: &BenchOptions, device: &Device, log: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    let cfg = &opts.config;
    if cfg.class_embedding() != ClassEmbedding::None {
        return Err(Error::ClassConditional);
    }
    let (h, w) = cfg.sample_hw().ok_or(Error::NoSampleSize)?;
    let c = cfg.in_channels;
    if !matches!(opts.dtype, DType::F32 | DType::BF16) {
        return Err(Error::DType(opts.dtype));
    }
    // Checked here, not at the end: a reset after the cases would lower the process's peak RSS
    // that `/usr/bin/time` reports.
    let rss_resettable = reset_peak_rss();
    let (mut train_model, varmap) = build_unet(cfg, device)?;
    train_model.set_gradient_checkpointing(opts.gradient_checkpointing);
    seeded_init(&varmap, opts.seed)?;
    let params: usize = varmap
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    let net_cfg = NetworkConfig::UNet(cfg.clone());
    // A Network casts f32 inputs to its weights' dtype and its output back.
    let model: Network = match opts.dtype {
        DType::F32 => inference_model(cfg, &varmap, device)?.into(),
        dtype => diffuse_models::precision::from_tensors_as(
            &net_cfg,
            detached_tensors(&varmap),
            dtype,
            device,
        )?,
    };
    // Executed conv FLOPs at the training batch (the algorithm choice depends on the batch).
    let flops = forward_flops_at(cfg, h, w, opts.train_batch);
    let per_image = flops.total() as f64;
    let peak = machine_peak(opts.threads);
    let sched_json = scheduler_config_json();

    if let Some(dir) = &opts.save_weights {
        save_pipeline(cfg, &varmap, dir, &sched_json)?;
        log(&format!("weights: {}", dir.display()));
    }
    // Check tensors: a forward on fixed inputs now, sampling's first output and the training
    // batch below; written at the end.
    let mut check: Vec<(String, Tensor)> = Vec::new();
    if opts.save_check.is_some() {
        let x = randn(opts.seed + 5, (4, c, h, w), device)?;
        let ts = [0f32, 250.0, 500.0, 999.0];
        let y = model.forward(&x, &ts, None)?;
        check.push(("check_sample".into(), x));
        check.push(("check_timesteps".into(), Tensor::new(&ts[..], device)?));
        check.push(("check_output".into(), y));
    }

    let mut out = Vec::new();
    let mut push = |m: Measurement, log: &mut dyn FnMut(&str)| {
        log(&format!(
            "{:<12} median {:>9.4} s  (min {:.4}, max {:.4}, {} runs)  {:>8.2} images/s  {:>6.1} GFLOP/s",
            m.name, m.median_s, m.min_s, m.max_s, m.runs, m.images_per_s, m.gflops_per_s
        ));
        out.push(m);
    };
    let finish = |name: String,
                  kind: &str,
                  batch: usize,
                  steps: Option<usize>,
                  warmup: usize,
                  (times, rss): Timed,
                  work_flops: f64,
                  first_loss: Option<f64>| {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        let med = median(&sorted);
        let gf = work_flops / med / 1e9;
        Measurement {
            name,
            kind: kind.into(),
            batch,
            steps,
            runs: times.len(),
            warmup,
            median_s: med,
            min_s: sorted[0],
            max_s: sorted[sorted.len() - 1],
            times_s: times,
            images_per_s: batch as f64 / med,
            flops: work_flops,
            gflops_per_s: gf,
            // The CPU's peak says nothing about a GPU run.
            peak_fraction: (peak.gflops > 0.0 && !device.is_cuda()).then(|| gf / peak.gflops),
            peak_rss_bytes: rss,
            first_loss,
        }
    };

    if opts.phases.contains(&Phase::Forward) {
        for &b in &opts.forward_batches {
            let x = randn(opts.seed + 1, (b, c, h, w), device)?;
            let ts = spread_timesteps(b);
            let mut calls = 0;
            let r = measure(opts.runs, opts.warmup, device, || {
                if calls == opts.warmup {
                    diffuse_models::profile::reset(); // the timed runs only
                }
                calls += 1;
                model.forward(&x, &ts, None)?;
                Ok(())
            })?;
            if diffuse_models::profile::enabled() {
                log(&format!(
                    "per-op profile of forward_b{b} (DIFFUSE_PROFILE; ms per forward):\n{}",
                    diffuse_models::profile::report(r.0.len(), r.0.iter().sum())
                ));
            }
            let m = finish(
                format!("forward_b{b}"),
                "forward",
                b,
                None,
                opts.warmup,
                r,
                per_image * b as f64,
                None,
            );
            push(m, log);
        }
    }
    if opts.phases.contains(&Phase::Sample) {
        let k = opts.sample_images;
        let sched = SchedulerConfig::from_json_map(sched_json.as_object().expect("object"))?;
        let sampler = Sampler::with_options(&sched, opts.sample_steps, SamplerOptions::default())?;
        let x_t = randn(opts.seed + 2, (k, c, h, w), device)?;
        let gen = GenerateOptions {
            num_images: k,
            batch_size: k,
            seed: opts.seed,
            size: (h, w),
            initial_noise: Some(x_t.clone()),
            ..Default::default()
        };
        let net = model.clone();
        let warm = opts.sample_warmup;
        let mut first: Option<Tensor> = None;
        let r = measure(opts.sample_runs, warm, device, || {
            let images = generate(&net, &sampler, &gen, device, &mut |_| {
                ControlFlow::Continue(())
            })?;
            first.get_or_insert(images);
            Ok(())
        })?;
        if opts.save_check.is_some() {
            // With random weights the 50-step trajectory is chaotic (a 1e-7 difference after
            // one step grows to ~0.2), so a short DDIM run from the same x_T is checked too.
            let short = Sampler::with_options(&sched, CHECK_STEPS, SamplerOptions::default())?;
            let images = generate(&net, &short, &gen, device, &mut |_| {
                ControlFlow::Continue(())
            })?;
            check.push(("sample_noise".into(), x_t.clone()));
            check.push(("sample_images".into(), first.expect("one run at least")));
            check.push((format!("sample{CHECK_STEPS}_images"), images));
        }
        let steps = sampler.len();
        let m = finish(
            format!("ddim{steps}_{k}"),
            "sample",
            k,
            Some(steps),
            warm,
            r,
            per_image * (k * steps) as f64,
            None,
        );
        push(m, log);
    }
    if opts.phases.contains(&Phase::Train) {
        let b = opts.train_batch;
        let (x, ts, target) = train_inputs(opts, (b, c, h, w), device)?;
        if opts.save_check.is_some() {
            check.push(("train_x".into(), x.clone()));
            check.push(("train_timesteps".into(), Tensor::new(&ts[..], device)?));
            check.push(("train_target".into(), target.clone()));
        }
        let (r, first_loss) = timed_train_steps(
            opts,
            &train_model,
            &varmap,
            &net_cfg,
            (&x, &ts, &target),
            device,
        )?;
        let ckpt = if opts.gradient_checkpointing {
            "_ckpt"
        } else {
            ""
        };
        let m = finish(
            format!("train_b{b}{ckpt}"),
            "train",
            b,
            None,
            opts.warmup,
            r,
            3.0 * per_image * b as f64,
            first_loss,
        );
        push(m, log);
    }

    if let Some(path) = &opts.save_check {
        let bytes = diffuse_models::weights::serialize_tensors(check)?;
        diffuse_data::fs::write_atomic(path, &bytes)?;
        log(&format!("check tensors: {}", path.display()));
    }

    let date_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let device_name = if device.is_cuda() { "cuda" } else { "cpu" };
    Ok(BenchReport {
        side: "diffuse".into(),
        versions: json!({"diffuse": env!("CARGO_PKG_VERSION"), "candle": "0.11.1"}),
        device: device_name.into(),
        dtype: if opts.dtype == DType::BF16 {
            "bf16"
        } else {
            "f32"
        }
        .into(),
        threads: opts.threads,
        date_unix,
        model: json!({
            "name": opts.model_name,
            "params": params,
            "sample_size": [h, w],
            "in_channels": c,
            "config": serde_json::to_value(cfg).expect("serializable"),
        }),
        flops_forward_per_image: flops,
        machine_peak: peak,
        peak_rss_method: if rss_resettable {
            "VmHWM per measurement (reset through /proc/self/clear_refs before its warm-up)".into()
        } else {
            "VmHWM of the process so far (clear_refs unavailable)".into()
        },
        measurements: out,
    })
}

/// The training batch: images, timesteps and the regression target (seeded).
/// Measures the convolution algorithms on this model's layer shapes
/// (`diffuse_models::kernels::tune::measure`): the shapes of a forward at each of
/// `opts.forward_batches` and of a training step's backward at `opts.train_batch`, recorded by
/// running them once; `runs` timed runs per candidate.
pub fn tune_convs(
    opts: &BenchOptions,
    device: &Device,
    runs: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<diffuse_models::kernels::tune::Entry>> {
    use diffuse_models::kernels::tune::{measure, record};
    let cfg = &opts.config;
    let (h, w) = cfg.sample_hw().ok_or(Error::NoSampleSize)?;
    let c = cfg.in_channels;
    let (train_model, varmap) = build_unet(cfg, device)?;
    seeded_init(&varmap, opts.seed)?;
    let model = inference_model(cfg, &varmap, device)?;
    let mut shapes = Vec::new();
    for &b in &opts.forward_batches {
        let x = randn(opts.seed + 1, (b, c, h, w), device)?;
        let (y, seen) = record(|| model.forward(&x, &spread_timesteps(b), None));
        y?;
        shapes.extend(seen);
    }
    let b = opts.train_batch;
    let (x, ts, _) = train_inputs(opts, (b, c, h, w), device)?;
    let (grads, seen) = record(|| -> Result<_> {
        let y = train_model.forward(&x, &ts, None)?;
        Ok(y.sqr()?.mean_all()?.backward()?)
    });
    grads?;
    shapes.extend(seen);
    log(&format!(
        "measuring {} convolution shapes × passes, 3 algorithms each",
        shapes.len()
    ));
    Ok(measure(&shapes, runs))
}

fn train_inputs(
    opts: &BenchOptions,
    shape: (usize, usize, usize, usize),
    device: &Device,
) -> Result<(Tensor, Vec<f32>, Tensor)> {
    let x = randn(opts.seed + 3, shape, device)?;
    let target = randn(opts.seed + 4, shape, device)?;
    Ok((x, spread_timesteps(shape.0), target))
}

/// Times `opts.runs` optimizer steps on one fixed batch after `opts.warmup` untimed ones and
/// returns the times, the peak RSS and the first step's loss. Each step is the trainer's own,
/// [`diffuse_train::trainer::step`]: forward (under mixed precision a bf16 copy over the f32
/// variables), MSE, backward, global-norm clipping, AdamW; one micro-batch, one process.
fn timed_train_steps(
    opts: &BenchOptions,
    train_model: &UNet2DModel,
    varmap: &VarMap,
    net_cfg: &NetworkConfig,
    (x, ts, target): (&Tensor, &[f32], &Tensor),
    device: &Device,
) -> Result<(Timed, Option<f64>)> {
    // Trainable: all but a Fourier embedding's fixed frequencies.
    let fourier =
        opts.config.time_embedding_type == diffuse_models::config::TimeEmbeddingType::Fourier;
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| k.as_str() != "time_proj.weight" || !fourier)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let f32_net = Network::from(train_model.clone());
    let mut fixed = detached_tensors(varmap);
    fixed.retain(|k, _| !vars.iter().any(|(n, _)| n == k));
    let options = StepOptions {
        lr: opts.learning_rate,
        max_grad_norm: opts.max_grad_norm,
        accumulation: 1,
    };
    let mut first_loss = None;
    let r = measure(opts.runs, opts.warmup, device, || {
        let result = step(&vars, &mut opt, &options, None, &SingleProcess, &mut || {
            let low = match opts.dtype {
                DType::F32 => None,
                dtype => Some(diffuse_train::amp::low_precision_net(
                    net_cfg, &vars, &fixed, dtype, device,
                )?),
            };
            let model = low.as_ref().unwrap_or(&f32_net);
            let out = model.forward(x, ts, None)?; // f32, also from a bf16 copy
            Ok(MicroLoss::new(candle_nn::loss::mse(&out, target)?))
        })?;
        first_loss.get_or_insert(result.loss as f64);
        Ok(())
    })?;
    Ok((r, first_loss))
}

/// Writes a diffusers DDIM pipeline folder: `unet/` (f32, by [`save_unet`]), `scheduler/` and
/// [`model_index`]'s `model_index.json` with diffusers' `DDIMPipeline` class.
fn save_pipeline(cfg: &UNet2DConfig, varmap: &VarMap, dir: &Path, sched: &Value) -> Result<()> {
    save_unet(cfg, varmap, &dir.join("unet"), DType::F32)?;
    write_json(&dir.join("scheduler").join("scheduler_config.json"), sched)?;
    let mut index = model_index("DDIMScheduler", false);
    index["_class_name"] = "DDIMPipeline".into();
    write_json(&dir.join("model_index.json"), &index)
}

/// Writes `v` pretty-printed to `path`, atomically, creating its folder.
fn write_json(path: &Path, v: &Value) -> Result<()> {
    let dir = path.parent().expect("a file in a folder");
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let text = serde_json::to_string_pretty(v).expect("json");
    Ok(diffuse_data::fs::write_atomic(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::preset;

    #[test]
    fn report_json_has_the_fields_the_harness_reads() {
        let mut o = BenchOptions::new("tiny", preset("tiny").unwrap());
        o.runs = 2;
        o.warmup = 0;
        o.sample_runs = 1;
        o.sample_warmup = 0;
        o.forward_batches = vec![1, 2];
        o.train_batch = 2;
        o.sample_images = 2;
        o.sample_steps = 3;
        let mut lines = Vec::new();
        let r = run(&o, &Device::Cpu, &mut |l| lines.push(l.to_string())).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["side"], "diffuse");
        assert!(v["model"]["params"].as_u64().unwrap() > 10_000);
        assert!(v["machine_peak"]["gflops"].as_f64().is_some());
        assert!(v["machine_peak"]["how"].as_str().unwrap().contains("FMA"));
        let names: Vec<&str> = v["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["forward_b1", "forward_b2", "ddim3_2", "train_b2"]);
        for m in v["measurements"].as_array().unwrap() {
            let (med, lo, hi) = (
                m["median_s"].as_f64().unwrap(),
                m["min_s"].as_f64().unwrap(),
                m["max_s"].as_f64().unwrap(),
            );
            assert!(lo > 0.0 && lo <= med && med <= hi, "{m}");
            assert!(m["gflops_per_s"].as_f64().unwrap() > 0.0);
            assert!(m["images_per_s"].as_f64().unwrap() > 0.0);
        }
        let train = &v["measurements"][3];
        assert_eq!(train["runs"], 2);
        assert_eq!(
            train["flops"].as_f64().unwrap(),
            3.0 * 2.0 * r.flops_forward_per_image.total() as f64
        );
        assert!(train["first_loss"].as_f64().unwrap().is_finite());
        assert_eq!(lines.len(), 4);
        assert!(r.to_table().contains("| train_b2 |"));
    }

    #[test]
    fn bf16_bench_runs_every_phase() {
        let mut o = BenchOptions::new("tiny", preset("tiny").unwrap());
        (o.runs, o.warmup, o.sample_runs, o.sample_warmup) = (1, 0, 1, 0);
        (
            o.forward_batches,
            o.train_batch,
            o.sample_images,
            o.sample_steps,
        ) = (vec![2], 2, 2, 2);
        o.dtype = DType::BF16;
        let r = run(&o, &Device::Cpu, &mut |_| {}).unwrap();
        assert_eq!(r.dtype, "bf16");
        assert_eq!(r.measurements.len(), 3);
        assert!(r.measurements[2].first_loss.unwrap().is_finite());
        o.dtype = DType::F16;
        assert!(run(&o, &Device::Cpu, &mut |_| {}).is_err());
    }
}
