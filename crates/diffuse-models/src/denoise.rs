//! A network as a `diffuse_core` denoiser: the whole batch at one timestep, optional class
//! labels or prompt embeddings, and classifier-free guidance through `ConditionalDenoiser`
//! (integer labels) or [`PairGuidance`] (conditioning tensors: prompt embeddings, soft labels). One adapter,
//! [`NetDenoiser`], whatever network it wraps: a [`Network`] (UNet or DiT) or a bare
//! [`UNet2DModel`]. A DiT's learned-variance half is dropped ([`Network::predict`]): no sampler
//! here takes it.

use crate::net::Network;
use crate::UNet2DModel;
use candle_core::{Device, Tensor};
use diffuse_core::denoiser::{ConditionalDenoiser, Denoiser};

/// A network's output at a batch of timesteps, with optional class labels.
pub trait LabelledNet {
    fn predict_labelled(
        &self,
        x_in: &Tensor,
        t: &[f32],
        labels: Option<&Tensor>,
    ) -> crate::Result<Tensor>;
}

impl LabelledNet for Network {
    fn predict_labelled(
        &self,
        x_in: &Tensor,
        t: &[f32],
        labels: Option<&Tensor>,
    ) -> crate::Result<Tensor> {
        self.predict(x_in, t, labels)
    }
}

impl LabelledNet for UNet2DModel {
    fn predict_labelled(
        &self,
        x_in: &Tensor,
        t: &[f32],
        labels: Option<&Tensor>,
    ) -> crate::Result<Tensor> {
        self.forward(x_in, t, labels)
    }
}

/// A network as a denoiser: unconditional, or with fixed labels.
pub struct NetDenoiser<'a, N: LabelledNet + ?Sized = Network> {
    pub model: &'a N,
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

impl<N: LabelledNet + ?Sized> Denoiser for NetDenoiser<'_, N> {
    fn predict(&self, x_in: &Tensor, t: f64) -> diffuse_core::Result<Tensor> {
        self.model
            .predict_labelled(x_in, &[t as f32], self.class_labels.as_ref())
            .map_err(core_err)
    }
}

/// Integer labels (with the null label among them) for classifier-free guidance.
fn predict_cond<N: LabelledNet + ?Sized>(
    net: &N,
    x_in: &Tensor,
    t: f64,
    labels: &[u32],
) -> diffuse_core::Result<Tensor> {
    let l =
        Tensor::from_vec(labels.to_vec(), labels.len(), &Device::Cpu)?.to_device(x_in.device())?;
    net.predict_labelled(x_in, &[t as f32], Some(&l))
        .map_err(core_err)
}

impl ConditionalDenoiser for Network {
    fn predict_cond(&self, x_in: &Tensor, t: f64, labels: &[u32]) -> diffuse_core::Result<Tensor> {
        predict_cond(self, x_in, t, labels)
    }
}

impl ConditionalDenoiser for UNet2DModel {
    fn predict_cond(&self, x_in: &Tensor, t: f64, labels: &[u32]) -> diffuse_core::Result<Tensor> {
        predict_cond(self, x_in, t, labels)
    }
}

/// Classifier-free guidance over conditioning tensors: the conditional half reads `cond`, the
/// unconditional half `uncond` (same shape), both in one batch of 2b — prompt embeddings
/// `[b, L, d]` against the empty or negative prompt's, as diffusers' `StableDiffusionPipeline`
/// runs it (`do_classifier_free_guidance`: one UNet call on the concatenated batch).
pub struct PairGuidance<'a, N: LabelledNet + ?Sized = Network> {
    pub model: &'a N,
    pub cond: Tensor,
    pub uncond: Tensor,
    pub scale: f64,
    /// As [`diffuse_core::denoiser::ClassifierFreeGuidance::guided`].
    pub guided: Option<Vec<f64>>,
}

impl<N: LabelledNet + ?Sized> Denoiser for PairGuidance<'_, N> {
    fn predict(&self, x_in: &Tensor, t: f64) -> diffuse_core::Result<Tensor> {
        let b = self.cond.dim(0)?;
        let outside = self.guided.as_ref().is_some_and(|g| !g.contains(&t));
        if outside || self.scale == 1.0 {
            return self
                .model
                .predict_labelled(x_in, &[t as f32], Some(&self.cond))
                .map_err(core_err);
        }
        let c2 = Tensor::cat(&[&self.cond, &self.uncond], 0)?;
        let x2 = Tensor::cat(&[x_in, x_in], 0)?;
        let out = self
            .model
            .predict_labelled(&x2, &[t as f32], Some(&c2))
            .map_err(core_err)?;
        diffuse_core::denoiser::guide(&out, &vec![self.scale; b])
    }
}

/// Classifier-free guidance with soft class labels: `weights` `[b, classes]` (the null class
/// included) mix the class embeddings of the conditional half; the unconditional half is the
/// null class ([`PairGuidance`] over one-hot null weights).
pub struct SoftClassGuidance<'a, N: LabelledNet + ?Sized = Network> {
    pub model: &'a N,
    pub weights: Tensor,
    pub null_label: u32,
    pub scale: f64,
    /// As [`diffuse_core::denoiser::ClassifierFreeGuidance::guided`].
    pub guided: Option<Vec<f64>>,
}

impl<N: LabelledNet + ?Sized> Denoiser for SoftClassGuidance<'_, N> {
    fn predict(&self, x_in: &Tensor, t: f64) -> diffuse_core::Result<Tensor> {
        let (b, k) = self.weights.dims2()?;
        let null: Vec<f32> = (0..b * k)
            .map(|i| f32::from(i % k == self.null_label as usize))
            .collect();
        PairGuidance {
            model: self.model,
            cond: self.weights.to_dtype(candle_core::DType::F32)?,
            uncond: Tensor::from_vec(null, (b, k), self.weights.device())?,
            scale: self.scale,
            guided: self.guided.clone(),
        }
        .predict(x_in, t)
    }
}
