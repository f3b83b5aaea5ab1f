//! `diffuse prune`: structured pruning of the inner channels of a UNet's ResNet blocks by
//! filter magnitude (library: `diffuse_models::prune`), written as a new pipeline (or model)
//! folder. Fine-tune the result with `diffuse train` and `train.init_from` (e.g.
//! `examples/mnist-eps-finetune.toml`); the pruned folder is diffuse-only (its config carries
//! `diffuse_resnet_inner_channels`).

use anyhow::Result;
use diffuse_models::prune::{prune_model_folder, Criterion};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A diffusers pipeline folder or UNet model folder.
    #[arg(long)]
    model: PathBuf,
    /// Where to write: a new folder of the same layout (a pipeline gets the pruned network as
    /// its only one: the EMA weights unless --no-ema, with scheduler/, vae/ and
    /// model_index.json copied).
    #[arg(long)]
    output: PathBuf,
    /// Fraction of each ResNet block's inner channels to remove, the same number in every
    /// GroupNorm group (at least one channel per group stays).
    #[arg(long, default_value_t = 0.5)]
    amount: f64,
    /// Filter magnitude that ranks channels: l1 (Li et al. 2017) or l2.
    #[arg(long, default_value = "l1")]
    criterion: String,
    /// Prune `unet/` even when the pipeline has EMA weights.
    #[arg(long)]
    no_ema: bool,
}

pub fn run(args: Args) -> Result<()> {
    let criterion = Criterion::parse(&args.criterion)?;
    if !(0.0..1.0).contains(&args.amount) {
        anyhow::bail!(
            "--amount {}: must be in [0, 1) (the fraction of inner channels removed)",
            args.amount
        );
    }
    let (s, _) =
        crate::quantize_cmd::derive_folder(&args.model, &args.output, args.no_ema, |src, dst| {
            Ok(prune_model_folder(src, dst, args.amount, criterion)?)
        })?;
    for b in &s.blocks {
        eprintln!("  {}: {} → {} inner channels", b.prefix, b.before, b.after);
    }
    eprintln!(
        "wrote {}: {} ResNet blocks pruned, {} → {} parameters ({:.1} %); fine-tune it with \
         `diffuse train --config <toml without [model]> --set 'train.init_from=\"{}\"'`",
        args.output.display(),
        s.blocks.len(),
        s.params_before,
        s.params_after,
        100.0 * s.params_after as f64 / s.params_before.max(1) as f64,
        args.output.display()
    );
    Ok(())
}
