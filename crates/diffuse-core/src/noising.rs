//! The forward process q(x_t | x_0) and the training targets.
//!
//! x_t = α_t x₀ + σ_t ε with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 − ᾱ_t) (Ho et al. 2020);
//! v = α_t ε − σ_t x₀ (Salimans & Ho 2022); Min-SNR-γ weights (Hang et al. 2023) as
//! diffusers' `train_text_to_image.py` computes them; `compute_snr` from
//! `diffusers/training_utils.py`. Per-sample timesteps: one per batch row.

use crate::config::PredictionType;
use crate::error::{Error, Result};
use crate::schedule::NoiseSchedule;
use candle_core::{Tensor, D};

/// Per-row coefficient tensor of shape [b, 1, 1, ...] matching `like`'s rank.
pub fn per_row(values: &[f64], like: &Tensor) -> Result<Tensor> {
    let b = like.dim(0)?;
    if values.len() != b {
        return Err(Error::Sampler(format!(
            "{} timesteps for a batch of {b}",
            values.len()
        )));
    }
    let mut shape = vec![1usize; like.rank()];
    shape[0] = b;
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())?)
}

fn ab(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<(Vec<f64>, Vec<f64>)> {
    let t_max = schedule.len();
    let mut a = Vec::with_capacity(timesteps.len());
    let mut s = Vec::with_capacity(timesteps.len());
    for &t in timesteps {
        if t >= t_max {
            return Err(Error::Sampler(format!(
                "timestep {t} out of range 0..{t_max}"
            )));
        }
        let ac = schedule.alphas_cumprod[t] as f32;
        // float32 as diffusers: sqrt(ᾱ), sqrt(1 − ᾱ).
        a.push(ac.sqrt() as f64);
        s.push((1.0 - ac).sqrt() as f64);
    }
    Ok((a, s))
}

/// q(x_t | x_0): `sqrt(ᾱ_t) x₀ + sqrt(1 − ᾱ_t) ε`, one timestep per batch row.
pub fn add_noise(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &[usize],
) -> Result<Tensor> {
    let (a, s) = ab(schedule, timesteps)?;
    Ok((x0.broadcast_mul(&per_row(&a, x0)?)? + noise.broadcast_mul(&per_row(&s, x0)?)?)?)
}

/// The v-prediction target `sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x₀`.
pub fn get_velocity(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &[usize],
) -> Result<Tensor> {
    let (a, s) = ab(schedule, timesteps)?;
    Ok((noise.broadcast_mul(&per_row(&a, x0)?)? - x0.broadcast_mul(&per_row(&s, x0)?)?)?)
}

/// The training target for a prediction type: ε, x₀, v, or the flow velocity ε − x₀.
pub fn target(
    schedule: &NoiseSchedule,
    prediction: PredictionType,
    x0: &Tensor,
    noise: &Tensor,
    timesteps: &[usize],
) -> Result<Tensor> {
    match prediction {
        PredictionType::Epsilon => Ok(noise.clone()),
        PredictionType::Sample => Ok(x0.clone()),
        PredictionType::VPrediction => get_velocity(schedule, x0, noise, timesteps),
        PredictionType::Flow => Ok((noise - x0)?),
    }
}

/// Converts a model output to (x₀, ε) given x_t = α x + σ ε, with per-row α and σ.
/// For [`PredictionType::Flow`], α = 1 − σ.
pub fn to_x0_eps(
    prediction: PredictionType,
    model_output: &Tensor,
    sample: &Tensor,
    alpha: &[f64],
    sigma: &[f64],
) -> Result<(Tensor, Tensor)> {
    let a = per_row(alpha, sample)?;
    let s = per_row(sigma, sample)?;
    let (x0, eps) = match prediction {
        PredictionType::Epsilon => {
            let x0 = (sample - model_output.broadcast_mul(&s)?)?.broadcast_div(&a)?;
            (x0, model_output.clone())
        }
        PredictionType::Sample => {
            let eps = (sample - model_output.broadcast_mul(&a)?)?.broadcast_div(&s)?;
            (model_output.clone(), eps)
        }
        PredictionType::VPrediction => {
            let x0 = (sample.broadcast_mul(&a)? - model_output.broadcast_mul(&s)?)?;
            let eps = (model_output.broadcast_mul(&a)? + sample.broadcast_mul(&s)?)?;
            (x0, eps)
        }
        PredictionType::Flow => {
            // x_t = (1−σ) x₀ + σ ε, u = ε − x₀ ⇒ x₀ = x_t − σ u, ε = x_t + (1−σ) u.
            let x0 = (sample - model_output.broadcast_mul(&s)?)?;
            let eps = (sample + model_output.broadcast_mul(&a)?)?;
            (x0, eps)
        }
    };
    Ok((x0, eps))
}

/// Expresses (x₀, ε) as the output a model of `prediction` type would give.
pub fn from_x0_eps(
    prediction: PredictionType,
    x0: &Tensor,
    eps: &Tensor,
    alpha: &[f64],
    sigma: &[f64],
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => eps.clone(),
        PredictionType::Sample => x0.clone(),
        PredictionType::VPrediction => {
            let a = per_row(alpha, x0)?;
            let s = per_row(sigma, x0)?;
            (eps.broadcast_mul(&a)? - x0.broadcast_mul(&s)?)?
        }
        PredictionType::Flow => (eps - x0)?,
    })
}

/// SNR(t) = ᾱ_t / (1 − ᾱ_t) per timestep, as diffusers' `compute_snr` (float32 arithmetic).
pub fn snr(schedule: &NoiseSchedule, timesteps: &[usize]) -> Result<Vec<f64>> {
    let (a, s) = ab(schedule, timesteps)?;
    Ok(a.iter()
        .zip(&s)
        .map(|(&a, &s)| ((a as f32 / s as f32).powi(2)) as f64)
        .collect())
}

/// Min-SNR-γ loss weights (Hang et al. 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for
/// v, min(SNR, γ) for x₀. Multiply each sample's MSE by its weight.
pub fn min_snr_weights(
    schedule: &NoiseSchedule,
    timesteps: &[usize],
    gamma: f64,
    prediction: PredictionType,
) -> Result<Vec<f64>> {
    let snr = snr(schedule, timesteps)?;
    Ok(snr
        .into_iter()
        .map(|s| {
            let (s, g) = (s as f32, gamma as f32);
            let m = s.min(g);
            (match prediction {
                PredictionType::Epsilon | PredictionType::Flow => m / s,
                PredictionType::VPrediction => m / (s + 1.0),
                PredictionType::Sample => m,
            }) as f64
        })
        .collect())
}

/// Mean squared error per batch row: `[b]`.
pub fn mse_per_sample(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let d = (a - b)?.sqr()?;
    Ok(d.flatten_from(1)?.mean(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SchedulerClass, SchedulerConfig};
    use candle_core::Device;

    #[test]
    fn conversions_round_trip() {
        let sched = NoiseSchedule::from_config(&SchedulerConfig::default_for(SchedulerClass::Ddpm))
            .unwrap();
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[0.5f32, -0.25], [1.0, 0.0]], &dev).unwrap();
        let eps = Tensor::new(&[[0.1f32, 0.7], [-1.2, 0.3]], &dev).unwrap();
        let ts = [10usize, 700];
        let xt = add_noise(&sched, &x0, &eps, &ts).unwrap();
        let (a, s) = ab(&sched, &ts).unwrap();
        for p in [
            PredictionType::Epsilon,
            PredictionType::Sample,
            PredictionType::VPrediction,
        ] {
            let out = from_x0_eps(p, &x0, &eps, &a, &s).unwrap();
            let (x0b, epsb) = to_x0_eps(p, &out, &xt, &a, &s).unwrap();
            let d0: f32 = (x0b - &x0)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let d1: f32 = (epsb - &eps)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d0 < 1e-4 && d1 < 1e-4, "{p:?}: {d0} {d1}");
        }
    }
}
