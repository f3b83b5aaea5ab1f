//! Mixed-precision training, as accelerate's `mixed_precision = "no" | "bf16" | "fp16"` sets
//! up torch.autocast and torch.cuda.amp.GradScaler: the master weights, gradients and AdamW
//! state stay f32; each optimizer step the forward runs on a bf16/f16 copy of the network built
//! over the `Var`s ([`low_precision_net`]; `to_dtype` has a backward, so the gradients arrive in
//! f32 on the master weights), inputs cast down and the output cast back to f32 before the loss
//! (`Network::forward`), GroupNorm/LayerNorm/softmax statistics in f32 (`diffuse_models::ops`).
//! fp16 adds dynamic loss scaling ([`GradScaler`]: scale 2^16, halved and the step skipped when
//! a gradient is inf/NaN, doubled after 2000 good steps in a row).

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use diffuse_models::{Network, NetworkConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `train.mixed_precision`: "no", "bf16" or "fp16".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixedPrecision {
    #[default]
    No,
    Bf16,
    Fp16,
}

impl MixedPrecision {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "no" => Ok(MixedPrecision::No),
            "bf16" => Ok(MixedPrecision::Bf16),
            "fp16" => Ok(MixedPrecision::Fp16),
            other => Err(Error::Invalid(format!(
                "train.mixed_precision: unknown value {other:?}; allowed: no, bf16, fp16"
            ))),
        }
    }

    /// The dtype the forward runs in; None for f32 training.
    pub fn compute_dtype(self) -> Option<DType> {
        match self {
            MixedPrecision::No => None,
            MixedPrecision::Bf16 => Some(DType::BF16),
            MixedPrecision::Fp16 => Some(DType::F16),
        }
    }
}

/// The network of `config` in `dtype` over the trainable `vars` (kept in the autograd graph)
/// and the remaining `fixed` weights (e.g. a UNet's Fourier projection, detached).
pub fn low_precision_net(
    config: &NetworkConfig,
    vars: &[(String, Var)],
    fixed: &HashMap<String, Tensor>,
    dtype: DType,
    device: &Device,
) -> Result<Network> {
    let mut tensors = fixed.clone();
    for (k, v) in vars {
        tensors.insert(k.clone(), v.as_tensor().clone());
    }
    Ok(diffuse_models::precision::from_tensors_as(
        config, tensors, dtype, device,
    )?)
}

/// Dynamic loss scaling, as `torch.cuda.amp.GradScaler` with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GradScaler {
    scale: f64,
    /// Good steps since the last change of scale.
    growth_tracker: u64,
    growth_interval: u64,
}

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler {
            scale: 65536.0,
            growth_tracker: 0,
            growth_interval: 2000,
        }
    }
}

impl GradScaler {
    /// The factor the loss is multiplied by before backward (the gradients are divided by it).
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// After a step: inf/NaN gradients halve the scale (the step was skipped); otherwise every
    /// `growth_interval`-th good step in a row doubles it.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= 0.5;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == self.growth_interval {
                self.scale *= 2.0;
                self.growth_tracker = 0;
            }
        }
    }

    /// (scale, growth tracker), for checkpoints.
    pub fn state(&self) -> (f64, u64) {
        (self.scale, self.growth_tracker)
    }

    pub fn from_state(scale: f64, growth_tracker: u64) -> Self {
        GradScaler {
            scale,
            growth_tracker,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_the_allowed_values() {
        assert_eq!(MixedPrecision::parse("bf16").unwrap(), MixedPrecision::Bf16);
        assert_eq!(
            MixedPrecision::parse("fp16").unwrap().compute_dtype(),
            Some(DType::F16)
        );
        let e = MixedPrecision::parse("fp8").unwrap_err().to_string();
        assert!(
            e.contains("train.mixed_precision") && e.contains("no, bf16, fp16"),
            "{e}"
        );
    }

    #[test]
    fn grad_scaler_follows_torch() {
        let mut s = GradScaler::default();
        assert_eq!(s.scale(), 65536.0);
        s.update(true);
        assert_eq!(s.state(), (32768.0, 0));
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!(s.state(), (32768.0, 1999));
        s.update(false);
        assert_eq!(s.state(), (65536.0, 0));
        s.update(false);
        s.update(true);
        assert_eq!(s.state(), (32768.0, 0));
        assert_eq!(GradScaler::from_state(8.0, 5).state(), (8.0, 5));
    }
}
