//! `diffuse convert`: load a diffusers UNet or DiT (or pipeline, latent ones with their VAE)
//! folder and write it back out in the diffusers layout, optionally in another dtype. Proves the
//! round trip and halves sizes. A text-to-image pipeline's `tokenizer/` and `text_encoder/` are
//! copied as they are.

use anyhow::{Context, Result};
use candle_core::Device;
use diffuse_models::weights::{
    build, load_into, parse_dtype, parse_size, read_config, resolve_model_folder, save_as,
    weight_files, DiffusersModel, Layout,
};
use diffuse_models::{AutoencoderKL, Network};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline folder or model (UNet, DiT) folder.
    #[arg(long)]
    model: PathBuf,
    /// Where to write (same layout as the input: a pipeline folder or a model folder).
    #[arg(long)]
    output: PathBuf,
    /// Tensor dtype on disk: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Write diffusers' variant files (`--variant fp16`: diffusion_pytorch_model.fp16.safetensors),
    /// which `from_pretrained(..., variant="fp16")` loads.
    #[arg(long)]
    variant: Option<String>,
    /// Split the weights into shards of at most this size (e.g. 10GB, 500MB, 2GiB), with an
    /// index, as `save_pretrained(max_shard_size=...)` does.
    #[arg(long)]
    max_shard_size: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let layout = Layout {
        dtype: parse_dtype(&args.dtype)?,
        variant: args.variant.clone(),
        max_shard_size: match &args.max_shard_size {
            Some(s) => Some(parse_size(s).context("--max-shard-size")?),
            None => None,
        },
    };
    let folder = resolve_model_folder(&args.model)?;
    let unet_out = if folder.pipeline_class.is_some() {
        // Copy the pipeline's other parts as they are.
        std::fs::create_dir_all(args.output.join("scheduler"))
            .with_context(|| format!("cannot create {}", args.output.display()))?;
        for rel in ["model_index.json", "scheduler/scheduler_config.json"] {
            let src = folder.root.join(rel);
            if src.exists() {
                let bytes = std::fs::read(&src)?;
                diffuse_data::fs::write_atomic(&args.output.join(rel), &bytes)?;
            }
        }
        args.output
            .join(folder.net_dir.file_name().context("a pipeline component")?)
    } else {
        args.output.clone()
    };
    let mut n = resave::<Network>(&folder.net_dir, &unet_out, &layout)?;
    if let Some(vae) = &folder.vae_dir {
        n += resave::<AutoencoderKL>(vae, &args.output.join("vae"), &layout)?;
    }
    // A text-to-image pipeline's tokenizer and text encoder (transformers' files) as they are.
    for dir in [&folder.tokenizer_dir, &folder.text_encoder_dir]
        .into_iter()
        .flatten()
    {
        let name = dir.file_name().context("a pipeline component")?;
        diffuse_data::fs::copy_files(dir, &args.output.join(name))?;
    }
    eprintln!(
        "wrote {} ({n} parameters, {})",
        args.output.display(),
        args.dtype
    );
    Ok(())
}

/// Loads model folder `src` (noting tensors the model does not use) and saves it to `dst`;
/// returns the parameter count.
fn resave<M: DiffusersModel>(src: &Path, dst: &Path, layout: &Layout) -> Result<usize> {
    let config = read_config::<M>(src)?;
    let (_, varmap) = build::<M>(&config, &Device::Cpu)?;
    let unexpected = load_into(&varmap, &weight_files(src)?)?;
    if !unexpected.is_empty() {
        eprintln!(
            "note: {} tensors in {} are not used by the model and are dropped: {}",
            unexpected.len(),
            src.display(),
            unexpected.join(", ")
        );
    }
    save_as(&config, &varmap, dst, layout)?;
    Ok(varmap.all_vars().iter().map(|v| v.elem_count()).sum())
}
