//! Where a run's training data comes from and how its batches are drawn.

use diffuse_data::datasets::Dataset;
use diffuse_data::loader::Loader;
use std::path::PathBuf;
use std::sync::Arc;

/// Where training data comes from.
pub(super) enum Source {
    Images(Arc<dyn Dataset>),
    /// A latent cache and its `vae/` folder.
    Latents(diffuse_models::latent_cache::LatentSet, PathBuf),
    /// Reflow pairs (their `vae/` for latent pairs).
    Pairs(crate::reflow::PairSet),
}

pub(super) enum Batches {
    Images(Loader),
    Latents(diffuse_models::latent_cache::LatentBatches),
    Pairs(crate::reflow::PairBatches),
}
