//! The latent cache (`diffuse data encode`): a data set encoded once by an AutoencoderKL into
//! safetensors shards of the posterior's mean and std, so latent-diffusion training reads
//! latents, not images (the latent-caching step of diffusers' text-to-image examples).
//!
//! [`LatentBatches`] feeds a cache to training (`diffuse train` with `data.latents`).
//!
//! A cache folder holds `shard-NNNNN.safetensors` (`mean`, `std` [n, latent, h, w] f32;
//! `labels` `[n]` u32 for labelled sets), `vae/` (the VAE with `scaling_factor` = 1 / std of the
//! latents, computed from the data) and `latents.json`, written last: a folder without it is
//! incomplete.

use crate::weights::{
    copy_model_folder, load_vae, read_vae_config, serialize_tensors, CONFIG_NAME,
};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use diffuse_core::rng::NoiseSource;
use diffuse_data::datasets::Dataset;
use diffuse_data::loader::Position;
use diffuse_data::transform::Transform;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const INDEX_NAME: &str = "latents.json";
const FORMAT: &str = "diffuse-latents-1";

/// What to encode and how.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// Images per VAE call.
    pub batch_size: usize,
    /// Images per shard file.
    pub shard_size: usize,
    /// Encode only the first `limit` samples.
    pub limit: Option<usize>,
    /// Brings each image to `size × size` in [−1, 1] (no flip).
    pub transform: Transform,
}

/// One shard file and how many samples it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Shard {
    pub file: String,
    pub count: usize,
}

/// `latents.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatentIndex {
    pub format: String,
    pub count: usize,
    /// [latent_channels, h, w]
    pub latent_shape: [usize; 3],
    pub shards: Vec<Shard>,
    pub num_classes: Option<usize>,
    /// The data set's description.
    pub data: String,
    pub image_size: usize,
    /// Mean and std over all latent values z ~ N(mean, std²) of the data (unscaled).
    pub latent_mean: f64,
    pub latent_std: f64,
    /// 1 / latent_std, as written into `vae/config.json`.
    pub scaling_factor: f64,
    /// The credit the data's licence asks for, carried into pipelines trained on the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

/// Running sums for the latents' mean and variance, in f64.
#[derive(Default)]
struct Moments {
    n: f64,
    sum_mean: f64,
    sum_mean_sq: f64,
    sum_var: f64,
}

impl Moments {
    fn add(&mut self, mean: &[f32], std: &[f32]) {
        self.n += mean.len() as f64;
        for (&m, &s) in mean.iter().zip(std) {
            let (m, s) = (m as f64, s as f64);
            self.sum_mean += m;
            self.sum_mean_sq += m * m;
            self.sum_var += s * s;
        }
    }

    /// (mean, std) of z = mean + std·ε over the data and ε: Var z = Var(mean) + E[std²].
    fn finish(&self) -> (f64, f64) {
        let mu = self.sum_mean / self.n;
        let var = (self.sum_mean_sq / self.n - mu * mu).max(0.0) + self.sum_var / self.n;
        (mu, var.sqrt())
    }
}

fn fs_err(e: diffuse_data::Error) -> Error {
    Error::Weights(e.to_string())
}

/// Encodes `dataset` (in order) with the VAE in `vae_dir` into the cache folder `out`.
/// `on_progress(done, total)` is called after each batch.
pub fn encode_dataset(
    vae_dir: &Path,
    dataset: &dyn Dataset,
    opts: &EncodeOptions,
    out: &Path,
    device: &Device,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<LatentIndex> {
    let (vae, _) = load_vae(vae_dir, device)?;
    let cfg = vae.config();
    if dataset.channels() != cfg.in_channels {
        return Err(Error::Input(format!(
            "the data set has {} channels but the VAE takes in_channels {}",
            dataset.channels(),
            cfg.in_channels
        )));
    }
    let total = opts.limit.unwrap_or(usize::MAX).min(dataset.len());
    if total == 0 || opts.batch_size == 0 || opts.shard_size == 0 {
        return Err(Error::Input(
            "nothing to encode: the data set (or --limit), batch size and shard size must be at least 1"
                .into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let size = opts.transform.size;
    let c = cfg.in_channels;
    let mut moments = Moments::default();
    let mut shards = Vec::new();
    let mut latent_shape = [0; 3];
    for (k, start) in (0..total).step_by(opts.shard_size).enumerate() {
        let end = (start + opts.shard_size).min(total);
        let (mut means, mut stds, mut labels) = (Vec::new(), Vec::new(), Vec::new());
        for b in (start..end).step_by(opts.batch_size) {
            let idx = b..(b + opts.batch_size).min(end);
            let mut pixels = Vec::with_capacity(idx.len() * c * size * size);
            for i in idx.clone() {
                let s = dataset.get(i).map_err(fs_err)?;
                pixels.extend(opts.transform.apply(&s, false));
                labels.push(s.label.unwrap_or(0));
            }
            let x = Tensor::from_vec(pixels, (idx.len(), c, size, size), device)?; // [b, c, s, s]
            let post = vae.encode(&x)?;
            let mean = post.mean.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            let std = post.std()?.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            moments.add(
                &mean.flatten_all()?.to_vec1::<f32>()?,
                &std.flatten_all()?.to_vec1::<f32>()?,
            );
            let (_, lc, h, w) = mean.dims4()?;
            latent_shape = [lc, h, w];
            means.push(mean);
            stds.push(std);
            on_progress(idx.end, total);
        }
        let mut tensors = vec![
            ("mean".to_string(), Tensor::cat(&means, 0)?),
            ("std".to_string(), Tensor::cat(&stds, 0)?),
        ];
        if dataset.num_classes().is_some() {
            let n = labels.len();
            tensors.push(("labels".into(), Tensor::from_vec(labels, n, &Device::Cpu)?));
        }
        let file = format!("shard-{k:05}.safetensors");
        diffuse_data::fs::write_atomic(&out.join(&file), &serialize_tensors(tensors)?)
            .map_err(fs_err)?;
        shards.push(Shard {
            file,
            count: end - start,
        });
    }
    let (latent_mean, latent_std) = moments.finish();
    if !(latent_std.is_finite() && latent_std > 0.0) {
        return Err(Error::Input(format!(
            "the latents have std {latent_std}: cannot compute a scaling factor"
        )));
    }
    // The VAE that made the latents, with the data's scaling factor.
    let mut vae_cfg = read_vae_config(vae_dir)?;
    vae_cfg.scaling_factor = 1.0 / latent_std;
    copy_model_folder(vae_dir, &out.join("vae"))?;
    let text = serde_json::to_string_pretty(&vae_cfg).expect("json");
    diffuse_data::fs::write_atomic(&out.join("vae").join(CONFIG_NAME), text.as_bytes())
        .map_err(fs_err)?;
    let index = LatentIndex {
        format: FORMAT.into(),
        count: total,
        latent_shape,
        shards,
        num_classes: dataset.num_classes(),
        data: dataset.describe(),
        image_size: size,
        latent_mean,
        latent_std,
        scaling_factor: vae_cfg.scaling_factor,
        attribution: dataset.attribution().map(str::to_string),
    };
    let text = serde_json::to_string_pretty(&index).expect("json");
    diffuse_data::fs::write_atomic(&out.join(INDEX_NAME), text.as_bytes()).map_err(fs_err)?;
    Ok(index)
}

/// A whole cache in memory.
#[derive(Debug, Clone)]
pub struct LatentSet {
    pub index: LatentIndex,
    /// [count, latent, h, w]
    pub mean: Tensor,
    /// [count, latent, h, w]
    pub std: Tensor,
    pub labels: Option<Vec<u32>>,
}

/// Reads a cache folder written by [`encode_dataset`].
pub fn load_latents(dir: &Path, device: &Device) -> Result<LatentSet> {
    let path = dir.join(INDEX_NAME);
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: format!("{} (not a complete latent cache)", path.display()),
        source,
    })?;
    let index: LatentIndex = serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if index.format != FORMAT {
        return Err(Error::Config(format!(
            "{}: format {:?}; this diffuse reads {FORMAT:?}",
            path.display(),
            index.format
        )));
    }
    let (mut means, mut stds, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for s in &index.shards {
        let p = dir.join(&s.file);
        let mut m = candle_core::safetensors::load(&p, device)
            .map_err(|e| Error::Weights(format!("{}: {e}", p.display())))?;
        let mut take = |k: &str| {
            m.remove(k)
                .ok_or_else(|| Error::Weights(format!("{}: no tensor `{k}`", p.display())))
        };
        let (mean, std) = (take("mean")?, take("std")?);
        if mean.dim(0)? != s.count || std.dims() != mean.dims() {
            return Err(Error::Weights(format!(
                "{}: holds {:?} / {:?}, the index says {} samples",
                p.display(),
                mean.dims(),
                std.dims(),
                s.count
            )));
        }
        if index.num_classes.is_some() {
            labels.extend(take("labels")?.to_vec1::<u32>()?);
        }
        means.push(mean);
        stds.push(std);
    }
    Ok(LatentSet {
        mean: Tensor::cat(&means, 0)?,
        std: Tensor::cat(&stds, 0)?,
        labels: index.num_classes.map(|_| labels),
        index,
    })
}

/// Training batches from a [`LatentSet`]: a seeded permutation per epoch (the last partial
/// batch dropped, as the image loader does), z = mean + std·ε with ε from the caller's noise
/// source, handed out as the diffusion model sees them: (z − shift_factor) · scaling_factor.
/// The state is a [`Position`], so a run resumes exactly.
pub struct LatentBatches {
    set: LatentSet,
    batch_size: usize,
    scaling_factor: f64,
    shift_factor: f64,
    order: EpochOrder,
}

/// A seeded permutation per epoch of `n` items, handed out `batch_size` at a time (the rest
/// of an epoch is dropped), with a checkpointable [`Position`]: the order of the tensor
/// sources the trainer reads (latent caches, reflow pairs).
#[derive(Debug, Clone)]
pub struct EpochOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
    next: Position,
    perm: Option<(u64, Vec<u32>)>,
}

impl EpochOrder {
    pub fn new(n: usize, batch_size: usize, seed: u64, start: Position) -> Self {
        EpochOrder {
            n,
            batch_size,
            seed,
            next: start,
            perm: None,
        }
    }

    /// The position of the next batch.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Indices of the next batch: epoch e is a shuffle by ChaCha8(seed) on stream e.
    pub fn next_indices(&mut self) -> Vec<u32> {
        let per_epoch = (self.n / self.batch_size) as u64;
        if self.next.batch >= per_epoch {
            self.next = Position {
                epoch: self.next.epoch + 1,
                batch: 0,
            };
        }
        let epoch = self.next.epoch;
        if self.perm.as_ref().map(|p| p.0) != Some(epoch) {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(epoch);
            let mut p: Vec<u32> = (0..self.n as u32).collect();
            p.shuffle(&mut rng);
            self.perm = Some((epoch, p));
        }
        let perm = &self.perm.as_ref().expect("set above").1;
        let start = self.next.batch as usize * self.batch_size;
        self.next.batch += 1;
        perm[start..start + self.batch_size].to_vec()
    }
}

impl LatentBatches {
    pub fn new(
        set: LatentSet,
        batch_size: usize,
        seed: u64,
        scaling_factor: f64,
        shift_factor: f64,
        start: Position,
    ) -> Result<Self> {
        if batch_size == 0 || set.index.count < batch_size {
            return Err(Error::Input(format!(
                "the latent cache holds {} samples, fewer than one batch of {batch_size}",
                set.index.count
            )));
        }
        Ok(LatentBatches {
            order: EpochOrder::new(set.index.count, batch_size, seed, start),
            set,
            batch_size,
            scaling_factor,
            shift_factor,
        })
    }

    /// The position of the next batch.
    pub fn position(&self) -> Position {
        self.order.position()
    }

    /// The next batch `[b, latent, h, w]` and its labels (for labelled caches).
    pub fn next_batch(
        &mut self,
        noise: &mut dyn NoiseSource,
    ) -> Result<(Tensor, Option<Vec<u32>>)> {
        let idx = self.order.next_indices();
        let dev = self.set.mean.device().clone();
        let it = Tensor::from_vec(idx.clone(), self.batch_size, &dev)?;
        let mean = self.set.mean.index_select(&it, 0)?; // [b, latent, h, w]
        let std = self.set.std.index_select(&it, 0)?;
        let eps = noise.randn(mean.shape(), mean.dtype(), &dev)?;
        let z = (mean + std.mul(&eps)?)?;
        let x = z.affine(
            self.scaling_factor,
            -self.shift_factor * self.scaling_factor,
        )?;
        let labels = self
            .set
            .labels
            .as_ref()
            .map(|l| idx.iter().map(|&i| l[i as usize]).collect());
        Ok((x, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_combine_spread_of_means_and_posterior_variance() {
        let mut m = Moments::default();
        // means ±1 (variance 1), std 2 everywhere (variance 4) → Var z = 5
        m.add(&[1.0, -1.0], &[2.0, 2.0]);
        m.add(&[1.0, -1.0], &[2.0, 2.0]);
        let (mu, sd) = m.finish();
        assert!(mu.abs() < 1e-12);
        assert!((sd - 5f64.sqrt()).abs() < 1e-12, "{sd}");
    }
}
