//! `diffuse data`: the data sets diffuse knows, and a preview grid of what the loader feeds.

use anyhow::{bail, Result};
use diffuse_data::datasets::{self, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::{Fit, Transform};
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
        #[arg(long, default_value = "pad")]
        fit: String,
        #[arg(long)]
        hflip: bool,
        #[arg(long, default_value_t = 64)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Skip unreadable samples (and count them) instead of stopping.
        #[arg(long)]
        skip_bad: bool,
    },
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
        Command::Preview {
            data,
            output,
            size,
            fit,
            hflip,
            count,
            seed,
            skip_bad,
        } => {
            let Some(fit) = Fit::parse(&fit) else {
                bail!("--fit: unknown value {fit:?}; allowed: pad, resize, center_crop");
            };
            let ds = datasets::open(&data, Split::Train)?;
            eprintln!("{}", ds.describe());
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
    }
}
