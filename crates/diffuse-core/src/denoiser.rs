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
    /// The timesteps at which guidance applies ([`crate::sampler::Sampler::guided_timesteps`]
    /// of a [`GuidanceInterval`]); at the others the conditional model alone runs (one batch
    /// of b). None: every timestep.
    pub guided: Option<Vec<f64>>,
}

/// Guidance only where the noise level σ is in [lo, hi] (Kynkäänniemi et al. 2024, "Applying
/// guidance in a limited interval improves sample and distribution quality"). σ is EDM's,
/// σ_t / α_t of the sample x = α_t x₀ + σ_t ε, whatever the model's parameterisation, so one
/// interval means the same for DDPM, VP-σ and flow schedules.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "[f64; 2]", into = "[f64; 2]")]
pub struct GuidanceInterval {
    pub lo: f64,
    pub hi: f64,
}

impl GuidanceInterval {
    /// `0 ≤ lo < hi` (hi may be infinite).
    pub fn new(lo: f64, hi: f64) -> Result<Self> {
        if lo.is_nan() || hi.is_nan() || lo < 0.0 || lo >= hi {
            return Err(crate::Error::Invalid(format!(
                "guidance interval [{lo}, {hi}]: give noise levels 0 ≤ σ_lo < σ_hi"
            )));
        }
        Ok(GuidanceInterval { lo, hi })
    }

    /// Parses `LO,HI` (`inf` for no upper bound).
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let num = |p: &str| p.parse::<f64>().ok();
        if let [a, b] = parts.as_slice() {
            if let (Some(lo), Some(hi)) = (num(a), num(b)) {
                return Self::new(lo, hi);
            }
        }
        Err(crate::Error::Invalid(format!(
            "guidance interval {s:?}: two numbers LO,HI (noise levels σ), e.g. 0.3,5"
        )))
    }

    pub fn contains(&self, sigma: f64) -> bool {
        self.lo <= sigma && sigma <= self.hi
    }
}

impl TryFrom<[f64; 2]> for GuidanceInterval {
    type Error = crate::Error;
    fn try_from([lo, hi]: [f64; 2]) -> Result<Self> {
        Self::new(lo, hi)
    }
}

impl From<GuidanceInterval> for [f64; 2] {
    fn from(g: GuidanceInterval) -> Self {
        [g.lo, g.hi]
    }
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
        let outside = self.guided.as_ref().is_some_and(|g| !g.contains(&t));
        if outside || self.scales.iter().all(|&s| s == 1.0) {
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
            guided: None,
        };
        let out: Vec<Vec<f32>> = cfg.predict(&x, 10.0).unwrap().to_vec2().unwrap();
        // uncond = 1; sample 0: 1 + 1·(3−1) = 3; sample 1: 1 + 2·(5−1) = 9.
        assert_eq!(out, vec![vec![3.0; 3], vec![9.0; 3]]);
        // Outside the guided timesteps: the conditional model alone.
        let cfg = ClassifierFreeGuidance {
            guided: Some(vec![20.0]),
            ..cfg
        };
        let out: Vec<Vec<f32>> = cfg.predict(&x, 10.0).unwrap().to_vec2().unwrap();
        assert_eq!(out, vec![vec![3.0; 3], vec![5.0; 3]]);
        let out: Vec<Vec<f32>> = cfg.predict(&x, 20.0).unwrap().to_vec2().unwrap();
        assert_eq!(out, vec![vec![3.0; 3], vec![9.0; 3]]);
    }

    #[test]
    fn guidance_intervals_parse_and_refuse_nonsense() {
        let g = GuidanceInterval::parse("0.3, 5").unwrap();
        assert_eq!((g.lo, g.hi), (0.3, 5.0));
        assert!(g.contains(0.3) && g.contains(5.0) && !g.contains(5.01) && !g.contains(0.2));
        assert_eq!(GuidanceInterval::parse("1,inf").unwrap().hi, f64::INFINITY);
        for bad in ["5,0.3", "-1,2", "1", "a,b", "1,2,3", "nan,1"] {
            let e = GuidanceInterval::parse(bad).unwrap_err().to_string();
            assert!(e.contains("guidance interval"), "{bad}: {e}");
        }
        let j: GuidanceInterval = serde_json::from_str("[0.5, 2]").unwrap();
        assert_eq!(serde_json::to_string(&j).unwrap(), "[0.5,2.0]");
        assert!(serde_json::from_str::<GuidanceInterval>("[2, 1]").is_err());
    }
}
