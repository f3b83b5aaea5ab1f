//! The training objective of one batch, as diffusers' `train_unconditional.py` /
//! `train_text_to_image.py` compute it: t ~ U{0..T−1}, ε ~ N(0, I), x_t = q(x_t|x₀), the
//! target per prediction type (ε, x₀, v), MSE per sample, optional Min-SNR-γ weights; or
//! rectified flow: σ ~ U(0, 1) (or logit-normal), x_σ = (1 − σ)x₀ + σε, target ε − x₀, model
//! time 1000σ. Classifier-free guidance training replaces labels by the null class with
//! probability p. The VAE objective ([`vae_loss`]) is diffusers' VAE fine-tuning script's:
//! reconstruction (L1 or L2, mean) of a posterior sample + β·KL (per-sample sum, batch mean).
//! All randomness comes from a [`TrainRng`] a checkpoint can save.

use crate::Result;
use candle_core::{DType, Tensor};
use diffuse_core::config::PredictionType;
use diffuse_core::noising;
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::{AutoencoderKL, DenoiserNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The seeded generator of a training run; its whole state is (seed, word position).
#[derive(Debug, Clone)]
pub struct TrainRng {
    seed: u64,
    rng: ChaCha8Rng,
}

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        TrainRng {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// (seed, word position) — enough to restore the stream exactly.
    pub fn state(&self) -> (u64, u128) {
        (self.seed, self.rng.get_word_pos())
    }

    pub fn from_state(seed: u64, word_pos: u128) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_word_pos(word_pos);
        TrainRng { seed, rng }
    }

    fn normal(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.rng.sample(StandardNormal)).collect()
    }
}

impl diffuse_core::rng::NoiseSource for TrainRng {
    fn randn(
        &mut self,
        shape: &candle_core::Shape,
        dtype: DType,
        device: &candle_core::Device,
    ) -> diffuse_core::Result<Tensor> {
        let v = self.normal(shape.elem_count());
        Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
    }
}

/// How σ is drawn for flow matching.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SigmaSampling {
    Uniform,
    /// σ = sigmoid(m + s·z), z ~ N(0, 1) (Esser et al. 2024).
    LogitNormal {
        mean: f64,
        std: f64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct ObjectiveConfig {
    pub prediction: PredictionType,
    /// Min-SNR-γ loss weighting (Hang et al. 2023); None = plain MSE.
    pub min_snr_gamma: Option<f64>,
    /// Probability of replacing a label by `null_class` (CFG training).
    pub cond_dropout: f64,
    pub null_class: Option<u32>,
    pub sigma_sampling: SigmaSampling,
}

/// What one batch's loss was made of.
pub struct LossParts {
    /// Scalar loss to differentiate.
    pub loss: Tensor,
    /// The per-sample timesteps used (model time).
    pub timesteps: Vec<f32>,
}

/// The loss of `model` (a UNet or DiT) on clean images `x0` [b, c, h, w] (labels per sample if
/// conditional). A DiT's learned-variance half is not trained (no variational bound term): the
/// loss is on the prediction only ([`DenoiserNet::predict`]).
pub fn diffusion_loss(
    model: &DenoiserNet,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    labels: Option<&[u32]>,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Result<LossParts> {
    let b = x0.dim(0)?;
    let dev = x0.device();
    let noise = Tensor::from_vec(rng.normal(x0.elem_count()), x0.shape(), dev)?;
    let labels: Option<Vec<u32>> = match (labels, cfg.null_class) {
        (Some(l), Some(null)) if cfg.cond_dropout > 0.0 => Some(
            l.iter()
                .map(|&c| {
                    if rng.rng.random::<f64>() < cfg.cond_dropout {
                        null
                    } else {
                        c
                    }
                })
                .collect(),
        ),
        (Some(l), _) => Some(l.to_vec()),
        (None, _) => None,
    };
    let label_t = match &labels {
        Some(l) => Some(Tensor::from_vec(l.clone(), b, dev)?),
        None => None,
    };
    let per_row = |v: &[f32]| -> Result<Tensor> {
        Ok(Tensor::from_vec(v.to_vec(), (b, 1, 1, 1), dev)?.to_dtype(x0.dtype())?)
    };
    let (x_t, target, model_t, weights) = if cfg.prediction == PredictionType::Flow {
        let sigmas: Vec<f32> = (0..b)
            .map(|_| match cfg.sigma_sampling {
                SigmaSampling::Uniform => rng.rng.random::<f32>(),
                SigmaSampling::LogitNormal { mean, std } => {
                    let z: f64 = rng.rng.sample(StandardNormal);
                    (1.0 / (1.0 + (-(mean + std * z)).exp())) as f32
                }
            })
            .collect();
        let s = per_row(&sigmas)?;
        let one_minus = per_row(&sigmas.iter().map(|s| 1.0 - s).collect::<Vec<_>>())?;
        let x_t = (x0.broadcast_mul(&one_minus)? + noise.broadcast_mul(&s)?)?;
        let target = (&noise - x0)?;
        let t: Vec<f32> = sigmas.iter().map(|s| s * 1000.0).collect();
        (x_t, target, t, None)
    } else {
        let n = schedule.len();
        let ts: Vec<usize> = (0..b).map(|_| rng.rng.random_range(0..n)).collect();
        let x_t = noising::add_noise(schedule, x0, &noise, &ts)?;
        let target = noising::target(schedule, cfg.prediction, x0, &noise, &ts)?;
        let weights = match cfg.min_snr_gamma {
            Some(g) => Some(noising::min_snr_weights(schedule, &ts, g, cfg.prediction)?),
            None => None,
        };
        (x_t, target, ts.iter().map(|&t| t as f32).collect(), weights)
    };
    let pred = model.predict(&x_t, &model_t, label_t.as_ref())?;
    let mse = noising::mse_per_sample(&pred.to_dtype(DType::F32)?, &target.to_dtype(DType::F32)?)?; // [b]
    let loss = match weights {
        Some(w) => {
            let w: Vec<f32> = w
                .iter()
                .map(|&x| if x.is_finite() { x as f32 } else { 0.0 })
                .collect();
            (mse * Tensor::from_vec(w, b, dev)?)?.mean_all()?
        }
        None => mse.mean_all()?,
    };
    Ok(LossParts {
        loss,
        timesteps: model_t,
    })
}

/// Reconstruction loss of the VAE objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconstruction {
    L1,
    L2,
}

/// The VAE loss of a batch and its parts.
pub struct VaeLossParts {
    pub loss: Tensor,
    pub reconstruction: f32,
    /// KL(q(z|x) ‖ N(0, I)), summed per sample, mean over the batch.
    pub kl: f32,
}

/// `x0` [b, c, h, w] in [−1, 1] → encode, sample z (noise from `rng`), decode;
/// loss = rec(decoded, x0) + kl_weight · KL.
pub fn vae_loss(
    model: &AutoencoderKL,
    x0: &Tensor,
    rec: Reconstruction,
    kl_weight: f64,
    rng: &mut TrainRng,
) -> Result<VaeLossParts> {
    let post = model.encode(x0)?;
    let z = post.sample(rng)?;
    let diff = (model.decode(&z)? - x0)?;
    let rec_loss = match rec {
        Reconstruction::L1 => diff.abs()?.mean_all()?,
        Reconstruction::L2 => diff.sqr()?.mean_all()?,
    };
    let kl = post.kl()?.mean_all()?;
    let loss = (&rec_loss + (&kl * kl_weight)?)?;
    Ok(VaeLossParts {
        loss,
        reconstruction: rec_loss.to_scalar::<f32>()?,
        kl: kl.to_scalar::<f32>()?,
    })
}
