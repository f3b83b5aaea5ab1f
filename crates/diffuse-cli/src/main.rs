//! `diffuse`: the command-line face of the diffuse libraries.
//!
//! Thin by design (ripgrep `crates/core/main.rs` style): parse arguments, turn them into a
//! validated plan, call a library, and map errors to a one-line message and an exit code.
// The doc comments of the argument structs are clap's `--help` text, written for a terminal:
// `[vae]` is a TOML section and `<class>` a placeholder, not an intra-doc link or an HTML tag.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod bench_cmd;
mod common;
mod convert_cmd;
mod data_cmd;
mod distill_cmd;
mod edit_cmd;
mod ema_cmd;
mod eval_cmd;
mod export_cmd;
mod noise_cmd;
mod prune_cmd;
mod quantize_cmd;
mod sample_cmd;
mod samplers_cmd;
mod schedule_cmd;
mod serve_cmd;
mod threads;
mod train_cmd;
mod training;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "diffuse",
    version,
    about = "Train, sample, evaluate and serve image diffusion models",
    long_about = "diffuse: the whole life of an image diffusion model in one binary.\n\
                  Reads and writes the Hugging Face diffusers format."
)]
struct Cli {
    /// CPU threads for every command (default: all cores).
    #[arg(long, global = true, env = "DIFFUSE_THREADS")]
    threads: Option<usize>,
    /// Resolve hub ids (ORG/NAME) from the local Hugging Face cache only, never download (as
    /// HF_HUB_OFFLINE=1 does).
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a scheduler's timesteps, ᾱ and σ as diffusers computes them.
    Schedule(schedule_cmd::Args),
    /// Draw the forward process: an image noised at several timesteps, as one PNG strip.
    Noise(noise_cmd::Args),
    /// Generate images from a diffusers pipeline or model (UNet, DiT) folder.
    Sample(sample_cmd::Args),
    /// Invert an image to the x_T a deterministic sampler turns back into it (DDIM inversion).
    Invert(edit_cmd::InvertArgs),
    /// Frames between two images or two seeds (slerp in x_T): a PNG strip and a GIF.
    Interpolate(edit_cmd::InterpolateArgs),
    /// Which samplers drive which models: the table, or one model's samplers and defaults.
    Samplers(samplers_cmd::Args),
    /// Post-hoc EMA (EDM2): a finished run's EMA of any width σ_rel, from its snapshots.
    Ema(ema_cmd::Args),
    /// Re-save a diffusers UNet, DiT or pipeline folder (e.g. as f16), in the diffusers layout.
    Convert(convert_cmd::Args),
    /// Export a model's network to another format: `onnx`.
    #[command(subcommand)]
    Export(export_cmd::Command),
    /// Store a pipeline's UNet/DiT conv and linear weights as per-channel int8 (4× smaller).
    Quantize(quantize_cmd::Args),
    /// Remove the weakest inner channels of a UNet's ResNet blocks (then fine-tune with train).
    Prune(prune_cmd::Args),
    /// Serve models over HTTP: generation API with batching, web page, metrics.
    Serve(serve_cmd::Args),
    /// Train a UNet or DiT (or, with a [vae] section, an AutoencoderKL) from a TOML config.
    Train(train_cmd::Args),
    /// Few-step students of a teacher pipeline: `reflow` (2-rectified flow), `progressive`
    /// (progressive distillation).
    #[command(subcommand)]
    Distill(distill_cmd::Command),
    /// Evaluate generated images: FID, KID, precision/recall, class accuracy, IS.
    Eval(Box<eval_cmd::Args>),
    /// Data sets: list the known ones, preview what the loader gives.
    #[command(subcommand)]
    Data(data_cmd::Command),
    /// Time a UNet on this machine: forward, training step, DDIM sampling, FLOP/s, peak RSS.
    Bench(bench_cmd::Args),
}

/// Exit codes: 0 ok, 1 error (one line on stderr), 2 usage error (clap).
fn main() -> ExitCode {
    diffuse_models::kernels::tune_allocator();
    let cli = Cli::parse();
    if let Err(e) = threads::configure(cli.threads) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    diffuse_models::hub::set_offline(cli.offline);
    if !matches!(cli.command, Command::Serve(_)) {
        common::install_stop_handler();
    }
    let result = match cli.command {
        Command::Schedule(args) => schedule_cmd::run(args),
        Command::Noise(args) => noise_cmd::run(args),
        Command::Sample(args) => sample_cmd::run(args),
        Command::Invert(args) => edit_cmd::invert(args),
        Command::Interpolate(args) => edit_cmd::interpolate(args),
        Command::Samplers(args) => samplers_cmd::run(args),
        Command::Ema(args) => ema_cmd::run(args),
        Command::Convert(args) => convert_cmd::run(args),
        Command::Export(cmd) => export_cmd::run(cmd),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::Prune(args) => prune_cmd::run(args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Data(cmd) => data_cmd::run(cmd),
        Command::Train(args) => train_cmd::run(args),
        Command::Distill(cmd) => distill_cmd::run(cmd),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, no backtrace. A cause its error already
            // shows (`{path}: {source}` with `#[source]`) is not repeated.
            let mut msg = String::new();
            for c in e.chain().map(|c| c.to_string()) {
                if msg.is_empty() {
                    msg = c;
                } else if !msg.ends_with(&c) {
                    msg = format!("{msg}: {c}");
                }
            }
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
