//! A UNet or DiT as a `diffuse_core` denoiser: the whole batch at one timestep, optional class
//! labels, and classifier-free guidance through `ConditionalDenoiser`. A DiT's learned-variance
//! half is dropped ([`DenoiserNet::predict`]): no sampler here takes it.

use crate::net::DenoiserNet;
use crate::UNet2DModel;
use candle_core::{Device, Tensor};
use diffuse_core::denoiser::{ConditionalDenoiser, Denoiser};

/// An unconditional (or fixed-label) UNet denoiser.
pub struct UNetDenoiser<'a> {
    pub model: &'a UNet2DModel,
    /// Labels for class-conditional models, one per sample.
    pub class_labels: Option<Tensor>,
}

fn core_err(e: crate::Error) -> diffuse_core::Error {
    match e {
        crate::Error::Candle(c) => diffuse_core::Error::Candle(c),
        crate::Error::Core(c) => c,
        other => diffuse_core::Error::Sampler(other.to_string()),
    }
}

impl Denoiser for UNetDenoiser<'_> {
    fn predict(&self, x_in: &Tensor, t: f64) -> diffuse_core::Result<Tensor> {
        self.model
            .forward(x_in, &[t as f32], self.class_labels.as_ref())
            .map_err(core_err)
    }
}

/// A UNet or DiT denoiser (unconditional, or with fixed labels).
pub struct NetDenoiser<'a> {
    pub model: &'a DenoiserNet,
    /// Labels for class-conditional models, one per sample.
    pub class_labels: Option<Tensor>,
}

impl Denoiser for NetDenoiser<'_> {
    fn predict(&self, x_in: &Tensor, t: f64) -> diffuse_core::Result<Tensor> {
        self.model
            .predict(x_in, &[t as f32], self.class_labels.as_ref())
            .map_err(core_err)
    }
}

/// Integer labels (with the null label among them) for classifier-free guidance.
impl ConditionalDenoiser for DenoiserNet {
    fn predict_cond(&self, x_in: &Tensor, t: f64, labels: &[u32]) -> diffuse_core::Result<Tensor> {
        let l = Tensor::from_vec(labels.to_vec(), labels.len(), &Device::Cpu)?
            .to_device(x_in.device())?;
        self.predict(x_in, &[t as f32], Some(&l)).map_err(core_err)
    }
}

/// Integer labels (with the null label among them) for classifier-free guidance.
impl ConditionalDenoiser for UNet2DModel {
    fn predict_cond(&self, x_in: &Tensor, t: f64, labels: &[u32]) -> diffuse_core::Result<Tensor> {
        let l = Tensor::from_vec(labels.to_vec(), labels.len(), &Device::Cpu)?
            .to_device(x_in.device())?;
        self.forward(x_in, &[t as f32], Some(&l)).map_err(core_err)
    }
}
