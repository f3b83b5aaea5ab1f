//! `diffuse samplers`: which samplers drive which models ([`diffuse_core::compat`]): the whole
//! table (as in docs/samplers.md), or one model's objective, defaults and samplers.

use anyhow::Result;
use diffuse_core::compat;
use diffuse_models::pipeline::{LoadOptions, Pipeline};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A pipeline or model folder: list its objective, its default sampler, steps and guidance,
    /// and how each sampler drives it. Without it: the whole table, as markdown.
    #[arg(long)]
    model: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let Some(dir) = &args.model else {
        print!("{}", compat::table_markdown());
        return Ok(());
    };
    let pipe = Pipeline::load(dir, &LoadOptions::default(), &candle_core::Device::Cpu)?;
    println!(
        "{}: objective {}; default sampler {}, {} steps, guidance {}",
        dir.display(),
        pipe.objective(),
        pipe.default_sampler,
        pipe.default_steps(),
        pipe.default_guidance()
    );
    for cell in pipe.samplers() {
        println!("  {:<10} {}", cell.sampler, cell.describe());
    }
    Ok(())
}
