//! Seeded Gaussian noise with one stream per sample.
//!
//! Like EDM's `StackedRandomGenerator` (NVlabs/edm `generate.py`): sample `i` of a batch draws
//! from its own generator, so a seed gives the same image whatever the batch size or the other
//! requests batched beside it. Each stream is ChaCha8 keyed by the seed, on the stream number
//! of the sample; normals come from `rand_distr::StandardNormal` (ziggurat), drawn in row-major
//! order. candle's own `Tensor::randn` is not used: its CPU seed cannot be set.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Where samplers get their noise: one tensor of standard normals of the given shape.
pub trait NoiseSource {
    fn randn(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor>;
}

/// Per-sample seeded streams: row `i` of every tensor drawn comes from stream `i`.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    streams: Vec<ChaCha8Rng>,
}

impl SeededNoise {
    /// `batch` streams for one seed: stream `i` is sample `i` of that seed.
    pub fn new(seed: u64, batch: usize) -> Self {
        Self::from_streams((0..batch as u64).map(|i| (seed, i)))
    }

    /// Streams given as (seed, index) pairs, e.g. several requests batched together.
    pub fn from_streams(streams: impl IntoIterator<Item = (u64, u64)>) -> Self {
        SeededNoise {
            streams: streams
                .into_iter()
                .map(|(seed, index)| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(index);
                    rng
                })
                .collect(),
        }
    }

    /// Number of streams (the batch size it serves).
    pub fn batch(&self) -> usize {
        self.streams.len()
    }

    /// Standard normals for each stream: `per_sample` values from each, concatenated.
    pub fn randn_vec(&mut self, per_sample: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(per_sample * self.streams.len());
        for rng in &mut self.streams {
            out.extend((0..per_sample).map(|_| rng.sample::<f32, _>(StandardNormal)));
        }
        out
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let dims = shape.dims();
        if dims.first().copied() != Some(self.streams.len()) {
            return Err(Error::Sampler(format!(
                "noise of shape {shape:?} asked from {} per-sample streams: the first dimension must be the batch",
                self.streams.len()
            )));
        }
        let per = dims[1..].iter().product();
        let data = self.randn_vec(per);
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    }
}

/// Replays recorded noise tensors in order (e.g. noise drawn by diffusers, for parity).
#[derive(Debug, Clone, Default)]
pub struct ReplayNoise {
    queue: std::collections::VecDeque<Tensor>,
}

impl ReplayNoise {
    pub fn new(tensors: impl IntoIterator<Item = Tensor>) -> Self {
        ReplayNoise {
            queue: tensors.into_iter().collect(),
        }
    }

    /// How many recorded tensors are left.
    pub fn remaining(&self) -> usize {
        self.queue.len()
    }
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .queue
            .pop_front()
            .ok_or_else(|| Error::Sampler("recorded noise exhausted".into()))?;
        if t.shape() != shape {
            return Err(Error::Sampler(format!(
                "recorded noise has shape {:?}, sampler asked for {shape:?}",
                t.shape()
            )));
        }
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_independent_of_batch_size() {
        let mut one = SeededNoise::new(42, 1);
        let mut four = SeededNoise::new(42, 4);
        let shape = Shape::from((1, 3, 4, 4));
        let a = one.randn(&shape, DType::F32, &Device::Cpu).unwrap();
        let b = four
            .randn(&Shape::from((4, 3, 4, 4)), DType::F32, &Device::Cpu)
            .unwrap();
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b0: Vec<f32> = b.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b1: Vec<f32> = b.get(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b0);
        assert_ne!(b0, b1);
        // Streams keep going: a second draw differs from the first and stays batch-independent.
        let a2: Vec<f32> = one.randn_vec(48);
        let b2 = four.randn_vec(48);
        assert_eq!(a2, b2[..48]);
        assert_ne!(a2, a);
    }

    #[test]
    fn streams_are_standard_normal() {
        let v = SeededNoise::new(7, 1).randn_vec(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn seeds_differ_and_repeat() {
        assert_eq!(
            SeededNoise::new(1, 2).randn_vec(8),
            SeededNoise::new(1, 2).randn_vec(8)
        );
        assert_ne!(
            SeededNoise::new(1, 1).randn_vec(8),
            SeededNoise::new(2, 1).randn_vec(8)
        );
    }
}
