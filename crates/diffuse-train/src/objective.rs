//! The training objective of one batch, as diffusers' `train_unconditional.py` /
//! `train_text_to_image.py` compute it: t ~ U{0..T−1}, ε ~ N(0, I), x_t = q(x_t|x₀), the
//! target per prediction type (ε, x₀, v), MSE per sample, optional Min-SNR-γ weights; or
//! rectified flow: σ ~ U(0, 1) or logit-normal (Esser et al. 2024), warped by the scheduler's
//! `shift` (σ' = shift·σ / (1 + (shift − 1)·σ), as SD3 trains and samples), x_σ = (1 − σ)x₀ + σε,
//! target ε − x₀, model time T·σ; or EDM (Karras et al. 2022): ln σ ~ N(P_mean, P_std²),
//! x_σ = x₀ + σε, the network sees c_in·x_σ at time ¼ ln σ and its target is
//! (x₀ − c_skip x_σ)/c_out, whose plain MSE is EDM's λ(σ)-weighted loss (`diffuse_core::edm`).
//! The noise ε may be given (reflow: the noise that the teacher
//! turned into x₀). Classifier-free guidance training replaces labels by the null class with
//! probability p. The VAE objective ([`vae_loss`]) is diffusers' VAE fine-tuning script's:
//! reconstruction (L1 or L2, mean) of a posterior sample + β·KL (per-sample sum, batch mean).
//! All randomness comes from a [`TrainRng`] a checkpoint can save. Per-sample draws go through
//! `TrainRng::rows`, so that a data-parallel rank holding rows `offset..offset + n` of a
//! global batch draws exactly the values a single process would give those rows
//! ([`RowShard`]).

use crate::Result;
use candle_core::{DType, Tensor};
use diffuse_core::config::PredictionType;
use diffuse_core::noising;
use diffuse_core::schedule::NoiseSchedule;
use diffuse_models::{AutoencoderKL, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// The seeded generator of a training run; its whole state is (seed, word position).
#[derive(Debug, Clone)]
pub struct TrainRng {
    seed: u64,
    rng: ChaCha8Rng,
    shard: Option<RowShard>,
}

/// The rows `offset..offset + rows` of a global batch of `total` rows that one data-parallel
/// rank computes. While set on a [`TrainRng`], per-row draws are made for all `total` rows (every
/// rank advances the stream alike) and this rank keeps its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowShard {
    pub offset: usize,
    pub rows: usize,
    pub total: usize,
}

impl TrainRng {
    pub fn new(seed: u64) -> Self {
        TrainRng {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            shard: None,
        }
    }

    /// (seed, word position) — enough to restore the stream exactly.
    pub fn state(&self) -> (u64, u128) {
        (self.seed, self.rng.get_word_pos())
    }

    pub fn from_state(seed: u64, word_pos: u128) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_word_pos(word_pos);
        TrainRng {
            seed,
            rng,
            shard: None,
        }
    }

    /// Sets (or clears) the rows of the global batch that this rank computes: the trainer sets
    /// it around a sharded loss.
    pub fn set_row_shard(&mut self, shard: Option<RowShard>) {
        self.shard = shard;
    }

    /// One draw per row of a batch of `b` rows, in row order. Under a [`RowShard`] `b` must be
    /// its `rows`: all `total` rows are drawn and this shard's are returned.
    pub(crate) fn rows<T>(
        &mut self,
        b: usize,
        mut draw: impl FnMut(&mut ChaCha8Rng) -> T,
    ) -> Vec<T> {
        match self.shard {
            Some(s) => {
                assert_eq!(
                    b, s.rows,
                    "a sharded draw covers this rank's {} rows",
                    s.rows
                );
                let mut all: Vec<T> = (0..s.total).map(|_| draw(&mut self.rng)).collect();
                all.truncate(s.offset + s.rows);
                all.split_off(s.offset)
            }
            None => (0..b).map(|_| draw(&mut self.rng)).collect(),
        }
    }

    /// `b` rows of `per_row` standard normals (row-major), through [`Self::rows`].
    pub(crate) fn row_normal(&mut self, b: usize, per_row: usize) -> Vec<f32> {
        self.rows(b, |r| {
            (0..per_row)
                .map(|_| r.sample::<f32, _>(StandardNormal))
                .collect::<Vec<f32>>()
        })
        .concat()
    }

    /// A uniform index in 0..n for each of `b` rows.
    pub(crate) fn row_index(&mut self, b: usize, n: usize) -> Vec<usize> {
        self.rows(b, |r| r.random_range(0..n))
    }
}

impl diffuse_core::rng::NoiseSource for TrainRng {
    fn randn(
        &mut self,
        shape: &candle_core::Shape,
        dtype: DType,
        device: &candle_core::Device,
    ) -> diffuse_core::Result<Tensor> {
        // The first dimension is the batch: a sharded rank gets its rows' noise.
        let n = shape.elem_count();
        let b = shape.dims().first().copied().unwrap_or(1);
        let v = if b == 0 {
            vec![]
        } else {
            self.row_normal(b, n / b)
        };
        Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
    }
}

/// How σ is drawn for flow matching (before the shift).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SigmaSampling {
    /// σ ~ U[0, 1) (Liu et al. 2022).
    Uniform,
    /// σ = sigmoid(m + s·z), z ~ N(0, 1) (Esser et al. 2024): a positive mean puts more
    /// weight on noisy σ.
    LogitNormal { mean: f64, std: f64 },
}

/// `train.flow_sigma_sampling`: the distribution of [`SigmaSampling`] without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SigmaSamplingKind {
    #[default]
    LogitNormal,
    Uniform,
}

impl SigmaSampling {
    /// `kind` with the two logit-normal parameters (`train.flow_logit_mean`, `flow_logit_std`).
    pub fn new(kind: SigmaSamplingKind, mean: f64, std: f64) -> Result<Self> {
        match kind {
            SigmaSamplingKind::Uniform => Ok(SigmaSampling::Uniform),
            SigmaSamplingKind::LogitNormal if std > 0.0 && std.is_finite() && mean.is_finite() => {
                Ok(SigmaSampling::LogitNormal { mean, std })
            }
            SigmaSamplingKind::LogitNormal => Err(crate::Error::Invalid(format!(
                "train.flow_logit_std must be > 0 and flow_logit_mean finite, got mean {mean}, std {std}"
            ))),
        }
    }

    /// Parses the `train.flow_sigma_sampling` value with its two logit-normal parameters.
    pub fn parse(name: &str, mean: f64, std: f64) -> Result<Self> {
        let kind = match name {
            "uniform" => SigmaSamplingKind::Uniform,
            "logit_normal" => SigmaSamplingKind::LogitNormal,
            other => {
                return Err(crate::Error::Invalid(format!(
                    "train.flow_sigma_sampling: unknown value {other:?}; allowed: logit_normal, uniform"
                )))
            }
        };
        SigmaSampling::new(kind, mean, std)
    }
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
    /// Flow matching: the scheduler's `shift`, applied to every drawn σ (1 = none).
    pub flow_shift: f64,
    /// Flow matching: model time is σ·T with this T (the scheduler's `num_train_timesteps`).
    pub flow_num_train_timesteps: usize,
    /// EDM training (with `prediction` = ε, the name EDM's F has in diffusers).
    pub edm: Option<EdmTraining>,
}

/// EDM's preconditioning and training σ distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmTraining {
    pub precond: diffuse_core::edm::Precond,
    /// ln σ ~ N(p_mean, p_std²).
    pub p_mean: f64,
    pub p_std: f64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            prediction: PredictionType::Epsilon,
            min_snr_gamma: None,
            cond_dropout: 0.0,
            null_class: None,
            sigma_sampling: SigmaSampling::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            flow_shift: 1.0,
            flow_num_train_timesteps: 1000,
            edm: None,
        }
    }
}

/// `n` flow-matching σ as training draws them: from `sampling`, then warped by `shift`
/// (`diffuse_core`'s `shift_sigma`, the FlowMatch schedulers' formula), in float32.
pub fn draw_flow_sigmas(
    sampling: SigmaSampling,
    shift: f64,
    n: usize,
    rng: &mut TrainRng,
) -> Vec<f32> {
    rng.rows(n, |r| {
        let s = match sampling {
            SigmaSampling::Uniform => r.random::<f32>(),
            SigmaSampling::LogitNormal { mean, std } => {
                let z: f64 = r.sample(StandardNormal);
                (1.0 / (1.0 + (-(mean + std * z)).exp())) as f32
            }
        };
        if shift == 1.0 {
            s
        } else {
            diffuse_core::sampler::shift_sigma(s as f64, shift) as f32
        }
    })
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
/// loss is on the prediction only ([`Network::predict`]).
pub fn diffusion_loss(
    model: &Network,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    labels: Option<&[u32]>,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Result<LossParts> {
    diffusion_loss_with_noise(model, schedule, x0, None, labels, cfg, rng)
}

/// [`diffusion_loss`] with the noise ε given (reflow: x₀ paired with the noise it came from);
/// `None` draws it from `rng`.
pub fn diffusion_loss_with_noise(
    model: &Network,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: Option<&Tensor>,
    labels: Option<&[u32]>,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Result<LossParts> {
    let b = x0.dim(0)?;
    let dev = x0.device();
    let noise = match noise {
        Some(n) if n.dims() != x0.dims() => {
            return Err(crate::Error::Invalid(format!(
                "paired noise has shape {:?}, the samples {:?}",
                n.dims(),
                x0.dims()
            )))
        }
        Some(n) => n.to_dtype(x0.dtype())?,
        None => Tensor::from_vec(rng.row_normal(b, x0.elem_count() / b), x0.shape(), dev)?,
    };
    let labels = drop_labels(labels, cfg, rng);
    let label_t = match &labels {
        Some(l) => Some(Tensor::from_vec(l.clone(), b, dev)?),
        None => None,
    };
    loss_given(model, schedule, x0, &noise, label_t.as_ref(), cfg, rng)
}

/// [`diffusion_loss_with_noise`] of a text-conditioned UNet: `context` `[b, L, d]` are the
/// rows' prompt embeddings (caption dropout is the caller's: it replaces captions with the
/// empty prompt before encoding).
pub fn diffusion_loss_with_context(
    model: &Network,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: Option<&Tensor>,
    context: &Tensor,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Result<LossParts> {
    let b = x0.dim(0)?;
    let noise = match noise {
        Some(n) => n.to_dtype(x0.dtype())?,
        None => Tensor::from_vec(
            rng.row_normal(b, x0.elem_count() / b),
            x0.shape(),
            x0.device(),
        )?,
    };
    loss_given(model, schedule, x0, &noise, Some(context), cfg, rng)
}

/// The loss at the noise drawn, with the conditioning tensor (labels or prompt embeddings).
fn loss_given(
    model: &Network,
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    cond: Option<&Tensor>,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Result<LossParts> {
    let b = x0.dim(0)?;
    let dev = x0.device();
    let per_row = |v: &[f32]| -> Result<Tensor> {
        Ok(Tensor::from_vec(v.to_vec(), (b, 1, 1, 1), dev)?.to_dtype(x0.dtype())?)
    };
    let (x_t, target, model_t, weights): (Tensor, Tensor, Vec<f32>, _) = if let Some(edm) = &cfg.edm
    {
        let sigmas: Vec<f64> = rng.rows(b, |r| {
            let z: f64 = r.sample(StandardNormal);
            diffuse_core::edm::lognormal_sigma(edm.p_mean, edm.p_std, z)
        });
        let col = |f: &dyn Fn(f64) -> f64| {
            per_row(&sigmas.iter().map(|&s| f(s) as f32).collect::<Vec<_>>())
        };
        let x_sigma = (x0 + noise.broadcast_mul(&col(&|s| s)?)?)?;
        let p = edm.precond;
        let target = (x0.broadcast_mul(&col(&|s| p.target_coefficients(s).0)?)?
            + x_sigma.broadcast_mul(&col(&|s| p.target_coefficients(s).1)?)?)?;
        let x_in = x_sigma.broadcast_mul(&col(&|s| p.c_in(s))?)?;
        let t = sigmas
            .iter()
            .map(|&s| diffuse_core::edm::Precond::c_noise(s) as f32)
            .collect();
        (x_in, target, t, None)
    } else if cfg.prediction == PredictionType::Flow {
        let sigmas = draw_flow_sigmas(cfg.sigma_sampling, cfg.flow_shift, b, rng);
        let s = per_row(&sigmas)?;
        let one_minus = per_row(&sigmas.iter().map(|s| 1.0 - s).collect::<Vec<_>>())?;
        let x_t = (x0.broadcast_mul(&one_minus)? + noise.broadcast_mul(&s)?)?;
        let target = (noise - x0)?;
        let big_t = cfg.flow_num_train_timesteps as f32;
        let t: Vec<f32> = sigmas.iter().map(|s| s * big_t).collect();
        (x_t, target, t, None)
    } else {
        let n = schedule.len();
        let ts: Vec<usize> = rng.row_index(b, n);
        let x_t = noising::add_noise(schedule, x0, noise, &ts)?;
        let target = noising::target(schedule, cfg.prediction, x0, noise, &ts)?;
        let weights = match cfg.min_snr_gamma {
            Some(g) => Some(noising::min_snr_weights(schedule, &ts, g, cfg.prediction)?),
            None => None,
        };
        (x_t, target, ts.iter().map(|&t| t as f32).collect(), weights)
    };
    let pred = model.predict(&x_t, &model_t, cond)?;
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

/// Labels with each replaced by the null class with probability `cfg.cond_dropout` (CFG
/// training).
pub(crate) fn drop_labels(
    labels: Option<&[u32]>,
    cfg: &ObjectiveConfig,
    rng: &mut TrainRng,
) -> Option<Vec<u32>> {
    match (labels, cfg.null_class) {
        (Some(l), Some(null)) if cfg.cond_dropout > 0.0 => Some(
            l.iter()
                .zip(rng.rows(l.len(), |r| r.random::<f64>()))
                .map(|(&c, u)| if u < cfg.cond_dropout { null } else { c })
                .collect(),
        ),
        (Some(l), _) => Some(l.to_vec()),
        (None, _) => None,
    }
}

/// Reconstruction loss of the VAE objective (`vae.loss`: "l1" or "l2").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconstruction {
    #[default]
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

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 200_000;

    fn quantile(sorted: &[f32], p: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64
    }

    fn sorted(mut v: Vec<f32>) -> Vec<f32> {
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Φ⁻¹ at the quantiles the tests check.
    const PROBIT: [(f64, f64); 5] = [
        (0.05, -1.644_853_626_951_472_2),
        (0.25, -0.674_489_750_196_081_7),
        (0.5, 0.0),
        (0.75, 0.674_489_750_196_081_7),
        (0.95, 1.644_853_626_951_472_2),
    ];

    #[test]
    fn uniform_sigmas_have_uniform_quantiles() {
        let s = draw_flow_sigmas(SigmaSampling::Uniform, 1.0, N, &mut TrainRng::new(1));
        assert!(s.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = s.iter().map(|&x| x as f64).sum::<f64>() / N as f64;
        assert!((mean - 0.5).abs() < 3e-3, "{mean}");
        let s = sorted(s);
        for (p, _) in PROBIT {
            assert!((quantile(&s, p) - p).abs() < 5e-3, "q{p}");
        }
    }

    #[test]
    fn logit_normal_sigmas_match_their_distribution() {
        for (mean, std) in [(0.0, 1.0), (0.5, 0.8), (-1.0, 1.5)] {
            let s = draw_flow_sigmas(
                SigmaSampling::LogitNormal { mean, std },
                1.0,
                N,
                &mut TrainRng::new(2),
            );
            assert!(s.iter().all(|&x| x > 0.0 && x < 1.0));
            // logit(σ) ~ N(mean, std²)
            let logits: Vec<f64> = s
                .iter()
                .map(|&x| (x as f64 / (1.0 - x as f64)).ln())
                .collect();
            let m = logits.iter().sum::<f64>() / N as f64;
            let sd = (logits.iter().map(|l| (l - m).powi(2)).sum::<f64>() / N as f64).sqrt();
            assert!((m - mean).abs() < 0.01 * std.max(1.0), "mean {m} vs {mean}");
            assert!((sd - std).abs() < 0.01 * std, "std {sd} vs {std}");
            let s = sorted(s);
            for (p, z) in PROBIT {
                let want = sigmoid(mean + std * z);
                assert!(
                    (quantile(&s, p) - want).abs() < 5e-3,
                    "({mean}, {std}) q{p}: {} vs {want}",
                    quantile(&s, p)
                );
            }
        }
        // The uniform sampler's mean of 0.5 is also the logit-normal(0, s) median.
        let s = sorted(draw_flow_sigmas(
            SigmaSampling::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            1.0,
            N,
            &mut TrainRng::new(3),
        ));
        assert!((quantile(&s, 0.5) - 0.5).abs() < 5e-3);
    }

    #[test]
    fn shift_maps_every_draw_exactly() {
        // SD3's σ' = shift·σ / (1 + (shift − 1)·σ): fixed ends, σ = 0.5 → shift / (1 + shift).
        let f = diffuse_core::sampler::shift_sigma;
        assert_eq!(f(0.0, 3.0), 0.0);
        assert_eq!(f(1.0, 3.0), 1.0);
        assert_eq!(f(0.5, 3.0), 0.75);
        assert_eq!(f(0.25, 1.0), 0.25);
        for sampling in [
            SigmaSampling::Uniform,
            SigmaSampling::LogitNormal {
                mean: 0.3,
                std: 1.2,
            },
        ] {
            let plain = draw_flow_sigmas(sampling, 1.0, 1000, &mut TrainRng::new(4));
            let mut rng = TrainRng::new(4);
            let shifted = draw_flow_sigmas(sampling, 3.0, 1000, &mut rng);
            // Same draws, same stream position: the shift only maps them.
            assert_eq!(rng.state(), {
                let mut r = TrainRng::new(4);
                draw_flow_sigmas(sampling, 1.0, 1000, &mut r);
                r.state()
            });
            for (p, s) in plain.iter().zip(&shifted) {
                let want = 3.0 * *p as f64 / (1.0 + 2.0 * *p as f64);
                assert_eq!(*s, want as f32);
                assert!(*s >= *p);
            }
        }
        // Quantiles move through the (monotone) map: the median of U(0,1) becomes 0.75.
        let s = sorted(draw_flow_sigmas(
            SigmaSampling::Uniform,
            3.0,
            N,
            &mut TrainRng::new(5),
        ));
        assert!((quantile(&s, 0.5) - 0.75).abs() < 5e-3);
    }

    #[test]
    fn sigma_sampling_names_and_bad_values() {
        assert_eq!(
            SigmaSampling::parse("uniform", 0.0, 1.0).unwrap(),
            SigmaSampling::Uniform
        );
        assert_eq!(
            SigmaSampling::parse("logit_normal", 0.5, 2.0).unwrap(),
            SigmaSampling::LogitNormal {
                mean: 0.5,
                std: 2.0
            }
        );
        let e = SigmaSampling::parse("cosmap", 0.0, 1.0).unwrap_err();
        assert!(e.to_string().contains("flow_sigma_sampling"), "{e}");
        let e = SigmaSampling::parse("logit_normal", 0.0, 0.0).unwrap_err();
        assert!(e.to_string().contains("flow_logit_std"), "{e}");
    }
}
