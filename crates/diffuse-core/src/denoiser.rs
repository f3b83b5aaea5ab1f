//! The model seam samplers call: a [`Denoiser`] maps (x_in, t) to the raw model output in the
//! model's prediction type, as a diffusers pipeline calls `unet(x_in, t)`.
//!
//! Wrappers in the spirit of k-diffusion `external.py`: [`FnDenoiser`] for closures and
//! [`ClassifierFreeGuidance`] (Ho & Salimans 2022) over a conditional model.

use crate::error::Result;
use candle_core::Tensor;

/// A network (or analytic stand-in) evaluated at one timestep for the whole batch.
pub trait Denoiser {
    /// `x_in`: the (scaled) model input [b, ...]; `t`: the timestep diffusers would pass.
    fn predict(&self, x_in: &Tensor, t: f64) -> Result<Tensor>;
}

/// A closure as a denoiser.
pub struct FnDenoiser<F>(pub F);

impl<F: Fn(&Tensor, f64) -> Result<Tensor>> Denoiser for FnDenoiser<F> {
    fn predict(&self, x_in: &Tensor, t: f64) -> Result<Tensor> {
        (self.0)(x_in, t)
    }
}

/// A model that takes a per-sample class label (or the null label for "unconditional").
pub trait ConditionalDenoiser {
    fn predict_cond(&self, x_in: &Tensor, t: f64, labels: &[u32]) -> Result<Tensor>;
}

/// Classifier-free guidance: out = uncond + s · (cond − uncond), with both halves in one batch
/// of 2b. `scales` holds one guidance scale per sample, so requests with different scales can
/// share a batch; a scale of 1 is the plain conditional model.
pub struct ClassifierFreeGuidance<'a, M> {
    pub model: &'a M,
    pub labels: Vec<u32>,
    pub null_label: u32,
    pub scales: Vec<f64>,
}

impl<M: ConditionalDenoiser> Denoiser for ClassifierFreeGuidance<'_, M> {
    fn predict(&self, x_in: &Tensor, t: f64) -> Result<Tensor> {
        let b = x_in.dim(0)?;
        if self.labels.len() != b || self.scales.len() != b {
            return Err(crate::Error::Sampler(format!(
                "CFG: {} labels and {} scales for a batch of {b}",
                self.labels.len(),
                self.scales.len()
            )));
        }
        if self.scales.iter().all(|&s| s == 1.0) {
            return self.model.predict_cond(x_in, t, &self.labels);
        }
        let x2 = Tensor::cat(&[x_in, x_in], 0)?;
        let mut labels = self.labels.clone();
        labels.extend(std::iter::repeat_n(self.null_label, b));
        let out = self.model.predict_cond(&x2, t, &labels)?;
        guide(&out, &self.scales)
    }
}

/// uncond + s · (cond − uncond) per sample, from one output `[2b, ...]` whose first half is
/// conditional and second unconditional.
pub fn guide(out: &Tensor, scales: &[f64]) -> Result<Tensor> {
    let b = scales.len();
    let cond = out.narrow(0, 0, b)?;
    let uncond = out.narrow(0, b, b)?;
    let mut shape = vec![1usize; out.rank()];
    shape[0] = b;
    let s: Vec<f32> = scales.iter().map(|&s| s as f32).collect();
    let s = Tensor::from_vec(s, shape, out.device())?.to_dtype(out.dtype())?;
    Ok((&uncond + (cond - &uncond)?.broadcast_mul(&s)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    struct ByLabel;
    impl ConditionalDenoiser for ByLabel {
        fn predict_cond(&self, x: &Tensor, _t: f64, labels: &[u32]) -> Result<Tensor> {
            let l: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let l = Tensor::from_vec(l, (labels.len(), 1), x.device())?;
            Ok(x.broadcast_add(&l)?)
        }
    }

    #[test]
    fn guidance_extrapolates_per_sample() {
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let cfg = ClassifierFreeGuidance {
            model: &ByLabel,
            labels: vec![3, 5],
            null_label: 1,
            scales: vec![1.0, 2.0],
        };
        let out: Vec<Vec<f32>> = cfg.predict(&x, 10.0).unwrap().to_vec2().unwrap();
        // uncond = 1; sample 0: 1 + 1·(3−1) = 3; sample 1: 1 + 2·(5−1) = 9.
        assert_eq!(out, vec![vec![3.0; 3], vec![9.0; 3]]);
    }
}
