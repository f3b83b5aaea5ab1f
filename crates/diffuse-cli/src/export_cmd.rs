//! `diffuse export onnx`: a model or pipeline folder's network (denoiser, VAE decoder or text
//! encoder) as an ONNX file written by diffuse itself (`diffuse_models::onnx`).

use anyhow::{Context, Result};
use diffuse_models::onnx::{export_folder, signature, to_bytes, Component};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the denoising network (UNet, text-conditional UNet or DiT), a latent pipeline's
    /// VAE decoder or a Stable Diffusion pipeline's text encoder as one self-contained .onnx
    /// file (opset 17, dynamic batch, time embedding in the graph).
    Onnx(OnnxArgs),
}

#[derive(clap::Args)]
pub struct OnnxArgs {
    /// A diffusers pipeline folder or model folder (UNet, DiT, AutoencoderKL or
    /// CLIPTextModel).
    #[arg(long)]
    model: PathBuf,
    /// The .onnx file to write.
    #[arg(long)]
    output: PathBuf,
    /// What to export: denoiser (the pipeline's UNet or DiT; a bare AutoencoderKL folder's
    /// decoder, a bare CLIPTextModel folder's encoder), unet, transformer (dit), vae-decoder
    /// or text-encoder (a Stable Diffusion pipeline's text_encoder/).
    #[arg(long, default_value = "denoiser")]
    component: String,
    /// Export unet/ (transformer/) even when the folder has EMA weights in unet_ema/.
    #[arg(long)]
    no_ema: bool,
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Onnx(args) => onnx(args),
    }
}

fn onnx(args: OnnxArgs) -> Result<()> {
    let component: Component = args.component.parse()?;
    if args.output.is_dir() {
        anyhow::bail!(
            "--output {} is a folder; give the path of the .onnx file to write",
            args.output.display()
        );
    }
    let exported = export_folder(&args.model, component, args.no_ema)?;
    let bytes = to_bytes(&exported.model);
    if let Some(dir) = args.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    diffuse_data::fs::write_atomic(&args.output, &bytes)?;
    eprintln!(
        "wrote {} ({}, {:.1} MB) from {}: {}",
        args.output.display(),
        exported.what,
        bytes.len() as f64 / 1e6,
        exported.source.display(),
        signature(&exported.model)
    );
    Ok(())
}
