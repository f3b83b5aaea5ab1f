//! `diffuse noise`: the forward-process picture — one image noised at several timesteps with
//! the same ε, laid out left to right in one PNG.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use diffuse_core::config::SchedulerConfig;
use diffuse_core::noising::add_noise;
use diffuse_core::rng::{NoiseSource, SeededNoise};
use diffuse_core::schedule::NoiseSchedule;
use diffuse_data::image_io;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The image to noise (PNG or JPEG; gray or colour).
    #[arg(long)]
    image: PathBuf,
    /// Comma-separated training timesteps.
    #[arg(long, value_delimiter = ',', default_value = "0,100,250,500,750,999")]
    timesteps: Vec<usize>,
    /// The PNG strip to write.
    #[arg(long)]
    output: PathBuf,
    /// Seed of the noise ε.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A diffusers scheduler_config.json for the β schedule (default: DDPM linear, T = 1000).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the β schedule: linear, scaled_linear, squaredcos_cap_v2, sigmoid, laplace, exp.
    #[arg(long)]
    beta_schedule: Option<String>,
    /// Enlarge each tile by this integer factor (nearest neighbour), for small images.
    #[arg(long, default_value_t = 1)]
    scale: usize,
}

pub fn run(args: Args) -> Result<()> {
    let mut map = match &args.config {
        Some(p) => crate::common::read_json_object(p)?,
        None => serde_json::Map::from_iter([("_class_name".into(), "DDPMScheduler".into())]),
    };
    if let Some(b) = &args.beta_schedule {
        map.insert("beta_schedule".into(), b.clone().into());
    }
    let config = SchedulerConfig::from_json_map(&map)?;
    let schedule = NoiseSchedule::from_config(&config)?;
    if args.timesteps.is_empty() {
        bail!("--timesteps: give at least one timestep");
    }
    if let Some(&t) = args.timesteps.iter().find(|&&t| t >= schedule.len()) {
        bail!(
            "--timesteps: {t} is out of range; the schedule has timesteps 0..={}",
            schedule.len() - 1
        );
    }
    if args.scale == 0 || args.scale > 64 {
        bail!("--scale must be in 1..=64");
    }

    let dev = Device::Cpu;
    let x0 = image_io::load_image(&args.image, &dev)?; // [1, c, h, w]
    let n = args.timesteps.len();
    let eps = SeededNoise::new(args.seed, 1).randn(x0.shape(), x0.dtype(), &dev)?;
    let x0s = x0.repeat((n, 1, 1, 1))?; // [n, c, h, w]
    let epss = eps.repeat((n, 1, 1, 1))?;
    let noisy = add_noise(&schedule, &x0s, &epss, &args.timesteps)?;
    let noisy = if args.scale > 1 {
        let (_, _, h, w) = noisy.dims4()?;
        noisy.upsample_nearest2d(h * args.scale, w * args.scale)?
    } else {
        noisy
    };
    let strip: Tensor = image_io::grid(&noisy, n, 2 * args.scale, 1.0)?;
    image_io::save_png(&strip, &args.output)?;
    let (_, c, h, w) = strip.dims4()?;
    eprintln!(
        "wrote {} ({w}×{h}, {} channel{}): timesteps {:?}",
        args.output.display(),
        c,
        if c == 1 { "" } else { "s" },
        args.timesteps
    );
    Ok(())
}
