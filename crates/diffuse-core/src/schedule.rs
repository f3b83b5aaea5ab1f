//! Noise schedules: β_t → ᾱ_t → σ_t, and timestep spacing.
//!
//! Follows diffusers `schedulers/scheduling_ddpm.py` (`betas_for_alpha_bar`,
//! `rescale_zero_terminal_snr`, `set_timesteps`) and `scheduling_euler_discrete.py`
//! (`_sigma_to_t`, `_convert_to_karras`). diffusers keeps β and ᾱ as float32 torch tensors whose
//! `cumprod` accumulates in float64 on the CPU; we reproduce exactly that rounding (values are
//! stored as f64 that hold float32 numbers), and do in f64 what numpy does in f64.

use crate::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};

/// β_t and ᾱ_t = ∏(1 − β_s) over the training timesteps.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    /// β_t, float32 values.
    pub betas: Vec<f64>,
    /// ᾱ_t, float32 values.
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds β and ᾱ as the diffusers scheduler of `config.class` does (Euler-family classes pin
    /// the last ᾱ of a zero-SNR schedule to 2⁻²⁴, so that σ stays finite).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let t = config.num_train_timesteps;
        let mut betas: Vec<f32> = match &config.trained_betas {
            Some(b) => b.iter().map(|&b| b as f32).collect(),
            None => betas_for(config.beta_schedule, config.beta_start, config.beta_end, t),
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut alphas_cumprod = cumprod_alphas(&betas);
        use crate::config::SchedulerClass as C;
        if config.rescale_betas_zero_snr
            && matches!(
                config.class,
                C::Euler | C::EulerAncestral | C::DpmSolverMultistep | C::UniPcMultistep
            )
        {
            *alphas_cumprod.last_mut().expect("T >= 2") = 2f32.powi(-24);
        }
        if alphas_cumprod.iter().any(|a| !a.is_finite()) {
            return Err(Error::config(
                "beta_schedule",
                "the schedule produced non-finite ᾱ values",
            ));
        }
        Ok(NoiseSchedule {
            betas: betas.iter().map(|&b| b as f64).collect(),
            alphas_cumprod: alphas_cumprod.iter().map(|&a| a as f64).collect(),
        })
    }

    /// Number of training timesteps T.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) computed in float32 as diffusers does (the k-diffusion σ).
    pub fn sigmas(&self) -> Vec<f64> {
        self.alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                (((1.0 - a) / a).sqrt()) as f64
            })
            .collect()
    }

    /// ᾱ at a possibly fractional timestep, by linear interpolation (numpy `interp`).
    pub fn alpha_cumprod_at(&self, t: f64) -> f64 {
        interp(t, &self.alphas_cumprod)
    }

    /// Signal-to-noise ratio ᾱ/(1 − ᾱ) at integer timestep t.
    pub fn snr(&self, t: usize) -> f64 {
        let a = self.alphas_cumprod[t];
        a / (1.0 - a)
    }
}

fn betas_for(schedule: BetaSchedule, start: f64, end: f64, t: usize) -> Vec<f32> {
    match schedule {
        BetaSchedule::Linear => linspace_f32(start as f32, end as f32, t),
        BetaSchedule::ScaledLinear => linspace_f32(start.sqrt() as f32, end.sqrt() as f32, t)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredCosCapV2 => betas_for_alpha_bar(t, 0.999, |t| {
            ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                .cos()
                .powi(2)
        }),
        BetaSchedule::Laplace => betas_for_alpha_bar(t, 0.999, |t| {
            let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
            let snr = lmb.exp();
            (snr / (1.0 + snr)).sqrt()
        }),
        BetaSchedule::Exp => betas_for_alpha_bar(t, 0.999, |t| (t * -12.0).exp()),
        BetaSchedule::Sigmoid => {
            let (scale, offset) = ((end - start) as f32, start as f32);
            linspace_f32(-6.0, 6.0, t)
                .into_iter()
                .map(|x| 1.0 / (1.0 + (-x).exp()) * scale + offset)
                .collect()
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: float32 arithmetic, symmetric halves.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// `np.linspace(start, end, n)` in f64.
pub fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f64;
            let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
            v[n - 1] = end;
            v
        }
    }
}

/// Discretizes ᾱ(t) for t ∈ [0, 1] into betas (computed in f64 as diffusers does in Python
/// floats), each capped at `max_beta`. Note the float division `i / n`.
fn betas_for_alpha_bar(n: usize, max_beta: f64, alpha_bar: impl Fn(f64) -> f64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(max_beta) as f32
        })
        .collect()
}

/// ᾱ_t as torch computes `cumprod(1 - betas)`: α in float32, product accumulated in f64,
/// each output rounded to float32.
fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect()
}

/// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
/// shift and scale sqrt(ᾱ) so that ᾱ_T = 0 while ᾱ_0 is kept (float32 arithmetic).
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let ac = cumprod_alphas(betas);
    let mut sqrt: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (sqrt[0], *sqrt.last().expect("non-empty"));
    let scale = s0 / (s0 - st);
    for s in &mut sqrt {
        *s -= st;
        *s *= scale;
    }
    let bar: Vec<f32> = sqrt.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

/// `np.interp(x, arange(len(ys)), ys)`.
pub fn interp(x: f64, ys: &[f64]) -> f64 {
    let n = ys.len();
    if x <= 0.0 {
        return ys[0];
    }
    if x >= (n - 1) as f64 {
        return ys[n - 1];
    }
    let lo = x.floor() as usize;
    let w = x - lo as f64;
    if w == 0.0 {
        return ys[lo];
    }
    // numpy: slope * (x - xp[lo]) + fp[lo]
    (ys[lo + 1] - ys[lo]) * w + ys[lo]
}

/// Inference timesteps (descending, as training-timestep indices) for the DDPM/DDIM family:
/// diffusers `DDIMScheduler.set_timesteps`. Works when `num_steps` does not divide T.
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    train_steps: usize,
    num_steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let t = train_steps as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = linspace(0.0, t - 1.0, num_steps)
                .into_iter()
                .map(round_half_even)
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = train_steps / num_steps;
            (0..num_steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t / num_steps as f64;
            arange_desc(t, 0.0, ratio)
                .into_iter()
                .map(|x| round_half_even(x) - 1.0)
                .collect()
        }
    }
}

/// `np.arange(start, stop, -step)` for start > stop (numpy computes length ceil((stop-start)/-step)
/// and values start + i*(-step)).
pub fn arange_desc(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / -step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * -step).collect()
}

/// numpy's `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// diffusers `_sigma_to_t`: the fractional timestep whose log σ matches, by linear interpolation
/// in log σ over the training sigmas.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // cumsum(dists >= 0).argmax(): the last index where log_sigma >= log_sigmas[i], given
    // log_sigmas increases with t; argmax of a cumsum is its first maximum.
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_count = 0usize;
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
        }
        if count > best_count {
            best_count = count;
            best = i;
        }
    }
    let low_idx = best.min(n - 2);
    let high_idx = low_idx + 1;
    let (low, high) = (log_sigmas[low_idx], log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// Karras et al. 2022 (EDM) eq. 5 with ρ = 7: `num_steps` sigmas from σ_max down to σ_min.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, num_steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, num_steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// Rounds to float32 precision (diffusers stores sigmas and timesteps as float32 tensors).
pub fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_and_arange() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(-0.5), -0.0);
        assert_eq!(round_half_even(2.4), 2.0);
        // 1000 / 7 does not divide: numpy gives 7 values.
        assert_eq!(arange_desc(1000.0, 0.0, 1000.0 / 7.0).len(), 7);
        assert_eq!(arange_desc(1000.0, 0.0, 100.0).len(), 10);
    }

    #[test]
    fn cosine_schedule_is_capped() {
        let b = betas_for(BetaSchedule::SquaredCosCapV2, 0.0, 0.0, 1000);
        assert_eq!(*b.last().unwrap(), 0.999f32);
        assert!(b[0] > 0.0 && b[0] < 1e-4);
    }

    #[test]
    fn zero_snr_rescale_ends_at_zero() {
        let b = rescale_zero_terminal_snr(&linspace_f32(1e-4, 0.02, 1000));
        assert_eq!(*b.last().unwrap(), 1.0);
        let ac = cumprod_alphas(&b);
        assert_eq!(*ac.last().unwrap(), 0.0);
    }

    #[test]
    fn interp_matches_numpy() {
        let ys = [1.0, 3.0, 7.0];
        assert_eq!(interp(-1.0, &ys), 1.0);
        assert_eq!(interp(0.5, &ys), 2.0);
        assert_eq!(interp(1.25, &ys), 4.0);
        assert_eq!(interp(5.0, &ys), 7.0);
    }
}
