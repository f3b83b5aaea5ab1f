//! `diffuse bench`: time a UNet2DModel on this machine (library: `diffuse_bench`).

use anyhow::{Context, Result};
use diffuse_bench::{self as bench, BenchOptions, Phase};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A built-in model: mnist32 (1×32×32, 6.47 M parameters), cifar64 (3×64×64, 4.65 M), tiny.
    #[arg(long, default_value = "mnist32", conflicts_with = "config")]
    preset: String,
    /// A diffusers UNet2DModel config.json (or a folder holding one) instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Timed runs per case (medians, min and max over these).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Untimed runs before each forward and training case.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs of the sampling loop (default: --runs).
    #[arg(long)]
    sample_runs: Option<usize>,
    /// Untimed sampling runs before them (each is already --sample-steps forwards).
    #[arg(long, default_value_t = 1)]
    sample_warmup: usize,
    /// Forward batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 32)]
    train_batch: usize,
    /// Images sampled together by DDIM.
    #[arg(long, default_value_t = 16)]
    sample_images: usize,
    #[arg(long, default_value_t = 50)]
    sample_steps: usize,
    /// Only these cases, comma-separated: forward, train, sample (default: all). Peak RSS
    /// is per case; run `--only train` alone for a peak that nothing else can have raised.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Train with gradient checkpointing (`train.gradient_checkpointing`): the training case
    /// becomes `train_bN_ckpt`. Compare peak RSS with `--only train`, one process per case.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// AdamW learning rate of the training step.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Write the weights as a diffusers DDIM pipeline folder (PyTorch loads the same model).
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Write the check tensors (forward on fixed inputs, first DDIM output, training batch).
    #[arg(long)]
    save_check: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, or bf16: forward and sampling on bf16 weights, the training step with mixed
    /// precision (bf16 forward over f32 master weights), as `train.mixed_precision = "bf16"`.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Measure the convolution algorithms (im2col, Winograd F(2×2), F(4×4)) on this model's
    /// layer shapes at --batches and --train-batch, and keep the fastest per shape and pass in
    /// the table every later diffuse process reads ($DIFFUSE_CONV_TABLE, else
    /// ~/.cache/diffuse/conv-table.json), instead of the built-in rule; then exit.
    #[arg(long)]
    tune_convs: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dev = crate::common::device(&args.device)?;
    let (name, config) = match &args.config {
        Some(p) => {
            let cfg = if p.is_dir() {
                diffuse_models::weights::read_unet_config(p)?
            } else {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                diffuse_models::UNet2DConfig::from_json_str(&text)
                    .with_context(|| p.display().to_string())?
            };
            (p.display().to_string(), cfg)
        }
        None => (args.preset.clone(), bench::preset(&args.preset)?),
    };
    let mut opts = BenchOptions::new(&name, config);
    opts.runs = args.runs;
    opts.warmup = args.warmup;
    opts.sample_runs = args.sample_runs.unwrap_or(args.runs);
    opts.sample_warmup = args.sample_warmup;
    opts.forward_batches = args.batches;
    opts.train_batch = args.train_batch;
    opts.sample_images = args.sample_images;
    opts.sample_steps = args.sample_steps;
    if !args.only.is_empty() {
        opts.phases = args
            .only
            .iter()
            .map(|s| Phase::parse(s.trim()))
            .collect::<diffuse_bench::Result<_>>()?;
    }
    opts.seed = args.seed;
    opts.gradient_checkpointing = args.gradient_checkpointing;
    opts.learning_rate = args.lr;
    opts.save_weights = args.save_weights;
    opts.save_check = args.save_check;
    opts.dtype = diffuse_models::weights::parse_dtype(&args.dtype)
        .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
    if args.tune_convs {
        return tune_convs(&opts, &dev, args.runs);
    }
    let report = bench::run(&opts, &dev, &mut |line| eprintln!("{line}"))?;
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        diffuse_data::fs::write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// `--tune-convs`: measure, merge into the table file, print what was chosen.
fn tune_convs(opts: &BenchOptions, dev: &candle_core::Device, runs: usize) -> Result<()> {
    use diffuse_models::kernels::tune;
    let path = tune::table_path()
        .context("--tune-convs: no place for the table: set DIFFUSE_CONV_TABLE or HOME")?;
    let entries = bench::tune_convs(opts, dev, runs, &mut |line| eprintln!("{line}"))?;
    print!("{}", tune::markdown(&entries));
    let n = tune::save(entries, &diffuse_bench::machine_peak(1).cpu_model, &path)?;
    eprintln!(
        "wrote {} ({n} entries); remove it to go back to the built-in rule",
        path.display()
    );
    Ok(())
}
