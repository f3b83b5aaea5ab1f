//! `diffuse convert`: load a diffusers UNet (or pipeline) folder and write it back out in the
//! diffusers layout, optionally in another dtype. Proves the round trip and halves sizes.

use anyhow::{Context, Result};
use candle_core::Device;
use diffuse_models::weights::{
    load_into, parse_dtype, read_unet_config, resolve_model_folder, save_unet, weight_files,
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline folder or UNet folder.
    #[arg(long)]
    model: PathBuf,
    /// Where to write (same layout as the input: a pipeline folder or a UNet folder).
    #[arg(long)]
    output: PathBuf,
    /// Tensor dtype on disk: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(args: Args) -> Result<()> {
    let dtype = parse_dtype(&args.dtype)?;
    let folder = resolve_model_folder(&args.model)?;
    let config = read_unet_config(&folder.unet_dir)?;
    let (_, varmap) = diffuse_models::weights::build_unet(&config, &Device::Cpu)?;
    let unexpected = load_into(&varmap, &weight_files(&folder.unet_dir)?)?;
    if !unexpected.is_empty() {
        eprintln!(
            "note: {} tensors in the input are not used by UNet2DModel and are dropped: {}",
            unexpected.len(),
            unexpected.join(", ")
        );
    }
    let unet_out = if folder.pipeline_class.is_some() {
        // Copy the pipeline's other parts as they are.
        std::fs::create_dir_all(args.output.join("scheduler"))
            .with_context(|| format!("cannot create {}", args.output.display()))?;
        for rel in ["model_index.json", "scheduler/scheduler_config.json"] {
            let src = args.model.join(rel);
            if src.exists() {
                let bytes = std::fs::read(&src)?;
                diffuse_data::fs::write_atomic(&args.output.join(rel), &bytes)?;
            }
        }
        args.output.join("unet")
    } else {
        args.output.clone()
    };
    save_unet(&config, &varmap, &unet_out, dtype)?;
    let n: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!(
        "wrote {} ({n} parameters, {})",
        args.output.display(),
        args.dtype
    );
    Ok(())
}
