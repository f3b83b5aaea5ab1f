//! `diffuse quantize`: a pipeline (or UNet/DiT model) folder with every conv and linear weight
//! of its denoising network stored as per-output-channel symmetric int8 (library:
//! `diffuse_models::quant`). The output loads in `sample`, `serve` and `eval` like any other
//! folder. Also [`derive_folder`], the output side shared with `diffuse prune`.

use anyhow::{bail, Context, Result};
use diffuse_models::weights::{copy_model_folder, resolve_model_folder, weight_files};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline folder or a UNet/DiT model folder (f32, f16 or bf16 weights).
    #[arg(long)]
    model: PathBuf,
    /// Where to write: a new folder of the same layout (a pipeline gets the quantised network
    /// as its only one: the EMA weights unless --no-ema, with scheduler/, vae/ and
    /// model_index.json copied).
    #[arg(long)]
    output: PathBuf,
    /// Quantise `unet/` (`transformer/`) even when the pipeline has EMA weights.
    #[arg(long)]
    no_ema: bool,
}

pub fn run(args: Args) -> Result<()> {
    let (summary, net_dir) = derive_folder(&args.model, &args.output, args.no_ema, |src, dst| {
        Ok(diffuse_models::quant::quantize_model_folder(src, dst)?)
    })?;
    let bytes = |d: &Path| -> u64 {
        weight_files(d)
            .map(|fs| {
                fs.iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    eprintln!(
        "wrote {}: {} conv/linear weights as int8 + per-channel f32 scales, {} tensors kept as \
         f32; max |w − ŵ| = {:.3} × scale/2; network weights {} → {} bytes",
        args.output.display(),
        summary.quantized,
        summary.kept,
        summary.max_error_in_half_scales,
        bytes(&net_dir.0),
        bytes(&net_dir.1),
    );
    Ok(())
}

/// Writes `output` as a copy of the pipeline or model folder `model` whose denoising network
/// is what `make(source network folder, output network folder)` writes. For a pipeline the
/// network that sampling loads (EMA unless `no_ema`) becomes the output's only one (`unet/` or
/// `transformer/`); `model_index.json`, `scheduler/` and `vae/` are copied. Everything goes
/// into a temporary folder beside `output` that is renamed into place at the end, so `output`
/// is complete or absent; an existing `output` is refused. Returns `make`'s value and the
/// (source, output) network folders.
pub(crate) fn derive_folder<T>(
    model: &Path,
    output: &Path,
    no_ema: bool,
    make: impl FnOnce(&Path, &Path) -> Result<T>,
) -> Result<(T, (PathBuf, PathBuf))> {
    if output.exists() {
        bail!(
            "--output {}: already exists; give a new folder (nothing was written)",
            output.display()
        );
    }
    let folder = resolve_model_folder(model)?;
    let name = output
        .file_name()
        .with_context(|| format!("--output {}: not a folder name", output.display()))?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    let src_net = folder.net_dir_to_load(no_ema).to_path_buf();
    let result = (|| -> Result<(T, PathBuf)> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let rel_net = if folder.pipeline_class.is_some() {
            let index = model.join("model_index.json");
            diffuse_data::fs::write_atomic(&tmp.join("model_index.json"), &std::fs::read(&index)?)?;
            let sched = model.join("scheduler");
            if sched.is_dir() {
                diffuse_data::fs::copy_files(&sched, &tmp.join("scheduler"))?;
            }
            if let Some(vae) = &folder.vae_dir {
                copy_model_folder(vae, &tmp.join("vae"))?;
            }
            // A text-to-image pipeline's tokenizer, and its text encoder with the same choice of
            // EMA weights as the network.
            if let Some(tok) = &folder.tokenizer_dir {
                diffuse_data::fs::copy_files(tok, &tmp.join("tokenizer"))?;
            }
            if let Some(enc) = folder.text_encoder_dir_to_load(no_ema) {
                diffuse_data::fs::copy_files(enc, &tmp.join("text_encoder"))?;
            }
            PathBuf::from(folder.net_dir.file_name().context("a pipeline component")?)
        } else {
            PathBuf::new()
        };
        let value = make(&src_net, &tmp.join(&rel_net))?;
        Ok((value, rel_net))
    })();
    match result {
        Ok((value, rel_net)) => {
            std::fs::rename(&tmp, output).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), output.display())
            })?;
            if let Ok(d) = std::fs::File::open(&parent) {
                let _ = d.sync_all();
            }
            Ok((value, (src_net, output.join(rel_net))))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
