//! `diffuse ema`: post-hoc EMA (EDM2) — any EMA width of a finished run, reconstructed from the
//! snapshots `train.posthoc_ema` kept ([`diffuse_train::phema`]).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The run's output folder (with `phema/` snapshots: train with `train.posthoc_ema`).
    #[arg(long)]
    run: PathBuf,
    /// The EMA's relative width σ_rel, in (0, 0.288): EDM2's best are 0.05–0.2; smaller
    /// averages fewer recent steps.
    #[arg(long)]
    sigma_rel: f64,
    /// The training step to reconstruct at (default: the last snapshot's); only snapshots up
    /// to it are used.
    #[arg(long)]
    step: Option<u64>,
    /// The pipeline folder to write: the run's pipeline with the reconstruction as its EMA
    /// weights (what `sample`, `eval` and `serve` use).
    #[arg(long)]
    output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let r = diffuse_train::phema::reconstruct(&args.run, args.sigma_rel, args.step)?;
    diffuse_train::phema::write_pipeline(&args.run, &r, &args.output)?;
    // The snapshots that carry weight (the rest get |c| < 1e-3).
    let terms: Vec<String> = r
        .coefficients
        .iter()
        .filter(|c| c.2.abs() >= 1e-3)
        .map(|(step, s, c)| format!("{c:+.4}·(step {step}, σ_rel {s})"))
        .collect();
    eprintln!(
        "σ_rel {} at step {} from {} snapshots: {}",
        r.sigma_rel,
        r.step,
        r.coefficients.len(),
        terms.join(" ")
    );
    println!("{}", args.output.display());
    Ok(())
}
