//! Time and class embeddings, diffusers `models/embeddings.py`: sinusoidal `Timesteps`
//! (`get_timestep_embedding`), `GaussianFourierProjection`, and the `TimestepEmbedding` MLP.
//! The sinusoid is computed in float32 exactly as torch does (its error would otherwise be
//! multiplied by t ≈ 1000 inside sin/cos).

use crate::ops;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// Sinusoidal embedding of `timesteps` (`[b]`, any float): `[b, dim]`.
pub fn timestep_embedding(
    timesteps: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let log_max = -(10000f64.ln() as f32);
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (log_max * i as f32 / denom).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f32> = freqs.iter().map(|&f| t * f).collect();
        let (first, second): (Vec<f32>, Vec<f32>) = if flip_sin_to_cos {
            (
                args.iter().map(|a| a.cos()).collect(),
                args.iter().map(|a| a.sin()).collect(),
            )
        } else {
            (
                args.iter().map(|a| a.sin()).collect(),
                args.iter().map(|a| a.cos()).collect(),
            )
        };
        out.extend(first);
        out.extend(second);
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Tensor::from_vec(out, (timesteps.len(), dim), device)
}

/// The time projection: sinusoidal, Gaussian Fourier features of log t, or a learned table.
#[derive(Debug, Clone)]
pub enum TimeProjection {
    Positional {
        dim: usize,
        flip_sin_to_cos: bool,
        freq_shift: f64,
    },
    /// `GaussianFourierProjection(scale=16, log=True)`: [sin(2π·w·log t), cos(2π·w·log t)].
    Fourier { weight: Tensor },
    /// `nn.Embedding(num_train_timesteps, dim)` indexed by the integer timestep.
    Learned { table: candle_nn::Embedding },
}

impl TimeProjection {
    /// `timesteps`: `[b]` float values; output `[b, out_dim]` f32.
    pub fn forward(&self, timesteps: &[f32], device: &Device) -> Result<Tensor> {
        match self {
            TimeProjection::Positional {
                dim,
                flip_sin_to_cos,
                freq_shift,
            } => timestep_embedding(timesteps, *dim, *flip_sin_to_cos, *freq_shift, device),
            TimeProjection::Fourier { weight } => {
                let w: Vec<f32> = weight.to_dtype(DType::F32)?.to_vec1()?;
                let two_pi = 2.0 * std::f32::consts::PI;
                let mut out = Vec::with_capacity(timesteps.len() * w.len() * 2);
                for &t in timesteps {
                    let lt = t.ln();
                    let proj: Vec<f32> = w.iter().map(|&wi| lt * wi * two_pi).collect();
                    out.extend(proj.iter().map(|p| p.sin()));
                    out.extend(proj.iter().map(|p| p.cos()));
                }
                Tensor::from_vec(out, (timesteps.len(), 2 * w.len()), device)
            }
            TimeProjection::Learned { table } => {
                let idx: Vec<u32> = timesteps.iter().map(|&t| t as u32).collect();
                let idx = Tensor::from_vec(idx, timesteps.len(), device)?;
                candle_nn::Module::forward(table, &idx)
            }
        }
    }
}

/// `TimestepEmbedding`: linear → SiLU → linear.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    pub(crate) linear_1: candle_nn::Linear,
    pub(crate) linear_2: candle_nn::Linear,
}

impl TimestepEmbedding {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: candle_nn::linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::linear(x, &self.linear_1)?.silu()?;
        ops::linear(&h, &self.linear_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinusoid_layout_follows_diffusers() {
        // t = 0: sin = 0, cos = 1; flip puts cos first.
        let e = timestep_embedding(&[0.0], 6, false, 1.0, &Device::Cpu).unwrap();
        assert_eq!(
            e.to_vec2::<f32>().unwrap(),
            vec![vec![0., 0., 0., 1., 1., 1.]]
        );
        let e = timestep_embedding(&[0.0], 7, true, 0.0, &Device::Cpu).unwrap();
        assert_eq!(
            e.to_vec2::<f32>().unwrap(),
            vec![vec![1., 1., 1., 0., 0., 0., 0.]]
        );
        // The first frequency is 1: sin(t).
        let e = timestep_embedding(&[2.0], 4, false, 0.0, &Device::Cpu).unwrap();
        assert!((e.to_vec2::<f32>().unwrap()[0][0] - 2f32.sin()).abs() < 1e-7);
    }
}
