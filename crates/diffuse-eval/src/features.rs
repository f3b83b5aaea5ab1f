//! A feature net over an image set: batching sized to memory, the net's own preprocessing
//! (Inception: gray → RGB, resize to 299, x/128 − 1; classifier: see [`crate::classifier`]),
//! and progress.

use crate::classifier::{classify, MnistClassifier};
use crate::images::{ImageBatch, ImageSource};
use crate::inception::{InceptionV3, INPUT_SIZE};
use crate::metrics::Features;
use crate::resize::{resize, ResizeMode};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

/// Which features FID/KID/precision-recall use.
pub enum FeatureNet {
    Inception {
        net: InceptionV3,
        resize: ResizeMode,
    },
    Mnist(MnistClassifier),
}

/// What one pass over an image set gives.
pub struct Extracted {
    pub features: Features,
    /// Class probabilities and predicted classes (the MNIST classifier only).
    pub probs: Option<Features>,
    pub preds: Option<Vec<u32>>,
}

fn rows(v: Vec<Vec<f32>>, d: usize) -> Features {
    let n = v.len();
    DMatrix::from_row_iterator(n, d, v.into_iter().flatten().map(f64::from))
}

/// u8 images → `[b, 3, 299, 299]` Inception input in [−1, 1) (x/128 − 1).
pub fn inception_input(batch: &ImageBatch, mode: ResizeMode, device: &Device) -> Result<Tensor> {
    let mut x = batch.to_tensor(device)?;
    x = match batch.c {
        3 => x,
        1 => x.repeat((1, 3, 1, 1))?,
        c => {
            return Err(Error::Input(format!(
                "Inception takes 1 or 3 channels, not {c}"
            )))
        }
    };
    if (batch.h, batch.w) != (INPUT_SIZE, INPUT_SIZE) {
        x = resize(&x, INPUT_SIZE, INPUT_SIZE, mode)?;
        if mode == ResizeMode::Bicubic {
            x = x.clamp(0f32, 255f32)?; // clean-fid clips after PIL's resize
        }
    }
    Ok(((x / 128.0)? - 1.0)?)
}

impl FeatureNet {
    /// The name written into statistics files.
    pub fn tag(&self) -> String {
        match self {
            FeatureNet::Inception { resize, .. } => {
                format!("{}-{}", crate::inception::FEATURE_NET, resize.name())
            }
            FeatureNet::Mnist(c) => c.feature_net().to_string(),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            FeatureNet::Inception { net, .. } => net.feature_dim(),
            FeatureNet::Mnist(_) => crate::classifier::FEATURE_DIM,
        }
    }

    /// Images per batch: ~1 GiB of activations for Inception at 299 (≈ 60 MiB per image on the
    /// CPU path), 500 for the small classifier.
    pub fn default_batch_size(&self) -> usize {
        match self {
            FeatureNet::Inception { .. } => 16,
            FeatureNet::Mnist(_) => 500,
        }
    }

    /// Features of every image of `images`.
    pub fn extract(
        &self,
        images: &dyn ImageSource,
        batch_size: usize,
        device: &Device,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Extracted> {
        if images.is_empty() {
            return Err(Error::Input(format!("{}: no images", images.describe())));
        }
        let bs = batch_size.max(1);
        match self {
            FeatureNet::Inception { net, resize } => {
                let mut out = Vec::with_capacity(images.len());
                for s in (0..images.len()).step_by(bs) {
                    let n = bs.min(images.len() - s);
                    let x = inception_input(&images.batch(s, n)?, *resize, device)?;
                    out.extend(net.forward(&x)?.to_vec2::<f32>()?);
                    on_progress(s + n, images.len());
                }
                Ok(Extracted {
                    features: rows(out, net.feature_dim()),
                    probs: None,
                    preds: None,
                })
            }
            FeatureNet::Mnist(c) => {
                let (f, p, preds) = classify(c, images, bs, device, on_progress)?;
                Ok(Extracted {
                    features: rows(f, crate::classifier::FEATURE_DIM),
                    probs: Some(rows(p, crate::classifier::NUM_CLASSES)),
                    preds: Some(preds),
                })
            }
        }
    }
}
