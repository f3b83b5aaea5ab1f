//! Where a run's training data comes from and how its batches are drawn: images through the
//! loader, a latent cache (`diffuse data encode`) or reflow pairs (`diffuse distill reflow`).

use super::config::*;
use crate::objective::{RowShard, TrainRng};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use diffuse_data::datasets::{self, Dataset, Split};
use diffuse_data::loader::{Loader, LoaderConfig, Position};
use diffuse_data::transform::Transform;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
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

impl Batches {
    /// The next micro-batch: x₀, the paired noise (reflow), the labels and — from images —
    /// the data set's items of the rows, of this rank's rows when `shard` is given (the image
    /// loader hands out only those already).
    #[allow(clippy::type_complexity)]
    pub(super) fn next(
        &mut self,
        rng: &mut TrainRng,
        device: &Device,
        shard: Option<RowShard>,
    ) -> Result<(Tensor, Option<Tensor>, Option<Vec<u32>>, Option<Vec<usize>>)> {
        let (x0, noise, batch_labels) = match self {
            Batches::Images(loader) => {
                let batch = loader
                    .next_batch()
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                let x0 = batch
                    .to_tensor(device)
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                return Ok((x0, None, batch.labels, Some(batch.indices)));
            }
            // z = mean + std·ε draws ε from the run's own (checkpointed) stream.
            Batches::Latents(lb) => {
                let (x0, labels) = lb.next_batch(rng)?;
                (x0, None, labels)
            }
            // Reflow: each x₀ with the noise the teacher turned into it.
            Batches::Pairs(pb) => {
                let (x0, z, labels) = pb.next_batch()?;
                (x0, Some(z), labels)
            }
        };
        // Data parallel: this rank's rows (the image loader hands out only those).
        Ok(match shard {
            None => (x0, noise, batch_labels, None),
            Some(RowShard { offset, rows, .. }) => {
                let narrow = |t: Tensor| t.narrow(0, offset, rows);
                (
                    narrow(x0)?,
                    noise.map(narrow).transpose()?,
                    batch_labels.map(|l| l[offset..offset + rows].to_vec()),
                    None,
                )
            }
        })
    }

    /// Where the next batch starts (saved in a checkpoint for exact resume).
    pub(super) fn position(&self) -> Position {
        match self {
            Batches::Images(l) => l.position(),
            Batches::Latents(l) => l.position(),
            Batches::Pairs(l) => l.position(),
        }
    }
}

/// The one data source `[data]` names: images, a latent cache or reflow pairs.
pub(super) fn open_source(config: &TrainConfig, device: &Device) -> Result<Source> {
    let (t, d) = (&config.train, &config.data);
    Ok(match (&d.latents, &d.pairs, d.name.is_empty()) {
        (Some(_), _, _) | (_, Some(_), _) if config.vae.is_some() => {
            return Err(Error::Invalid(
                "data.latents / data.pairs: a VAE trains on images; give data.name".into(),
            ))
        }
        (Some(dir), None, true) => Source::Latents(
            diffuse_models::latent_cache::load_latents(Path::new(dir), device)?,
            PathBuf::from(dir).join("vae"),
        ),
        (None, Some(dir), true) => {
            if t.prediction_type != Prediction::Flow {
                return Err(Error::Invalid(format!(
                    "data.pairs: reflow trains a flow-matching student; set train.prediction_type = \"flow\" (got {:?})",
                    config_name(&t.prediction_type)
                )));
            }
            Source::Pairs(crate::reflow::load_pairs(Path::new(dir), device)?)
        }
        (None, None, false) => Source::Images(Arc::from(
            datasets::open_with(&d.name, Split::Train, &d.open_options())
                .map_err(|e| Error::Invalid(e.to_string()))?,
        )),
        _ => {
            return Err(Error::Invalid(
                "data: give exactly one of `name` (images), `latents` (a `diffuse data encode` cache) and `pairs` (`diffuse distill reflow` pairs)"
                    .into(),
            ))
        }
    })
}

/// The source's channels, `sample_size` (as `config.json` writes it) and class count.
pub(super) fn data_shape(source: &Source, size: usize) -> (usize, Value, Option<usize>) {
    let shape_of = |[c, h, w]: [usize; 3]| (c, if h == w { json!(h) } else { json!([h, w]) });
    match source {
        Source::Images(ds) => (ds.channels(), json!(size), ds.num_classes()),
        Source::Latents(set, _) => {
            let (c, size) = shape_of(set.index.latent_shape);
            (c, size, set.index.num_classes)
        }
        Source::Pairs(set) => {
            let (c, size) = shape_of(set.index.spec.shape);
            (c, size, set.index.spec.num_classes)
        }
    }
}

/// The source's batches from `position`; an image loader decodes only this rank's rows.
pub(super) fn open_batches(
    config: &TrainConfig,
    source: Source,
    position: Position,
    rank: usize,
    world: usize,
) -> Result<Batches> {
    let (t, d) = (&config.train, &config.data);
    Ok(match source {
        Source::Images(dataset) => Batches::Images({
            let mut loader = Loader::new(
                dataset,
                LoaderConfig {
                    batch_size: d.batch_size,
                    seed: t.seed,
                    workers: d.workers,
                    shuffle: true,
                    skip_bad: d.skip_bad,
                    transform: Transform {
                        size: d.size,
                        fit: d.fit.into(),
                        hflip: d.hflip,
                    },
                },
                position,
            )
            .map_err(|e| Error::Invalid(e.to_string()))?;
            // This rank decodes only its rows of each global batch.
            loader
                .set_shard(rank, world)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            loader
        }),
        Source::Latents(set, vae_dir) => {
            let v = diffuse_models::weights::read_vae_config(&vae_dir)?;
            Batches::Latents(diffuse_models::latent_cache::LatentBatches::new(
                set,
                d.batch_size,
                t.seed,
                v.scaling_factor,
                v.shift_factor.unwrap_or(0.0),
                position,
            )?)
        }
        Source::Pairs(set) => Batches::Pairs(crate::reflow::PairBatches::new(
            set,
            d.batch_size,
            t.seed,
            position,
        )?),
    })
}
