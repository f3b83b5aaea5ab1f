//! `diffuse train`: train a UNet or DiT (or, with `[vae]`, an AutoencoderKL) from a TOML config
//! into a diffusers folder, with checkpoints, exact resume, a progress bar and a JSONL metrics
//! log.
//! Ctrl-C saves and exits. The output folder is one run's ([`RunFolder`]): locked while it
//! trains, and a new run over an existing one needs `--resume` or `--overwrite`.
//!
//! Data parallel, as torchrun: `--gpus N` (or `--nproc-per-node N`) starts N copies of this
//! command with torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`; `--nnodes/--node-rank/--master-addr/--master-port` for several nodes), and a
//! process that finds `WORLD_SIZE` set runs as one rank (so torchrun itself can start them).

use anyhow::{bail, Context, Result};
use diffuse_train::dist::{self, DistEnv, LaunchPlan};
use diffuse_train::trainer::{RunFolder, Start, TrainConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The training config (examples/tiny.toml, examples/mnist.toml, examples/dit-mnist.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output folder: a diffusers pipeline at the end, checkpoints in DIR/checkpoints.
    #[arg(long)]
    output: Option<PathBuf>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Continue the run in DIR from its newest valid checkpoint (its config is DIR/train.toml).
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Start over in an --output that holds a run: the old run is set aside and deleted once
    /// the new run's first checkpoint is written.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Override a config value: --set train.learning_rate=1e-3 --set data.batch_size=64
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    quiet: bool,
    /// Data parallel over N GPUs of this node: one process per GPU, gradients averaged with
    /// NCCL (the CUDA build). data.batch_size is the global batch (a multiple of N).
    #[arg(long, value_name = "N")]
    gpus: Option<usize>,
    /// Data parallel with N processes on this node on --device (cpu: all-reduce over TCP;
    /// cuda: as --gpus N).
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Nodes of a multi-node run (start `diffuse train … --node-rank K` on each).
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Where rank 0 listens for the others (its node's address for multi-node runs).
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    #[arg(long, default_value_t = dist::DEFAULT_MASTER_PORT)]
    master_port: u16,
}

/// How long ranks wait for each other at the rendezvous.
const RENDEZVOUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub fn run(args: Args) -> Result<()> {
    let rank_env = DistEnv::from_env()?;
    let launch = args.gpus.or(args.nproc_per_node);
    if let (Some(_), Some(_)) = (&rank_env, launch) {
        bail!("--gpus/--nproc-per-node start the ranks themselves; under torchrun (WORLD_SIZE is set) leave them out");
    }
    if args.gpus.is_some() && args.nproc_per_node.is_some() {
        bail!("give --gpus N or --nproc-per-node N, not both");
    }
    if args.gpus.is_some() {
        if !cfg!(feature = "cuda") {
            bail!("--gpus needs the CUDA build of diffuse: cargo build --release -p diffuse-cli --features cuda (tools/cuda/build.sh builds it on a machine without a GPU)");
        }
        if args.device != "cuda" && args.device != "cpu" {
            bail!("--gpus trains on CUDA: leave --device out");
        }
    }
    if let Some(n) = launch {
        let device = if args.gpus.is_some() {
            "cuda"
        } else {
            args.device.as_str()
        };
        return launch_ranks(n, device, &args);
    }
    if args.nnodes != 1 || args.node_rank != 0 {
        bail!("--nnodes/--node-rank go with --gpus N (or --nproc-per-node N)");
    }
    let (output, config_path, resume) = match (&args.resume, &args.output, &args.config) {
        (Some(dir), _, cfg) => (
            dir.clone(),
            cfg.clone().unwrap_or_else(|| dir.join("train.toml")),
            true,
        ),
        (None, Some(out), Some(cfg)) => (out.clone(), cfg.clone(), false),
        _ => bail!("give --config FILE --output DIR, or --resume DIR"),
    };
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let mut config = TrainConfig::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?;
    for s in &args.set {
        config.set(s)?;
    }
    if let Some(n) = args.max_steps {
        config.train.max_steps = n;
    }
    if let Some(s) = args.seed {
        config.train.seed = s;
    }
    // What can be checked without the data, before the output folder is claimed.
    config.check_text()?;
    let start_as = match (resume, args.overwrite) {
        (true, _) => Start::Resume,
        (false, true) => Start::Overwrite,
        (false, false) => Start::New,
    };
    let stop = crate::common::stop_flag("saving a checkpoint after this step");
    let start = Instant::now();
    let (outcome, folder) = match &rank_env {
        None => {
            let device = crate::common::device(&args.device)?;
            let mut folder = RunFolder::claim(&output, start_as, "diffuse train")?;
            let outcome =
                crate::training::run_training(&config, &mut folder, &device, args.quiet, &stop)?;
            (outcome, folder)
        }
        Some(env) => {
            // One rank: its GPU is LOCAL_RANK on its node.
            let device = match args.device.as_str() {
                "cuda" => candle_core::Device::new_cuda(env.local_rank).with_context(|| {
                    format!("rank {}: CUDA device {}", env.rank, env.local_rank)
                })?,
                other => crate::common::device(other)?,
            };
            let comm = dist::connect(env, &device, RENDEZVOUS_TIMEOUT)?;
            let quiet = args.quiet || env.rank != 0;
            // Rank 0 claims the folder; the others hear whether it could.
            let mut folder = RunFolder::claim_rank(&output, start_as, "diffuse train", &*comm)?;
            let outcome = crate::training::run_training_with(
                &config,
                &mut folder,
                &device,
                quiet,
                &stop,
                &*comm,
            )?;
            if env.rank != 0 {
                return Ok(());
            }
            (outcome, folder)
        }
    };
    // A time budget's plan may end the run before `train.max_steps`.
    let stopped = outcome.steps < outcome.max_steps;
    let next = if stopped {
        format!("continue it: diffuse train --resume {}", output.display())
    } else if config.vae.is_some() {
        format!(
            "encode a data set with it: diffuse data encode --vae {} --data …",
            output.join("vae_ema").display()
        )
    } else {
        format!("sample it: diffuse sample --model {}", output.display())
    };
    // What the folder holds, which is what the user will load.
    let weights = match folder.weights_step() {
        Some(w) => format!("its weights are at step {w}"),
        None => "no weights written".to_string(),
    };
    let (steps, max) = (outcome.steps, outcome.max_steps);
    // No step taken: a resumed run that was already at (or past) max_steps.
    let idle = outcome.last_loss.is_nan();
    let what = match (stopped, idle) {
        (true, _) => format!("stopped at step {steps} of {max}"),
        (false, true) => format!("nothing to train: already at step {steps} (max_steps {max})"),
        (false, false) => format!(
            "trained to step {steps} (last loss {:.4})",
            outcome.last_loss
        ),
    };
    eprintln!(
        "{what} in {:.1} s → {}: {weights} ({next})",
        start.elapsed().as_secs_f64(),
        output.display(),
    );
    Ok(())
}

/// Starts `n` ranks of this very command on this node (torchrun's job) and waits for them.
fn launch_ranks(n: usize, device: &str, args: &Args) -> Result<()> {
    let plan = LaunchPlan {
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        nproc_per_node: n,
        master_addr: args.master_addr.clone(),
        master_port: args.master_port,
    };
    let exe = std::env::current_exe().context("cannot find the diffuse binary to start ranks")?;
    let argv = dist::launch::rank_args(std::env::args().skip(1), device);
    let _stop = crate::common::stop_flag("the ranks save a checkpoint after this step");
    Ok(dist::launch::launch_ranks(
        &plan, &exe, &argv, device, args.quiet,
    )?)
}
