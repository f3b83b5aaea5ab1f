//! `diffuse data`: the data sets diffuse knows, a preview grid of what the loader feeds, and
//! `encode`: a data set encoded once into a latent cache (`diffuse_models::latent_cache`).

use anyhow::{bail, Result};
use diffuse_data::datasets::{self, OpenOptions, Split};
use diffuse_data::image_io::Background;
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::{Fit, Transform};
use diffuse_models::config::SampleSize;
use diffuse_models::latent_cache::{encode_dataset, EncodeOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The known data sets and where each is (or would be) found.
    List,
    /// A grid of the first batch the loader gives (after shuffling and transforms).
    Preview {
        /// A known name (mnist, fashion-mnist, cifar10) or a folder (IDX, CIFAR-10 binary, images).
        #[arg(long, default_value = "mnist")]
        data: String,
        #[arg(long, default_value = "preview.png")]
        output: PathBuf,
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// pad, resize or center_crop
        #[arg(long, default_value = "pad", value_parser = crate::common::parse_fit)]
        fit: Fit,
        #[arg(long)]
        hflip: bool,
        #[arg(long, default_value_t = 64)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skip unreadable samples (and count them) instead of stopping.
        #[arg(long)]
        skip_bad: bool,
        /// Transparent pixels: white, black, gray, #rrggbb, or alpha (keep a 4th channel).
        #[arg(long, default_value = "white", value_parser = parse_background)]
        background: Background,
    },
    /// Decode, fit and store every image once (a pre-resized pixel cache) for data sets whose
    /// decoding costs more than a training step; train on it with `data.name = "OUTPUT"`.
    Cache(CacheArgs),
    /// Measure the loader alone (decode, fit, batch; no training step), to set against a
    /// training run's images/s and `data_wait_s`.
    Bench {
        /// A known name or a folder (as `data.name`).
        #[arg(long)]
        data: String,
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// pad, resize or center_crop
        #[arg(long, default_value = "pad", value_parser = crate::common::parse_fit)]
        fit: Fit,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Decoding threads, as `data.workers`.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Batches timed after the first.
        #[arg(long, default_value_t = 50)]
        batches: usize,
        /// Transparent pixels: white, black, gray, #rrggbb, or alpha (keep a 4th channel).
        #[arg(long, default_value = "white", value_parser = parse_background)]
        background: Background,
    },
    /// Download a public data set (mnist, fashion-mnist, cifar10, openmoji) from where its
    /// authors publish it, check its checksum and install it where `data list` looks.
    Fetch {
        /// mnist, fashion-mnist, cifar10 or openmoji.
        name: String,
        /// Install here (default: the project's data/ folder, DIFFUSE_DATA_ROOT).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Use this local file (or a folder holding the files) instead of the network.
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
    },
    /// Encode a data set with an AutoencoderKL into latent shards (mean, std) for latent
    /// diffusion training; the VAE is copied beside them with scaling_factor = 1 / std of the
    /// latents.
    Encode {
        /// An AutoencoderKL folder (config.json + weights), or a latent pipeline's `vae/`.
        #[arg(long)]
        vae: PathBuf,
        /// A known name (mnist, fashion-mnist, cifar10, openmoji) or a folder.
        #[arg(long)]
        data: String,
        /// train or test
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long)]
        output: PathBuf,
        /// Image size before encoding (default: the VAE's sample_size).
        #[arg(long)]
        size: Option<usize>,
        /// pad, resize or center_crop
        #[arg(long, default_value = "pad", value_parser = crate::common::parse_fit)]
        fit: Fit,
        /// Transparent pixels: white, black, gray or #rrggbb (as `data.background`).
        #[arg(long, default_value = "white", value_parser = parse_background)]
        background: Background,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Images per shard file.
        #[arg(long, default_value_t = 10000)]
        shard_size: usize,
        /// Encode only the first N samples.
        #[arg(long)]
        limit: Option<usize>,
        /// cpu or cuda
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        quiet: bool,
    },
}

fn fetch(
    name: &str,
    dir: Option<PathBuf>,
    from: Option<&std::path::Path>,
    quiet: bool,
) -> Result<()> {
    let mirror = std::env::var("DIFFUSE_DATA_MIRROR").ok();
    let sources = diffuse_data::fetch::sources(mirror.as_deref());
    let Some(source) = sources.iter().find(|s| s.name == name) else {
        bail!(
            "unknown data set {name:?}; `data fetch` knows: {}",
            sources
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let dir = dir.unwrap_or_else(|| datasets::fetch_dir(name));
    let _lock = crate::common::lock_folder(&dir, "diffuse data fetch")?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} · {bytes_per_sec} · eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        )
    };
    let out = diffuse_data::fetch::fetch(source, &dir, from, &mut |file, done, total| {
        bar.set_message(file.to_string());
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    eprintln!("{name} is in {} ({})", out.display(), source.notice);
    Ok(())
}

#[derive(clap::Args)]
pub struct CacheArgs {
    /// A known name or a folder (as `data.name`).
    #[arg(long)]
    pub data: String,
    #[arg(long)]
    pub output: PathBuf,
    /// The side the images are brought to (train at this `data.size`).
    #[arg(long)]
    pub size: usize,
    /// pad, resize or center_crop
    #[arg(long, default_value = "pad", value_parser = crate::common::parse_fit)]
    pub fit: Fit,
    /// Transparent pixels: white, black, gray, #rrggbb, or alpha (keep a 4th channel).
    #[arg(long, default_value = "white", value_parser = parse_background)]
    pub background: Background,
    /// Decoding threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Leave unreadable images out (they are listed in the index) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    #[arg(long)]
    pub quiet: bool,
}

fn cache(a: CacheArgs) -> Result<()> {
    let CacheArgs {
        data,
        output,
        size,
        fit,
        background,
        workers,
        skip_bad,
        quiet,
    } = a;
    let ds = open_train(&data, size, background, quiet)?;
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let _lock = crate::common::lock_folder(&output, "diffuse data cache")?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ds.len() as u64).with_style(
            ProgressStyle::with_template(
                "caching [{bar:30}] {pos}/{len} images · {per_sec} · eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        )
    };
    let start = std::time::Instant::now();
    let index = diffuse_data::datasets::pixel_cache::write_cache(
        &*ds,
        size,
        fit,
        workers,
        skip_bad,
        &output,
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    for s in &index.skipped {
        eprintln!("skipped: {s}");
    }
    eprintln!(
        "{} images at {size}×{size}×{} in {:.1} s ({} skipped) → {}; train with data.name = {:?}, data.size = {size}",
        index.count,
        index.channels,
        start.elapsed().as_secs_f64(),
        index.skipped.len(),
        output.display(),
        output.display().to_string()
    );
    Ok(())
}

/// The training split of `data` (vector data rasterised at `size`), described unless `quiet`.
fn open_train(
    data: &str,
    size: usize,
    background: Background,
    quiet: bool,
) -> Result<Box<dyn datasets::Dataset>> {
    let opts = OpenOptions {
        background,
        size: Some(size),
    };
    let ds = datasets::open_with(data, Split::Train, &opts)?;
    if !quiet {
        eprintln!("{}", ds.describe());
    }
    Ok(ds)
}

fn parse_background(s: &str) -> Result<Background, String> {
    Background::parse(s).map_err(|e| e.to_string())
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::List => {
            for k in datasets::known_datasets() {
                match &k.found {
                    Some(p) => println!(
                        "{:<14} found at {}\n{:<14} {}",
                        k.name,
                        p.display(),
                        "",
                        k.description
                    ),
                    None => println!(
                        "{:<14} not found (looked in {})\n{:<14} {}",
                        k.name,
                        k.candidates
                            .iter()
                            .map(|c| c.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        "",
                        k.description
                    ),
                }
            }
            println!("Any folder works too: IDX files, CIFAR-10 binary batches, or images (class = subfolder).");
            Ok(())
        }
        Command::Fetch {
            name,
            dir,
            from,
            quiet,
        } => fetch(&name, dir, from.as_deref(), quiet),
        Command::Cache(a) => cache(a),
        Command::Bench {
            data,
            size,
            fit,
            batch_size,
            workers,
            batches,
            background,
        } => {
            let ds = open_train(&data, size, background, false)?;
            let config = LoaderConfig {
                batch_size,
                seed: 0,
                workers,
                shuffle: true,
                skip_bad: false,
                transform: Transform {
                    size,
                    fit,
                    hflip: true,
                },
            };
            let t = diffuse_data::loader::measure(Arc::from(ds), config, batches)?;
            println!(
                "loader alone: {} images in {:.2} s = {:.1} images/s with {workers} worker{} at {size} px (first batch {:.2} s)",
                t.images,
                t.seconds,
                t.images_per_s(),
                if workers == 1 { "" } else { "s" },
                t.first_batch_s
            );
            Ok(())
        }
        Command::Preview {
            data,
            output,
            size,
            fit,
            hflip,
            count,
            seed,
            skip_bad,
            background,
        } => {
            let ds = open_train(&data, size, background, false)?;
            let ds: Arc<dyn datasets::Dataset> = Arc::from(ds);
            let mut loader = Loader::new(
                ds,
                LoaderConfig {
                    batch_size: count,
                    seed,
                    workers: 2,
                    shuffle: true,
                    skip_bad,
                    transform: Transform { size, fit, hflip },
                },
                Position::default(),
            )?;
            let b = loader.next_batch()?;
            if !b.skipped.is_empty() {
                eprintln!(
                    "skipped {} unreadable samples: {}",
                    b.skipped.len(),
                    b.skipped.join("; ")
                );
            }
            let t = b.to_tensor(&candle_core::Device::Cpu)?;
            let cols = (b.shape[0] as f64).sqrt().ceil() as usize;
            diffuse_data::image_io::save_png(
                &diffuse_data::image_io::grid(&t, cols, 2, 1.0)?,
                &output,
            )?;
            if let Some(l) = &b.labels {
                eprintln!("labels: {l:?}");
            }
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Encode {
            vae,
            data,
            split,
            output,
            size,
            fit,
            background,
            batch_size,
            shard_size,
            limit,
            device,
            quiet,
        } => {
            let split = match split.as_str() {
                "train" => Split::Train,
                "test" => Split::Test,
                other => bail!("--split: unknown value {other:?}; allowed: train, test"),
            };
            let size = match (
                size,
                diffuse_models::weights::read_vae_config(&vae)?.sample_size,
            ) {
                (Some(s), _) | (None, SampleSize::Square(s)) => s,
                (None, SampleSize::Rect(_)) => {
                    bail!("the VAE's sample_size is not square: give --size")
                }
            };
            let opts = OpenOptions {
                background,
                size: Some(size),
            };
            let ds = datasets::open_with(&data, split, &opts)?;
            if !quiet {
                eprintln!("{}", ds.describe());
            }
            let bar = if quiet {
                ProgressBar::hidden()
            } else {
                ProgressBar::new(0).with_style(
                    ProgressStyle::with_template(
                        "encoding [{bar:30}] {pos}/{len} images · {per_sec} · eta {eta}",
                    )
                    .expect("template")
                    .progress_chars("=> "),
                )
            };
            let opts = EncodeOptions {
                batch_size,
                shard_size,
                limit,
                transform: Transform {
                    size,
                    fit,
                    hflip: false,
                },
            };
            let start = std::time::Instant::now();
            let dev = crate::common::device(&device)?;
            // One encoder per cache folder.
            let _lock = crate::common::lock_folder(&output, "diffuse data encode")?;
            let index = encode_dataset(&vae, &*ds, &opts, &output, &dev, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            eprintln!(
                "{} images → latents [{}, {}, {}] in {} shards in {:.1} s; latent mean {:.4}, std {:.4}: scaling_factor {:.5} → {}",
                index.count,
                index.latent_shape[0],
                index.latent_shape[1],
                index.latent_shape[2],
                index.shards.len(),
                start.elapsed().as_secs_f64(),
                index.latent_mean,
                index.latent_std,
                index.scaling_factor,
                output.display()
            );
            Ok(())
        }
    }
}
