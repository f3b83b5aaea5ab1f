//! `diffuse bench`: how fast this machine runs a UNet2DModel — forward at several batch sizes
//! (inference on detached tensors), one full training step (forward, MSE, backward, clipping,
//! AdamW, as [`crate::trainer`] does it) and DDIM sampling (the `diffuse sample` pipeline) —
//! with medians, min/max, images/s, peak RSS, achieved GFLOP/s against the machine's peak.
//!
//! FLOPs are counted analytically from the config ([`forward_flops`]): convolutions, linears
//! and the two attention matmuls, 2 FLOPs per multiply-add; norms and element-wise ops are
//! left out (they are < 1 % of the total). A training step counts as 3× the forward.
//!
//! `bench/run` runs this beside `bench/torch_bench.py` (the same model, weights and inputs in
//! PyTorch) and compares; [`BenchOptions::save_weights`] and [`BenchOptions::save_check`]
//! write what the PyTorch side loads.
//!
//! [`BenchOptions::dtype`] bf16 measures the low-precision paths: forward and sampling on a bf16
//! copy of the weights, the training step as `train.mixed_precision = "bf16"` runs it (bf16
//! forward over f32 master weights, f32 gradients and AdamW) — PyTorch's side under autocast.

use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::sampler::{Sampler, SamplerOptions};
use diffuse_models::config::{ClassEmbedding, ResnetTimeScaleShift, TimeEmbeddingType};
use diffuse_models::pipeline::{generate, GenerateOptions};
use diffuse_models::weights::{
    build_unet, detached_tensors, inference_model, save_unet, seeded_init,
};
use diffuse_models::{DenoiserConfig, DenoiserNet, UNet2DConfig};
use serde::Serialize;
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Built-in model configs: name, description, config JSON.
pub const PRESETS: [(&str, &str); 3] = [
    (
        "mnist32",
        "1×32×32 DDPM U-Net of issue #8: channels (64,128,128), attention at 8×8",
    ),
    (
        "cifar64",
        "3×64×64 tutorial U-Net at a quarter width (32,64,64,128), attention at 16×16 and 8×8",
    ),
    (
        "tiny",
        "1×8×8, channels (16,32), one attention level: for tests",
    ),
];

/// The config of a built-in preset.
pub fn preset(name: &str) -> Result<UNet2DConfig> {
    let v = match name {
        "mnist32" => json!({
            "sample_size": 32, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [64, 128, 128], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 32
        }),
        // The tutorials' (128,256,256,512) with attention at the two lowest resolutions, at a
        // quarter width: measured on the 2-core machine (busy) with candle 0.11.1's ops, a
        // batch-32 training step took 86 s and 7.2 GB at this width, 205 s and 14.5 GB at
        // (64,128,128,256) — too much for a bench of ≥ 10 runs on 23 GB.
        "cifar64" => json!({
            "sample_size": 64, "in_channels": 3, "out_channels": 3,
            "block_out_channels": [32, 64, 64, 128], "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 32
        }),
        "tiny" => json!({
            "sample_size": 8, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [16, 32], "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8
        }),
        other => {
            return Err(Error::Invalid(format!(
                "unknown bench preset {other:?}; allowed: {}",
                PRESETS.map(|p| p.0).join(", ")
            )))
        }
    };
    Ok(UNet2DConfig::from_json_str(&v.to_string())?)
}

/// The DDIM scheduler config both sides sample with (diffusers' DDIMScheduler defaults, spelt out).
pub fn scheduler_config_json() -> Value {
    json!({
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": true,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": false
    })
}

// ---------------------------------------------------------------------------------------------
// FLOP counting

/// Forward FLOPs of one image (2 per multiply-add), by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FlopCount {
    /// Convolutions (3×3, stride-2 3×3, 1×1 shortcuts).
    pub conv: u64,
    /// Linear layers (time embedding, time projections in ResNets, q/k/v/out).
    pub linear: u64,
    /// q·kᵀ and softmax·v.
    pub attention: u64,
}

impl FlopCount {
    pub fn total(&self) -> u64 {
        self.conv + self.linear + self.attention
    }
    fn conv(&mut self, cin: usize, cout: usize, k: usize, h: usize, w: usize) {
        self.conv += 2 * (cin * cout * k * k * h * w) as u64;
    }
    fn linear(&mut self, din: usize, dout: usize, rows: usize) {
        self.linear += 2 * (din * dout * rows) as u64;
    }
    /// The convolutions of a ResNet block at output size h×w, 1×1 shortcut included; `inner`
    /// is conv1's output width (`cout` unless pruned).
    fn resnet_convs(&mut self, cin: usize, inner: usize, cout: usize, h: usize, w: usize) {
        self.conv(cin, inner, 3, h, w);
        self.conv(inner, cout, 3, h, w);
        if cin != cout {
            self.conv(cin, cout, 1, h, w);
        }
    }
    /// Self-attention over h·w positions with `inner` = heads·head_dim channels.
    fn attention(&mut self, c: usize, inner: usize, h: usize, w: usize) {
        let l = h * w;
        self.linear(c, inner, 3 * l); // q, k, v
        self.linear(inner, c, l); // out
        self.attention += 2 * 2 * (l * l * inner) as u64; // q·kᵀ and p·v over all heads
    }
}

/// Forward FLOPs of one image of size h×w through either network.
pub fn net_forward_flops(
    cfg: &diffuse_models::net::DenoiserConfig,
    h: usize,
    w: usize,
) -> FlopCount {
    match cfg {
        diffuse_models::net::DenoiserConfig::UNet(c) => forward_flops(c, h, w),
        diffuse_models::net::DenoiserConfig::DiT(c) => dit_forward_flops(c, h, w),
    }
}

/// Forward FLOPs of one image of size h×w through a DiT (diffusers' `DiTTransformer2DModel`):
/// the patch embedding; per block its own timestep MLP (256 → D → D) and adaLN-Zero linear
/// (D → 6D), q/k/v/out, the two N×N attention products and the 4D MLP; the final
/// modulation (block 0's embedder again, D → 2D) and the unpatchify projection.
pub fn dit_forward_flops(
    cfg: &diffuse_models::config::DiTTransformer2DConfig,
    h: usize,
    w: usize,
) -> FlopCount {
    let mut f = FlopCount::default();
    let (d, p) = (
        cfg.num_attention_heads * cfg.attention_head_dim,
        cfg.patch_size,
    );
    let n = (h / p) * (w / p);
    f.conv += 2 * (cfg.in_channels * d * p * p * n) as u64;
    let temb = |f: &mut FlopCount| {
        f.linear(256, d, 1);
        f.linear(d, d, 1);
    };
    for _ in 0..cfg.num_layers {
        temb(&mut f);
        f.linear(d, 6 * d, 1);
        f.linear(d, 3 * d, n);
        f.linear(d, d, n);
        f.attention += 2 * 2 * (n * n * d) as u64;
        f.linear(d, 4 * d, n);
        f.linear(4 * d, d, n);
    }
    temb(&mut f);
    f.linear(d, 2 * d, 1);
    f.linear(d, p * p * cfg.out_channels(), n);
    f
}

/// Forward FLOPs of one image of size h×w through `cfg` (the model's structure, as
/// `UNet2DModel::new` builds it).
pub fn forward_flops(cfg: &UNet2DConfig, h: usize, w: usize) -> FlopCount {
    let mut f = FlopCount::default();
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let temb = cfg.time_embed_dim();
    let time_in = match cfg.time_embedding_type {
        TimeEmbeddingType::Fourier => 2 * ch[0],
        TimeEmbeddingType::Positional | TimeEmbeddingType::Learned => ch[0],
    };
    let resnet_temb = match cfg.resnet_time_scale_shift {
        ResnetTimeScaleShift::ScaleShift => 2, // the time projection gives scale and shift
        ResnetTimeScaleShift::Default => 1,
    };
    // `prefix` names the block's weights: a pruned one (`diffuse_resnet_inner_channels`) is
    // narrower inside.
    let rn = |f: &mut FlopCount, prefix: String, cin: usize, cout: usize, h: usize, w: usize| {
        let inner = cfg.resnet_inner(&prefix, cout);
        f.resnet_convs(cin, inner, cout, h, w);
        f.linear(temb, resnet_temb * inner, 1); // time_emb_proj
    };
    let heads_inner = |c: usize| {
        let d = cfg.attention_head_dim.unwrap_or(c);
        (c / d).max(1) * d
    };
    f.conv(cfg.in_channels, ch[0], 3, h, w);
    f.linear(time_in, temb, 1);
    f.linear(temb, temb, 1);
    if cfg.class_embedding() == ClassEmbedding::Timestep {
        f.linear(time_in, temb, 1);
        f.linear(temb, temb, 1);
    }
    // Down path.
    let (mut hh, mut ww) = (h, w);
    let mut out = ch[0];
    for (i, t) in cfg.down_block_types.iter().enumerate() {
        let input = out;
        out = ch[i];
        for j in 0..cfg.layers_per_block {
            let cin = if j == 0 { input } else { out };
            rn(
                &mut f,
                format!("down_blocks.{i}.resnets.{j}"),
                cin,
                out,
                hh,
                ww,
            );
            if t.has_attention() {
                f.attention(out, heads_inner(out), hh, ww);
            }
        }
        if i != n - 1 {
            let resnet = t.resamples_with_resnet(cfg.downsample_type);
            hh /= 2;
            ww /= 2;
            if resnet {
                rn(
                    &mut f,
                    format!("down_blocks.{i}.downsamplers.0"),
                    out,
                    out,
                    hh,
                    ww,
                );
            } else {
                f.conv(out, out, 3, hh, ww);
            }
        }
    }
    // Mid block.
    if cfg.mid_block_type.is_some() {
        let last = ch[n - 1];
        rn(&mut f, "mid_block.resnets.0".into(), last, last, hh, ww);
        if cfg.add_attention {
            let d = cfg.attention_head_dim.unwrap_or(last);
            f.attention(last, (last / d).max(1) * d, hh, ww);
        }
        rn(&mut f, "mid_block.resnets.1".into(), last, last, hh, ww);
    }
    // Up path.
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let mut out = rev[0];
    for (i, t) in cfg.up_block_types.iter().enumerate() {
        let prev = out;
        out = rev[i];
        let input = rev[(i + 1).min(n - 1)];
        let layers = cfg.layers_per_block + 1;
        for j in 0..layers {
            let skip = if j == layers - 1 { input } else { out };
            let cin = if j == 0 { prev } else { out };
            rn(
                &mut f,
                format!("up_blocks.{i}.resnets.{j}"),
                cin + skip,
                out,
                hh,
                ww,
            );
            if t.has_attention() {
                f.attention(out, heads_inner(out), hh, ww);
            }
        }
        if i != n - 1 {
            let resnet = t.resamples_with_resnet(cfg.upsample_type);
            hh *= 2;
            ww *= 2;
            if resnet {
                rn(
                    &mut f,
                    format!("up_blocks.{i}.upsamplers.0"),
                    out,
                    out,
                    hh,
                    ww,
                );
            } else {
                f.conv(out, out, 3, hh, ww);
            }
        }
    }
    f.conv(ch[0], cfg.out_channels, 3, h, w);
    f
}

// ---------------------------------------------------------------------------------------------
// Machine and process facts

/// The machine's peak f32 rate and how it was computed.
#[derive(Debug, Clone, Serialize)]
pub struct MachinePeak {
    pub cpu_model: String,
    /// Cores the benchmark runs on (its thread count, at most the online CPUs).
    pub cores: usize,
    /// FMA pipes per core (2 on AMD Zen and Intel server cores).
    pub fma_units: usize,
    /// f32 lanes of the widest SIMD the CPU reports (8 for AVX2, 16 for AVX-512).
    pub lanes: usize,
    pub simd: String,
    pub clock_ghz: f64,
    pub clock_source: String,
    pub gflops: f64,
    /// The formula with its numbers.
    pub how: String,
}

fn lscpu_field(key: &str) -> Option<String> {
    let out = std::process::Command::new("lscpu").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn cpuinfo_field(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Peak of `threads` cores: cores × FMA units × lanes × 2 FLOPs × clock. The clock is lscpu's
/// "CPU max MHz" when it has one, else /proc/cpuinfo's "cpu MHz" (the current clock: a VM
/// often reports only that).
pub fn machine_peak(threads: usize) -> MachinePeak {
    let cpu_model = lscpu_field("Model name")
        .or_else(|| cpuinfo_field("model name"))
        .unwrap_or_else(|| "unknown".into());
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = threads.clamp(1, online);
    let (lanes, simd) = simd_lanes();
    let (mhz, clock_source) = match lscpu_field("CPU max MHz").and_then(|s| s.parse::<f64>().ok()) {
        Some(m) if m > 0.0 => (m, "lscpu 'CPU max MHz'".to_string()),
        _ => match cpuinfo_field("cpu MHz").and_then(|s| s.parse::<f64>().ok()) {
            Some(m) => (m, "/proc/cpuinfo 'cpu MHz' (no max clock reported)".into()),
            None => (0.0, "unknown (no clock found)".into()),
        },
    };
    let fma_units = 2;
    let clock_ghz = mhz / 1000.0;
    let gflops = (cores * fma_units * lanes * 2) as f64 * clock_ghz;
    let mut how = format!(
        "{cores} cores × {fma_units} FMA units × {lanes} f32 lanes ({simd}) × 2 FLOPs × {clock_ghz:.3} GHz ({clock_source}) = {gflops:.1} GFLOP/s"
    );
    if lanes == 16 {
        // Zen 4 splits 512-bit FMAs in two; then AVX2's figure is the real one.
        how.push_str(&format!(
            " (AVX2's 8 lanes: {:.1} GFLOP/s; the true figure where 512-bit FMAs are split)",
            gflops / 2.0
        ));
    }
    MachinePeak {
        cpu_model,
        cores,
        fma_units,
        lanes,
        simd,
        clock_ghz,
        clock_source,
        gflops,
        how,
    }
}

fn simd_lanes() -> (usize, String) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (16, "AVX-512".into());
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return (8, "AVX2+FMA".into());
        }
        (4, "SSE".into())
    }
    #[cfg(target_arch = "aarch64")]
    {
        (4, "NEON".into())
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        (1, "scalar".into())
    }
}

/// Resets the process's peak RSS to its current RSS (Linux ≥ 4.0: `5` into
/// /proc/self/clear_refs); false where that is not possible (peaks are then process-wide).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak RSS in bytes (VmHWM of /proc/self/status), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// The benchmark

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
            other => Err(Error::Invalid(format!(
                "unknown measurement {other:?}; allowed: forward, train, sample"
            ))),
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

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// `forward_b8`, `train_b32`, `ddim50_16`.
    pub name: String,
    pub kind: String,
    /// Images per call (forward/train) or images sampled (sample).
    pub batch: usize,
    pub steps: Option<usize>,
    pub runs: usize,
    pub warmup: usize,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub times_s: Vec<f64>,
    pub images_per_s: f64,
    pub flops: f64,
    pub gflops_per_s: f64,
    /// Of the CPU's peak (None on a GPU).
    pub peak_fraction: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// The loss of the first training step (from the initial weights), to compare sides.
    pub first_loss: Option<f64>,
}

/// Everything `diffuse bench` measured, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub side: String,
    pub versions: Value,
    pub device: String,
    /// "f32", or "bf16" (see [`BenchOptions::dtype`]).
    pub dtype: String,
    pub threads: usize,
    pub date_unix: u64,
    pub model: Value,
    pub flops_forward_per_image: FlopCount,
    pub machine_peak: MachinePeak,
    /// How peak RSS was taken.
    pub peak_rss_method: String,
    pub measurements: Vec<Measurement>,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Times `f` after `warmup` untimed calls; the peak RSS covers warm-up and runs.
fn measure(
    runs: usize,
    warmup: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(Vec<f64>, Option<u64>)> {
    reset_peak_rss();
    for _ in 0..warmup {
        f()?;
        device.synchronize()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    Ok((times, peak_rss_bytes()))
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
        return Err(Error::Invalid(
            "bench measures unconditional models: drop num_class_embeds/class_embed_type".into(),
        ));
    }
    let (h, w) = cfg.sample_hw().ok_or_else(|| {
        Error::Invalid("the model config has no sample_size: bench needs one".into())
    })?;
    let c = cfg.in_channels;
    if !matches!(opts.dtype, DType::F32 | DType::BF16) {
        return Err(Error::Invalid(format!(
            "bench --dtype {:?}: allowed: f32, bf16",
            opts.dtype
        )));
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
    let net_cfg = DenoiserConfig::UNet(cfg.clone());
    // A DenoiserNet casts f32 inputs to its weights' dtype and its output back.
    let model: DenoiserNet = match opts.dtype {
        DType::F32 => inference_model(cfg, &varmap, device)?.into(),
        dtype => diffuse_models::precision::from_tensors_as(
            &net_cfg,
            detached_tensors(&varmap),
            dtype,
            device,
        )?,
    };
    let flops = forward_flops(cfg, h, w);
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
                  (times, rss): (Vec<f64>, Option<u64>),
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
            let r = measure(opts.runs, opts.warmup, device, || {
                model.forward(&x, &ts, None)?;
                Ok(())
            })?;
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
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .filter(|(k, _)| {
                k.as_str() != "time_proj.weight"
                    || cfg.time_embedding_type != TimeEmbeddingType::Fourier
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
        let mut first_loss = None;
        let f32_net = DenoiserNet::from(train_model.clone());
        let mut fixed = detached_tensors(&varmap);
        fixed.retain(|k, _| !vars.iter().any(|(n, _)| n == k));
        let r = measure(opts.runs, opts.warmup, device, || {
            // Mixed precision: this step's bf16 copy over the f32 variables, as the trainer.
            let low = match opts.dtype {
                DType::F32 => None,
                dtype => Some(crate::amp::low_precision_net(
                    &net_cfg, &vars, &fixed, dtype, device,
                )?),
            };
            let model = low.as_ref().unwrap_or(&f32_net);
            let loss = train_step(model, &mut opt, &vars, &x, &ts, &target, opts)?;
            first_loss.get_or_insert(loss);
            Ok(())
        })?;
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
        diffuse_data::fs::write_atomic(path, &bytes).map_err(|e| Error::Invalid(e.to_string()))?;
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
fn train_inputs(
    opts: &BenchOptions,
    shape: (usize, usize, usize, usize),
    device: &Device,
) -> Result<(Tensor, Vec<f32>, Tensor)> {
    let x = randn(opts.seed + 3, shape, device)?;
    let target = randn(opts.seed + 4, shape, device)?;
    Ok((x, spread_timesteps(shape.0), target))
}

/// One optimizer step as the trainer takes it: forward, MSE, backward, clip, AdamW. Returns
/// the loss.
fn train_step(
    model: &DenoiserNet,
    opt: &mut AdamW,
    vars: &[(String, Var)],
    x: &Tensor,
    ts: &[f32],
    target: &Tensor,
    opts: &BenchOptions,
) -> Result<f64> {
    let out = model.forward(x, ts, None)?; // f32, also from a bf16 copy
    let loss = candle_nn::loss::mse(&out, target)?;
    let value = loss.to_scalar::<f32>()? as f64;
    let mut grads = loss.backward()?;
    clip_grad_norm(&mut grads, vars, opts.max_grad_norm)?;
    opt.update(&grads, opts.learning_rate)?;
    Ok(value)
}

/// Writes a diffusers DDIM pipeline folder: `model_index.json`, `unet/`, `scheduler/`.
fn save_pipeline(
    cfg: &UNet2DConfig,
    varmap: &candle_nn::VarMap,
    dir: &Path,
    sched: &Value,
) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Invalid(format!("{}: {e}", p.display()));
    save_unet(cfg, varmap, &dir.join("unet"), DType::F32)?;
    let sdir = dir.join("scheduler");
    std::fs::create_dir_all(&sdir).map_err(|e| io(&sdir, e))?;
    let text = serde_json::to_string_pretty(sched).expect("json");
    let p = sdir.join("scheduler_config.json");
    diffuse_data::fs::write_atomic(&p, text.as_bytes())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let index = json!({
        "_class_name": "DDIMPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DModel"]
    });
    let p = dir.join("model_index.json");
    let text = serde_json::to_string_pretty(&index).expect("json");
    diffuse_data::fs::write_atomic(&p, text.as_bytes())
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Human output

fn fmt_bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| format!("{:.0} MB", b as f64 / 1e6))
}

impl BenchReport {
    /// A markdown table of the measurements, with the model and machine above it.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let m = &self.model;
        s.push_str(&format!(
            "model {} ({} parameters, {}×{}×{}), {} threads, {}, {}\n",
            m["name"].as_str().unwrap_or("?"),
            m["params"],
            m["in_channels"],
            m["sample_size"][0],
            m["sample_size"][1],
            self.threads,
            self.device,
            self.dtype
        ));
        let f = &self.flops_forward_per_image;
        s.push_str(&format!(
            "forward FLOPs per image: {:.3} GFLOP (conv {:.3}, linear {:.3}, attention {:.3}); train step = 3× forward\n",
            f.total() as f64 / 1e9,
            f.conv as f64 / 1e9,
            f.linear as f64 / 1e9,
            f.attention as f64 / 1e9
        ));
        s.push_str(&format!(
            "peak: {} ({})\n\n",
            self.machine_peak.how, self.machine_peak.cpu_model
        ));
        s.push_str("| case | median s | min s | max s | runs | images/s | GFLOP/s | % of peak | peak RSS |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for x in &self.measurements {
            s.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {} | {:.2} | {:.1} | {} | {} |\n",
                x.name,
                x.median_s,
                x.min_s,
                x.max_s,
                x.runs,
                x.images_per_s,
                x.gflops_per_s,
                x.peak_fraction
                    .map_or("-".into(), |f| format!("{:.1}", 100.0 * f)),
                fmt_bytes(x.peak_rss_bytes)
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> UNet2DConfig {
        UNet2DConfig::from_json_str(&v.to_string()).unwrap()
    }

    /// One level, one ResNet, no mid block, 4×4 input: every term written out by hand.
    #[test]
    fn flops_of_a_one_level_unet_by_hand() {
        let c = cfg(json!({
            "sample_size": 4, "in_channels": 1, "out_channels": 2,
            "block_out_channels": [8], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
            "mid_block_type": null
        }));
        let f = forward_flops(&c, 4, 4);
        // conv_in 1→8: 2·1·8·9·16 = 2304; down resnet 8→8: 2·(2·8·8·9·16) = 36864;
        // up resnets (2 layers, each 16→8 with a 1×1 shortcut): 2·(2·16·8·9·16 + 2·8·8·9·16
        // + 2·16·8·16) = 2·(36864 + 18432 + 4096) = 118784; conv_out 8→2: 2·8·2·9·16 = 4608.
        assert_eq!(f.conv, 2304 + 36864 + 118784 + 4608);
        // time MLP 8→32→32: 2·8·32 + 2·32·32 = 2560; three ResNet time projections 32→8: 3·512.
        assert_eq!(f.linear, 2560 + 3 * 512);
        assert_eq!(f.attention, 0);
    }

    /// The same UNet with its down ResNet pruned to 4 inner channels (`diffuse prune`).
    #[test]
    fn flops_of_a_pruned_resnet_by_hand() {
        let c = cfg(json!({
            "sample_size": 4, "in_channels": 1, "out_channels": 2,
            "block_out_channels": [8], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
            "mid_block_type": null,
            "diffuse_resnet_inner_channels": {"down_blocks.0.resnets.0": 4}
        }));
        let f = forward_flops(&c, 4, 4);
        // down resnet 8→4→8: 2·8·4·9·16 + 2·4·8·9·16 = 18432 instead of 36864.
        assert_eq!(f.conv, 2304 + 18432 + 118784 + 4608);
        // its time projection 32→4: 256 instead of 512.
        assert_eq!(f.linear, 2560 + 2 * 512 + 256);
    }

    /// Attention terms: q/k/v/out linears over L positions and the two L×L matmuls.
    #[test]
    fn flops_of_attention_by_hand() {
        let base = json!({
            "sample_size": 4, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [8], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
            "mid_block_type": null, "attention_head_dim": 4
        });
        let mut with_attn = base.clone();
        with_attn["down_block_types"] = json!(["AttnDownBlock2D"]);
        let plain = forward_flops(&cfg(base), 4, 4);
        let attn = forward_flops(&cfg(with_attn), 4, 4);
        // One attention at 8 channels (2 heads of 4), L = 16: linears 2·8·8·(3·16 + 16) = 8192;
        // q·kᵀ and p·v: 2 · 2·16·16·8 = 8192.
        assert_eq!(attn.linear - plain.linear, 8192);
        assert_eq!(attn.attention, 8192);
        assert_eq!(attn.conv, plain.conv);
        // A mid block adds two ResNets (8→8 at 4×4) and one attention.
        let mut mid = json!({
            "sample_size": 4, "in_channels": 1, "out_channels": 1,
            "block_out_channels": [8], "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
            "attention_head_dim": 4
        });
        let with_mid = forward_flops(&cfg(mid.clone()), 4, 4);
        assert_eq!(with_mid.conv - plain.conv, 2 * 2 * (2 * 8 * 8 * 9 * 16));
        assert_eq!(with_mid.attention, 8192);
        mid["add_attention"] = json!(false);
        assert_eq!(forward_flops(&cfg(mid), 4, 4).attention, 0);
    }

    #[test]
    fn flops_scale_with_resolution_and_match_torch_counter() {
        let c = preset("mnist32").unwrap();
        let f32x32 = forward_flops(&c, 32, 32);
        let f64x64 = forward_flops(&c, 64, 64);
        // Convs grow 4×, attention (L²) 16×; the time MLP does not grow.
        assert_eq!(f64x64.conv, 4 * f32x32.conv);
        assert_eq!(f64x64.attention, 16 * f32x32.attention);
        // torch.utils.flop_counter.FlopCounterMode on diffusers' UNet2DModel of these configs
        // (bench/torch_bench.py, `flops_forward_per_image_torch_counter`) counts the same.
        assert_eq!(f32x32.total(), 2_887_057_408);
        let c = preset("cifar64").unwrap();
        assert_eq!(forward_flops(&c, 64, 64).total(), 3_364_306_944);
    }

    /// torch.utils.flop_counter.FlopCounterMode on diffusers' DiTTransformer2DModel (torch
    /// 2.15, diffusers 0.42.1) of these configs: 165,642,240 and 53,248 FLOPs.
    #[test]
    fn dit_flops_match_torch_counter() {
        let c = |v: Value| {
            diffuse_models::config::DiTTransformer2DConfig::from_json_str(&v.to_string()).unwrap()
        };
        let a = c(
            json!({"num_attention_heads": 4, "attention_head_dim": 32, "in_channels": 1,
            "out_channels": 1, "num_layers": 6, "sample_size": 16, "patch_size": 2,
            "num_embeds_ada_norm": 10}),
        );
        let fa = dit_forward_flops(&a, 16, 16);
        assert_eq!(
            (fa.conv, fa.linear, fa.attention),
            (65_536, 152_993_792, 12_582_912)
        );
        let b = c(
            json!({"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 1,
            "out_channels": 2, "num_layers": 1, "sample_size": 8, "patch_size": 4,
            "num_embeds_ada_norm": 10}),
        );
        assert_eq!(dit_forward_flops(&b, 8, 8).total(), 53_248);
    }

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

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[1.0, 2.0, 10.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), 3.0);
    }
}
